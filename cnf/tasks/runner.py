"""Task runners: who calls ``MigrationEngine.advance`` and when.

``TaskRunner`` is the seam between the pure engine and durable execution:
- ``InProcessRunner`` (embedded default): one asyncio task per migration on the
  agent's own loop. Durable all the same — every action is persisted before the
  next, and ``resume_unfinished()`` at start picks up what a crash interrupted.
- ``CeleryRunner`` (``cnf.tasks.migration_tasks``): one step per Celery task on
  Redis, ``acks_late``; the same ``drive_one_action`` below is the task body.

Contract of ``drive_one_action``: load the record, check this node may act
(master, epoch), run one engine action, persist record + events atomically
(fenced by the epoch), return the delay before the next action (None = done).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Protocol

import structlog

from cnf.clock import Clock
from cnf.db.store import FederationStore
from cnf.errors import CNFError, Fenced, NotMaster
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import MigrationEvent, MigrationRecord

log = structlog.get_logger(__name__)

EventObserver = Callable[[MigrationRecord, Sequence[MigrationEvent]], None]


class TaskRunner(Protocol):
    async def submit(self, migration_id: str) -> None:
        """Schedule the migration to be driven to a terminal state; idempotent."""

    async def start(self) -> None:
        ...

    async def stop(self) -> None:
        ...


async def drive_one_action(store: FederationStore, engine: MigrationEngine, migration_id: str, *,
                           epoch: int | None, observers: Sequence[EventObserver] = (),
                           owner: str | None = None, record: MigrationRecord | None = None,
                           release: bool = False) -> float | None:
    """``record``: the row as just read by the caller (saves a read); ``release``: hand the lease back in the save."""
    if epoch is None:
        raise NotMaster("this agent is not the master: it does not drive migrations")
    rec = record if record is not None else await store.get_migration(migration_id)
    if rec.state.terminal:
        return None
    adv = await engine.advance(rec)
    await store.save_migration(epoch, adv.record, adv.events, owner=owner, release=release)
    for obs in observers:
        try:
            obs(adv.record, adv.events)
        except Exception:  # observers (logs, metrics, traces) never break a migration
            log.exception("observer_failed", migration_id=migration_id)
    return adv.delay_s


class InProcessRunner:
    def __init__(self, store: FederationStore, engine: MigrationEngine, clock: Clock,
                 epoch: Callable[[], int | None], observers: Sequence[EventObserver] = (),
                 max_parallel_actions: int = 8) -> None:
        """``max_parallel_actions``: engine actions in flight at once, whatever the number of migrations.

        Why: each action holds a database connection for its save; 1,000 migrations submitted at once would
        otherwise all wait on the connection pool and time out there (measured: QueuePool timeouts after 30 s
        at 1,000 concurrent sim migrations). Waiting on this semaphore is fair and costs nothing.
        """
        self.store = store
        self.engine = engine
        self.clock = clock
        self.epoch = epoch
        self.observers = list(observers)
        self._slots = asyncio.Semaphore(max_parallel_actions)
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._stopping = False

    async def start(self) -> None:
        self._stopping = False

    async def stop(self) -> None:
        self._stopping = True
        tasks = list(self._tasks.values())
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._tasks.clear()

    async def submit(self, migration_id: str) -> None:
        t = self._tasks.get(migration_id)
        if t is not None and not t.done():
            return
        self._tasks[migration_id] = asyncio.create_task(self._drive(migration_id), name=f"migration-{migration_id}")

    async def resume_unfinished(self) -> list[str]:
        ids = await self.store.unfinished_migrations()
        for mid in ids:
            await self.submit(mid)
        return ids

    def running(self) -> list[str]:
        return [k for k, t in self._tasks.items() if not t.done()]

    async def wait_idle(self, timeout_s: float = 60.0) -> None:
        tasks = [t for t in self._tasks.values() if not t.done()]
        if tasks:
            await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), timeout_s)

    async def _drive(self, migration_id: str) -> None:
        failures = 0
        while not self._stopping:
            try:
                async with self._slots:
                    delay = await drive_one_action(self.store, self.engine, migration_id, epoch=self.epoch(),
                                                   observers=self.observers)
                failures = 0
            except (Fenced, NotMaster) as e:
                log.warning("migration_driver_stopped", migration_id=migration_id, reason=e.message)
                return
            except CNFError as e:  # the store is briefly unreachable: the record is intact, retry
                failures += 1
                log.warning("migration_driver_retry", migration_id=migration_id, error=e.message, attempt=failures)
                delay = min(5.0, 0.2 * 2 ** failures)
            except Exception as e:
                failures += 1
                log.warning("migration_driver_retry", migration_id=migration_id, error=repr(e), attempt=failures)
                delay = min(5.0, 0.2 * 2 ** failures)
            if delay is None:
                return
            await self.clock.sleep(delay)
