"""``SimHypervisor``: the HypervisorDriver port over the simulated world.

Pre-copy is simulated pass by pass from RAM size, the guest's dirty rate and the
bandwidth (``SimFabric._advance_migration``), so non-convergence happens for the
same reason it does in QEMU: the guest dirties memory faster than the link
drains it. ``auto_converge`` throttles the dirty rate in steps as QEMU does
(20 % first, +10 % per application, at most 99 %).
"""

from __future__ import annotations

from cnf.errors import DriverError, NotFound
from cnf.hypervisor.base import Domain, MigrationParams, MigrationProgress
from cnf.sim.fabric import SimDomain, SimFabric, SimMigration

PORT = "hypervisor"
MIB = 1024 * 1024


class SimHypervisor:
    def __init__(self, fabric: SimFabric, cluster_id: str) -> None:
        self.fabric = fabric
        self.cluster_id = cluster_id

    def _domains(self) -> dict[str, SimDomain]:
        return self.fabric.cluster(self.cluster_id).domains

    def _mig(self, vm_id: str) -> SimMigration | None:
        m = self.fabric.migrations.get(vm_id)
        return m if m is not None and m.source == self.cluster_id else None

    async def domain(self, vm_id: str) -> Domain | None:
        await self.fabric.enter(self.cluster_id, PORT, "domain")
        d = self._domains().get(vm_id)
        return Domain(vm_id=vm_id, state=d.state, ram_mb=d.ram_mb) if d else None

    async def prepare_incoming(self, vm_id: str, ram_mb: int, image: str, host: str = "") -> str:
        await self.fabric.enter(self.cluster_id, PORT, "prepare_incoming")
        uri = f"sim://{self.cluster_id}/{vm_id}"
        d = self._domains().get(vm_id)
        if d is not None:
            if d.state == "incoming":
                return uri
            raise DriverError(f"a domain of {vm_id} already exists here in state {d.state}", vm_id=vm_id)
        self._domains()[vm_id] = SimDomain(vm_id=vm_id, state="incoming", ram_mb=ram_mb, host=host, image=image)
        self.fabric.effect(self.cluster_id, PORT, "prepare_incoming", vm_id)
        return uri

    async def destroy_incoming(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "destroy_incoming")
        d = self._domains().get(vm_id)
        if d is None or d.state != "incoming":
            return
        del self._domains()[vm_id]
        self.fabric.effect(self.cluster_id, PORT, "destroy_incoming", vm_id)

    async def start_migration(self, vm_id: str, dest_uri: str, params: MigrationParams) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "start_migration")
        existing = self._mig(vm_id)
        if existing is not None and existing.status in ("active", "pre-switchover", "postcopy-active", "completed"):
            return
        d = self._domains().get(vm_id)
        if d is None or d.state != "running":
            raise DriverError(f"{vm_id} is not running here", vm_id=vm_id)
        if not dest_uri.startswith("sim://"):
            raise DriverError(f"unsupported destination {dest_uri}", field="dest_uri")
        dest_cluster, _, dest_vm = dest_uri[len("sim://"):].partition("/")
        dd = self.fabric.cluster(dest_cluster).domains.get(dest_vm)
        if dd is None or dd.state != "incoming":
            raise DriverError(f"destination {dest_uri} is not waiting for an incoming migration", vm_id=vm_id)
        now = self.fabric.clock.now()
        dd.dirty_rate_mbps = d.dirty_rate_mbps
        self.fabric.migrations[vm_id] = SimMigration(
            vm_id=vm_id, source=self.cluster_id, dest=dest_cluster, ram_mb=d.ram_mb,
            bandwidth_mbps=float(params.max_bandwidth_mbps) / 8.0, dirty_rate_mbps=d.dirty_rate_mbps,
            downtime_limit_ms=float(params.downtime_limit_ms), max_passes=params.max_passes,
            started=now, pass_started=now, pass_bytes_mb=float(d.ram_mb))
        self.fabric.effect(self.cluster_id, PORT, "start_migration", vm_id)

    async def progress(self, vm_id: str, wait_s: float = 0.0) -> MigrationProgress:  # no events: answers at once
        await self.fabric.enter(self.cluster_id, PORT, "progress")
        m = self._mig(vm_id)
        if m is None:
            return MigrationProgress(status="none")
        dest = self.fabric.clusters[m.dest].domains.get(vm_id)
        if m.status in ("active", "pre-switchover") and dest is None:
            m.status, m.error = "failed", "destination domain disappeared"
        now = self.fabric.clock.now()
        bw = max(m.bandwidth_mbps, 1e-6)
        in_pass = min(m.pass_bytes_mb, max(0.0, now - m.pass_started) * bw) if m.status == "active" else 0.0
        remaining = max(0.0, m.pass_bytes_mb - in_pass) if m.status in ("active", "pre-switchover") else 0.0
        total = float(m.ram_mb)
        return MigrationProgress(
            status=m.status, transferred_bytes=int((m.transferred_mb + in_pass) * MIB),
            remaining_bytes=int(remaining * MIB), total_bytes=int(total * MIB), passes=m.passes,
            dirty_rate_bps=m.dirty_rate_mbps * (1 - m.throttle) * MIB,
            expected_downtime_ms=remaining / bw * 1000.0, downtime_ms=m.downtime_ms, error=m.error,
            history=tuple(m.history), stopped_at=m.paused_at, resumed_at=m.resumed_at,
            throttle_percent=round(m.throttle * 100))

    async def apply_convergence(self, vm_id: str, action: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "apply_convergence")
        m = self._mig(vm_id)
        if m is None or m.status not in ("active",):
            return
        if action == "auto_converge":
            m.throttle = 0.2 if m.throttle == 0 else min(0.99, m.throttle + 0.1)
        elif action == "post_copy":
            # QEMU honours pause-before-switchover for post-copy too: the guest stops in pre-switchover,
            # the engine hands the storage over, then migrate-continue starts the destination at once and
            # the remaining pages are pulled on demand (not part of the pause).
            m.post_copy = True
            m.status = "pre-switchover"
            m.paused_at = self.fabric.clock.now()
            m.pass_bytes_mb = 0.0
            self.fabric.clusters[m.source].domains[vm_id].state = "paused"
        else:
            raise DriverError(f"unknown convergence action {action}", field="action")
        # each escalation is its own effect (throttle 20 % -> 30 % ...), so the key names the level
        self.fabric.effect(self.cluster_id, PORT, f"converge_{action}", f"{vm_id}@{m.throttle:.2f}")

    async def continue_switchover(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "continue_switchover")
        m = self._mig(vm_id)
        if m is None:
            raise NotFound(f"no migration of {vm_id} from {self.cluster_id}", vm_id=vm_id)
        if m.status == "completed":
            return
        if m.status != "pre-switchover":
            raise DriverError(f"migration of {vm_id} is {m.status}, not in pre-switchover", vm_id=vm_id)
        self.fabric.continue_migration(m)
        self.fabric.effect(self.cluster_id, PORT, "continue", vm_id)

    async def cancel_migration(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "cancel_migration")
        m = self._mig(vm_id)
        if m is None or m.status in ("completed", "cancelled", "failed"):
            if m is not None and m.status == "failed":
                self._domains()[vm_id].state = "running"
            return
        m.status = "cancelled"
        src = self._domains().get(vm_id)
        if src is not None and src.state == "paused":
            src.state = "running"
        self.fabric.effect(self.cluster_id, PORT, "cancel", vm_id)

    async def destroy_source(self, vm_id: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "destroy_source")
        d = self._domains().get(vm_id)
        if d is None:
            return
        if d.state == "running":
            raise DriverError(f"refusing to destroy the running domain of {vm_id}", vm_id=vm_id)
        del self._domains()[vm_id]
        self.fabric.migrations.pop(vm_id, None)
        self.fabric.effect(self.cluster_id, PORT, "destroy_source", vm_id)

    def kill_incoming(self, vm_id: str) -> None:
        """Test hook: the destination QEMU dies (as ``kill -9`` would)."""
        self._domains().pop(vm_id, None)
