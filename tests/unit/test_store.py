"""The store on SQLite and PostgreSQL: Alembic up/down, epoch fencing, VM lock, events, leases."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import inspect

from cnf.agent.agent import upgrade_schema
from cnf.db.store import FederationStore, make_engine
from cnf.errors import Conflict, Fenced
from cnf.migration.model import MigrationEvent, MigrationKind, MigrationRecord, MigrationState, VmRef
from cnf.openstack.base import Server

TABLES = {"clusters", "vms", "migrations", "migration_events", "policies", "master_epoch", "idempotency_keys"}


def downgrade(url: str) -> None:
    from alembic import command
    from alembic.config import Config

    from cnf.agent.agent import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.attributes["url"] = url
    cfg.attributes["configure_logger"] = False
    command.downgrade(cfg, "base")


async def tables(url: str) -> set[str]:
    engine = make_engine(url)
    async with engine.connect() as conn:
        names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
    await engine.dispose()
    return names


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))


async def test_alembic_upgrade_and_downgrade(db_url: str) -> None:
    await asyncio.to_thread(upgrade_schema, db_url)
    assert TABLES <= await tables(db_url)
    await asyncio.to_thread(downgrade, db_url)
    assert not (TABLES & await tables(db_url))
    await asyncio.to_thread(upgrade_schema, db_url)
    assert TABLES <= await tables(db_url)


def server(vm_id: str) -> Server:
    return Server(id=vm_id, name=vm_id, status="ACTIVE", host="h1", flavor="m1.small", vcpus=1, ram_mb=2048,
                  ip="10.99.0.5", image=f"{vm_id}_disk")


async def seeded(url: str) -> FederationStore:
    await asyncio.to_thread(upgrade_schema, url)
    store = FederationStore(make_engine(url))
    for cid, name in (("c1", "one"), ("c2", "two")):
        await store.upsert_cluster(5, id=cid, name=name, grpc_addr="x:1", auth_url="sim://x", bgp_as=65001,
                                   region="R", credentials={}, status="active")
    await store.sync_inventory(5, "c1", [server("vm1"), server("vm2")])
    return store


def new_record(kind: MigrationKind = MigrationKind.LIVE) -> MigrationRecord:
    """A migration record of vm1 (seeded in c1) to c2, as the engine makes it."""
    from cnf.clock import ManualClock
    from cnf.migration.engine import MigrationEngine
    from cnf.ports import StaticDirectory

    vm = VmRef(id="vm1", name="vm1", ip="10.99.0.5", image="vm1_disk", flavor="m1.small", vcpus=1, ram_mb=2048)
    return MigrationEngine(StaticDirectory({}), ManualClock()).new_record(
        kind=kind, vm=vm, source_cluster_id="c1", dest_cluster_id="c2")


async def test_lower_epoch_is_fenced_in_the_same_transaction(db_url: str) -> None:
    store = await seeded(db_url)
    try:
        await store.upsert_cluster(6, id="c3", name="three", grpc_addr="x:1", auth_url="", bgp_as=1, region="R",
                                   credentials={}, status="active")
        with pytest.raises(Fenced):
            await store.upsert_cluster(5, id="c4", name="four", grpc_addr="x:1", auth_url="", bgp_as=1,
                                       region="R", credentials={}, status="active")
        assert {c.id for c in await store.list_clusters()} == {"c1", "c2", "c3"}  # nothing of epoch 5 landed
        assert await store.highest_epoch() == 6
    finally:
        await store.close()


async def test_vm_lock_events_and_terminal_unlock(db_url: str) -> None:
    store = await seeded(db_url)
    try:
        rec = new_record()
        await store.create_migration(5, rec)
        other = new_record(MigrationKind.COLD)
        with pytest.raises(Conflict):
            await store.create_migration(5, other)
        assert await store.claim(5, rec.id, "worker-a", 30)
        assert not await store.claim(5, rec.id, "worker-b", 30)
        with pytest.raises(Conflict):
            await store.save_migration(5, rec, [], owner="worker-b")
        rec.state = MigrationState.COMPLETED
        rec.context["dest_host"] = "h9"
        await store.save_migration(5, rec, [MigrationEvent(ts=1.0, kind="completed", message="done")],
                                   owner="worker-a")
        assert [e.kind for e in await store.events(rec.id)] == ["requested", "completed"]
        moved = await store.get_vm("vm1")
        assert moved.cluster_id == "c2" and moved.host == "h9" and moved.migration_id is None
        assert await store.unfinished_migrations() == []
    finally:
        await store.close()


async def test_lease_claim_and_load_save_releases_and_a_late_heartbeat_cannot_retake(db_url: str) -> None:
    from cnf.errors import NotFound

    store = await seeded(db_url)
    try:
        rec = new_record()
        await store.create_migration(5, rec)
        loaded = await store.claim_and_load(5, rec.id, "worker-a", 30)
        assert loaded is not None and loaded.id == rec.id and loaded.to_dict() == rec.to_dict()
        assert await store.claim_and_load(5, rec.id, "worker-b", 30) is None  # leased to worker-a
        assert await store.renew_lease(5, rec.id, "worker-a", 30)
        loaded.cursor = 1
        await store.save_migration(5, loaded, [], owner="worker-a", release=True)
        assert not await store.renew_lease(5, rec.id, "worker-a", 30)  # released: a late beat does not retake it
        again = await store.claim_and_load(5, rec.id, "worker-b", 30)
        assert again is not None and again.cursor == 1
        with pytest.raises(NotFound):
            await store.claim_and_load(5, "no-such-migration", "worker-a", 30)
        with pytest.raises(Fenced):
            await store.claim_and_load(4, rec.id, "worker-b", 30)
    finally:
        await store.close()


async def test_concurrent_writers_share_the_epoch_and_a_new_master_fences_the_old_one(db_url: str) -> None:
    store = await seeded(db_url)
    try:
        # writers of the current epoch run side by side (PostgreSQL: a shared row lock, not one queue)
        await asyncio.gather(*(store.upsert_cluster(5, id=f"w{i}", name=f"w{i}", grpc_addr="x:1", auth_url="",
                                                    bgp_as=1, region="R", credentials={}, status="active")
                               for i in range(8)))
        # a new master's first write bumps the epoch; every later write of the old epoch is refused
        await store.record_master(7, "c2")
        assert await store.highest_epoch() == 7
        results = await asyncio.gather(*(store.upsert_cluster(5, id=f"old{i}", name=f"old{i}", grpc_addr="x:1",
                                                              auth_url="", bgp_as=1, region="R", credentials={},
                                                              status="active") for i in range(4)),
                                       return_exceptions=True)
        assert all(isinstance(r, Fenced) for r in results), results
        ids = {c.id for c in await store.list_clusters()}
        assert {f"w{i}" for i in range(8)} <= ids and not any(i.startswith("old") for i in ids)
    finally:
        await store.close()


async def test_concurrent_puts_of_one_new_policy_all_succeed(db_url: str) -> None:
    store = await seeded(db_url)
    try:
        rules = [{"trigger": f"cpu_pct>{80 + i}", "action": "notify", "target": "least_loaded"} for i in range(8)]
        await asyncio.gather(*(store.put_policy(5, "same-new-name", r) for r in rules))  # no IntegrityError
        assert (await store.get_policy("same-new-name")).rule in rules
    finally:
        await store.close()
