"""The crash matrix's world: real PostgreSQL, a Redis server started here, Celery workers and an agent process.

Everything the processes share is real: the database (a throwaway PostgreSQL DB), the broker (a
``redis-server`` on a free port, no persistence — a restart loses every queued task on purpose), and the
sim world (a ``sim.state_file`` flock'd JSON file: the agent, the workers and this test all act on it).

Only processes started here are ever signalled, by their own pid / process group.
"""

from __future__ import annotations

import asyncio
import copy
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from cnf.clock import SystemClock
from cnf.config import load_config
from cnf.db.store import FederationStore, make_engine
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import MigrationKind, MigrationRecord, StepStatus, VmRef
from cnf.migration.preflight import run_preflight
from cnf.migration.steps import STEP_TABLES, StepContext
from cnf.sim.demo import DEMO_CLUSTERS
from cnf.sim.fabric import FaultRule, SimFabric
from cnf.tasks.migration_tasks import SimWorldDirectory
from cnf.tasks.runner import drive_one_action
from lab.redis import RedisServer

SRC, DST = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]
TEST_OWNER = "crash-test:0"
FAST_REPLICATION_MBPS = 1_000_000.0  # the disk copy is instant: the matrix measures orchestration, not physics




def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval: float = 0.1,
             on_timeout: Callable[[], str] | None = None) -> Any:
    end = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < end:
        try:
            last = predicate()
        except (httpx.HTTPError, OSError):
            last = None
        if last:
            return last
        time.sleep(interval)
    extra = on_timeout() if on_timeout else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last={last!r}\n{extra}")


@dataclass
class Proc:
    """A child process in its own session, so a SIGKILL reaches it and every pool child it forked."""

    name: str
    argv: list[str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
                                     start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the worker and its pool children): no cleanup runs."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
            except ProcessLookupError:
                pass
        self.proc = None


