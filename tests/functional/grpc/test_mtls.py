"""Each mTLS rejection case, with the log line that names it; nothing runs at the peer when refused.

Handshake-level rejections (unknown CA, expired, plaintext, wrong server) are enforced by gRPC core on
both sides and *named* by the client's diagnosis (``peer_connect_failed reason=...``); call-level ones
(unknown cluster, claim mismatch) are named by the server (``peer_rejected reason=...``) and returned
to the caller as ``Forbidden`` with the same reason.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import structlog
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.errors import DriverUnavailable, Forbidden
from cnf.grpc.server import PeerServer
from cnf.grpc.tls import TlsFiles
from cnf.sim.demo import sim_drivers

A, B, _C = CLUSTERS

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


def _events(logs: list[dict[str, Any]], event: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == event]


async def _refused(fed: Federation, cluster_id: str, **kwargs: Any) -> tuple[DriverUnavailable, list[dict[str, Any]]]:
    conn = fed.connection(cluster_id, **kwargs)
    with structlog.testing.capture_logs() as logs, pytest.raises(DriverUnavailable) as exc:
        await conn.ping()
    return exc.value, logs


async def _start(fed: Federation, cluster_id: str, tls: TlsFiles | None) -> PeerServer:
    srv = PeerServer(sim_drivers(fed.fabric, cluster_id), tls=tls, allow_plaintext=tls is None,
                     known_peers={MASTER})
    await srv.start()
    fed.servers[f"extra-{len(fed.servers)}"] = srv  # stopped by the fixture
    return srv


async def test_valid_peer_is_served(federation: Federation) -> None:
    assert await federation.connection(A).ping(b"x") == b"x"
    assert federation.servers[A].recent_calls[-1].caller == MASTER


async def test_client_certificate_from_unknown_ca_is_refused(federation: Federation, tmp_path: Path) -> None:
    rogue = federation.pki.issue(MASTER, tmp_path, rogue=True)
    err, logs = await _refused(federation, A, tls=rogue)
    assert err.details["reason"] == "own_certificate_unknown_ca"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "own_certificate_unknown_ca"
    assert federation.servers[A].recent_calls == []


async def test_client_certificate_the_server_does_not_trust_is_refused(federation: Federation,
                                                                       tmp_path: Path) -> None:
    # the client trusts (and is issued by) the rogue CA; the server only trusts the federation CA
    rogue = federation.pki.issue(MASTER, tmp_path, rogue=True)
    both = TlsFiles(federation.pki.rogue / "ca.crt", rogue.cert_file, rogue.key_file)
    server_ca = (federation.pki.root / "ca.crt").read_bytes()
    (tmp_path / "trust.crt").write_bytes(both.ca_file.read_bytes() + server_ca)
    err, logs = await _refused(federation, A, tls=TlsFiles(tmp_path / "trust.crt", rogue.cert_file, rogue.key_file))
    assert err.details["reason"] == "our_certificate_rejected"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "our_certificate_rejected"
    assert federation.servers[A].recent_calls == []


async def test_server_certificate_from_unknown_ca_is_refused(federation: Federation, tmp_path: Path) -> None:
    rogue_server = federation.pki.issue(A, tmp_path, rogue=True)
    srv = await _start(federation, A, TlsFiles(federation.pki.root / "ca.crt", rogue_server.cert_file,
                                               rogue_server.key_file))
    err, logs = await _refused(federation, A, target=srv.address)
    assert err.details["reason"] == "peer_certificate_unknown_ca"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "peer_certificate_unknown_ca"
    assert srv.recent_calls == []


async def test_certificate_of_an_unknown_cluster_is_refused(federation: Federation, tmp_path: Path) -> None:
    stranger = federation.pki.issue("stranger-9", tmp_path)  # signed by the federation CA, not registered
    conn = federation.connection(A, local="stranger-9", tls=stranger)
    with structlog.testing.capture_logs() as logs, pytest.raises(Forbidden) as exc:
        await conn.ping()
    assert exc.value.details["reason"] == "unknown_cluster"
    rejected = _events(logs, "peer_rejected")
    assert rejected and rejected[0]["reason"] == "unknown_cluster" and rejected[0]["cluster_id"] == "stranger-9"
    assert federation.servers[A].recent_calls[-1].outcome == "forbidden"


async def test_claimed_cluster_id_must_match_the_certificate(federation: Federation) -> None:
    # holds the master's certificate but claims to be cluster B in metadata
    conn = federation.connection(A, local=B, tls=federation.pki.files(MASTER))
    with structlog.testing.capture_logs() as logs, pytest.raises(Forbidden) as exc:
        await conn.ping()
    assert exc.value.details["reason"] == "cluster_id_mismatch"
    rejected = _events(logs, "peer_rejected")[0]
    assert (rejected["reason"], rejected["cluster_id"], rejected["claimed"]) == ("cluster_id_mismatch", MASTER, B)


async def test_expired_client_certificate_is_refused(federation: Federation, tmp_path: Path) -> None:
    expired = federation.pki.issue(MASTER, tmp_path, expired=True)
    err, logs = await _refused(federation, A, tls=expired)
    assert err.details["reason"] == "own_certificate_expired"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "own_certificate_expired"
    assert federation.servers[A].recent_calls == []


async def test_expired_server_certificate_is_refused(federation: Federation, tmp_path: Path) -> None:
    expired = federation.pki.issue(A, tmp_path, expired=True)
    srv = await _start(federation, A, expired)
    err, logs = await _refused(federation, A, target=srv.address)
    assert err.details["reason"] == "peer_certificate_expired"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "peer_certificate_expired"


async def test_server_of_another_cluster_is_refused(federation: Federation) -> None:
    # dialing B's address while expecting A: B's valid certificate does not name A
    err, _ = await _refused(federation, A, target=federation.servers[B].address)
    assert err.details["reason"] == f"peer_cluster_mismatch:{B}"
    assert federation.servers[B].recent_calls == []


async def test_plaintext_client_is_refused_by_a_tls_server(federation: Federation) -> None:
    err, logs = await _refused(federation, A, allow_plaintext=True)
    assert err.details["reason"] == "peer_requires_tls"
    assert _events(logs, "peer_connect_failed")[0]["reason"] == "peer_requires_tls"
    assert federation.servers[A].recent_calls == []


async def test_tls_client_refuses_a_plaintext_server(federation: Federation) -> None:
    srv = await _start(federation, A, None)
    err, _ = await _refused(federation, A, target=srv.address)
    assert err.details["reason"] == "peer_speaks_plaintext"
    assert srv.recent_calls == []


async def test_rejections_are_not_retried(federation: Federation, tmp_path: Path) -> None:
    rogue = federation.pki.issue(MASTER, tmp_path, rogue=True)
    _, logs = await _refused(federation, A, tls=rogue)
    assert [e["attempt"] for e in _events(logs, "peer_call_failed")] == [1]
