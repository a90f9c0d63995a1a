"""The embedded default's world: three sim clouds named as in the seed, a handful of VMs each."""

from __future__ import annotations

from cnf.clock import Clock
from cnf.hypervisor.sim import SimHypervisor
from cnf.network.sim import SimBgpSpeaker
from cnf.openstack.sim import SimCloud
from cnf.ports import ClusterDrivers, StaticDirectory
from cnf.sim.fabric import SimFabric
from cnf.storage.sim import SimRbdMirror

#: stable ids so the demo's output and the README's commands match between runs
DEMO_CLUSTERS = [
    ("11111111-1111-4111-8111-111111111111", "openstack-1", 65001),
    ("22222222-2222-4222-8222-222222222222", "openstack-2", 65002),
    ("33333333-3333-4333-8333-333333333333", "openstack-3", 65003),
]


def sim_drivers(fabric: SimFabric, cluster_id: str) -> ClusterDrivers:
    return ClusterDrivers(cluster_id=cluster_id, cloud=SimCloud(fabric, cluster_id),
                          storage=SimRbdMirror(fabric, cluster_id), bgp=SimBgpSpeaker(fabric, cluster_id),
                          hypervisor=SimHypervisor(fabric, cluster_id))


def demo_fabric(clock: Clock | None = None, vms_per_cluster: int = 4) -> SimFabric:
    fabric = SimFabric(clock=clock)
    flavors = ["m1.small", "m1.medium", "m1.small", "m1.large", "m1.tiny"]
    for n, (cid, name, asn) in enumerate(DEMO_CLUSTERS, start=1):
        fabric.add_cluster(cid, name=name, as_number=asn, next_hop=f"192.0.2.{n}")
        for h in range(1, 3):
            fabric.add_host(cid, f"compute-{h}.os{n}", vcpus=32, ram_mb=65536)
        for v in range(1, vms_per_cluster + 1):
            vm_id = f"{n:08x}-0000-4000-8000-{v:012x}"
            fabric.add_vm(cid, vm_id, name=f"vm-{n}-{v}", host=f"compute-{1 + v % 2}.os{n}",
                          flavor=flavors[(v - 1) % len(flavors)], ip=f"10.99.{n}.{10 + v}",
                          cpu_pct=15.0 + 5 * v, tags=("cnf:pinned",) if v == vms_per_cluster else ())
    return fabric


def demo_directory(fabric: SimFabric) -> StaticDirectory:
    return StaticDirectory({cid: sim_drivers(fabric, cid) for cid in fabric.clusters})
