"""The crash matrix: kill what can die at every step boundary; migrations still end in one cloud, once.

Generated from ``STEP_TABLES`` (a new step is covered automatically):
- ``worker_kill`` at EVERY distinct step of both kinds (a step both tables share, same name and functions,
  runs once — under the live kind): the test drives the migration to the start of
  step k itself (as "the previous worker"), hangs the first driver call of step k, starts a Celery worker,
  waits until that worker is inside the call, SIGKILLs its whole process group, clears the fault, and starts
  a new worker. The task comes back through the reconciler (stale heartbeat) or Redis redelivery.
- ``master_kill``, ``pg_drop`` and ``redis_restart`` at one boundary per kind each, chosen so that together
  they hit the landmarks: the first step, the steps just before, at and after the point of no return, the
  middle of the reversible part and the last step (``_spread``). Budget: the suite stays near 5 minutes.

Every cell asserts: the migration ends ``completed`` (or ``failed`` before the point of no return, fully
compensated), the VM runs in exactly one cloud with its disk primary and its /32 announced there only, every
side effect on that VM happened at most once (the sim's effect counters), and the DB row is terminal, unowned,
with the VM unlocked and the migration not duplicated.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
from crash_harness import DST, SRC, CrashWorld, wait_for

from cnf.migration.model import MigrationKind
from cnf.migration.steps import STEP_TABLES, point_of_no_return
from cnf.sim.fabric import FaultRule

pytestmark = [pytest.mark.functional]


def _worker_kill_cells() -> list[tuple[str, MigrationKind, int]]:
    """Every distinct step of the tables: a step shared by both kinds (same name, same functions) once."""
    seen: set[str] = set()
    cells = []
    for kind in (MigrationKind.LIVE, MigrationKind.COLD):
        for k, step in enumerate(STEP_TABLES[kind]):
            if step.name not in seen:
                seen.add(step.name)
                cells.append(("worker_kill", kind, k))
    return cells


def _spread(fault: str, kind: MigrationKind) -> int:
    """One boundary per fault and kind, different per fault, so together they cover the tables' landmarks."""
    last, ponr = len(STEP_TABLES[kind]) - 1, point_of_no_return(kind)
    live = kind == MigrationKind.LIVE
    pick = {"master_kill": ponr if live else 0, "pg_drop": ponr - 1 if live else last,
            "redis_restart": ponr + 1 if live else ponr // 2}[fault]
    return min(max(0, pick), last)


CELLS = _worker_kill_cells() + [(fault, kind, _spread(fault, kind))
                                for fault in ("master_kill", "pg_drop", "redis_restart") for kind in MigrationKind]


def _id(cell: tuple[str, MigrationKind, int]) -> str:
    fault, kind, k = cell
    return f"{fault}-{kind}-{k}-{STEP_TABLES[kind][k].name}"


def _wait_terminal(world: CrashWorld, migration_id: str, timeout_s: float = 90.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        m = world.show(migration_id)
        return m if m["state"] in ("completed", "failed", "aborted", "needs_operator") else None

    return dict(wait_for(done, timeout_s, f"migration {migration_id} to end", interval=0.2,
                         on_timeout=lambda: f"{world.show(migration_id)}\n{world.logs()}"))


def _assert_outcome(world: CrashWorld, vm: str, migration_id: str, view: dict[str, Any]) -> None:
    state = view["state"]
    assert state in ("completed", "failed"), (state, view.get("error"))
    if state == "failed":
        assert not view["point_of_no_return_passed"], "failed after the point of no return"
    with world.fabric.transaction() as w:
        running = w.running_clusters(vm)
        image = w.clusters[SRC].servers[vm].image if vm in w.clusters[SRC].servers else f"{vm}_disk"
        primaries = w.primary_clusters(image)
        ip = next(c.servers[vm].ip for c in w.clusters.values() if vm in c.servers)
        announcing = w.announcing_clusters(f"{ip}/32")
        effects = {k: v for k, v in w.effects.items() if k[3] in (vm, image, f"{ip}/32") or k[3].startswith(vm)}
        where = [cid for cid, c in w.clusters.items() if vm in c.servers]
    owner = DST if state == "completed" else SRC
    assert running == [owner], f"VM runs in {running}, expected only {owner}"
    assert primaries == [owner], f"disk primary in {primaries}"
    assert announcing == [owner], f"/32 announced by {announcing}"
    assert where == [owner], f"server record in {where}"
    repeated = {k: v for k, v in effects.items() if v > 1}
    assert not repeated, f"side effects repeated: {repeated}"
    assert effects, "no side effect recorded at all"
    asyncio.run(_assert_db(world, vm, migration_id, owner))


async def _assert_db(world: CrashWorld, vm: str, migration_id: str, owner_cluster: str) -> None:
    from sqlalchemy import select

    from cnf.db.models import MigrationRow, VmRow
    from cnf.db.store import FederationStore, make_engine

    store = FederationStore(make_engine(world.pg_url))
    try:
        async with store.read() as s:
            rows = list((await s.execute(select(MigrationRow).where(MigrationRow.vm_id == vm))).scalars())
            vm_row = await s.get(VmRow, vm)
        assert [r.id for r in rows] == [migration_id], "the migration record was lost or duplicated"
        assert rows[0].owner is None and rows[0].lease_until is None, f"lease left held by {rows[0].owner}"
        assert vm_row is not None and vm_row.migration_id is None, "the VM is still locked"
        assert vm_row.cluster_id == owner_cluster
        events = [e.kind for e in await store.events(migration_id)]
        assert events[0] == "requested" and events[-1] in ("completed", "failed")
    finally:
        await store.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("cell", CELLS, ids=[_id(c) for c in CELLS])
def test_crash_matrix(crash_world: CrashWorld, cell: tuple[str, MigrationKind, int]) -> None:
    world = crash_world
    fault, kind, k = cell
    world.clear_faults()
    if world.agent is None or not world.agent.alive():
        world.start_agent()
    world.ensure_workers(2)
    vm, rec = asyncio.run(world.prepare(kind, k))
    mid = rec.id
    assert not rec.state.terminal, (rec.state, rec.error)
    key = asyncio.run(world.first_call_of_step(rec, k))

    if fault == "worker_kill":
        nth = world.calls(key) + 1
        world.add_fault(FaultRule(port=key[1], method=key[2], cluster_id=key[0], nth=nth, kind="hang"))
        world.enqueue(mid)
        wait_for(lambda: world.calls(key) >= nth, 60, f"a worker to enter {key} of step {k}", on_timeout=world.logs)
        owner = wait_for(lambda: world.lease_owner(mid), 10, "the worker's lease on the row")
        victim = world.worker_of(owner)
        assert world.show(mid)["step"] == STEP_TABLES[kind][k].name
        victim.kill()  # SIGKILL mid-step: the hung call, its lease and its unacked task are abandoned
        world.clear_faults()
        world.start_worker()
    elif fault == "master_kill":
        world.kill_agent()
        world.enqueue(mid)  # the master had submitted it before dying; workers drive on without a master
        time.sleep(0.5)
        world.start_agent()
    elif fault in ("pg_drop", "redis_restart"):
        before = world.calls(key)
        world.enqueue(mid)
        wait_for(lambda: world.calls(key) > before, 60, f"a worker to enter step {k}", on_timeout=world.logs)
        if fault == "pg_drop":
            assert world.pg_terminate() > 0
        else:
            world.redis.restart()  # empty: every queued task is lost; the reconciler re-enqueues
    view = _wait_terminal(world, mid)
    _assert_outcome(world, vm, mid, view)
