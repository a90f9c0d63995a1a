"""``FederationStore``: every read and write of CNF's state, each write fenced by the master epoch.

Fencing contract (DESIGN.md section 3): every write transaction first reads the
federation's epoch *under a lock* and is rolled back with ``Fenced`` when a newer
master has written already — a paused old master that wakes up cannot change
anything, even before it learns it lost its lease. The check is in the same
transaction as the write, so there is no window between check and write.

How the lock is taken depends on the database:
- PostgreSQL: ``SELECT epoch FROM master_epoch WHERE id = 1 FOR SHARE``. Writers
  of the same epoch share the lock and run concurrently; a new master's epoch bump
  (an ``UPDATE``, in its own short transaction) waits for the writers in flight and
  every writer after it reads the new epoch. Before this, every write ran the
  ``UPDATE`` itself, so all writes of the federation queued on one row lock
  (measured: median Celery step overhead 142 ms at 200 concurrent migrations).
- SQLite (the embedded default, one process): ``UPDATE master_epoch SET epoch = :e
  WHERE epoch <= :e`` first, which takes SQLite's single write lock at once (a read
  that later upgrades to a write can fail with SQLITE_BUSY in WAL mode).
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, func, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from cnf.db.models import (
    ClusterRow,
    IdempotencyKeyRow,
    MasterEpochRow,
    MigrationEventRow,
    MigrationRow,
    PolicyRow,
    VmRow,
)
from cnf.errors import Conflict, Fenced, NotFound
from cnf.migration.model import MigrationEvent, MigrationRecord, MigrationState
from cnf.openstack.base import Server

ACTIVE_STATES = (MigrationState.PENDING.value, MigrationState.RUNNING.value, MigrationState.COMPENSATING.value)


def make_engine(url: str) -> AsyncEngine:
    if url.startswith("sqlite"):
        engine = create_async_engine(url, connect_args={"timeout": 30})

        @event.listens_for(engine.sync_engine, "connect")
        def _wal(dbapi_conn: Any, _record: Any) -> None:
            # WAL + synchronous=NORMAL: a commit does not wait for an fsync of the main file, which keeps the
            # steps inside a live migration's switchover pause short; durability across a process crash holds.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
            cur.close()

        return engine
    return create_async_engine(url, pool_pre_ping=True, pool_size=5, max_overflow=10)


class FederationStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        self.sessions = async_sessionmaker(engine, expire_on_commit=False)

    async def close(self) -> None:
        await self.engine.dispose()

    # --- transactions ------------------------------------------------------------------------

    @asynccontextmanager
    async def write(self, epoch: int) -> AsyncIterator[AsyncSession]:
        """A fenced write transaction (see module docstring): ``Fenced`` if ``epoch`` is not the newest."""
        if self.engine.dialect.name == "sqlite":
            async with self.sessions() as s, s.begin():
                res = await s.execute(update(MasterEpochRow)
                                      .where(MasterEpochRow.id == 1, MasterEpochRow.epoch <= epoch)
                                      .values(epoch=epoch))
                if res.rowcount == 0:  # type: ignore[attr-defined]
                    self._first_epoch_or_fenced(s, await s.get(MasterEpochRow, 1), epoch)
                yield s
            return
        while True:
            async with self.sessions() as s, s.begin():
                current = (await s.execute(select(MasterEpochRow.epoch).where(MasterEpochRow.id == 1)
                                           .with_for_update(read=True))).scalar_one_or_none()
                if current is None or current == epoch:
                    if current is None:
                        self._first_epoch_or_fenced(s, None, epoch)
                    yield s
                    return
                if current > epoch:
                    raise Fenced(f"epoch {epoch} is older than the federation's epoch {current}",
                                 epoch=epoch, current_epoch=current)
            # a newer epoch than the federation's: bump it alone (waits for the writers in flight), then write
            async with self.sessions() as s, s.begin():
                await s.execute(update(MasterEpochRow).where(MasterEpochRow.id == 1, MasterEpochRow.epoch < epoch)
                                .values(epoch=epoch))

    @staticmethod
    def _first_epoch_or_fenced(s: AsyncSession, row: MasterEpochRow | None, epoch: int) -> None:
        if row is not None:
            raise Fenced(f"epoch {epoch} is older than the federation's epoch {row.epoch}",
                         epoch=epoch, current_epoch=row.epoch)
        s.add(MasterEpochRow(id=1, epoch=epoch, since=time.time()))

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self.sessions() as s:
            yield s

    async def highest_epoch(self) -> int:
        async with self.read() as s:
            row = await s.get(MasterEpochRow, 1)
            return row.epoch if row else 0

    async def record_master(self, epoch: int, cluster_id: str) -> None:
        async with self.write(epoch) as s:
            row = await s.get(MasterEpochRow, 1)
            assert row is not None
            if row.cluster_id != cluster_id or not row.since:
                row.cluster_id, row.since = cluster_id, time.time()

    # --- clusters ----------------------------------------------------------------------------

    async def upsert_cluster(self, epoch: int, **fields: Any) -> ClusterRow:
        async with self.write(epoch) as s:
            row = await s.get(ClusterRow, fields["id"])
            if row is None:
                clash = (await s.execute(select(ClusterRow).where(ClusterRow.name == fields["name"]))).scalar()
                if clash is not None:
                    raise Conflict(f"a cluster named {fields['name']} already exists ({clash.id})", field="name")
                row = ClusterRow(**fields)
                s.add(row)
            else:
                for k, v in fields.items():
                    setattr(row, k, v)
            return row

    async def list_clusters(self) -> list[ClusterRow]:
        async with self.read() as s:
            return list((await s.execute(select(ClusterRow).order_by(ClusterRow.name))).scalars())

    async def get_cluster(self, cluster_id: str) -> ClusterRow:
        async with self.read() as s:
            row = await s.get(ClusterRow, cluster_id)
            if row is None:
                row = (await s.execute(select(ClusterRow).where(ClusterRow.name == cluster_id))).scalar()
            if row is None:
                raise NotFound(f"cluster {cluster_id} not found", cluster_id=cluster_id)
            return row

    # --- inventory ---------------------------------------------------------------------------

    async def sync_inventory(self, epoch: int, cluster_id: str, servers: Sequence[Server]) -> None:
        """Make the inventory of ``cluster_id`` match what its cloud reports.

        A VM being migrated keeps its row (and its lock) whatever the clouds say mid-move.
        """
        async with self.write(epoch) as s:
            rows = {r.id: r for r in (await s.execute(select(VmRow).where(VmRow.cluster_id == cluster_id))).scalars()}
            seen = set()
            for srv in servers:
                seen.add(srv.id)
                row = rows.get(srv.id) or await s.get(VmRow, srv.id)
                if row is None:
                    row = VmRow(id=srv.id)
                    s.add(row)
                elif row.migration_id and row.cluster_id != cluster_id:
                    continue  # mid-migration: the engine decides where it lives
                row.name, row.cluster_id, row.host, row.status = srv.name, cluster_id, srv.host, srv.status
                row.flavor, row.vcpus, row.ram_mb, row.ip, row.image = srv.flavor, srv.vcpus, srv.ram_mb, srv.ip, \
                    srv.image
                row.project_id, row.tags, row.cpu_pct, row.mem_pct = srv.project_id, list(srv.tags), srv.cpu_pct, \
                    srv.mem_pct
            for vm_id, row in rows.items():
                if vm_id not in seen and not row.migration_id:
                    await s.delete(row)

    async def list_vms(self, cluster_id: str | None = None, status: str | None = None) -> list[VmRow]:
        async with self.read() as s:
            q = select(VmRow).order_by(VmRow.name)
            if cluster_id:
                q = q.where(VmRow.cluster_id == cluster_id)
            if status:
                q = q.where(VmRow.status == status.upper())
            return list((await s.execute(q)).scalars())

    async def get_vm(self, vm_id: str) -> VmRow:
        async with self.read() as s:
            row = await s.get(VmRow, vm_id)
            if row is None:
                row = (await s.execute(select(VmRow).where(VmRow.name == vm_id))).scalar()
            if row is None:
                raise NotFound(f"VM {vm_id} not found", vm_id=vm_id)
            return row

    # --- migrations --------------------------------------------------------------------------

    async def create_migration(self, epoch: int, rec: MigrationRecord) -> None:
        """Insert the migration and lock its VM; ``Conflict`` if the VM is already moving."""
        async with self.write(epoch) as s:
            vm = await s.get(VmRow, rec.vm.id, with_for_update=True)
            if vm is None:
                raise NotFound(f"VM {rec.vm.id} not found", vm_id=rec.vm.id)
            if vm.migration_id:
                other = await s.get(MigrationRow, vm.migration_id)
                if other is not None and other.state in ACTIVE_STATES:
                    raise Conflict(f"VM {rec.vm.id} is already being migrated by {other.id}",
                                   migration_id=other.id, field="vm_id")
            vm.migration_id = rec.id
            s.add(self._row(rec))
            await s.flush()  # the row before its first event (foreign key; no ORM relationship orders them)
            s.add(MigrationEventRow(migration_id=rec.id, ts=rec.created_at, kind="requested",
                                    message=f"{rec.kind} migration requested", data={}, epoch=epoch))

    @staticmethod
    def _row(rec: MigrationRecord) -> MigrationRow:
        return MigrationRow(id=rec.id, vm_id=rec.vm.id, kind=str(rec.kind), source_cluster_id=rec.source_cluster_id,
                            dest_cluster_id=rec.dest_cluster_id, state=str(rec.state), phase=rec.phase,
                            step=rec.current_step, record=rec.to_dict(), epoch=rec.epoch,
                            created_at=rec.created_at, updated_at=rec.updated_at, finished_at=rec.finished_at)

    async def save_migration(self, epoch: int, rec: MigrationRecord, events: Sequence[MigrationEvent],
                             owner: str | None = None, release: bool = False) -> None:
        """Persist one engine action: the record and its events, atomically, fenced.

        When ``owner`` is given the row must still be leased to it (two workers never drive one migration);
        ``release`` also hands the lease back in the same transaction (a Celery task's last write).
        """
        async with self.write(epoch) as s:
            row = await s.get(MigrationRow, rec.id, with_for_update=True)
            if row is None:
                raise NotFound(f"migration {rec.id} not found", migration_id=rec.id)
            if owner is not None and row.owner not in (None, owner):
                raise Conflict(f"migration {rec.id} is driven by {row.owner}", owner=row.owner)
            if row.state in (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.ABORTED,
                             MigrationState.NEEDS_OPERATOR) and row.state != str(rec.state):
                raise Conflict(f"migration {rec.id} already ended {row.state}")
            # keep an abort requested concurrently through the API
            if row.record.get("abort_requested") and not rec.abort_requested and not rec.passed_point_of_no_return:
                rec.abort_requested = True
            rec.epoch = epoch
            row.state, row.phase, row.step = str(rec.state), rec.phase, rec.current_step
            row.record, row.epoch, row.updated_at, row.finished_at = rec.to_dict(), epoch, rec.updated_at, \
                rec.finished_at
            row.heartbeat_at = time.time()
            s.add_all(MigrationEventRow(migration_id=rec.id, ts=e.ts, kind=e.kind, phase=e.phase, step=e.step,
                                        message=e.message, data=_jsonable(e.data), epoch=epoch) for e in events)
            if release and owner is not None:
                row.owner, row.lease_until = None, None
            if rec.state.terminal:
                row.owner, row.lease_until = None, None
                vm = await s.get(VmRow, rec.vm.id)
                if vm is not None and vm.migration_id == rec.id:
                    vm.migration_id = None
                    if rec.state == MigrationState.COMPLETED:
                        vm.cluster_id = rec.dest_cluster_id
                        vm.host = str(rec.context.get("dest_host", vm.host))

    async def request_abort(self, epoch: int, migration_id: str) -> MigrationRecord:
        async with self.write(epoch) as s:
            row = await s.get(MigrationRow, migration_id, with_for_update=True)
            if row is None:
                raise NotFound(f"migration {migration_id} not found", migration_id=migration_id)
            rec = MigrationRecord.from_dict(row.record)
            if rec.state.terminal:
                raise Conflict(f"migration {migration_id} already ended {rec.state}", state=str(rec.state))
            if rec.passed_point_of_no_return:
                raise Conflict(f"migration {migration_id} passed its point of no return ({rec.current_step}); "
                               "it can only roll forward", state=str(rec.state))
            rec.abort_requested = True
            row.record = rec.to_dict()
            s.add(MigrationEventRow(migration_id=migration_id, ts=time.time(), kind="abort_requested",
                                    message="abort requested by the operator", data={}, epoch=epoch))
            return rec

    async def get_migration(self, migration_id: str) -> MigrationRecord:
        async with self.read() as s:
            row = await s.get(MigrationRow, migration_id)
            if row is None:
                raise NotFound(f"migration {migration_id} not found", migration_id=migration_id)
            return MigrationRecord.from_dict(row.record)

    async def list_migrations(self, *, vm_id: str | None = None, state: str | None = None,
                              limit: int = 200) -> list[MigrationRecord]:
        async with self.read() as s:
            q = select(MigrationRow).order_by(MigrationRow.created_at.desc()).limit(limit)
            if vm_id:
                q = q.where(MigrationRow.vm_id == vm_id)
            if state:
                q = q.where(MigrationRow.state == state)
            return [MigrationRecord.from_dict(r.record) for r in (await s.execute(q)).scalars()]

    async def unfinished_migrations(self) -> list[str]:
        async with self.read() as s:
            q = select(MigrationRow.id).where(MigrationRow.state.in_(ACTIVE_STATES)).order_by(MigrationRow.created_at)
            return list((await s.execute(q)).scalars())

    async def events(self, migration_id: str) -> list[MigrationEventRow]:
        async with self.read() as s:
            q = select(MigrationEventRow).where(MigrationEventRow.migration_id == migration_id) \
                .order_by(MigrationEventRow.id)
            return list((await s.execute(q)).scalars())

    async def claim_and_load(self, epoch: int, migration_id: str, owner: str,
                             ttl_s: float) -> MigrationRecord | None:
        """Take the lease and read the record in one fenced transaction (a worker's first act per task).

        None when another live owner holds the lease; ``NotFound`` when there is no such migration.
        """
        now = time.time()
        async with self.write(epoch) as s:
            res = await s.execute(
                update(MigrationRow).where(MigrationRow.id == migration_id)
                .where((MigrationRow.owner.is_(None)) | (MigrationRow.owner == owner)
                       | (MigrationRow.lease_until < now))
                .values(owner=owner, lease_until=now + ttl_s, heartbeat_at=now)
                .returning(MigrationRow.record))
            record = res.scalar_one_or_none()
            if record is not None:
                return MigrationRecord.from_dict(record)
            if await s.get(MigrationRow, migration_id) is None:
                raise NotFound(f"migration {migration_id} not found", migration_id=migration_id)
            return None

    async def claim(self, epoch: int, migration_id: str, owner: str, ttl_s: float) -> bool:
        """Take (or renew) the lease on a migration row; False if another live owner holds it (or no such row)."""
        try:
            return await self.claim_and_load(epoch, migration_id, owner, ttl_s) is not None
        except NotFound:
            return False

    async def renew_lease(self, epoch: int, migration_id: str, owner: str, ttl_s: float) -> bool:
        """Extend a lease ``owner`` still holds; False (and nothing written) once it was released or taken.

        Why not ``claim``: a heartbeat racing the save that releases the lease must not take it back.
        """
        now = time.time()
        async with self.write(epoch) as s:
            res = await s.execute(update(MigrationRow).where(MigrationRow.id == migration_id,
                                                             MigrationRow.owner == owner)
                                  .values(lease_until=now + ttl_s, heartbeat_at=now))
            return bool(res.rowcount)  # type: ignore[attr-defined]

    async def release(self, epoch: int, migration_id: str, owner: str) -> None:
        async with self.write(epoch) as s:
            await s.execute(update(MigrationRow).where(MigrationRow.id == migration_id, MigrationRow.owner == owner)
                            .values(owner=None, lease_until=None))

    async def stale_migrations(self, older_than_s: float) -> list[str]:
        """Unfinished migrations nobody has heart-beaten for ``older_than_s`` (the reconciler re-queues them)."""
        cutoff = time.time() - older_than_s
        async with self.read() as s:
            q = select(MigrationRow.id).where(MigrationRow.state.in_(ACTIVE_STATES)) \
                .where((MigrationRow.heartbeat_at.is_(None)) | (MigrationRow.heartbeat_at < cutoff))
            return list((await s.execute(q)).scalars())

    async def count_active_migrations(self) -> dict[str, int]:
        async with self.read() as s:
            q = select(MigrationRow.source_cluster_id, func.count()).where(MigrationRow.state.in_(ACTIVE_STATES)) \
                .group_by(MigrationRow.source_cluster_id)
            return {str(k): int(v) for k, v in (await s.execute(q)).all()}

    # --- policies ----------------------------------------------------------------------------

    async def put_policy(self, epoch: int, name: str, rule: dict[str, Any], enabled: bool = True) -> PolicyRow:
        """Create or replace. Two PUTs creating the same new policy at once: the one whose insert loses the race
        runs again as an update (PUT is idempotent; it must not be a 500)."""
        for attempt in (1, 2):
            now = time.time()
            try:
                async with self.write(epoch) as s:
                    row = await s.get(PolicyRow, name)
                    if row is None:
                        row = PolicyRow(name=name, rule=rule, enabled=enabled, created_at=now, updated_at=now)
                        s.add(row)
                    else:
                        row.rule, row.enabled, row.updated_at = rule, enabled, now
                    return row
            except IntegrityError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def list_policies(self) -> list[PolicyRow]:
        async with self.read() as s:
            return list((await s.execute(select(PolicyRow).order_by(PolicyRow.name))).scalars())

    async def get_policy(self, name: str) -> PolicyRow:
        async with self.read() as s:
            row = await s.get(PolicyRow, name)
            if row is None:
                raise NotFound(f"policy {name} not found", policy=name)
            return row

    async def delete_policy(self, epoch: int, name: str) -> None:
        async with self.write(epoch) as s:
            row = await s.get(PolicyRow, name)
            if row is None:
                raise NotFound(f"policy {name} not found", policy=name)
            await s.delete(row)

    # --- idempotency -------------------------------------------------------------------------

    @staticmethod
    def request_hash(method: str, path: str, body: Any) -> str:
        return hashlib.sha256(json.dumps([method, path, body], sort_keys=True, default=str).encode()).hexdigest()

    async def get_idempotent(self, key: str) -> IdempotencyKeyRow | None:
        async with self.read() as s:
            return await s.get(IdempotencyKeyRow, key)

    async def put_idempotent(self, epoch: int, *, key: str, method: str, path: str, request_hash: str,
                             status_code: int, body: dict[str, Any], location: str) -> None:
        try:
            async with self.write(epoch) as s:
                if await s.get(IdempotencyKeyRow, key) is None:
                    s.add(IdempotencyKeyRow(key=key, method=method, path=path, request_hash=request_hash,
                                            status_code=status_code, body=body, location=location,
                                            created_at=time.time()))
        except IntegrityError:
            pass  # a concurrent request with the same key stored its response first: that one is the answer


def _jsonable(data: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(data, default=str))
