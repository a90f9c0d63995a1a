"""A peer that is down, hung or flaky: fail fast with DriverUnavailable, retry only what is safe."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import structlog
from peer_federation import CLUSTERS, Federation

from cnf.errors import DriverError, DriverUnavailable
from cnf.grpc.peer_client import connect_drivers, remote_drivers
from cnf.sim.fabric import FaultRule

A, B, _C = CLUSTERS

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


def _failures(logs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == "peer_call_failed"]


async def test_stopped_peer_gives_driver_unavailable(federation: Federation) -> None:
    remote = await federation.remote(A)
    await federation.servers[A].stop(0)
    with structlog.testing.capture_logs() as logs, pytest.raises(DriverUnavailable) as exc:
        await remote.cloud.list_servers()
    assert exc.value.details["reason"] == "peer_down"
    assert exc.value.details["peer"] == A and exc.value.details["operation"] == "CloudListServers"
    assert [e["attempt"] for e in _failures(logs)] == [1, 2, 3]  # reads retry, then give up
    with pytest.raises(DriverUnavailable):
        await remote.cloud.stop_server("any-vm")  # never sent: retried as safely re-sendable, then fails


async def test_peer_that_never_existed(federation: Federation) -> None:
    sock_port = federation.servers[B].port
    await federation.servers[B].stop(0)
    conn = federation.connection(B, target=f"127.0.0.1:{sock_port}")
    drivers = remote_drivers(conn, as_number=65002, default_next_hop="192.0.2.2")
    with pytest.raises(DriverUnavailable):
        await drivers.hypervisor.progress("any-vm")


async def test_hung_peer_hits_the_call_deadline(federation: Federation) -> None:
    conn = federation.connection(A, timeouts={"CloudListServers": 0.5, "CloudStopServer": 0.5})
    remote = await connect_drivers(conn)
    vm_id = next(iter(federation.fabric.clusters[A].servers))
    federation.fabric.faults.add(FaultRule(port="cloud", method="*", kind="hang", times=-1, cluster_id=A))
    with pytest.raises(DriverUnavailable) as exc:
        await remote.cloud.list_servers()
    # either the agent's own cut (sent just before the deadline) or the caller's deadline, whichever lands first
    assert ("did not finish within" in exc.value.message
            or exc.value.details.get("grpc_status") == "DEADLINE_EXCEEDED"), exc.value.to_dict()
    with structlog.testing.capture_logs() as logs, pytest.raises(DriverUnavailable):
        await remote.cloud.stop_server(vm_id)
    assert [e["attempt"] for e in _failures(logs)] == [1]  # may have run: never re-sent blindly
    assert federation.fabric.calls[(A, "cloud", "stop_server")] == 1


async def test_retryable_remote_error_is_retried_for_reads_only(federation: Federation) -> None:
    remote = await federation.remote(A)
    f = federation.fabric
    f.faults.add(FaultRule(port="cloud", method="list_hosts", kind="unavailable", nth=1, times=1, cluster_id=A))
    hosts = await remote.cloud.list_hosts()
    assert hosts and f.calls[(A, "cloud", "list_hosts")] == 2
    vm_id = next(iter(f.clusters[A].servers))
    f.faults.add(FaultRule(port="cloud", method="stop_server", kind="fail", nth=1, times=1, cluster_id=A))
    with pytest.raises(DriverError) as exc:
        await remote.cloud.stop_server(vm_id)
    assert exc.value.retryable  # the engine's step policy decides; the client did not re-send
    assert f.calls[(A, "cloud", "stop_server")] == 1
    await remote.cloud.stop_server(vm_id)  # the step's retry
    assert f.clusters[A].servers[vm_id].status == "SHUTOFF"


async def test_calls_resume_when_the_peer_comes_back(federation: Federation) -> None:
    from cnf.grpc.server import PeerServer
    from cnf.sim.demo import sim_drivers

    old = federation.servers[A]
    remote = await federation.remote(A)
    await old.stop(0)
    with pytest.raises(DriverUnavailable):
        await remote.cloud.metrics()
    back = PeerServer(sim_drivers(federation.fabric, A), listen=f"127.0.0.1:{old.port}", tls=old.tls,
                      known_peers=old.gate.verifier.known() if old.gate.verifier else ())
    await back.start()
    federation.servers[A] = back
    deadline = time.monotonic() + 10
    while True:  # same client object: the channel reconnects on its own (back-off capped at 2 s)
        try:
            assert (await remote.cloud.metrics()).vm_count > 0
            break
        except DriverUnavailable:
            assert time.monotonic() < deadline, "client never reconnected"
            await asyncio.sleep(0.1)
