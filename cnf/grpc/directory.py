"""``PeerDirectory``: the master's ``DriverDirectory`` in a real federation.

Why: the engine asks the directory for "the drivers of cluster X". In a federation the answer for
every other cluster is that cluster's agent, reached over CNFPeer (``Remote*`` drivers on one shared
``PeerConnection`` per agent); for the master's own cluster it may be its in-process drivers. The
engine cannot tell the difference, so the embedded default (``StaticDirectory`` of sim drivers) and a
real federation run the same code above this seam.

Contract: ``drivers(cluster_id)`` is cheap and synchronous (connections are opened lazily by gRPC on
the first call); an unknown cluster raises ``NotFound``. ``register`` replaces an entry (a changed
address); the old connection is closed by ``close()`` or by ``unregister``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cnf.errors import NotFound
from cnf.grpc.peer_client import PeerConnection, RetryPolicy, connect_drivers, remote_drivers
from cnf.grpc.tls import TlsFiles
from cnf.ports import ClusterDrivers


@dataclass
class _Entry:
    drivers: ClusterDrivers
    connection: PeerConnection | None


class PeerDirectory:
    def __init__(self, *, local_cluster_id: str, tls: TlsFiles | None, epoch_provider: Callable[[], int | None],
                 local: ClusterDrivers | None = None, allow_plaintext: bool = False,
                 timeouts: Mapping[str, float] | None = None, retry: RetryPolicy | None = None) -> None:
        self.local_cluster_id = local_cluster_id
        self._tls = tls
        self._epoch_provider = epoch_provider
        self._allow_plaintext = allow_plaintext
        self._timeouts = dict(timeouts or {})
        self._retry = retry or RetryPolicy()
        self._entries: dict[str, _Entry] = {}
        self._retired: list[PeerConnection] = []
        if local is not None:
            self._entries[local.cluster_id] = _Entry(local, None)

    def register(self, cluster_id: str, address: str, *, as_number: int, default_next_hop: str) -> ClusterDrivers:
        """Reach ``cluster_id`` through its agent at ``address`` (host:port of its CNFPeer server)."""
        conn = PeerConnection(address, peer_cluster_id=cluster_id, local_cluster_id=self.local_cluster_id,
                              tls=self._tls, epoch_provider=self._epoch_provider,
                              allow_plaintext=self._allow_plaintext, timeouts=self._timeouts, retry=self._retry)
        self.unregister(cluster_id)
        drivers = remote_drivers(conn, as_number=as_number, default_next_hop=default_next_hop)
        self._entries[cluster_id] = _Entry(drivers, conn)
        return drivers

    async def attach(self, cluster_id: str, address: str) -> None:
        """Probe ``cluster_id``'s agent at ``address`` (``Describe``: who it is, its AS and next hop), then register.

        Raises what the probe raises (``DriverUnavailable`` when the agent does not answer, ``ConfigError`` when
        another cluster answers there); nothing is registered then. The probe's connection is closed either way.
        """
        conn = PeerConnection(address, peer_cluster_id=cluster_id, local_cluster_id=self.local_cluster_id,
                              tls=self._tls, epoch_provider=self._epoch_provider,
                              allow_plaintext=self._allow_plaintext, timeouts=self._timeouts, retry=self._retry)
        try:
            probe = await connect_drivers(conn)
        finally:
            await conn.close()
        self.register(cluster_id, address, as_number=probe.bgp.as_number,
                      default_next_hop=probe.bgp.default_next_hop)

    def unregister(self, cluster_id: str) -> None:
        old = self._entries.pop(cluster_id, None)
        if old is not None and old.connection is not None:
            self._retired.append(old.connection)

    def drivers(self, cluster_id: str) -> ClusterDrivers:
        try:
            return self._entries[cluster_id].drivers
        except KeyError:
            raise NotFound(f"no agent registered for cluster {cluster_id}", cluster_id=cluster_id) from None

    def connection(self, cluster_id: str) -> PeerConnection | None:
        """The connection behind a remote cluster (for ``ControlClient``); None for the local one."""
        entry = self._entries.get(cluster_id)
        return entry.connection if entry is not None else None

    def cluster_ids(self) -> list[str]:
        return list(self._entries)

    async def close(self) -> None:
        conns = [e.connection for e in self._entries.values() if e.connection is not None] + self._retired
        self._retired = []
        for conn in conns:
            await conn.close()
