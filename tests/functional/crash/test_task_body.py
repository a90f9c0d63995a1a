"""The Celery task body's rules against real PostgreSQL, without a broker: epoch, lease, version, reconciler."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from crash_harness import DST, SRC, seed_world

from cnf.agent.agent import upgrade_schema
from cnf.clock import SystemClock
from cnf.config import load_config
from cnf.db.store import FederationStore, make_engine
from cnf.errors import Fenced
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import MigrationKind, MigrationState, VmRef
from cnf.sim.demo import DEMO_CLUSTERS, sim_drivers
from cnf.sim.fabric import SimFabric
from cnf.tasks import migration_tasks
from cnf.tasks.celery_runner import CeleryRunner
from cnf.tasks.migration_tasks import MigrationTaskBody, SimWorldDirectory

pytestmark = [pytest.mark.functional]


async def _setup(pg_url: str, tmp: Path) -> tuple[MigrationTaskBody, FederationStore, str]:
    state = tmp / "world.json"
    seed_world(state, 2)
    cfg = load_config(None, overrides={"embedded": True, "database": {"url": pg_url},
                                       "sim": {"state_file": str(state), "replication_mbps": 1e6},
                                       "tasks": {"runner": "celery", "lease_ttl_s": 5.0}})
    await asyncio.to_thread(upgrade_schema, pg_url)
    store = FederationStore(make_engine(pg_url))
    for cid, name, asn in DEMO_CLUSTERS:
        await store.upsert_cluster(1, id=cid, name=name, grpc_addr="", auth_url=f"sim://{name}", bgp_as=asn,
                                   region="RegionOne", credentials={}, status="active")
    fabric = SimFabric(clock=SystemClock(), state_file=str(state))
    servers = await sim_drivers(fabric, SRC).cloud.list_servers()
    await store.sync_inventory(1, SRC, servers)
    s = servers[0]
    engine = MigrationEngine(SimWorldDirectory(fabric), SystemClock())
    rec = engine.new_record(kind=MigrationKind.COLD, source_cluster_id=SRC, dest_cluster_id=DST, epoch=1,
                            vm=VmRef(id=s.id, name=s.name, ip=s.ip, image=s.image, flavor=s.flavor, vcpus=s.vcpus,
                                     ram_mb=s.ram_mb, host=s.host, project_id=s.project_id, status=s.status))
    await store.create_migration(1, rec)
    body = MigrationTaskBody(config=cfg, store=store, engine=engine, loop=asyncio.get_running_loop(),
                             owner="worker-a:1")
    return body, store, rec.id


@pytest.mark.timeout(120)
async def test_task_body_rules(pg_url: str, tmp_path: Path) -> None:
    body, store, mid = await _setup(pg_url, tmp_path)
    try:
        # one action per task, lease released after it, a version to carry
        delay, version = await body.advance(mid, 1, None)
        assert delay is not None and version is not None
        rec = await store.get_migration(mid)
        assert rec.state == MigrationState.RUNNING and rec.updated_at == version
        # a task overtaken by another chain (stale version) is dropped without acting
        assert await body.advance(mid, 1, version - 1.0) == (None, None)
        assert (await store.get_migration(mid)).updated_at == version
        # another live owner holds the lease: dropped
        assert await store.claim(1, mid, "worker-b:2", 30.0)
        assert await body.advance(mid, 1, version) == (None, None)
        await store.release(1, mid, "worker-b:2")
        # a newer master exists: a task of the old epoch is refused (the claim is fenced)
        await store.record_master(2, DEMO_CLUSTERS[0][0])
        with pytest.raises(Fenced):
            await body.advance(mid, 1, version)
        # the new epoch drives it to the end, one action per call
        for _ in range(200):
            delay, version = await body.advance(mid, 2, version)
            if delay is None:
                break
            await asyncio.sleep(delay)
        rec = await store.get_migration(mid)
        assert rec.state == MigrationState.COMPLETED, rec.error
    finally:
        await store.close()


@pytest.mark.timeout(60)
async def test_reconciler_reenqueues_only_stale_unfinished(pg_url: str, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    body, store, mid = await _setup(pg_url, tmp_path)
    sent: list[tuple[str, int]] = []
    monkeypatch.setattr(migration_tasks, "enqueue", lambda m, e, **_: sent.append((m, e)))
    cfg = body.config.model_copy(update={"tasks": body.config.tasks.model_copy(update={"reconcile_stale_s": 1.0})})
    runner = CeleryRunner(store, cfg, lambda: 1)
    try:
        assert await runner.reconcile_once() == []  # just created: its first task is on its way
        await asyncio.sleep(1.2)
        assert await runner.reconcile_once() == [mid]
        assert await runner.reconcile_once() == []  # not again within reconcile_stale_s
        await store.claim(1, mid, "worker-a:1", 30.0)  # a live worker's heartbeat: not stale
        runner._kicked.clear()
        assert await runner.reconcile_once() == []
        assert sent == [(mid, 1)]
        assert await CeleryRunner(store, cfg, lambda: None).reconcile_once() == []  # not master: nothing
    finally:
        await store.close()


def test_embedded_agent_seeds_a_shared_world_only_when_empty(tmp_path: Path) -> None:
    """``embedded`` + ``sim.state_file``: the first process seeds the demo clouds; later ones load them."""
    from cnf.agent.agent import Agent

    state = tmp_path / "world.json"
    cfg = load_config(None, overrides={"embedded": True, "sim": {"state_file": str(state)}})
    first = Agent(cfg)._embedded_world()
    with first.transaction() as w:
        assert sorted(w.clusters) == sorted(c[0] for c in DEMO_CLUSTERS)
        w.clusters[SRC].servers.clear()  # a change another process made
    again = Agent(cfg)._embedded_world()
    with again.transaction() as w:
        assert sorted(w.clusters) == sorted(c[0] for c in DEMO_CLUSTERS) and not w.clusters[SRC].servers
    assert SimWorldDirectory(again).cluster_ids() == list(again.clusters)
