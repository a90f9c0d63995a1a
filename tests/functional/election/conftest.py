"""Fixtures for the election tests: one real 3-member etcd 3.5 cluster per session, in-process elections and
candidate subprocesses (``python -m cnf.agent.raft``) that can be SIGKILLed / SIGSTOPped.

Every process started here is ended by its PID in a finalizer; etcd members killed by a test are restarted
before the next test, and the election keys are wiped so tests do not see each other's masters.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # the top-level ``lab`` package is not installed, only ``cnf`` is
    sys.path.insert(0, str(ROOT))

from cnf.agent.etcd_gateway import EtcdGateway, b64, prefix_end  # noqa: E402
from cnf.agent.raft import EtcdElection  # noqa: E402
from lab.etcd import EtcdCluster  # noqa: E402

TTL_S = 2.0


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


async def _wipe(endpoints: list[str]) -> None:
    gw = EtcdGateway(endpoints, request_timeout_s=2.0)
    try:
        # Every key under /cnf/ (master, hand-over, agent registrations) from the previous test.
        await gw._post("/kv/deleterange", {"key": b64("/cnf/"), "range_end": b64(prefix_end("/cnf/"))})
    finally:
        await gw.close()


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> Iterator[EtcdCluster]:
    """The session cluster with all three members running and no election keys left over."""
    _restart_dead(etcd_cluster)
    asyncio.run(_wipe(etcd_cluster.endpoints))
    yield etcd_cluster
    _restart_dead(etcd_cluster)


def _restart_dead(cluster: EtcdCluster) -> None:
    for m in cluster.members:
        if not cluster.running(m.name):
            cluster.restart_member(m.name, wait=False)
    cluster.wait_healthy()


@pytest.fixture
async def make_election(etcd: EtcdCluster) -> AsyncIterator[Callable[..., EtcdElection]]:
    """Factory of in-process EtcdElection objects (TTL 2 s); every one is stopped at teardown."""
    made: list[EtcdElection] = []

    def make(cluster_id: str, endpoints: list[str] | None = None, **kw: Any) -> EtcdElection:
        kw.setdefault("lease_ttl_s", TTL_S)
        e = EtcdElection(cluster_id=cluster_id, address=f"127.0.0.1:{8000 + len(made)}",
                         endpoints=endpoints or etcd.endpoints, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        with contextlib.suppress(Exception):
            await e.stop()


class Candidate:
    """One ``python -m cnf.agent.raft`` subprocess; its JSON lines are collected in ``lines``."""

    def __init__(self, cluster_id: str, endpoints: list[str], ttl: float, status_interval: float) -> None:
        self.cluster_id = cluster_id
        argv = [sys.executable, "-m", "cnf.agent.raft", "--cluster-id", cluster_id, "--address", f"{cluster_id}:1",
                "--endpoints", ",".join(endpoints), "--ttl", str(ttl), "--status-interval", str(status_interval)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                                     cwd=str(ROOT))
        self.lines: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with contextlib.suppress(ValueError):
                line = json.loads(raw)
                with self._lock:
                    self.lines.append(line)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._lock:
            return list(self.lines)

    def changes(self) -> list[dict[str, Any]]:
        return [x for x in self.snapshot() if x["event"] == "change"]

    def won(self) -> list[dict[str, Any]]:
        """``change`` lines where this candidate became master."""
        return [x for x in self.changes() if x["is_master"] and x["master"] == self.cluster_id]

    def signal(self, sig: int) -> None:
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGCONT)
                os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)


@pytest.fixture
def spawn_candidate(etcd: EtcdCluster) -> Iterator[Callable[..., Candidate]]:
    started: list[Candidate] = []

    def spawn(cluster_id: str, *, endpoints: list[str] | None = None, ttl: float = TTL_S,
              status_interval: float = 0.0) -> Candidate:
        c = Candidate(cluster_id, endpoints or etcd.endpoints, ttl, status_interval)
        started.append(c)
        return c

    yield spawn
    for c in started:
        c.kill()


def wait_until(pred: Callable[[], Any], timeout: float, what: str, interval: float = 0.02) -> Any:
    """Poll ``pred`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for: {what}")
        time.sleep(interval)


async def async_wait_until(pred: Callable[[], Any], within: float, what: str, interval: float = 0.02) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {within}s waiting for: {what}")
        await asyncio.sleep(interval)
