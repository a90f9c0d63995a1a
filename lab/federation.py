"""Real ``cnf-agent`` processes on loopback, federated through etcd and one PostgreSQL database, for benchmarks.

Why here: a benchmark that kills the master agent needs what the federation tests' harness builds (one config per
agent, mTLS certificates from ``cnf.manage``, a shared sim world) without importing from ``tests/``. This module
holds only that plumbing; the functional tests keep their own pytest-shaped harness.

Contract:
- every port is picked free on 127.0.0.1 (:mod:`lab.loopback`);
- each agent runs ``python -m cnf.main --config <file>`` as our child, in its own session, output appended to its
  log file; it is ended only by its PID (:meth:`LoopbackAgent.kill` is SIGKILL, a crash; :meth:`LoopbackAgent.stop`
  is SIGTERM, SIGKILL after a grace period, via :mod:`lab.owned_process`);
- a killed agent restarts with the same config: same cluster id, ports and certificate, a new PID;
- a :class:`CeleryWorker` runs next to an agent with its config (``tasks.runner: celery``), ended by its process
  group's id;
- with ``namespace`` set, agent and worker run inside that network namespace (``nsenter``, which execs: the PID is
  still Python's); the agent then listens for gRPC on ``peer_host`` and for REST on all its addresses
  (``lab.controller_ns``, the e2e lab's controller namespaces).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from lab.controller_ns import in_namespace
from lab.loopback import free_ports
from lab.owned_process import end_process, kill_processes, process_alive

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LoopbackAgent:
    """One ``cnf-agent`` process of the federation (the process itself exists only between start and kill/stop)."""

    name: str
    cluster_id: str
    api_port: int
    grpc_port: int
    as_number: int
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: the network namespace (under /run/netns) the agent runs in; "" = this process's own (loopback)
    namespace: str = ""
    #: where the lab reaches the REST API (in a controller namespace: its end of the link to the root namespace)
    api_host: str = "127.0.0.1"
    #: where the other agents reach it: its gRPC (``cluster_grpc_addr``) and REST (``api.advertise_url``) address
    peer_host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def advertise_url(self) -> str:
        return f"http://{self.peer_host}:{self.api_port}"

    @property
    def grpc_addr(self) -> str:
        return f"{self.peer_host}:{self.grpc_port}"

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self) -> None:
        argv = [sys.executable, "-m", "cnf.main", "--config", str(self.config)]
        with self.log.open("ab") as out:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen(in_namespace(self.namespace, argv) if self.namespace else argv,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(ROOT), start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and process_alive(self.proc.pid)

    def kill(self) -> None:
        """SIGKILL (a crash: no resign, the lease must expire in etcd); returns once the process is gone."""
        if self.proc is not None:
            if kill_processes([self.proc.pid], within_s=10.0):
                raise TimeoutError(f"agent {self.name} (pid {self.proc.pid}) still runs 10 s after SIGKILL")
            self.proc.poll()
        self.proc = None

    def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM (the agent resigns and revokes its lease), SIGKILL after ``grace_s``."""
        if self.proc is not None:
            end_process(self.proc.pid, grace_s=grace_s)
            self.proc.poll()
        self.proc = None

    def healthy(self, timeout_s: float = 2.0) -> bool:
        """``GET /healthz`` answers 200 (the agent finished starting: schema, drivers, election, API)."""
        if not self.alive():
            return False
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=timeout_s) as r:
                return bool(r.status == 200)
        except (OSError, urllib.error.URLError):
            return False

    def log_events(self) -> list[dict[str, Any]]:
        """The agent's JSON log lines so far (every start appends to the same file)."""
        return json_log_events(self.log)