@dataclass
class CrashWorld:
    tmp: Path
    pg_url: str
    redis: RedisServer
    config_path: Path
    state_file: Path
    api_port: int
    agent: Proc | None = None
    workers: list[Proc] = field(default_factory=list)
    vms: list[str] = field(default_factory=list)
    fabric: SimFabric = field(init=False)

    def __post_init__(self) -> None:
        self.fabric = SimFabric(clock=SystemClock(), state_file=str(self.state_file))
        self.fabric.replication_mbps = FAST_REPLICATION_MBPS

    # --- processes -----------------------------------------------------------------------------

    def start_agent(self) -> None:
        self.agent = Proc("agent", [sys.executable, "-m", "cnf.main", "--config", str(self.config_path)],
                          self.tmp / "agent.log")
        self.agent.start()
        wait_for(self._agent_ready, 60, "the agent's API and inventory", interval=0.2, on_timeout=self.logs)

    def _agent_ready(self) -> bool:
        r = httpx.get(f"{self.url}/v1/vms", params={"cluster_id": SRC}, timeout=2)
        return r.status_code == 200 and len(r.json().get("vms", [])) > 0

    def kill_agent(self) -> None:
        assert self.agent is not None
        self.agent.kill()
        self.agent = None

    def start_worker(self) -> Proc:
        w = Proc(f"worker-{len(self.workers)}", [sys.executable, "-m", "cnf.tasks.worker", "--config",
                                                 str(self.config_path), "--concurrency", "1",
                                                 "--loglevel", "WARNING"],
                 self.tmp / f"worker-{len(self.workers)}.log")
        w.start()
        self.workers.append(w)
        return w

    def kill_workers(self) -> None:
        for w in self.workers:
            w.kill()

    def ensure_workers(self, n: int) -> None:
        """Keep ``n`` workers running (started ahead of need: a Python worker takes seconds to import)."""
        while sum(1 for w in self.workers if w.alive()) < n:
            self.start_worker()

    def stop_all(self) -> None:
        for w in self.workers:
            w.kill()  # a warm shutdown would wait for countdown tasks it holds
        if self.agent is not None:
            self.agent.stop()
        self.redis.stop()

    def logs(self) -> str:
        parts = []
        for p in [self.tmp / "agent.log", *sorted(self.tmp.glob("worker-*.log"))]:
            if p.exists():
                parts.append(f"--- {p.name}\n{p.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.api_port}"

    # --- migrations ----------------------------------------------------------------------------

    async def prepare(self, kind: MigrationKind, k: int) -> tuple[str, MigrationRecord]:
        """Create a migration (as the API does) and, holding its lease, drive it to the start of step ``k``.

        This test acts as "the previous worker": the row is leased to ``crash-test`` while it drives, so a
        reconciler task reaching a worker meanwhile is dropped. Nothing is enqueued: the caller enqueues.
        """
        vm = self.vms.pop(0)
        store = FederationStore(make_engine(self.pg_url))
        engine = MigrationEngine(SimWorldDirectory(self.fabric), SystemClock())
        try:
            epoch = await store.highest_epoch()
            row = await store.get_vm(vm)
            ref = VmRef(id=row.id, name=row.name, ip=row.ip, image=row.image, flavor=row.flavor, vcpus=row.vcpus,
                        ram_mb=row.ram_mb, host=row.host, project_id=row.project_id, status=row.status)
            rec = engine.new_record(kind=kind, vm=ref, source_cluster_id=SRC, dest_cluster_id=DST, epoch=epoch)
            await store.create_migration(epoch, rec)
            assert await store.claim(epoch, rec.id, TEST_OWNER, 120.0)
            for _ in range(10_000):
                rec = await store.get_migration(rec.id)
                if (rec.cursor == k and rec.steps[k].status == StepStatus.PENDING) or rec.state.terminal:
                    break
                delay = await drive_one_action(store, engine, rec.id, epoch=epoch, owner=TEST_OWNER)
                await asyncio.sleep(delay or 0.0)
            await store.release(epoch, rec.id, TEST_OWNER)
            return vm, rec
        finally:
            await store.close()

    def enqueue(self, migration_id: str) -> None:
        from cnf.tasks import migration_tasks

        migration_tasks.configure_app(load_config(self.config_path))
        migration_tasks.enqueue(migration_id, 1)

    def lease_owner(self, migration_id: str) -> str | None:
        async def run() -> str | None:
            from cnf.db.models import MigrationRow

            store = FederationStore(make_engine(self.pg_url))
            try:
                async with store.read() as s:
                    row = await s.get(MigrationRow, migration_id)
                    return row.owner if row is not None else None
            finally:
                await store.close()

        return asyncio.run(run())

    def worker_of(self, owner: str) -> Proc:
        """The worker whose process group holds the pool child named in a lease (``host:pid``)."""
        pid = int(owner.rsplit(":", 1)[1])
        pgid = os.getpgid(pid)
        return next(w for w in self.workers if w.proc is not None and w.proc.pid == pgid)

    def show(self, migration_id: str) -> dict[str, Any]:
        r = httpx.get(f"{self.url}/v1/migrations/{migration_id}", timeout=5)
        r.raise_for_status()
        return dict(r.json())

    async def first_call_of_step(self, rec: MigrationRecord, k: int) -> tuple[str, str, str]:
        """Which driver call a worker makes first in step ``k``: run the step's (read-only) check, watching."""
        step = STEP_TABLES[rec.kind][k]
        seen: list[tuple[str, str, str]] = []
        real_enter = self.fabric.enter

        async def spy(cluster_id: str, port: str, method: str) -> None:
            seen.append((cluster_id, port, method))
            await real_enter(cluster_id, port, method)

        directory = SimWorldDirectory(self.fabric)
        src, dst = directory.drivers(rec.source_cluster_id), directory.drivers(rec.dest_cluster_id)
        probe = copy.deepcopy(rec)
        self.fabric.enter = spy  # type: ignore[method-assign]
        try:
            await step.check(StepContext(record=probe, src=src, dst=dst, now=SystemClock().now, notes=[]))
            if not seen and step.name == "preflight.checks":  # its check reads the record only: do is read-only
                await run_preflight(probe, src, dst)
        finally:
            del self.fabric.enter
            with self.fabric.transaction():
                pass
        assert seen, f"step {step.name} makes no driver call to hang"
        return seen[0]

    def calls(self, key: tuple[str, str, str]) -> int:
        with self.fabric.transaction() as w:
            return int(w.calls[key])

    def add_fault(self, rule: FaultRule) -> None:
        with self.fabric.transaction() as w:
            w.faults.add(rule)

    def clear_faults(self) -> None:
        with self.fabric.transaction() as w:
            w.faults.clear()

    def pg_terminate(self) -> int:
        """Drop every PostgreSQL connection to the migration DB (the agent's and every worker's)."""
        import asyncpg

        dbname = self.pg_url.rsplit("/", 1)[1]
        dsn = self.pg_url.replace("postgresql+asyncpg://", "postgresql://")

        async def run() -> int:
            conn = await asyncpg.connect(dsn, timeout=10)
            try:
                rows = await conn.fetch("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                                        "WHERE datname = $1 AND pid <> pg_backend_pid()", dbname)
                return len(rows)
            finally:
                await conn.close()

        return asyncio.run(run())


def seed_world(state_file: Path, vms: int) -> list[str]:
    """The demo's three clouds; ``vms`` small VMs in the first one (one per matrix cell)."""
    f = SimFabric(clock=SystemClock(), state_file=str(state_file))
    ids = []
    with f.transaction() as w:
        for n, (cid, name, asn) in enumerate(DEMO_CLUSTERS, start=1):
            w.add_cluster(cid, name=name, as_number=asn, next_hop=f"192.0.2.{n}")
            for h in range(1, 3):
                w.add_host(cid, f"compute-{h}.os{n}", vcpus=256, ram_mb=1 << 20)
        for v in range(1, vms + 1):
            vm_id = f"00000001-0000-4000-8000-{v:012x}"
            w.add_vm(SRC, vm_id, name=f"crash-{v}", host=f"compute-{1 + v % 2}.os1", flavor="m1.tiny",
                     ip=f"10.98.{v // 200}.{10 + v % 200}", image_size_mb=64)
            ids.append(vm_id)
    return ids


def write_config(path: Path, *, pg_url: str, broker_url: str, state_file: Path, api_port: int,
                 state_dir: Path) -> None:
    cfg = {
        "embedded": True,
        "database": {"url": pg_url},
        "api": {"host": "127.0.0.1", "port": api_port},
        "sim": {"state_file": str(state_file), "replication_mbps": FAST_REPLICATION_MBPS},
        "state_dir": str(state_dir),
        "log_level": "info",
        "tasks": {"runner": "celery", "broker_url": broker_url, "step_time_limit_s": 5.0, "lease_ttl_s": 1.5,
                  "reconcile_stale_s": 2.0, "reconcile_every_s": 0.25, "visibility_timeout_s": 20.0},
    }
    path.write_text(yaml.safe_dump(cfg))
