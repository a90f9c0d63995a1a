"""Helpers for the agent-to-agent gRPC tests: a federation PKI and mTLS PeerServers over sim clouds.

Real TLS on loopback, free ports (bound as port 0), all servers stopped in finalizers. The three
servers share one ``SimFabric`` (the simulated world between clouds), each serving only its own
cluster's drivers — exactly the production split, minus separate processes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnf.clock import ManualClock
from cnf.grpc.peer_client import PeerConnection, RetryPolicy, connect_drivers
from cnf.grpc.server import PeerServer
from cnf.grpc.tls import TlsFiles, issue_cert
from cnf.ports import ClusterDrivers
from cnf.sim.demo import DEMO_CLUSTERS
from cnf.sim.fabric import SimFabric

MASTER = "master-0"
CLUSTERS = [cid for cid, _name, _asn in DEMO_CLUSTERS]


@dataclass
class Pki:
    """A federation CA with certificates for every sim cluster and the master, plus a rogue CA."""

    root: Path
    rogue: Path

    def files(self, cluster_id: str) -> TlsFiles:
        return TlsFiles.in_dir(self.root, cluster_id)

    def issue(self, cluster_id: str, out_dir: Path, *, expired: bool = False, rogue: bool = False) -> TlsFiles:
        """A special certificate in ``out_dir``, always trusting the *real* CA (``ca_file``)."""
        now = dt.datetime.now(dt.UTC)
        files = issue_cert(self.rogue if rogue else self.root, cluster_id, out_dir=out_dir,
                           not_before=now - dt.timedelta(days=10) if expired else None,
                           not_after=now - dt.timedelta(days=1) if expired else None)
        return TlsFiles(ca_file=self.root / "ca.crt", cert_file=files.cert_file, key_file=files.key_file)


@dataclass
class Federation:
    """Three agents' servers over one sim world, and helpers to dial them as the master."""

    fabric: SimFabric
    clock: ManualClock
    pki: Pki
    servers: dict[str, PeerServer]
    epoch: list[int] = field(default_factory=lambda: [10])
    connections: list[PeerConnection] = field(default_factory=list)
    cleanups: list[Callable[[], Awaitable[None]]] = field(default_factory=list)

    def connection(self, cluster_id: str, *, local: str = MASTER, tls: TlsFiles | None = None,
                   epoch_provider: Callable[[], int | None] | None = None, target: str | None = None,
                   **kwargs: Any) -> PeerConnection:
        kwargs.setdefault("retry", RetryPolicy(attempts=3, backoff_s=0.01))
        if tls is None and not kwargs.get("allow_plaintext"):
            tls = self.pki.files(local)
        conn = PeerConnection(target or self.servers[cluster_id].address, peer_cluster_id=cluster_id,
                              local_cluster_id=local, tls=tls,
                              epoch_provider=epoch_provider or (lambda: self.epoch[0]), **kwargs)
        self.connections.append(conn)
        return conn

    async def remote(self, cluster_id: str) -> ClusterDrivers:
        return await connect_drivers(self.connection(cluster_id))
