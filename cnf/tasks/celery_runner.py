"""``CeleryRunner``: the ``TaskRunner`` that hands migrations to Celery workers, plus the master's reconciler.

``submit`` publishes ``cnf.advance_migration(migration_id, epoch)`` with the master's
current epoch. Publishing is blocking (kombu), so it runs in a thread. A publish that
fails (Redis away) is logged, not raised: the record is already in PostgreSQL, and
the reconciler re-enqueues it once its heartbeat is stale — the API still answers 202.

The reconciler (master only, every ``tasks.reconcile_every_s``) re-enqueues every
unfinished migration nobody has heart-beaten for ``tasks.reconcile_stale_s``: a
worker SIGKILLed mid-step, a message lost with a Redis restart, a chain broken by a
database outage. A duplicate chain is harmless: the DB lease serialises actions and
the version check in the task drops the chain that was overtaken.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from cnf.config import CNFConfig
from cnf.db.store import FederationStore
from cnf.errors import NotMaster
from cnf.tasks import migration_tasks

log = structlog.get_logger(__name__)


class CeleryRunner:
    def __init__(self, store: FederationStore, config: CNFConfig, epoch: Callable[[], int | None]) -> None:
        self.store = store
        self.config = config
        self.epoch = epoch
        self._reconciler: asyncio.Task[None] | None = None
        self._kicked: dict[str, float] = {}  # migration id -> when the reconciler last re-enqueued it
        migration_tasks.configure_app(config)

    async def start(self) -> None:
        if self._reconciler is None or self._reconciler.done():
            self._reconciler = asyncio.create_task(self._reconcile_loop(), name="cnf-reconciler")

    async def stop(self) -> None:
        if self._reconciler is not None:
            self._reconciler.cancel()
            await asyncio.gather(self._reconciler, return_exceptions=True)
            self._reconciler = None

    async def _publish(self, migration_id: str, epoch: int) -> bool:
        try:
            await asyncio.to_thread(migration_tasks.enqueue, migration_id, epoch)
            return True
        except Exception as e:  # the broker is away: the reconciler will enqueue it later
            log.warning("enqueue_failed", migration_id=migration_id, error=repr(e))
            return False

    async def submit(self, migration_id: str) -> None:
        epoch = self.epoch()
        if epoch is None:
            raise NotMaster("this agent is not the master: it does not drive migrations")
        await self._publish(migration_id, epoch)

    async def resume_unfinished(self) -> list[str]:
        """At takeover: enqueue every unfinished migration with the new epoch (older tasks are refused)."""
        ids = await self.store.unfinished_migrations()
        for mid in ids:
            await self.submit(mid)
        return ids

    async def reconcile_once(self) -> list[str]:
        """Re-enqueue unfinished migrations whose heartbeat is stale; returns their ids."""
        epoch = self.epoch()
        if epoch is None:
            return []
        stale_s = self.config.tasks.reconcile_stale_s
        now = time.time()
        out = []
        stale = await self.store.stale_migrations(stale_s)
        self._kicked = {k: v for k, v in self._kicked.items() if k in stale}
        for mid in stale:
            if now - self._kicked.get(mid, 0.0) < stale_s:
                continue  # re-enqueued recently: give that task a chance before sending another
            rec = await self.store.get_migration(mid)
            if rec.state.terminal or now - rec.created_at < stale_s:
                continue  # just created: its first task is on its way
            if await self._publish(mid, epoch):
                self._kicked[mid] = now
                out.append(mid)
        if out:
            log.info("decision", decision="reconcile", reason="heartbeat stale", migrations=out)
        return out

    async def _reconcile_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tasks.reconcile_every_s)
            try:
                await self.reconcile_once()
            except Exception as e:  # the database is briefly away: next round
                log.warning("reconcile_failed", error=repr(e))
