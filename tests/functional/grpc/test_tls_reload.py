"""Certificates are re-read when their files change: no restart of the server or of the client."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.errors import DriverUnavailable
from cnf.grpc.peer_client import PeerConnection
from cnf.grpc.server import PeerServer
from cnf.grpc.tls import TlsFiles
from cnf.sim.demo import sim_drivers

A = CLUSTERS[0]

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


async def _ping_until_ok(conn: PeerConnection, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            await conn.ping()
            return
        except DriverUnavailable:
            assert time.monotonic() < deadline, "never accepted the renewed certificate"
            await asyncio.sleep(0.2)


def _copy(files: TlsFiles, into: Path) -> TlsFiles:
    into.mkdir(parents=True, exist_ok=True)
    out = TlsFiles(into / "ca.crt", into / files.cert_file.name, into / files.key_file.name)
    for src, dst in zip((files.ca_file, files.cert_file, files.key_file), (out.ca_file, out.cert_file, out.key_file),
                        strict=True):
        shutil.copy(src, dst)
    return out


async def test_server_picks_up_a_renewed_certificate(federation: Federation, tmp_path: Path) -> None:
    server_files = federation.pki.issue(A, tmp_path / "srv", expired=True)
    srv = PeerServer(sim_drivers(federation.fabric, A), tls=server_files, known_peers={MASTER})
    await srv.start()
    federation.servers["renewed"] = srv
    conn = federation.connection(A, target=srv.address)
    with pytest.raises(DriverUnavailable) as exc:
        await conn.ping()
    assert exc.value.details["reason"] == "peer_certificate_expired"
    federation.pki.issue(A, tmp_path / "srv")  # renewal: same paths, new valid certificate
    await _ping_until_ok(conn)
    assert srv.tls_reloads == 1


async def test_client_picks_up_a_renewed_certificate(federation: Federation, tmp_path: Path) -> None:
    client_files = federation.pki.issue(MASTER, tmp_path / "cli", expired=True)
    conn = federation.connection(A, tls=client_files)
    with pytest.raises(DriverUnavailable) as exc:
        await conn.ping()
    assert exc.value.details["reason"] == "own_certificate_expired"
    federation.pki.issue(MASTER, tmp_path / "cli")
    await _ping_until_ok(conn)


async def test_half_written_files_keep_the_working_certificate(federation: Federation, tmp_path: Path) -> None:
    files = _copy(federation.pki.files(A), tmp_path / "live")
    srv = PeerServer(sim_drivers(federation.fabric, A), tls=files, known_peers={MASTER})
    await srv.start()
    federation.servers["garbled"] = srv
    files.cert_file.write_text("-----BEGIN CERTIFICATE-----\ngarbage\n")
    conn = federation.connection(A, target=srv.address)
    assert await conn.ping(b"still") == b"still"
    assert srv.tls_reloads == 0
