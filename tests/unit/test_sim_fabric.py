"""The shared sim world: several SimFabric instances on one state file behave as one world."""

from __future__ import annotations

import asyncio
from pathlib import Path

from cnf.clock import SystemClock
from cnf.migration.engine import EngineSettings, MigrationEngine
from cnf.migration.model import MigrationKind, MigrationState, VmRef
from cnf.ports import StaticDirectory
from cnf.sim.demo import DEMO_CLUSTERS, demo_fabric, sim_drivers
from cnf.sim.fabric import FaultRule, SimFabric

SRC, DST = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]


def seeded(path: Path) -> SimFabric:
    world = demo_fabric(SystemClock())
    world.state_file = str(path)
    with world.transaction():  # no file yet: nothing to load, and the commit writes the seeded world
        pass
    return world


async def test_two_instances_on_one_file_run_a_migration_together(tmp_path: Path) -> None:
    state = tmp_path / "world.json"
    seeded(state)
    a = SimFabric(SystemClock(), state_file=str(state))
    b = SimFabric(SystemClock(), state_file=str(state))
    a.replication_mbps = b.replication_mbps = 100_000.0
    directory = StaticDirectory({SRC: sim_drivers(a, SRC), DST: sim_drivers(b, DST)})
    engine = MigrationEngine(directory, SystemClock(), EngineSettings(call_timeout_s=5))
    srv = a.clusters[SRC].servers[next(iter(a.clusters[SRC].servers))]
    vm = VmRef(id=srv.id, name=srv.name, ip=srv.ip, image=srv.image, flavor=srv.flavor, vcpus=srv.vcpus,
               ram_mb=srv.ram_mb, host=srv.host)
    rec = engine.new_record(kind=MigrationKind.COLD, vm=vm, source_cluster_id=SRC, dest_cluster_id=DST)
    for _ in range(2000):
        adv = await engine.advance(rec)
        if adv.delay_s is None:
            break
        await asyncio.sleep(min(adv.delay_s, 0.05))
    assert rec.state == MigrationState.COMPLETED, rec.error
    observer = SimFabric(SystemClock(), state_file=str(state))
    with observer.transaction():
        assert observer.running_clusters(vm.id) == [DST]
        assert observer.primary_clusters(vm.image) == [DST]
        assert all(v == 1 for v in observer.effects.values())


async def test_a_fault_injected_from_outside_reaches_the_driver(tmp_path: Path) -> None:
    state = tmp_path / "world.json"
    seeded(state)
    test_side = SimFabric(SystemClock(), state_file=str(state))
    with test_side.transaction() as w:
        w.faults.add(FaultRule(port="cloud", method="list_servers", nth=1, kind="unavailable"))
    agent_side = SimFabric(SystemClock(), state_file=str(state))
    from cnf.errors import DriverUnavailable
    from cnf.openstack.sim import SimCloud

    cloud = SimCloud(agent_side, SRC)
    try:
        await cloud.list_servers()
        raise AssertionError("the injected fault did not fire")
    except DriverUnavailable:
        pass
    assert len(await cloud.list_servers()) == 4
    await asyncio.sleep(0)  # let the scheduled save run
    with test_side.transaction() as w:
        assert w.calls[(SRC, "cloud", "list_servers")] == 2
