"""The HypervisorDriver contract, run against the sim (``SimHypervisor``) and real QEMU (``QemuHypervisor``).

Each test gets a ``Backend`` with a ``source`` and a ``dest`` driver (two clouds), a running VM on the source,
a clock to poll with, and a way to kill the destination's QEMU. The QEMU backend (marked ``lab``) boots one tiny
TCG guest per session (``lab.qemu``) and migrates it back and forth: after a completed migration the clouds
swap roles, so the next test starts from wherever the guest now runs. Its drivers are created per test (QEMU
keeps running; the new driver finds the domains on disk), which also exercises driver restarts.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from cnf.clock import Clock, ManualClock, SystemClock
from cnf.errors import CNFError, DriverError, NotFound
from cnf.hypervisor.base import HypervisorDriver, MigrationParams, MigrationProgress

try:
    import lab.qemu as lab_qemu
except ImportError:  # pytest run from elsewhere: the repo root holds the ``lab`` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import lab.qemu as lab_qemu

QEMU_RAM_MB = 128
TERMINAL = ("completed", "failed", "cancelled")


class Backend(Protocol):
    name: str
    source: Any
    dest: Any
    clock: Clock
    ram_mb: int

    async def running_vm(self) -> str: ...
    def kill_incoming(self, vm_id: str) -> None: ...
    def migrated(self) -> None: ...
    def slow_params(self) -> MigrationParams: ...


# --- sim -------------------------------------------------------------------------------------------------------


class SimBackend:
    name = "sim"

    def __init__(self) -> None:
        from cnf.hypervisor.sim import SimHypervisor
        from cnf.sim.fabric import SimFabric

        self.clock = ManualClock()
        self.fabric = SimFabric(clock=self.clock)
        for cid, n in (("a", 1), ("b", 2)):
            self.fabric.add_cluster(cid, name=f"site-{cid}", as_number=65000 + n, next_hop=f"192.0.2.{n}")
            self.fabric.add_host(cid, f"cmp-{cid}")
        self.source: Any = SimHypervisor(self.fabric, "a")
        self.dest: Any = SimHypervisor(self.fabric, "b")
        self.ram_mb = 2048
        self._n = 0

    async def running_vm(self) -> str:
        self._n += 1
        vm = f"vm{self._n}"
        self.fabric.add_vm("a", vm, name=vm, host="cmp-a", flavor="m1.small", ip=f"10.0.0.{self._n}")
        return vm

    def kill_incoming(self, vm_id: str) -> None:
        self.dest.kill_incoming(vm_id)

    def migrated(self) -> None:
        pass

    def slow_params(self) -> MigrationParams:
        return MigrationParams(max_bandwidth_mbps=800)  # 2 GiB at 100 MiB/s: ~20 s of (manual) clock per pass


# --- qemu ------------------------------------------------------------------------------------------------------


class QemuBackend:
    name = "qemu"
    vm = lab_qemu.SHARED_IDLE_VM

    def __init__(self, session: lab_qemu.QemuLabSession) -> None:
        self.session = session
        self.clock = SystemClock()
        self.ram_mb = QEMU_RAM_MB
        self.hosts = session.lab.fresh_hosts()
        self.source: Any = None
        self.dest: Any = None

    async def running_vm(self) -> str:
        where = await self.session.ensure_guest(self.hosts, self.vm, ram_mb=QEMU_RAM_MB)
        self.source = self.hosts[where]
        self.dest = next(hv for cid, hv in self.hosts.items() if cid != where)
        return self.vm

    def kill_incoming(self, vm_id: str) -> None:
        self.dest.kill_incoming(vm_id)

    def migrated(self) -> None:
        self.session.where[self.vm] = self.dest.cluster_id

    def slow_params(self) -> MigrationParams:
        return MigrationParams(max_bandwidth_mbps=80)  # ~60 MB of guest RAM at 10 MB/s: several seconds

    async def cleanup(self) -> None:
        for drv in self.hosts.values():
            for vm in (self.vm, "inc-vm"):
                d = await drv.domain(vm)
                if d is not None and d.state in ("incoming", "shutoff"):
                    await drv.destroy_incoming(vm)
            await drv.close()


@pytest.fixture(scope="session")
def qemu_session() -> Iterator[lab_qemu.QemuLabSession]:
    s = lab_qemu.acquire_shared_lab()
    try:
        yield s
    finally:
        lab_qemu.release_shared_lab()


@pytest.fixture(params=["sim", pytest.param("qemu", marks=pytest.mark.lab)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "sim":
        yield SimBackend()
        return
    b = QemuBackend(request.getfixturevalue("qemu_session"))
    await b.running_vm()  # every test gets source/dest set to where the session's guest runs now
    try:
        yield b
    finally:
        await b.cleanup()


# --- helpers ---------------------------------------------------------------------------------------------------


async def wait_progress(b: Backend, drv: Any, vm: str, statuses: tuple[str, ...],
                        timeout_s: float = 60.0) -> MigrationProgress:
    """Poll ``progress`` until its status is in ``statuses`` (deadline in the backend's clock)."""
    deadline = b.clock.now() + timeout_s
    p = await drv.progress(vm)
    while p.status not in statuses:
        if b.clock.now() > deadline:
            raise AssertionError(f"status never reached {statuses}; last {p}")
        await b.clock.sleep(0.05)
        p = await drv.progress(vm)
    return p


async def wait_state(b: Backend, drv: Any, vm: str, state: str, timeout_s: float = 30.0) -> None:
    deadline = b.clock.now() + timeout_s
    d = await drv.domain(vm)
    while d is None or d.state != state:
        if b.clock.now() > deadline:
            raise AssertionError(f"domain never reached {state}; last {d}")
        await b.clock.sleep(0.05)
        d = await drv.domain(vm)


# --- the contract ----------------------------------------------------------------------------------------------

pytestmark = pytest.mark.timeout(180)


async def test_both_backends_satisfy_the_protocol(backend: Backend) -> None:
    assert isinstance(backend.source, HypervisorDriver)
    assert isinstance(backend.dest, HypervisorDriver)


async def test_absent_domain_and_migration(backend: Backend) -> None:
    assert await backend.dest.domain("absent-vm") is None
    assert (await backend.dest.progress("absent-vm")).status == "none"
    await backend.dest.cancel_migration("absent-vm")  # no-op
    await backend.dest.destroy_incoming("absent-vm")  # no-op
    await backend.dest.destroy_source("absent-vm")  # no-op
    with pytest.raises(NotFound):
        await backend.dest.continue_switchover("absent-vm")


async def test_prepare_incoming_is_idempotent_and_destroyable(backend: Backend) -> None:
    uri = await backend.dest.prepare_incoming("inc-vm", backend.ram_mb, "")
    assert await backend.dest.prepare_incoming("inc-vm", backend.ram_mb, "") == uri
    d = await backend.dest.domain("inc-vm")
    assert d is not None and d.state == "incoming" and d.ram_mb == backend.ram_mb
    await backend.dest.destroy_incoming("inc-vm")
    await backend.dest.destroy_incoming("inc-vm")
    assert await backend.dest.domain("inc-vm") is None


async def test_live_migration_stops_in_pre_switchover_then_completes(backend: Backend) -> None:
    vm = await backend.running_vm()
    uri = await backend.dest.prepare_incoming(vm, backend.ram_mb, "")
    await backend.source.start_migration(vm, uri, MigrationParams())
    await backend.source.start_migration(vm, uri, MigrationParams())  # already running: no-op
    p = await wait_progress(backend, backend.source, vm, ("pre-switchover", *TERMINAL))
    assert p.status == "pre-switchover", p
    assert p.passes >= 1 and p.total_bytes > 0
    # the switchover window: source vCPUs stopped, destination not yet running
    src_dom = await backend.source.domain(vm)
    dst_dom = await backend.dest.domain(vm)
    assert src_dom is not None and src_dom.state == "paused"
    assert dst_dom is not None and dst_dom.state == "incoming"
    await backend.source.continue_switchover(vm)
    done = await wait_progress(backend, backend.source, vm, TERMINAL)
    assert done.status == "completed", done
    assert done.downtime_ms is not None  # QEMU 7.2 sometimes reports 0 here: the pause is measured from events
    await wait_state(backend, backend.dest, vm, "running")
    src_after = await backend.source.domain(vm)
    assert src_after is None or src_after.state != "running"
    await backend.source.continue_switchover(vm)  # already completed: no-op
    backend.migrated()
    await backend.source.destroy_source(vm)
    await backend.source.destroy_source(vm)
    assert await backend.source.domain(vm) is None
    await backend.dest.destroy_incoming(vm)  # the guest runs there now: compensation must not touch it
    d = await backend.dest.domain(vm)
    assert d is not None and d.state == "running"


async def test_destroy_source_refuses_a_running_domain(backend: Backend) -> None:
    vm = await backend.running_vm()
    with pytest.raises(DriverError):
        await backend.source.destroy_source(vm)
    d = await backend.source.domain(vm)
    assert d is not None and d.state == "running"


async def test_cancel_in_pre_switchover_leaves_source_running(backend: Backend) -> None:
    vm = await backend.running_vm()
    uri = await backend.dest.prepare_incoming(vm, backend.ram_mb, "")
    await backend.source.start_migration(vm, uri, MigrationParams())
    p = await wait_progress(backend, backend.source, vm, ("pre-switchover", *TERMINAL))
    assert p.status == "pre-switchover", p
    await backend.source.cancel_migration(vm)
    await wait_state(backend, backend.source, vm, "running")
    assert (await backend.source.progress(vm)).status == "cancelled"
    await backend.source.cancel_migration(vm)  # finished: no-op
    await backend.dest.destroy_incoming(vm)
    assert await backend.dest.domain(vm) is None


async def test_cancel_while_copying_leaves_source_running(backend: Backend) -> None:
    vm = await backend.running_vm()
    uri = await backend.dest.prepare_incoming(vm, backend.ram_mb, "")
    await backend.source.start_migration(vm, uri, backend.slow_params())
    p = await backend.source.progress(vm)
    assert p.status in ("setup", "active"), p
    with pytest.raises(CNFError) as exc:  # a bad convergence action names the field
        await backend.source.apply_convergence(vm, "go-faster")
    assert exc.value.details.get("field") == "action"
    await backend.source.cancel_migration(vm)
    await wait_state(backend, backend.source, vm, "running")
    assert (await backend.source.progress(vm)).status == "cancelled"
    await backend.dest.destroy_incoming(vm)


async def test_destination_dying_mid_copy_fails_the_migration_and_source_keeps_running(backend: Backend) -> None:
    vm = await backend.running_vm()
    uri = await backend.dest.prepare_incoming(vm, backend.ram_mb, "")
    await backend.source.start_migration(vm, uri, backend.slow_params())
    assert (await backend.source.progress(vm)).status in ("setup", "active")
    backend.kill_incoming(vm)
    p = await wait_progress(backend, backend.source, vm, TERMINAL)
    assert p.status == "failed", p
    assert p.error, "a failed migration says why"
    d = await backend.source.domain(vm)
    assert d is not None and d.state == "running"
    await backend.source.cancel_migration(vm)  # failed: no-op, source stays running
    await backend.dest.destroy_incoming(vm)
    assert await backend.dest.domain(vm) is None
