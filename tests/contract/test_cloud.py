"""The CloudDriver contract, run against the sim (``SimCloud``) and real OpenStack (``OpenStackCloud``).

A ``Backend`` knows how to put a VM into its cloud (sim: the fabric; OpenStack: a real Nova server
booted through openstacksdk, ``networks='none'`` with its fixed IP in metadata ``cnf_ip`` — the lab's
agent-less Neutron cannot bind ports) and how to build a driver whose cloud is down. The OpenStack backend needs the lab
(marked ``lab``): two real clouds started once per session by ``lab.openstack`` (shared with
``tests/lab/openstack``); the contract uses cloud 1.
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from cnf.clock import ManualClock
from cnf.errors import DriverUnavailable, NotFound
from cnf.openstack.base import CloudDriver, ServerSpec

# the repo root holds the ``lab`` package; tests/lab (no __init__.py) would otherwise be picked up as a
# namespace package ``lab`` when the root is not on sys.path (pytest puts tests/ there)
_REPO = str(Path(__file__).resolve().parents[2])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
if getattr(sys.modules.get("lab"), "__file__", None) is None:
    for _name in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        del sys.modules[_name]
import lab.openstack as lab_openstack  # noqa: E402

FLAVOR = ("m1.tiny", 1, 512)
_ips = itertools.count(10)


def next_ip() -> str:
    return f"10.20.{next(_ips) // 250}.{next(_ips) % 250 + 2}"


class Backend(Protocol):
    name: str
    cloud: CloudDriver

    async def seed_vm(self, name: str, ip: str) -> str: ...
    def down_cloud(self) -> CloudDriver: ...
    async def records_for_migration(self, migration_id: str) -> int: ...


# --- sim ---------------------------------------------------------------------------------------------------


class SimBackend:
    name = "sim"

    def __init__(self) -> None:
        from cnf.openstack.sim import SimCloud
        from cnf.sim.fabric import SimFabric

        self.fabric = SimFabric(clock=ManualClock())
        self.fabric.add_cluster("c1", name="cloud-1", as_number=65001, next_hop="127.0.0.1")
        self.fabric.add_host("c1", "c1-compute", vcpus=16, ram_mb=32768)
        self.cloud = SimCloud(self.fabric, "c1")

    async def seed_vm(self, name: str, ip: str) -> str:
        vm_id = str(uuid.uuid4())
        self.fabric.add_vm("c1", vm_id, name=name, host="c1-compute", flavor=FLAVOR[0], ip=ip)
        return vm_id

    def down_cloud(self) -> CloudDriver:
        from cnf.openstack.sim import SimCloud

        self.fabric.add_cluster("down", name="down", as_number=65009, next_hop="127.0.0.9")
        self.fabric.faults.down.add(("down", "cloud"))
        return SimCloud(self.fabric, "down")

    async def records_for_migration(self, migration_id: str) -> int:
        return sum(1 for s in self.fabric.cluster("c1").servers.values() if s.receiver_for == migration_id)


# --- real OpenStack ------------------------------------------------------------------------------------------


class OpenStackBackend:
    name = "openstack"

    def __init__(self, lab: Any) -> None:
        from cnf.openstack.client import CloudCredentials, OpenStackCloud

        self.lab_cloud = lab.clouds[0]
        self.creds = CloudCredentials(**self.lab_cloud.credentials())
        self.cloud = OpenStackCloud("lab1", self.creds, wait_timeout=180, **self.lab_cloud.driver_options())
        self.conn = lab_openstack._connect(self.lab_cloud)
        self.created: list[str] = []
        self.extra: list[Any] = []

    async def seed_vm(self, name: str, ip: str) -> str:
        def boot() -> str:
            flavor = self.conn.compute.find_flavor(FLAVOR[0], ignore_missing=False)
            image = self.conn.image.find_image(lab_openstack.IMAGE, ignore_missing=False)
            s = self.conn.compute.create_server(name=name, flavor_id=flavor.id, image_id=image.id, networks="none",
                                                metadata={"cnf_ip": ip})
            self.created.append(s.id)
            self.conn.compute.wait_for_server(s, status="ACTIVE", wait=180, interval=0.5)
            return str(s.id)

        return await asyncio.to_thread(boot)

    def down_cloud(self) -> CloudDriver:
        from cnf.openstack.client import CloudCredentials, OpenStackCloud

        (port,) = lab_openstack.free_ports(1)  # nothing listens there
        creds = CloudCredentials(**{**self.lab_cloud.credentials(), "auth_url": f"http://127.0.0.1:{port}/v3"})
        cloud = OpenStackCloud("down", creds, call_timeout=5.0)
        self.extra.append(cloud)
        return cloud

    async def records_for_migration(self, migration_id: str) -> int:
        from cnf.openstack.client import migration_tag

        def count() -> int:
            return len(list(self.conn.compute.servers(all_projects=True, tags=migration_tag(migration_id))))

        return await asyncio.to_thread(count)

    def cleanup(self) -> None:
        """Delete every server the test left behind (receivers and seeded VMs)."""
        for s in list(self.conn.compute.servers(all_projects=True)):
            self.conn.compute.delete_server(s, ignore_missing=True)
        for s in list(self.conn.compute.servers(all_projects=True)):
            self.conn.compute.wait_for_delete(s, wait=120, interval=0.5)
        if self.lab_cloud.neutron_venv is not None:
            for p in list(self.conn.network.ports()):
                if (p.name or "").startswith("cnf-receiver-"):
                    self.conn.network.delete_port(p, ignore_missing=True)
        self.conn.close()
        self.cloud.close()
        for c in self.extra:
            c.close()


@pytest.fixture(params=["sim", pytest.param("openstack", marks=pytest.mark.lab)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "sim":
        yield SimBackend()
        return
    b = OpenStackBackend(request.getfixturevalue("openstack_lab"))
    try:
        yield b
    finally:
        await asyncio.to_thread(b.cleanup)


def spec(vm_id: str, ip: str, migration_id: str | None = None, name: str = "rcv") -> ServerSpec:
    return ServerSpec(vm_id=vm_id, name=name, flavor=FLAVOR[0], vcpus=FLAVOR[1], ram_mb=FLAVOR[2], ip=ip,
                      image=f"{vm_id}_disk", migration_id=migration_id or str(uuid.uuid4()))


# --- inventory -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(300, func_only=True)
async def test_inventory_shows_a_vm_with_its_shape_and_ip(backend: Backend) -> None:
    ip = next_ip()
    vm_id = await backend.seed_vm("inv-vm", ip)
    listed = {s.id: s for s in await backend.cloud.list_servers()}
    assert vm_id in listed
    s = listed[vm_id]
    assert (s.status, s.ip, s.flavor, s.vcpus, s.ram_mb) == ("ACTIVE", ip, *FLAVOR)
    assert s.host
    got = await backend.cloud.get_server(vm_id)
    assert got is not None and got.id == vm_id and got.ip == ip
    assert await backend.cloud.get_server(str(uuid.uuid4())) is None


@pytest.mark.timeout(120, func_only=True)
async def test_hosts_and_flavors(backend: Backend) -> None:
    hosts = await backend.cloud.list_hosts()
    assert hosts and all(h.vcpus > 0 and h.ram_mb > 0 and h.name for h in hosts)
    flavors = {f.name: f for f in await backend.cloud.list_flavors()}
    assert (flavors[FLAVOR[0]].vcpus, flavors[FLAVOR[0]].ram_mb) == FLAVOR[1:]


@pytest.mark.timeout(300, func_only=True)
async def test_metrics_count_a_new_vm(backend: Backend) -> None:
    before = await backend.cloud.metrics()
    await backend.seed_vm("metrics-vm", next_ip())
    after = await backend.cloud.metrics()
    assert after.vm_count == before.vm_count + 1
    assert after.vcpus_used == before.vcpus_used + FLAVOR[1]
    assert after.ram_mb_used == before.ram_mb_used + FLAVOR[2]
    assert after.vcpus == before.vcpus and after.free_vcpus == before.free_vcpus - FLAVOR[1]
    assert 0.0 <= after.cpu_pct <= 100.0 and 0.0 < after.mem_pct <= 100.0


# --- power ---------------------------------------------------------------------------------------------------


@pytest.mark.timeout(300, func_only=True)
async def test_stop_start_are_idempotent(backend: Backend) -> None:
    vm_id = await backend.seed_vm("power-vm", next_ip())
    await backend.cloud.stop_server(vm_id)
    assert (await backend.cloud.get_server(vm_id)).status == "SHUTOFF"  # type: ignore[union-attr]
    await backend.cloud.stop_server(vm_id)  # second stop: no error, no change
    assert (await backend.cloud.get_server(vm_id)).status == "SHUTOFF"  # type: ignore[union-attr]
    await backend.cloud.start_server(vm_id)
    assert (await backend.cloud.get_server(vm_id)).status == "ACTIVE"  # type: ignore[union-attr]
    await backend.cloud.start_server(vm_id)
    assert (await backend.cloud.get_server(vm_id)).status == "ACTIVE"  # type: ignore[union-attr]


@pytest.mark.timeout(120, func_only=True)
async def test_stop_unknown_server_is_not_found(backend: Backend) -> None:
    with pytest.raises(NotFound):
        await backend.cloud.stop_server(str(uuid.uuid4()))


# --- receivers -----------------------------------------------------------------------------------------------


@pytest.mark.timeout(300, func_only=True)
async def test_live_receiver_is_created_once_then_activated(backend: Backend) -> None:
    vm_id, ip, mig = str(uuid.uuid4()), next_ip(), str(uuid.uuid4())
    r = await backend.cloud.create_receiver(spec(vm_id, ip, mig))
    assert (r.id, r.ip) == (vm_id, ip)
    assert r.status != "ACTIVE"  # not running until activated
    assert r.metadata.get("cnf:receiver") == mig
    assert vm_id not in {s.id for s in await backend.cloud.list_servers()}  # a pending receiver is no VM yet
    again = await backend.cloud.create_receiver(spec(vm_id, ip, mig))
    assert again.id == vm_id
    assert await backend.records_for_migration(mig) == 1  # idempotent: one record, not two
    active = await backend.cloud.activate_receiver(vm_id)
    assert (active.id, active.status, active.ip) == (vm_id, "ACTIVE", ip)
    assert not active.metadata.get("cnf:receiver")
    assert (await backend.cloud.activate_receiver(vm_id)).status == "ACTIVE"  # idempotent
    listed = {s.id: s for s in await backend.cloud.list_servers()}
    assert listed[vm_id].status == "ACTIVE" and listed[vm_id].ip == ip


@pytest.mark.timeout(300, func_only=True)
async def test_cold_receiver_boots(backend: Backend) -> None:
    vm_id, ip = str(uuid.uuid4()), next_ip()
    await backend.cloud.create_receiver(spec(vm_id, ip))
    booted = await backend.cloud.boot_receiver(vm_id)
    assert (booted.id, booted.status, booted.ip) == (vm_id, "ACTIVE", ip)
    assert (await backend.cloud.boot_receiver(vm_id)).status == "ACTIVE"  # idempotent


@pytest.mark.timeout(300, func_only=True)
async def test_delete_receiver_removes_only_receivers(backend: Backend) -> None:
    vm_id, ip = str(uuid.uuid4()), next_ip()
    await backend.cloud.create_receiver(spec(vm_id, ip))
    await backend.cloud.delete_receiver(vm_id)
    assert await backend.cloud.get_server(vm_id) is None
    await backend.cloud.delete_receiver(vm_id)  # absent: no error
    real = await backend.seed_vm("not-a-receiver", next_ip())
    await backend.cloud.delete_receiver(real)  # compensation with a wrong id never kills a VM
    survivor = await backend.cloud.get_server(real)
    assert survivor is not None and survivor.status == "ACTIVE"


@pytest.mark.timeout(300, func_only=True)
async def test_retire_removes_the_record_idempotently(backend: Backend) -> None:
    vm_id = await backend.seed_vm("retire-vm", next_ip())
    await backend.cloud.stop_server(vm_id)
    await backend.cloud.retire_server(vm_id)
    assert await backend.cloud.get_server(vm_id) is None
    assert vm_id not in {s.id for s in await backend.cloud.list_servers()}
    await backend.cloud.retire_server(vm_id)  # already gone: no error


# --- errors --------------------------------------------------------------------------------------------------


@pytest.mark.timeout(60, func_only=True)
async def test_a_cloud_that_is_down_is_unavailable_not_a_hang(backend: Backend) -> None:
    down = backend.down_cloud()
    for call in (down.list_servers(), down.metrics(), down.get_server(str(uuid.uuid4()))):
        with pytest.raises(DriverUnavailable):
            await asyncio.wait_for(call, 30)
