"""``SimCloud``: the CloudDriver port over the simulated world (``cnf.sim.fabric``).

An honest stand-in for Nova/Neutron/Placement: records, statuses and capacity
behave as the contract in ``cnf.openstack.base`` says, including idempotency and
errors, so the same contract suite passes here and against real OpenStack.
"""

from __future__ import annotations

from cnf.errors import NotFound
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server, ServerSpec
from cnf.sim.fabric import SimDomain, SimFabric, SimServer

PORT = "cloud"


class SimCloud:
    def __init__(self, fabric: SimFabric, cluster_id: str) -> None:
        self.fabric = fabric
        self.cluster_id = cluster_id

    def _c(self):  # type: ignore[no-untyped-def]
        return self.fabric.cluster(self.cluster_id)

    @staticmethod
    def _view(s: SimServer, load_bias: float = 0.0) -> Server:
        return Server(id=s.id, name=s.name, status=s.status, host=s.host, flavor=s.flavor, vcpus=s.vcpus,
                      ram_mb=s.ram_mb, ip=s.ip, project_id=s.project_id, image=s.image, tags=s.tags,
                      cpu_pct=min(100.0, s.cpu_pct + load_bias) if s.status == "ACTIVE" else 0.0,
                      mem_pct=s.mem_pct, metadata=dict(s.metadata))

    def _get(self, vm_id: str) -> SimServer:
        s = self._c().servers.get(vm_id)
        if s is None:
            raise NotFound(f"server {vm_id} not found in {self.cluster_id}", vm_id=vm_id, cluster_id=self.cluster_id)
        return s

    async def list_servers(self) -> list[Server]:
        await self.fabric.enter(self.cluster_id, PORT, "list_servers")
        c = self._c()
        return [self._view(s, c.load_bias) for s in c.servers.values() if not s.receiver_for or s.status == "ACTIVE"]

    async def get_server(self, vm_id: str) -> Server | None:
        await self.fabric.enter(self.cluster_id, PORT, "get_server")
        c = self._c()
        s = c.servers.get(vm_id)
        return self._view(s, c.load_bias) if s else None

    async def list_hosts(self) -> list[Host]:
        await self.fabric.enter(self.cluster_id, PORT, "list_hosts")
        c = self._c()
        out = []
        for h in c.hosts.values():
            on_host = [s for s in c.servers.values() if s.host == h.name and s.status in ("ACTIVE", "SHUTOFF", "BUILD")]
            active = [s for s in on_host if s.status == "ACTIVE"]
            used = sum(s.vcpus for s in on_host)
            load = sum(s.vcpus * (min(100.0, s.cpu_pct + c.load_bias)) for s in active) / max(1, h.vcpus)
            out.append(Host(name=h.name, vcpus=h.vcpus, ram_mb=h.ram_mb, vcpus_used=used,
                            ram_mb_used=sum(s.ram_mb for s in on_host), cpu_model=h.cpu_model,
                            cpu_pct=min(100.0, max(0.0, h.base_cpu_pct + load + c.load_bias))))
        return out

    async def list_flavors(self) -> list[Flavor]:
        await self.fabric.enter(self.cluster_id, PORT, "list_flavors")
        return [Flavor(name=n, vcpus=v, ram_mb=r) for n, (v, r) in sorted(self._c().flavors.items())]

    async def metrics(self) -> CloudMetrics:
        hosts = await self.list_hosts()
        await self.fabric.enter(self.cluster_id, PORT, "metrics")
        vcpus = sum(h.vcpus for h in hosts)
        ram = sum(h.ram_mb for h in hosts)
        vused = sum(h.vcpus_used for h in hosts)
        rused = sum(h.ram_mb_used for h in hosts)
        cpu = sum(h.cpu_pct * h.vcpus for h in hosts) / max(1, vcpus)
        count = sum(1 for s in self._c().servers.values() if s.status in ("ACTIVE", "SHUTOFF"))
        return CloudMetrics(vcpus=vcpus, vcpus_used=vused, ram_mb=ram, ram_mb_used=rused, vm_count=count,
                            cpu_pct=cpu, mem_pct=100.0 * rused / max(1, ram))

    async def stop_server(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "stop_server")
        s = self._get(vm_id)
        if s.status == "SHUTOFF":
            return
        s.status = "SHUTOFF"
        d = self._c().domains.get(vm_id)
        if d is not None:
            d.state = "shutoff"
        self.fabric.effect(self.cluster_id, PORT, "stop", vm_id)

    async def start_server(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "start_server")
        s = self._get(vm_id)
        if s.status == "ACTIVE":
            return
        s.status = "ACTIVE"
        d = self._c().domains.get(vm_id)
        if d is not None:
            d.state = "running"
        self.fabric.effect(self.cluster_id, PORT, "start", vm_id)

    async def create_receiver(self, spec: ServerSpec) -> Server:
        await self.fabric.enter(self.cluster_id, PORT, "create_receiver")
        c = self._c()
        existing = c.servers.get(spec.vm_id)
        if existing is not None:
            return self._view(existing)
        if spec.flavor not in c.flavors:
            c.flavors[spec.flavor] = (spec.vcpus, spec.ram_mb)  # flavor mapping: same shape
        host = spec.host or min(c.hosts, key=lambda h: sum(s.vcpus for s in c.servers.values() if s.host == h))
        if host not in c.hosts:
            raise NotFound(f"host {host} not found in {self.cluster_id}", field="dest_host")
        srv = SimServer(id=spec.vm_id, name=spec.name, status="BUILD", host=host, flavor=spec.flavor,
                        vcpus=spec.vcpus, ram_mb=spec.ram_mb, ip=spec.ip, image=spec.image,
                        project_id=spec.project_id, receiver_for=spec.migration_id,
                        metadata={"cnf:receiver": spec.migration_id})
        c.servers[spec.vm_id] = srv
        self.fabric.effect(self.cluster_id, PORT, "create_receiver", spec.vm_id)
        return self._view(srv)

    async def delete_receiver(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "delete_receiver")
        c = self._c()
        s = c.servers.get(vm_id)
        if s is None or not s.receiver_for:
            return  # absent, or not a receiver: never delete a real server through this path
        del c.servers[vm_id]
        self.fabric.effect(self.cluster_id, PORT, "delete_receiver", vm_id)

    async def activate_receiver(self, vm_id: str) -> Server:
        await self.fabric.enter(self.cluster_id, PORT, "activate_receiver")
        s = self._get(vm_id)
        if s.receiver_for:
            s.receiver_for = ""
            s.metadata.pop("cnf:receiver", None)
            s.status = "ACTIVE"
            self.fabric.effect(self.cluster_id, PORT, "activate_receiver", vm_id)
        return self._view(s)

    async def boot_receiver(self, vm_id: str, power_on: bool = True) -> Server:
        await self.fabric.enter(self.cluster_id, PORT, "boot_receiver")
        c = self._c()
        s = self._get(vm_id)
        if s.receiver_for:
            s.receiver_for = ""
            s.metadata.pop("cnf:receiver", None)
            s.status = "ACTIVE" if power_on else "SHUTOFF"
            c.domains[vm_id] = SimDomain(vm_id=vm_id, state="running" if power_on else "shutoff", ram_mb=s.ram_mb,
                                         host=s.host, image=s.image)
            self.fabric.effect(self.cluster_id, PORT, "boot_receiver", vm_id)
        return self._view(s)

    async def retire_server(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "retire_server")
        c = self._c()
        if vm_id not in c.servers:
            return
        del c.servers[vm_id]
        c.domains.pop(vm_id, None)
        self.fabric.effect(self.cluster_id, PORT, "retire", vm_id)