@dataclass
class CeleryWorker:
    """One ``cnf-worker`` (``python -m cnf.tasks.worker``) next to an agent, with that agent's config file.

    Why the agent's own file: the worker authenticates to the agents with that cloud's mTLS certificate (``tls.dir``
    set: it reaches every cloud, its own included, through the agents over CNFPeer, and holds no driver) and reads
    the same database and broker. Started in its own session; the prefork pool's children are in its process group,
    which :meth:`stop` ends (SIGTERM: warm shutdown, SIGKILL after the grace period).
    """

    name: str
    config: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    #: the network namespace the worker runs in (its agent's); "" = this process's own
    namespace: str = ""

    @property
    def pid(self) -> int | None:
        return None if self.proc is None else self.proc.pid

    def start(self, *, concurrency: int = 1, pool: str = "prefork") -> None:
        argv = [sys.executable, "-m", "cnf.tasks.worker", "--config", str(self.config),
                "--concurrency", str(concurrency), "--pool", pool, "--loglevel", "INFO"]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(in_namespace(self.namespace, argv) if self.namespace else argv,
                                         stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(ROOT), start_new_session=True,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and process_alive(self.proc.pid)

    def ready(self) -> bool:
        """Celery printed ``<name> ready.``: the worker consumes from the queue."""
        return self.alive() and self.log.exists() and " ready." in self.log.read_text(errors="replace")

    def stop(self, grace_s: float = 15.0) -> None:
        if self.proc is not None:
            end_process(self.proc.pid, grace_s=grace_s, group=True)
            self.proc.poll()
        self.proc = None

    def log_events(self) -> list[dict[str, Any]]:
        """The task bodies' JSON log lines (Celery's own lines are plain text and skipped)."""
        return json_log_events(self.log) if self.log.exists() else []


def json_log_events(path: Path) -> list[dict[str, Any]]:
    """The JSON lines of a structlog log file (other lines, e.g. a traceback, are skipped)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        if line.startswith("{"):
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return out


def _manage(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "cnf.manage", *args], check=True, capture_output=True, timeout=60,
                   cwd=str(ROOT))


def plan_federation(base_dir: Path, names: tuple[str, ...] = ("os-a", "os-b", "os-c")) -> list[LoopbackAgent]:
    """One agent per name: a fresh cluster id, free API and gRPC ports, AS 65001.., and a CA plus one mTLS
    certificate per agent in ``base_dir/tls`` (``cnf.manage ca init`` / ``cert issue``). Nothing is started."""
    tls = base_dir / "tls"
    _manage("ca", "init", "--dir", str(tls))
    ports = free_ports(2 * len(names))
    agents = []
    for i, name in enumerate(names):
        cid = str(uuid.uuid4())
        _manage("cert", "issue", "--cluster-id", cid, "--dir", str(tls))
        agents.append(LoopbackAgent(name=name, cluster_id=cid, api_port=ports[2 * i], grpc_port=ports[2 * i + 1],
                                    as_number=65001 + i, config=base_dir / f"{name}.yaml",
                                    log=base_dir / f"{name}.log"))
    return agents


def write_agent_config(agent: LoopbackAgent, base_dir: Path, *, etcd_endpoints: list[str], lease_ttl_s: float,
                       database_url: str, sim_vms: int = 2, extra: dict[str, Any] | None = None) -> None:
    """The agent's ``cnf.yaml``: etcd election, shared PostgreSQL, mTLS from ``base_dir/tls``, sim drivers of its
    own cloud in the shared sim world ``base_dir/sim-world.json``. ``extra`` adds top-level sections."""
    cfg: dict[str, Any] = {
        "cluster_id": agent.cluster_id, "cluster_name": agent.name,
        "cluster_grpc_addr": agent.grpc_addr,
        "bgp": {"as_number": agent.as_number},
        "raft": {"etcd_endpoints": etcd_endpoints, "lease_ttl_s": lease_ttl_s},
        "database": {"url": database_url},
        # in a controller namespace the API listens on all its addresses: the lab's link and the fabric (peers)
        "api": {"host": "0.0.0.0" if agent.namespace else "127.0.0.1", "port": agent.api_port,
                "advertise_url": agent.advertise_url},
        "tls": {"dir": str(base_dir / "tls")},
        "sim": {"state_file": str(base_dir / "sim-world.json"), "vms": sim_vms},
        "state_dir": str(base_dir / f"{agent.name}-state"),
        **(extra or {}),
    }
    agent.config.write_text(yaml.safe_dump(cfg))
