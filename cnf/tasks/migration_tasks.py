"""The Celery app and its one task, ``cnf.advance_migration(migration_id, epoch)``: ONE engine action per task.

Why one action per task (``docs/durable-work.md``): PostgreSQL holds the truth
(record + events, written atomically and fenced by the master epoch after every
action); Redis only carries "drive this migration next". A task that dies, is
lost, or is delivered twice costs at most one re-run of an idempotent action:
the engine runs a step's ``check`` before its ``do``.

Contract of the task body (``MigrationTaskBody.advance``):
- refused (dropped, not retried) when ``epoch`` is older than the federation's
  highest epoch — the lease claim is a fenced write, so the check and the claim
  are one transaction; the newer master re-enqueues what it wants driven;
- claims the DB lease on the row (owner ``host:pid``) and reads the record in the
  same transaction, renews the lease every third of its TTL while acting, runs ONE
  ``drive_one_action`` whose save also releases the lease (two database
  transactions per step);
- re-enqueues itself with ``countdown=delay_s`` when the migration is not
  terminal: polling a step's ``check`` is a countdown, never a sleep in a worker;
- carries the record ``version`` (``updated_at``) it expects: a task whose
  version no longer matches was overtaken by another chain (a redelivered
  message, a reconciler re-enqueue) and is dropped, so duplicate chains collapse;
- a failure outside the engine (database or broker briefly away) re-enqueues
  with a backoff; if even that fails, the master's reconciler re-enqueues the
  migration once its heartbeat is stale.

The worker process keeps ONE asyncio loop, store and engine per (forked) child,
built lazily from the agent's config file (``CNF_CONFIG``, set by ``cnf-worker``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from celery import Celery, Task

from cnf.clock import SystemClock
from cnf.config import CNFConfig, load_config
from cnf.db.store import FederationStore, make_engine
from cnf.errors import CNFError, ConfigError, Conflict, Fenced, NotFound, NotMaster
from cnf.migration.engine import EngineSettings, MigrationEngine
from cnf.migration.model import MigrationEvent, MigrationRecord
from cnf.ports import ClusterDrivers, DriverDirectory
from cnf.sim.fabric import SimFabric
from cnf.tasks.runner import drive_one_action

log = structlog.get_logger(__name__)

TASK_NAME = "cnf.advance_migration"
QUEUE = "cnf.migrations"
CONFIG_ENV = "CNF_CONFIG"

app = Celery("cnf", set_as_current=False)
app.conf.update(
    task_acks_late=True,  # a task is acknowledged after its action is persisted, not when it is received
    task_reject_on_worker_lost=True,  # a killed pool child puts its task back instead of acking it
    worker_prefetch_multiplier=1,  # a busy worker never sits on tasks another worker could run
    task_ignore_result=True,  # the truth is the migration row, not a result backend
    task_serializer="json", accept_content=["json"],
    task_default_queue=QUEUE,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    worker_send_task_events=False,
)


def configure_app(config: CNFConfig) -> Celery:
    """Point the app at the configured broker with the configured limits (agent and worker both call this)."""
    t = config.tasks
    app.conf.update(
        broker_url=t.broker_url,
        broker_transport_options={
            "visibility_timeout": t.visibility_timeout_s,  # unacked tasks come back after this long
            "socket_timeout": 5.0, "socket_connect_timeout": 5.0,
        },
        broker_connection_timeout=5.0,
        # the body's own asyncio timeout (step_time_limit_s) is the normal path; these are the backstops
        task_soft_time_limit=t.step_time_limit_s + 2.0,
        task_time_limit=t.step_time_limit_s + 5.0,
        task_publish_retry=True,
        task_publish_retry_policy={"max_retries": 2, "interval_start": 0.2, "interval_step": 0.5,
                                   "interval_max": 1.0},
    )
    return app


def enqueue(migration_id: str, epoch: int, *, version: float | None = None, countdown: float = 0.0) -> None:
    """Publish one ``cnf.advance_migration`` (blocking; raises kombu/redis errors when the broker is away)."""
    app.send_task(TASK_NAME, args=[migration_id, epoch], kwargs={"version": version},
                  countdown=countdown if countdown > 0 else None, queue=QUEUE)


# --- the worker side ---------------------------------------------------------------------------


class SimWorldDirectory:
    """Every cluster of the shared sim world (``sim.state_file``), looked up on demand.

    Why on demand: a cluster registered after the worker started (``sim://`` register) exists in the
    world file, and the worker must reach it without a restart.
    """

    def __init__(self, fabric: SimFabric) -> None:
        self.fabric = fabric
        self._cache: dict[str, ClusterDrivers] = {}

    def drivers(self, cluster_id: str) -> ClusterDrivers:
        from cnf.sim.demo import sim_drivers

        d = self._cache.get(cluster_id)
        if d is None:
            with self.fabric.transaction() as world:
                if cluster_id not in world.clusters:
                    raise NotFound(f"no drivers for cluster {cluster_id}", cluster_id=cluster_id)
            d = self._cache[cluster_id] = sim_drivers(self.fabric, cluster_id)
        return d

    def cluster_ids(self) -> list[str]:
        with self.fabric.transaction() as world:
            return list(world.clusters)


@dataclass
class TaskEpoch:
    """The epoch of the task being run: what the worker's peer calls carry (peers refuse a stale one)."""

    value: int | None = None


def build_worker_directory(config: CNFConfig, epoch: TaskEpoch) -> DriverDirectory:
    """The drivers a worker acts through.

    - A federation (``tls.dir`` set, or ``tls.allow_plaintext``): every cloud, this node's own included, is
      reached through its agent over CNFPeer (``PeerDirectory``, mTLS with this node's certificate), with the
      epoch of the task being run. The worker holds no driver of its own: an agent's drivers (its FRR
      session, its QEMU monitors, its sim world) live in the agent process, and two processes driving one
      QEMU monitor would fight. Clouds are attached as migrations need them (``MigrationTaskBody.reach``).
    - Otherwise: sim drivers on a shared world (``sim.state_file``) — the embedded default and the crash
      matrix; the worker acts on every cloud of the world directly, as the embedded agent does.
    """
    tls_cfg = config.tls
    if tls_cfg.dir or tls_cfg.allow_plaintext:
        from cnf.grpc.directory import PeerDirectory
        from cnf.grpc.tls import TlsFiles

        tls = TlsFiles.in_dir(tls_cfg.dir, config.cluster_id) if tls_cfg.dir else None
        return PeerDirectory(local_cluster_id=config.cluster_id, tls=tls, epoch_provider=lambda: epoch.value,
                             allow_plaintext=tls_cfg.allow_plaintext)
    d = config.drivers
    if {d.cloud, d.storage, d.bgp, d.hypervisor} != {"sim"} or not config.sim.state_file:
        raise ConfigError("a Celery worker reaches the clouds through their agents (set tls.dir, as the agents "
                          "have) or, with sim drivers only, through a shared world (sim.state_file)",
                          key="tls.dir")
    fabric = SimFabric(clock=SystemClock(), state_file=config.sim.state_file)
    fabric.replication_mbps = config.sim.replication_mbps
    return SimWorldDirectory(fabric)


@dataclass
class MigrationTaskBody:
    """Per-process state of a worker: one loop, one store, one engine (never shared across a fork)."""

    config: CNFConfig
    store: FederationStore
    engine: MigrationEngine
    loop: asyncio.AbstractEventLoop
    owner: str
    epoch: TaskEpoch = field(default_factory=TaskEpoch)
    pid: int = field(default_factory=os.getpid)

    @classmethod
    def from_config(cls, config: CNFConfig) -> MigrationTaskBody:
        from cnf.observability.logs import configure_logging

        # the pool child's sys.stderr is Celery's logging proxy: write to the real stream
        configure_logging(config.log_level, json=True, stream=sys.__stderr__, cluster_id=config.cluster_id)
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        store = FederationStore(make_engine(config.database.url))
        settings = EngineSettings(call_timeout_s=min(30.0, config.tasks.step_time_limit_s))
        epoch = TaskEpoch()
        engine = MigrationEngine(build_worker_directory(config, epoch), SystemClock(), settings)
        return cls(config=config, store=store, engine=engine, loop=loop,
                   owner=f"{socket.gethostname()}:{os.getpid()}", epoch=epoch)

    def run(self, migration_id: str, epoch: int, version: float | None) -> tuple[float | None, float | None]:
        return self.loop.run_until_complete(self.advance(migration_id, epoch, version))

    async def reach(self, rec: MigrationRecord) -> None:
        """Attach (federation) the agents of the migration's two clouds the first time a task needs them.

        A cloud whose agent does not answer is left out: the engine's step then fails with a retryable
        ``DriverUnavailable`` ("no route to a cloud of this migration yet") and the chain retries.
        """
        from cnf.grpc.directory import PeerDirectory

        directory = self.engine.directory
        if not isinstance(directory, PeerDirectory):
            return
        missing = {rec.source_cluster_id, rec.dest_cluster_id} - set(directory.cluster_ids())
        for row in await self.store.list_clusters() if missing else []:
            if row.id in missing and row.grpc_addr:
                try:
                    await directory.attach(row.id, row.grpc_addr)
                    log.info("peer_attached", peer=row.id, address=row.grpc_addr)
                except CNFError as e:
                    log.warning("peer_unreachable", peer=row.id, address=row.grpc_addr, error=e.message)

    async def _heartbeat(self, epoch: int, migration_id: str, ttl: float) -> None:
        while True:
            await asyncio.sleep(ttl / 3.0)
            try:
                await self.store.renew_lease(epoch, migration_id, self.owner, ttl)
            except Exception as e:  # the next beat (or the save) will tell whether the lease is really lost
                log.warning("lease_renew_failed", migration_id=migration_id, error=repr(e))

    async def advance(self, migration_id: str, epoch: int,
                      version: float | None) -> tuple[float | None, float | None]:
        """One action; returns ``(delay_s, new_version)`` — ``delay_s`` None: nothing more for this chain."""
        ttl = self.config.tasks.lease_ttl_s
        # claim + read in one fenced transaction: an epoch older than the federation's raises Fenced (refused)
        rec = await self.store.claim_and_load(epoch, migration_id, self.owner, ttl)
        if rec is None:
            log.info("task_dropped", migration_id=migration_id, reason="another worker holds the lease")
            return None, None
        seen: list[MigrationRecord] = []

        def remember(rec: MigrationRecord, _events: Sequence[MigrationEvent]) -> None:
            seen.append(rec)

        beat = asyncio.create_task(self._heartbeat(epoch, migration_id, ttl))
        released = False
        try:
            if rec.state.terminal:
                return None, None
            if version is not None and rec.updated_at != version:
                log.info("task_dropped", migration_id=migration_id, reason="overtaken by another chain")
                return None, None
            self.epoch.value = epoch
            await self.reach(rec)
            # the save hands the lease back in its own transaction: 2 database round trips per step, not 5
            delay = await asyncio.wait_for(
                drive_one_action(self.store, self.engine, migration_id, epoch=epoch, owner=self.owner,
                                 observers=[remember], record=rec, release=True),
                timeout=self.config.tasks.step_time_limit_s)
            released = True
        finally:
            beat.cancel()
            await asyncio.gather(beat, return_exceptions=True)
            if not released:
                try:
                    await self.store.release(epoch, migration_id, self.owner)
                except Exception as e:  # the lease then simply expires
                    log.warning("lease_release_failed", migration_id=migration_id, error=repr(e))
        log.info("task_done", migration_id=migration_id, step=seen[-1].current_step if seen else "",
                 state=str(seen[-1].state) if seen else "", next_in_s=delay)
        return delay, (seen[-1].updated_at if seen else None)


_body: MigrationTaskBody | None = None


def task_body() -> MigrationTaskBody:
    """This process's body, built on first use (after the prefork pool forked us)."""
    global _body
    if _body is None or _body.pid != os.getpid():
        path = os.environ.get(CONFIG_ENV)
        if not path:
            raise ConfigError(f"{CONFIG_ENV} is not set: start workers with cnf-worker --config PATH", key="(file)")
        _body = MigrationTaskBody.from_config(load_config(path))
    return _body


@app.task(name=TASK_NAME, bind=True, acks_late=True, reject_on_worker_lost=True, ignore_result=True)
def advance_migration(self: Task[Any, Any], migration_id: str, epoch: int, version: float | None = None,
                      failures: int = 0) -> None:
    body = task_body()
    try:
        delay, new_version = body.run(migration_id, epoch, version)
    except (Fenced, NotMaster) as e:
        log.info("task_refused", migration_id=migration_id, reason=e.message)
        return
    except NotFound:
        log.warning("task_dropped", migration_id=migration_id, reason="no such migration")
        return
    except Conflict as e:  # the lease moved to another worker mid-action: that worker continues the chain
        log.info("task_dropped", migration_id=migration_id, reason=e.message)
        return
    except Exception as e:  # database away, step over its time limit, an untranslated library error
        # version None: the action may have been persisted before the error; duplicates collapse anyway
        backoff = min(10.0, 0.5 * 2 ** min(failures, 5))
        log.warning("task_retry", migration_id=migration_id, error=repr(e), countdown=backoff)
        app.send_task(TASK_NAME, args=[migration_id, epoch], kwargs={"version": None, "failures": failures + 1},
                      countdown=backoff, queue=QUEUE)
        return
    if delay is not None:
        enqueue(migration_id, epoch, version=new_version, countdown=delay)
