"""A real federation on loopback: 3-member etcd, PostgreSQL, three ``cnf-agent`` processes with mTLS gRPC.

Each agent runs the ``sim`` drivers of its own cloud; the clouds share one sim world through a state file
(the sim's stand-in for "the real infrastructure between clouds"), so a migration between two agents' clouds
is physically consistent while every cloud-local step still goes through the owning agent over CNFPeer.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from lab.etcd import EtcdCluster
from lab.federation import json_log_events
from lab.loopback import free_port


@dataclass
class AgentProc:
    name: str
    cluster_id: str
    api_port: int
    grpc_port: int
    config: Path
    log: Path
    as_number: int
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    def start(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "cnf.main", "--config", str(self.config)],
                                     stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def kill(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            assert self.proc is not None
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)

    def log_events(self) -> list[dict[str, Any]]:
        return json_log_events(self.log)


@dataclass
class Federation:
    agents: list[AgentProc]
    etcd: EtcdCluster
    state_file: Path
    registered: bool = False
    names: dict[str, str] = field(default_factory=dict)

    def by_id(self, cluster_id: str) -> AgentProc:
        return next(a for a in self.agents if a.cluster_id == cluster_id)

    def wait(self, predicate: Any, timeout_s: float, what: str, interval: float = 0.2) -> Any:
        end = time.monotonic() + timeout_s
        last: Any = None
        while time.monotonic() < end:
            try:
                last = predicate()
                if last:
                    return last
            except (httpx.HTTPError, KeyError, ValueError):
                pass
            time.sleep(interval)
        logs = {a.name: a.log.read_text(errors="replace")[-3000:] for a in self.agents}
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last={last!r}; logs={logs}")

    def master(self, via: AgentProc | None = None) -> dict[str, Any] | None:
        for a in [via] if via else self.agents:
            if a is None or not a.alive():
                continue
            try:
                r = httpx.get(f"{a.url}/v1/master", timeout=2)
            except httpx.HTTPError:
                continue
            if r.status_code == 200:
                return dict(r.json())
        return None

    def master_agent(self) -> AgentProc:
        m = self.wait(self.master, 60, "a master")
        return self.by_id(m["cluster_id"])


@pytest.fixture(scope="module")
def etcd() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(3)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def _run(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cnf.manage", *args], check=True, capture_output=True, timeout=60)


@pytest.fixture
def federation(etcd: EtcdCluster, pg_url: str, tmp_path: Path) -> Iterator[Federation]:
    yield from start_federation(etcd, pg_url, tmp_path)


def start_federation(etcd: EtcdCluster, pg_url: str, tmp_path: Path,
                     tasks: dict[str, Any] | None = None) -> Iterator[Federation]:
    """Three agents (a generator for fixtures); ``tasks``: the agents' ``tasks`` config section (runner...)."""
    tls = tmp_path / "tls"
    _run("ca", "init", "--dir", str(tls))
    state = tmp_path / "sim-world.json"
    agents = []
    for i, name in enumerate(("os-a", "os-b", "os-c"), start=1):
        cid = str(uuid.uuid4())
        _run("cert", "issue", "--cluster-id", cid, "--dir", str(tls))
        a = AgentProc(name=name, cluster_id=cid, api_port=free_port(), grpc_port=free_port(),
                      config=tmp_path / f"{name}.yaml", log=tmp_path / f"{name}.log", as_number=65000 + i)
        cfg = {
            "cluster_id": cid, "cluster_name": name, "cluster_grpc_addr": f"127.0.0.1:{a.grpc_port}",
            "bgp": {"as_number": a.as_number},
            "raft": {"etcd_endpoints": etcd.endpoints, "lease_ttl_s": 2},
            "database": {"url": pg_url},
            "api": {"host": "127.0.0.1", "port": a.api_port, "advertise_url": a.url},
            "tls": {"dir": str(tls)},
            "sim": {"state_file": str(state), "vms": 2, "replication_mbps": 4000},
            "state_dir": str(tmp_path / f"{name}-state"),
        }
        if tasks:
            cfg["tasks"] = tasks
        a.config.write_text(yaml.safe_dump(cfg))
        agents.append(a)
    fed = Federation(agents=agents, etcd=etcd, state_file=state)
    for a in agents:
        a.start()
    try:
        fed.wait(lambda: all(httpx.get(f"{a.url}/healthz", timeout=2).status_code == 200 for a in agents), 90,
                 "all agents healthy")
        yield fed
    finally:
        for a in agents:
            a.stop()


def register_all(fed: Federation, via: AgentProc) -> None:
    """``cluster register`` every agent's cloud (through ``via``: a worker proxies to the master)."""
    for a in fed.agents:
        body = {"id": a.cluster_id, "name": a.name, "auth_url": f"sim://{a.name}",
                "grpc_addr": f"127.0.0.1:{a.grpc_port}", "bgp_as": a.as_number}
        r = fed.wait(lambda body=body: _post_ok(f"{via.url}/v1/clusters", body), 60, f"register {a.name}")
        assert r.status_code in (201, 409), r.text
    fed.wait(lambda: len(httpx.get(f"{via.url}/v1/vms", timeout=5).json()["vms"]) == 6, 60, "inventory of 3 clouds")
    fed.registered = True


def _post_ok(url: str, body: dict[str, Any]) -> httpx.Response | None:
    r = httpx.post(url, json=body, timeout=30)
    return r if r.status_code in (201, 409) else None
