"""Every port method through CNFPeer over mTLS, and whole migrations whose cloud-local steps run at the owner.

The migrations here are driven step by step by the test (the engine's order from DESIGN.md section 4),
through ``RemoteCloud``/``RemoteStorage``/``RemoteBgp``/``RemoteHypervisor`` only. Each assertion on
"who executed what" reads the serving agent's own call record, so a step executed by the wrong
agent (or in-process by the caller) fails the test.
"""

from __future__ import annotations

import pytest
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.errors import DriverError, IllegalTransition, InvalidInput, NotFound
from cnf.hypervisor.base import MigrationParams
from cnf.openstack.base import ServerSpec
from cnf.ports import ClusterDrivers
from cnf.sim.demo import sim_drivers

A, B, C = CLUSTERS

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


def _ops(fed: Federation, cluster_id: str, *, mutating: bool = True) -> list[str]:
    return [r.operation for r in fed.servers[cluster_id].recent_calls
            if r.outcome == "ok" and (r.epoch is not None) == mutating]


async def test_reads_through_the_peer_equal_local_reads(federation: Federation) -> None:
    remote = await federation.remote(A)
    local = sim_drivers(federation.fabric, A)
    vm = (await local.cloud.list_servers())[0]
    assert remote.cluster_id == A
    assert remote.bgp.as_number == local.bgp.as_number
    assert remote.bgp.default_next_hop == local.bgp.default_next_hop
    assert await remote.cloud.list_servers() == await local.cloud.list_servers()
    assert await remote.cloud.get_server(vm.id) == vm
    assert await remote.cloud.get_server("no-such-vm") is None
    assert await remote.cloud.list_hosts() == await local.cloud.list_hosts()
    assert await remote.cloud.list_flavors() == await local.cloud.list_flavors()
    assert await remote.cloud.metrics() == await local.cloud.metrics()
    assert await remote.storage.status(vm.image) == await local.storage.status(vm.image)
    assert await remote.storage.status("absent-image") == await local.storage.status("absent-image")
    assert await remote.storage.peer_reachable() is await local.storage.peer_reachable()
    prefix = f"{vm.ip}/32"
    assert await remote.bgp.announced(prefix) is True
    assert await remote.bgp.fabric_best_path(prefix) == await local.bgp.fabric_best_path(prefix)
    assert await remote.bgp.fabric_best_path("10.255.255.1/32") is None
    assert await remote.bgp.peers() == await local.bgp.peers()
    assert await remote.hypervisor.domain(vm.id) == await local.hypervisor.domain(vm.id)
    assert await remote.hypervisor.domain("no-such-vm") is None
    assert (await remote.hypervisor.progress(vm.id)).status == "none"
    # the reads ran at A's agent, as the master, and nowhere else
    assert all(r.caller == MASTER for r in federation.servers[A].recent_calls)
    assert federation.servers[B].recent_calls == [] and federation.servers[C].recent_calls == []


async def test_errors_cross_the_wire_with_code_and_details(federation: Federation) -> None:
    remote = await federation.remote(A)
    with pytest.raises(NotFound) as nf:
        await remote.cloud.stop_server("no-such-vm")
    assert nf.value.details["vm_id"] == "no-such-vm"
    with pytest.raises(InvalidInput) as bad:
        await remote.bgp.announce("10.0.0.0/8")
    assert bad.value.field == "prefix"
    vm = (await remote.cloud.list_servers())[0]
    with pytest.raises(DriverError) as de:  # mirroring not enabled yet: a plain, retryable DriverError
        await remote.storage.create_mirror_snapshot(vm.image)
    assert type(de.value) is DriverError and de.value.retryable
    assert de.value.details["image"] == vm.image
    with pytest.raises(IllegalTransition):  # B's copy does not exist as primary: refused, not retryable
        await remote.storage.enable_mirroring(vm.image)
        await (await federation.remote(B)).storage.create_mirror_snapshot(vm.image)


async def _wait_in_sync(fed: Federation, dst: ClusterDrivers, image: str) -> None:
    for _ in range(200):
        if (await dst.storage.status(image)).in_sync:
            return
        fed.clock.advance(0.5)
    raise AssertionError(f"{image} never in sync at {dst.cluster_id}")


async def _promote_when_arrived(fed: Federation, dst: ClusterDrivers, image: str) -> int:
    """The engine's promote step: retry while the demotion is in flight (retryable DriverError)."""
    refused = 0
    for _ in range(200):
        try:
            await dst.storage.promote(image)
            return refused
        except DriverError as err:
            assert err.retryable, err
            refused += 1
            fed.clock.advance(0.05)
    raise AssertionError("promote never accepted")


