"""PREFLIGHT: every check an operator would want answered before a VM moves.

Why a report, not a boolean: ``--dry-run`` prints every check with pass/fail and
the reason, and a failed migration says exactly which check stopped it
(``PreflightFailed(checks=...)``). Checks never change the world.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from cnf.errors import CheckResult, CNFError
from cnf.migration.model import MigrationKind, MigrationRecord
from cnf.ports import ClusterDrivers


async def _guard(name: str, fn: Callable[[], Awaitable[CheckResult]]) -> CheckResult:
    """A check whose backend fails for good is a failed check with the backend's reason, not a crash;
    a transient backend error is raised so the whole preflight is retried instead of failing the migration."""
    try:
        return await fn()
    except CNFError as e:
        if e.retryable:
            raise
        return CheckResult(name, False, f"{e.code}: {e.message}")


async def run_preflight(rec: MigrationRecord, src: ClusterDrivers, dst: ClusterDrivers) -> list[CheckResult]:
    vm = rec.vm
    live = rec.kind == MigrationKind.LIVE

    async def server_state() -> CheckResult:
        srv = await src.cloud.get_server(vm.id)
        if srv is None:
            return CheckResult("source.server", False, f"server {vm.id} not found in the source cloud")
        allowed = ("ACTIVE",) if live else ("ACTIVE", "SHUTOFF")
        ok = srv.status in allowed
        return CheckResult("source.server", ok, f"status {srv.status}" + ("" if ok else f", needs {'/'.join(allowed)}"))

    async def not_in_dest() -> CheckResult:
        srv = await dst.cloud.get_server(vm.id)
        if srv is None:
            return CheckResult("destination.no_duplicate", True, "no record of this VM in the destination")
        mine = srv.metadata.get("cnf:receiver") == rec.id
        return CheckResult("destination.no_duplicate", mine,
                           "receiver of this migration" if mine else f"destination already has {vm.id} ({srv.status})")

    async def capacity() -> CheckResult:
        m = await dst.cloud.metrics()
        ok = m.free_vcpus >= vm.vcpus and m.free_ram_mb >= vm.ram_mb
        return CheckResult("destination.capacity", ok,
                           f"free {m.free_vcpus} vCPU / {m.free_ram_mb} MiB, needs {vm.vcpus} vCPU / {vm.ram_mb} MiB")

    async def dest_host() -> CheckResult:
        hosts = await dst.cloud.list_hosts()
        if not rec.dest_host:
            return CheckResult("destination.host", bool(hosts), "the destination cloud chooses the host"
                               if hosts else "destination has no compute host")
        match = [h for h in hosts if h.name == rec.dest_host]
        if not match:
            return CheckResult("destination.host", False, f"host {rec.dest_host} not found in the destination")
        h = match[0]
        ok = h.vcpus - h.vcpus_used >= vm.vcpus and h.ram_mb - h.ram_mb_used >= vm.ram_mb
        return CheckResult("destination.host", ok, f"{h.name}: {h.vcpus - h.vcpus_used} vCPU / "
                           f"{h.ram_mb - h.ram_mb_used} MiB free")

    async def cpu_model() -> CheckResult:
        src_hosts = {h.name: h for h in await src.cloud.list_hosts()}
        dst_hosts = await dst.cloud.list_hosts()
        here = src_hosts.get(vm.host)
        models = {h.cpu_model for h in dst_hosts if not rec.dest_host or h.name == rec.dest_host}
        if here is None:
            return CheckResult("cpu.compatible", False, f"source host {vm.host!r} unknown")
        ok = here.cpu_model in models
        return CheckResult("cpu.compatible", ok, f"source {here.cpu_model}, destination {sorted(models)}")

    async def flavor() -> CheckResult:
        flavors = {f.name: f for f in await dst.cloud.list_flavors()}
        f = flavors.get(vm.flavor)
        if f is None:
            return CheckResult("destination.flavor", True, f"{vm.flavor} absent: will be mapped to "
                               f"{vm.vcpus} vCPU / {vm.ram_mb} MiB", severity="warning")
        ok = f.vcpus == vm.vcpus and f.ram_mb == vm.ram_mb
        return CheckResult("destination.flavor", ok, f"{vm.flavor} exists" if ok else
                           f"{vm.flavor} differs in the destination ({f.vcpus} vCPU / {f.ram_mb} MiB)")

    async def storage() -> CheckResult:
        st = await src.storage.status(vm.image)
        if not st.exists or not st.primary:
            return CheckResult("storage.source_primary", False, f"image {vm.image} is not primary in the source")
        if st.split_brain:
            return CheckResult("storage.source_primary", False, f"image {vm.image} is in split-brain: resync first")
        return CheckResult("storage.source_primary", True, f"image {vm.image} is primary in the source")

    async def mirror_lag() -> CheckResult:
        st = await dst.storage.status(vm.image)
        limit = rec.options.mirror_lag_limit_s
        if not st.exists or not st.mirroring:
            return CheckResult("storage.mirror_lag", True, "mirroring not yet enabled: the DISK phase enables it "
                               "and waits for the initial sync", severity="warning")
        if st.primary:
            return CheckResult("storage.mirror_lag", False, "destination copy is primary (split-brain risk)")
        ok = st.lag_s <= limit
        return CheckResult("storage.mirror_lag", ok, f"lag {st.lag_s:.1f} s (limit {limit:.0f} s)",
                           severity="error" if live else "warning")

    async def peer() -> CheckResult:
        ok = await src.storage.peer_reachable()
        return CheckResult("storage.peer_reachable", ok, "peer site reachable" if ok else "peer site unreachable")

    async def bgp() -> CheckResult:
        down = [f"{side}:{p.address}" for side, d in (("source", src), ("destination", dst))
                for p in await d.bgp.peers() if not p.established]
        return CheckResult("bgp.sessions", not down, "all sessions established" if not down
                           else f"sessions down: {', '.join(down)}")

    async def domain() -> CheckResult:
        d = await src.hypervisor.domain(vm.id)
        ok = d is not None and d.state == "running"
        return CheckResult("hypervisor.source_domain", ok, f"domain {d.state if d else 'absent'}")

    checks: list[tuple[str, Callable[[], Awaitable[CheckResult]]]] = [
        ("source.server", server_state), ("destination.no_duplicate", not_in_dest),
        ("destination.capacity", capacity), ("destination.host", dest_host), ("destination.flavor", flavor),
        ("storage.source_primary", storage), ("storage.mirror_lag", mirror_lag),
        ("storage.peer_reachable", peer), ("bgp.sessions", bgp),
    ]
    if live:
        checks += [("cpu.compatible", cpu_model), ("hypervisor.source_domain", domain)]
    return list(await asyncio.gather(*(_guard(n, f) for n, f in checks)))
