"""Three agents as separate processes on loopback with real mTLS: calls, fencing across a restart, a killed peer.

Each process serves one demo cluster from its own sim world; the test process is the master.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from peer_federation import CLUSTERS, MASTER, Pki

from cnf.errors import DriverUnavailable, Fenced
from cnf.grpc.peer_client import ControlClient, PeerConnection, RetryPolicy, connect_drivers

pytestmark = [pytest.mark.functional, pytest.mark.timeout(90)]

AGENT = Path(__file__).with_name("sim_peer_agent.py")


@dataclass
class AgentProcess:
    cluster_id: str
    proc: subprocess.Popen[str]
    port: int
    epoch_file: Path


def _spawn(pki: Pki, cluster_id: str, epoch_file: Path) -> subprocess.Popen[str]:
    argv = [sys.executable, str(AGENT), "--cluster-id", cluster_id, "--tls-dir", str(pki.root),
            "--known", ",".join([MASTER, *CLUSTERS]), "--epoch-file", str(epoch_file)]
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


async def _port_of(proc: subprocess.Popen[str]) -> int:
    assert proc.stdout is not None
    while True:
        line = await asyncio.to_thread(proc.stdout.readline)
        if not line:
            raise AssertionError(f"agent exited with {proc.wait()}")
        if line.startswith("PORT "):
            return int(line.split()[1])


def _stop(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        if proc.stdin is not None:
            proc.stdin.close()  # the agent's orderly stop: it serves until stdin closes
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
async def agents(pki: Pki, tmp_path: Path) -> AsyncIterator[dict[str, AgentProcess]]:
    procs = {cid: _spawn(pki, cid, tmp_path / f"{cid}.epoch") for cid in CLUSTERS}
    out: dict[str, AgentProcess] = {}
    try:
        ports = await asyncio.gather(*(_port_of(p) for p in procs.values()))
        for (cid, proc), port in zip(procs.items(), ports, strict=True):
            out[cid] = AgentProcess(cid, proc, port, tmp_path / f"{cid}.epoch")
        yield out
    finally:
        everyone = [*procs.values(), *(a.proc for a in out.values())]
        for p in everyone:  # close every stdin first so the agents stop in parallel
            if p.stdin is not None and not p.stdin.closed:
                p.stdin.close()
        for p in everyone:
            _stop(p)


def _conn(pki: Pki, agent: AgentProcess, epoch: int) -> PeerConnection:
    return PeerConnection(f"127.0.0.1:{agent.port}", peer_cluster_id=agent.cluster_id, local_cluster_id=MASTER,
                          tls=pki.files(MASTER), epoch_provider=lambda: epoch,
                          retry=RetryPolicy(attempts=2, backoff_s=0.01))


async def test_three_agent_processes(pki: Pki, agents: dict[str, AgentProcess]) -> None:
    conns: list[PeerConnection] = []
    try:
        for cid, agent in agents.items():
            conn = _conn(pki, agent, 20)
            conns.append(conn)
            drivers = await connect_drivers(conn)
            vm = (await drivers.cloud.list_servers())[0]
            await drivers.cloud.stop_server(vm.id)
            assert (await drivers.cloud.get_server(vm.id)).status == "SHUTOFF"  # type: ignore[union-attr]
            status = await ControlClient(conn).status()
            assert (status.cluster_id, status.highest_epoch, status.healthy) == (cid, 20, True)
        # the agent of A is killed: the master's next call fails fast instead of hanging
        a = agents[CLUSTERS[0]]
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(timeout=10)
        with pytest.raises(DriverUnavailable) as exc:
            await (await connect_drivers(conns[0])).cloud.metrics()
        assert exc.value.details["reason"] == "peer_down"
        # restarted with the same epoch file: still refuses the stale master, accepts the current one
        restarted = _spawn(pki, a.cluster_id, a.epoch_file)
        a.proc, a.port = restarted, await _port_of(restarted)
        stale, current = _conn(pki, a, 19), _conn(pki, a, 20)
        conns += [stale, current]
        vm_id = "00000001-0000-4000-8000-000000000001"
        with pytest.raises(Fenced):
            await (await connect_drivers(stale)).cloud.start_server(vm_id)
        await (await connect_drivers(current)).cloud.start_server(vm_id)
    finally:
        for c in conns:
            await c.close()