async def test_live_migration_each_step_runs_at_the_owning_agent(federation: Federation) -> None:
    src, dst = await federation.remote(A), await federation.remote(B)
    vm = (await src.cloud.list_servers())[0]
    prefix = f"{vm.ip}/32"
    # PREFLIGHT
    assert vm.status == "ACTIVE" and await dst.cloud.get_server(vm.id) is None
    assert (await dst.cloud.metrics()).free_vcpus >= vm.vcpus
    # DISK
    assert await src.storage.enable_mirroring(vm.image) is True
    await _wait_in_sync(federation, dst, vm.image)
    # MEMORY
    spec = ServerSpec(vm_id=vm.id, name=vm.name, flavor=vm.flavor, vcpus=vm.vcpus, ram_mb=vm.ram_mb, ip=vm.ip,
                      image=vm.image, migration_id="mig-live-1")
    assert (await dst.cloud.create_receiver(spec)).status == "BUILD"
    uri = await dst.hypervisor.prepare_incoming(vm.id, vm.ram_mb, vm.image)
    assert await dst.hypervisor.prepare_incoming(vm.id, vm.ram_mb, vm.image) == uri  # idempotent over the wire
    await src.hypervisor.start_migration(vm.id, uri, MigrationParams(downtime_limit_ms=300))
    for _ in range(500):
        progress = await src.hypervisor.progress(vm.id)
        if progress.status != "active":
            break
        federation.clock.advance(0.5)
    assert progress.status == "pre-switchover", progress
    # CUTOVER inside pre-switchover: final snapshot, demote at the source, promote at the destination
    await src.storage.create_mirror_snapshot(vm.image)
    await src.storage.demote(vm.image)
    await _promote_when_arrived(federation, dst, vm.image)
    await src.hypervisor.continue_switchover(vm.id)
    done = await src.hypervisor.progress(vm.id)
    assert done.status == "completed" and done.downtime_ms is not None
    # BGP: destination announces, then the source withdraws
    await dst.bgp.announce(prefix)
    await src.bgp.withdraw(prefix)
    assert (await dst.bgp.fabric_best_path(prefix)).origin_as == dst.bgp.as_number  # type: ignore[union-attr]
    # CLEANUP
    assert (await dst.cloud.activate_receiver(vm.id)).status == "ACTIVE"
    await src.hypervisor.destroy_source(vm.id)
    await src.cloud.retire_server(vm.id)

    fab = federation.fabric
    assert fab.running_clusters(vm.id) == [B]
    assert fab.primary_clusters(vm.image) == [B]
    assert fab.announcing_clusters(prefix) == [B]
    assert _ops(federation, A) == ["storage.enable_mirroring", "hypervisor.start_migration",
                                   "storage.create_mirror_snapshot", "storage.demote",
                                   "hypervisor.continue_switchover", "bgp.withdraw", "hypervisor.destroy_source",
                                   "cloud.retire_server"]
    assert _ops(federation, B) == ["cloud.create_receiver", "hypervisor.prepare_incoming",
                                   "hypervisor.prepare_incoming", "storage.promote", "bgp.announce",
                                   "cloud.activate_receiver"]
    assert _ops(federation, C) == [] and _ops(federation, C, mutating=False) == []
    assert {r.caller for s in federation.servers.values() for r in s.recent_calls} == {MASTER}
    assert {r.epoch for r in federation.servers[A].recent_calls if r.epoch is not None} == {10}


async def test_cold_migration_each_step_runs_at_the_owning_agent(federation: Federation) -> None:
    src, dst = await federation.remote(B), await federation.remote(C)
    vm = (await src.cloud.list_servers())[1]
    prefix = f"{vm.ip}/32"
    await src.cloud.stop_server(vm.id)
    await src.storage.enable_mirroring(vm.image)
    await _wait_in_sync(federation, dst, vm.image)
    await src.storage.demote(vm.image)
    await _promote_when_arrived(federation, dst, vm.image)
    spec = ServerSpec(vm_id=vm.id, name=vm.name, flavor=vm.flavor, vcpus=vm.vcpus, ram_mb=vm.ram_mb, ip=vm.ip,
                      image=vm.image, migration_id="mig-cold-1")
    await dst.cloud.create_receiver(spec)
    booted = await dst.cloud.boot_receiver(vm.id)
    assert booted.status == "ACTIVE"
    await dst.bgp.announce(prefix)
    await src.bgp.withdraw(prefix)
    await src.cloud.retire_server(vm.id)

    fab = federation.fabric
    assert fab.running_clusters(vm.id) == [C]
    assert fab.primary_clusters(vm.image) == [C]
    assert fab.announcing_clusters(prefix) == [C]
    assert await src.cloud.get_server(vm.id) is None
    assert _ops(federation, B) == ["cloud.stop_server", "storage.enable_mirroring", "storage.demote",
                                   "bgp.withdraw", "cloud.retire_server"]
    assert _ops(federation, C) == ["storage.promote", "cloud.create_receiver", "cloud.boot_receiver",
                                   "bgp.announce"]
    assert _ops(federation, A) == []


async def test_compensation_steps_over_the_wire(federation: Federation) -> None:
    """The undo side of the step table: receiver and incoming domain removed, source keeps running."""
    src, dst = await federation.remote(A), await federation.remote(C)
    vm = (await src.cloud.list_servers())[2]
    spec = ServerSpec(vm_id=vm.id, name=vm.name, flavor=vm.flavor, vcpus=vm.vcpus, ram_mb=vm.ram_mb, ip=vm.ip,
                      image=vm.image, migration_id="mig-undo-1")
    await dst.cloud.create_receiver(spec)
    uri = await dst.hypervisor.prepare_incoming(vm.id, vm.ram_mb, vm.image)
    await src.storage.enable_mirroring(vm.image)
    await src.hypervisor.start_migration(vm.id, uri, MigrationParams())
    await src.hypervisor.apply_convergence(vm.id, "auto_converge")
    await src.hypervisor.cancel_migration(vm.id)
    await dst.hypervisor.destroy_incoming(vm.id)
    await dst.cloud.delete_receiver(vm.id)
    await src.storage.disable_mirroring(vm.image)
    await src.cloud.start_server(vm.id)  # idempotent: already running
    assert federation.fabric.running_clusters(vm.id) == [A]
    assert await dst.cloud.get_server(vm.id) is None
    assert await dst.hypervisor.domain(vm.id) is None
    assert (await src.hypervisor.domain(vm.id)).state == "running"  # type: ignore[union-attr]
