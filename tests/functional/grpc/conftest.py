"""Fixtures for the agent-to-agent gRPC tests (helpers in ``peer_federation.py``)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from peer_federation import CLUSTERS, MASTER, Federation, Pki

from cnf.clock import ManualClock
from cnf.grpc.epoch import FileEpochStore
from cnf.grpc.server import PeerServer
from cnf.grpc.tls import init_ca, issue_cert
from cnf.sim.demo import demo_fabric, sim_drivers


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    rogue = tmp_path_factory.mktemp("rogue-pki")
    init_ca(root)
    init_ca(rogue, name="Some other CA")
    for cid in [*CLUSTERS, MASTER]:
        issue_cert(root, cid)
    return Pki(root=root, rogue=rogue)


@pytest.fixture
async def federation(pki: Pki, tmp_path: Path) -> AsyncIterator[Federation]:
    clock = ManualClock()
    fabric = demo_fabric(clock=clock)
    servers: dict[str, PeerServer] = {}
    fed = Federation(fabric=fabric, clock=clock, pki=pki, servers=servers)
    try:
        for cid in CLUSTERS:
            srv = PeerServer(sim_drivers(fabric, cid), listen="127.0.0.1:0", tls=pki.files(cid),
                             known_peers={MASTER, *CLUSTERS},
                             epoch_store=FileEpochStore(tmp_path / cid / "peer-epoch"))
            await srv.start()
            servers[cid] = srv
        yield fed
    finally:
        for cleanup in fed.cleanups:
            await cleanup()
        for conn in fed.connections:
            await conn.close()
        for srv in servers.values():
            await srv.stop(0)
