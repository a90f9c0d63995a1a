"""Real-OpenStack-only behaviour of ``OpenStackCloud``: credential checks for ``cluster register``,
timeouts, the receiver compute driver's decisions, and a cold migration between two real clouds.

Marked ``lab``: two independent clouds (Keystone, Placement, Glance, Nova with the CNF receiver over the
fake virt driver) are started by the session fixture.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

import lab.openstack as lab_openstack
from cnf.clock import ManualClock
from cnf.errors import DriverUnavailable, InvalidInput
from cnf.migration.engine import EngineSettings, MigrationEngine
from cnf.migration.model import MigrationKind, MigrationState, VmRef
from cnf.openstack.base import ServerSpec
from cnf.openstack.client import CloudCredentials, OpenStackCloud, cloud_from_registration, verify_credentials
from cnf.openstack.receiver import read_journal
from cnf.ports import ClusterDrivers, StaticDirectory

pytestmark = pytest.mark.lab


def cloud_of(lab_cloud: Any, **kw: Any) -> OpenStackCloud:
    return OpenStackCloud(lab_cloud.name, CloudCredentials(**lab_cloud.credentials()), wait_timeout=180,
                          **{**lab_cloud.driver_options(), **kw})


def boot(lab_cloud: Any, name: str, ip: str) -> str:
    conn = lab_openstack._connect(lab_cloud)
    try:
        flavor = conn.compute.find_flavor(lab_openstack.FLAVOR, ignore_missing=False)
        image = conn.image.find_image(lab_openstack.IMAGE, ignore_missing=False)
        s = conn.compute.create_server(name=name, flavor_id=flavor.id, image_id=image.id, networks="none",
                                       metadata={"cnf_ip": ip})
        conn.compute.wait_for_server(s, status="ACTIVE", wait=180, interval=0.5)
        return str(s.id)
    finally:
        conn.close()


def ports_with_ip(lab_cloud: Any, ip: str) -> list[Any]:
    conn = lab_openstack._connect(lab_cloud)
    try:
        return list(conn.network.ports(fixed_ips=f"ip_address={ip}"))
    finally:
        conn.close()


def nova_records(lab_cloud: Any) -> list[Any]:
    conn = lab_openstack._connect(lab_cloud)
    try:
        return list(conn.compute.servers(all_projects=True))
    finally:
        conn.close()


@pytest.fixture
def clean_clouds(openstack_lab: Any) -> Iterator[Any]:
    yield openstack_lab
    for c in openstack_lab.clouds:
        conn = lab_openstack._connect(c)
        for s in list(conn.compute.servers(all_projects=True)):
            conn.compute.delete_server(s, ignore_missing=True)
            conn.compute.wait_for_delete(s, wait=120, interval=0.5)
        if c.neutron_venv is not None:  # ports CNF pre-created outlive a server deleted behind CNF's back
            for p in list(conn.network.ports()):
                if (p.name or "").startswith("cnf-receiver-"):
                    conn.network.delete_port(p, ignore_missing=True)
        conn.close()


# --- cluster register: credentials ---------------------------------------------------------------------------


@pytest.mark.timeout(120, func_only=True)
async def test_register_accepts_good_credentials_and_names_bad_ones(openstack_lab: Any,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    c = openstack_lab.clouds[0]
    ok = await verify_credentials(CloudCredentials(**c.credentials()))
    assert ok["project_id"] and ok["compute_endpoint"].startswith("http://127.0.0.1:")
    wrong = f"Wr0ng-{uuid.uuid4().hex}"
    with pytest.raises(InvalidInput) as err:
        await verify_credentials(CloudCredentials(**{**c.credentials(), "password": wrong}))
    assert err.value.field == "password"
    assert "rejected the credentials" in err.value.message
    out = capsys.readouterr()
    assert wrong not in out.out + out.err + str(err.value.to_dict())  # the secret is never logged or returned
    assert wrong not in repr(CloudCredentials(**{**c.credentials(), "password": wrong}))
    with pytest.raises(InvalidInput) as err:
        await verify_credentials(CloudCredentials(**{**c.credentials(), "region_name": "Nowhere"}))
    assert err.value.field == "region_name"


@pytest.mark.timeout(60, func_only=True)
async def test_register_refuses_malformed_input_before_any_call() -> None:
    with pytest.raises(InvalidInput) as err:
        await verify_credentials(CloudCredentials(auth_url="ftp://keystone", username="a", password="b",
                                                  project_name="p"))
    assert err.value.field == "auth_url"
    with pytest.raises(InvalidInput) as err:
        CloudCredentials(auth_url="http://127.0.0.1:1/v3", username="a", project_name="p").validate()
    assert err.value.field == "password"
    with pytest.raises(InvalidInput) as err:
        cloud_from_registration("x", {"auth_url": "http://127.0.0.1:1/v3", "pasword": "typo"})
    assert err.value.field == "pasword"


@pytest.mark.timeout(60, func_only=True)
async def test_register_against_a_down_keystone_is_unavailable() -> None:
    (port,) = lab_openstack.free_ports(1)
    with pytest.raises(DriverUnavailable):
        await verify_credentials(CloudCredentials(auth_url=f"http://127.0.0.1:{port}/v3", username="admin",
                                                  password="x", project_name="admin"), timeout_s=5)


@pytest.mark.timeout(60, func_only=True)
async def test_a_cloud_that_accepts_but_never_answers_times_out_as_unavailable() -> None:
    with socket.socket() as hole:  # the kernel completes the handshake from the backlog; nobody ever answers
        hole.bind(("127.0.0.1", 0))
        hole.listen(16)
        port = hole.getsockname()[1]
        cloud = OpenStackCloud("hole", CloudCredentials(auth_url=f"http://127.0.0.1:{port}/v3", username="admin",
                                                        password="x", project_name="admin"), call_timeout=2.0)
        try:
            with pytest.raises(DriverUnavailable):
                await asyncio.wait_for(cloud.list_servers(), 20)
        finally:
            cloud.close()


@pytest.mark.timeout(300, func_only=True)
async def test_losing_nova_mid_session_is_unavailable_then_recovers(clean_clouds: Any) -> None:
    """A driver with a valid token whose nova-api goes away: DriverUnavailable, not a hang; back when it is."""
    c = clean_clouds.clouds[1]
    cloud = cloud_of(c, call_timeout=5.0)
    try:
        await cloud.list_servers()
        c.stop_service("nova-api")
        with pytest.raises(DriverUnavailable):
            await asyncio.wait_for(cloud.list_servers(), 30)
    finally:
        c.restart_service("nova-api")
        cloud.close()
    cloud = cloud_of(c)
    try:  # a freshly started nova-api answers its first requests slowly: poll with a deadline
        deadline = asyncio.get_running_loop().time() + 180
        while True:
            try:
                assert isinstance(await cloud.list_servers(), list)
                break
            except DriverUnavailable:
                if asyncio.get_running_loop().time() > deadline:
                    raise
                await asyncio.sleep(1)
    finally:
        cloud.close()


# --- the receiver compute driver --------------------------------------------------------------------------------


@pytest.mark.timeout(400, func_only=True)
async def test_receiver_driver_prepares_adopts_and_keeps_the_disk_on_retire(clean_clouds: Any) -> None:
    c = clean_clouds.clouds[1]
    cloud = cloud_of(c)
    vm_id, mig = str(uuid.uuid4()), str(uuid.uuid4())
    try:
        r = await cloud.create_receiver(ServerSpec(vm_id=vm_id, name="journal", flavor="m1.tiny", vcpus=1,
                                                   ram_mb=512, ip="10.30.0.7", image=f"{vm_id}_disk",
                                                   migration_id=mig))
        nova_id = r.metadata["nova_id"]
        assert r.status == "PAUSED" and r.metadata["power_state"] == "3"  # Nova's own view: paused, no guest
        if c.neutron_venv is not None:
            assert [p.id for p in await asyncio.to_thread(ports_with_ip, c, "10.30.0.7")] == [r.metadata["cnf_port"]]
        active = await cloud.activate_receiver(vm_id)
        assert active.metadata["cnf_receiver"] == "active" and active.metadata["power_state"] == "1"
        await cloud.retire_server(vm_id)
        assert await cloud.get_server(vm_id) is None
        assert await asyncio.to_thread(ports_with_ip, c, "10.30.0.7") == []  # the port CNF made went with it
    finally:
        cloud.close()
    events = [e["event"] for e in read_journal(str(c.nova_state_path)) if e["instance"] == nova_id]
    assert events == ["prepare_incoming", "pause_incoming_noop", "adopt", "retire_keep_disk"]


# --- a cold migration between two real clouds -------------------------------------------------------------------


@pytest.mark.timeout(900, func_only=True)
async def test_cold_migration_between_two_real_clouds(clean_clouds: Any) -> None:
    """Engine + real CloudDriver on both sides (storage, BGP, hypervisor: sim). The VM ends ACTIVE in the
    destination Nova with the same fixed IP and CNF id, and its record is gone from the source Nova."""
    from cnf.sim.demo import DEMO_CLUSTERS, demo_fabric, sim_drivers

    lab1, lab2 = clean_clouds.clouds
    src_id, dst_id = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]
    clock = ManualClock()
    fabric = demo_fabric(clock)
    src_cloud, dst_cloud = cloud_of(lab1), cloud_of(lab2)
    ip = "10.40.0.9"
    try:
        nova_id = await asyncio.to_thread(boot, lab1, "cold-vm", ip)
        srv = await src_cloud.get_server(nova_id)
        assert srv is not None
        fabric.create_image(src_id, srv.image, size_mb=64)  # the VM's disk, in the sim Ceph of the source
        fabric.clusters[src_id].routes[f"{ip}/32"] = fabric.clusters[src_id].next_hop
        directory = StaticDirectory({
            cid: ClusterDrivers(cluster_id=cid, cloud=cloud, storage=sd.storage, bgp=sd.bgp, hypervisor=sd.hypervisor)
            for cid, cloud in ((src_id, src_cloud), (dst_id, dst_cloud)) for sd in [sim_drivers(fabric, cid)]})
        engine = MigrationEngine(directory, clock, EngineSettings(call_timeout_s=300.0))
        vm = VmRef(id=srv.id, name=srv.name, ip=srv.ip, image=srv.image, flavor=srv.flavor, vcpus=srv.vcpus,
                   ram_mb=srv.ram_mb, host=srv.host, project_id=srv.project_id, status=srv.status)
        rec = engine.new_record(kind=MigrationKind.COLD, vm=vm, source_cluster_id=src_id, dest_cluster_id=dst_id)
        for _ in range(2000):
            adv = await engine.advance(rec)
            if adv.delay_s is None:
                break
            await clock.sleep(adv.delay_s)
        assert rec.state == MigrationState.COMPLETED, rec.error
        moved = await dst_cloud.get_server(nova_id)  # same CNF id, new Nova UUID in the destination
        assert moved is not None and moved.status == "ACTIVE" and moved.ip == ip
        assert moved.metadata["nova_id"] != nova_id and moved.metadata["cnf_receiver"] == "booted"
        if lab2.neutron_venv is not None:  # the fixed IP is held by a port in the destination's real Neutron
            ports = await asyncio.to_thread(ports_with_ip, lab2, ip)
            assert [p.id for p in ports] == [moved.metadata["cnf_port"]]
            assert ports[0].fixed_ips[0]["ip_address"] == ip
        assert await src_cloud.get_server(nova_id) is None
        assert [s.id for s in await asyncio.to_thread(nova_records, lab1)] == []
        assert fabric.announcing_clusters(f"{ip}/32") == [dst_id]
    finally:
        src_cloud.close()
        dst_cloud.close()


# --- the lab itself ---------------------------------------------------------------------------------------------


@pytest.mark.timeout(60, func_only=True)
def test_lab_venv_is_reused_when_the_requirement_set_matches(openstack_lab: Any) -> None:
    stamp = lab_openstack.VENV / ".cnf-requirements.sha256"
    before = stamp.stat().st_mtime_ns
    assert lab_openstack.ensure_venv() == lab_openstack.VENV
    assert stamp.stat().st_mtime_ns == before
    assert stamp.read_text().strip() == lab_openstack.requirements_key()


@pytest.mark.timeout(60, func_only=True)
def test_two_clouds_fit_the_memory_budget(openstack_lab: Any) -> None:
    assert len({c.auth_url for c in openstack_lab.clouds}) == 2
    assert lab_openstack.memory_mb(openstack_lab)["pss_mb"] < 3072
