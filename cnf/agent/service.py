"""``FederationService``: what the REST API (and the scheduler) asks the master to do.

One place that turns an operator's request into store writes, engine records
and runner submissions, with the checks an operator expects (unknown VM -> 404,
VM already moving -> 409, same source and destination -> 422 naming the field).
The HTTP edge (``cnf.api``) only parses and renders; it never decides.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from typing import Any

import structlog

from cnf.agent.raft import Election
from cnf.clock import Clock
from cnf.config import CNFConfig
from cnf.db.models import ClusterRow, VmRow
from cnf.db.store import FederationStore
from cnf.errors import CNFError, Conflict, DriverUnavailable, InvalidInput, NotFound, NotMaster
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import MigrationKind, MigrationOptions, MigrationRecord, VmRef
from cnf.migration.preflight import run_preflight
from cnf.ports import DriverDirectory
from cnf.tasks.runner import TaskRunner

log = structlog.get_logger(__name__)


@dataclass
class MigrationRequest:
    vm_id: str
    kind: MigrationKind
    dest_cluster_id: str
    dest_host: str = ""
    dest_next_hop: str = ""
    dry_run: bool = False
    options: MigrationOptions | None = None


class FederationService:
    def __init__(self, *, config: CNFConfig, store: FederationStore, engine: MigrationEngine, runner: TaskRunner,
                 directory: DriverDirectory, election: Election, clock: Clock) -> None:
        self.config = config
        self.store = store
        self.engine = engine
        self.runner = runner
        self.directory = directory
        self.election = election
        self.clock = clock
        #: set by the agent: registers a new cluster's drivers (sim clouds in the embedded default)
        self.on_register: Any = None
        #: set by the agent: ``cnf.observability.metrics.CNFMetrics`` (None in bare tests)
        self.metrics: Any = None
        #: set by the agent: the master's ``PolicyLoop`` and, on the embedded default, the sim world
        self.policy_loop: Any = None
        self.fabric: Any = None

    # --- fencing ---------------------------------------------------------------------------------

    def epoch(self) -> int:
        """The epoch to stamp on a write; refuses when this agent may not act as master."""
        e = self.election.epoch()
        if e is None or not self.election.is_master():
            raise NotMaster("this agent is not the master")
        return e

    # --- clusters --------------------------------------------------------------------------------

    @staticmethod
    def cluster_view(row: ClusterRow, vm_count: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"id": row.id, "name": row.name, "grpc_addr": row.grpc_addr, "auth_url": row.auth_url,
                               "region": row.region, "bgp_as": row.bgp_as, "status": row.status}
        if vm_count is not None:
            out["vm_count"] = vm_count
        return out

    async def list_clusters(self) -> list[dict[str, Any]]:
        rows = await self.store.list_clusters()
        vms = await self.store.list_vms()
        counts: dict[str, int] = {}
        for v in vms:
            counts[v.cluster_id] = counts.get(v.cluster_id, 0) + 1
        return [self.cluster_view(r, counts.get(r.id, 0)) for r in rows]

    async def show_cluster(self, cluster_id: str) -> dict[str, Any]:
        row = await self.store.get_cluster(cluster_id)
        out = self.cluster_view(row, len(await self.store.list_vms(cluster_id=row.id)))
        master = await self.election.current_master()
        out["is_master"] = bool(master and master.cluster_id == row.id)
        try:
            d = self.directory.drivers(row.id)
            peers = await d.bgp.peers()
            out["bgp_peers"] = [{"address": p.address, "remote_as": p.remote_as, "established": p.established,
                                 "prefixes_received": p.prefixes_received} for p in peers]
            out["bgp_sessions_up"] = sum(1 for p in peers if p.established)
        except CNFError as e:
            out["bgp_peers"], out["bgp_error"] = [], e.message
        return out

    async def cluster_metrics(self, cluster_id: str) -> dict[str, Any]:
        row = await self.store.get_cluster(cluster_id)
        d = self.directory.drivers(row.id)
        m = await d.cloud.metrics()
        hosts = await d.cloud.list_hosts()
        return {"cluster_id": row.id, "name": row.name, **m.to_dict(),
                "hosts": [{"name": h.name, "vcpus": h.vcpus, "vcpus_used": h.vcpus_used, "ram_mb": h.ram_mb,
                           "ram_mb_used": h.ram_mb_used, "cpu_pct": round(h.cpu_pct, 1)} for h in hosts]}

    async def register_cluster(self, *, name: str, auth_url: str, grpc_addr: str, bgp_as: int, region: str,
                               api_url: str = "", credentials: dict[str, Any] | None = None,
                               cluster_id: str | None = None) -> dict[str, Any]:
        cid = cluster_id or str(uuid.uuid4())
        status = "active"
        if self.on_register is not None:
            status = await self.on_register(cluster_id=cid, name=name, auth_url=auth_url, bgp_as=bgp_as,
                                             credentials=credentials or {}, grpc_addr=grpc_addr)
        row = await self.store.upsert_cluster(self.epoch(), id=cid, name=name, auth_url=auth_url,
                                              grpc_addr=grpc_addr, bgp_as=bgp_as, region=region, api_url=api_url,
                                              credentials=credentials or {}, status=status)
        if status == "active":
            await self.sync_inventory(only=cid)
        elif status == "unreachable":
            log.warning("cluster_registered_unreachable", cluster_id=cid, grpc_addr=grpc_addr,
                        reason="its agent did not answer; the master keeps trying")
        return self.cluster_view(row, 0)

    # --- inventory -------------------------------------------------------------------------------

    async def sync_inventory(self, only: str | None = None) -> dict[str, str]:
        """Pull every cluster's servers into the inventory; a cloud that is down keeps its last view."""
        result: dict[str, str] = {}
        epoch = self.epoch()
        for row in await self.store.list_clusters():
            if only and row.id != only:
                continue
            try:
                servers = await self.directory.drivers(row.id).cloud.list_servers()
            except (CNFError, KeyError) as e:
                result[row.id] = f"error: {getattr(e, 'message', e)}"
                continue
            await self.store.sync_inventory(epoch, row.id, servers)
            result[row.id] = f"{len(servers)} servers"
        return result

    @staticmethod
    def vm_view(row: VmRow) -> dict[str, Any]:
        return {"id": row.id, "name": row.name, "cluster_id": row.cluster_id, "host": row.host, "status": row.status,
                "flavor": row.flavor, "vcpus": row.vcpus, "ram_mb": row.ram_mb, "ip": row.ip, "image": row.image,
                "project_id": row.project_id, "tags": list(row.tags or []), "cpu_pct": round(row.cpu_pct, 1),
                "migration_id": row.migration_id}

    async def list_vms(self, cluster_id: str | None, status: str | None) -> list[dict[str, Any]]:
        if cluster_id:
            cluster_id = (await self.store.get_cluster(cluster_id)).id
        return [self.vm_view(r) for r in await self.store.list_vms(cluster_id=cluster_id, status=status)]

    async def show_vm(self, vm_id: str) -> dict[str, Any]:
        row = await self.store.get_vm(vm_id)
        out = self.vm_view(row)
        if row.migration_id:
            rec = await self.store.get_migration(row.migration_id)
            out["migration"] = {"id": rec.id, "kind": str(rec.kind), "state": str(rec.state), "phase": rec.phase,
                                "step": rec.current_step}
        return out

    # --- migrations ------------------------------------------------------------------------------

    async def _build_record(self, req: MigrationRequest) -> MigrationRecord:
        vm = await self.store.get_vm(req.vm_id)
        dest = await self.store.get_cluster(req.dest_cluster_id)
        if dest.id == vm.cluster_id:
            raise InvalidInput(f"VM {vm.id} already runs in {dest.name}; choose another destination",
                               field="dest_cluster_id")
        if dest.status != "active":
            raise Conflict(f"destination {dest.name} is {dest.status}", field="dest_cluster_id")
        try:
            self.directory.drivers(dest.id)
        except NotFound:
            raise DriverUnavailable(f"no agent reachable for destination {dest.name}", field="dest_cluster_id") \
                from None
        ref = VmRef(id=vm.id, name=vm.name, ip=vm.ip, image=vm.image, flavor=vm.flavor, vcpus=vm.vcpus,
                    ram_mb=vm.ram_mb, host=vm.host, project_id=vm.project_id, status=vm.status)
        return self.engine.new_record(kind=req.kind, vm=ref, source_cluster_id=vm.cluster_id,
                                      dest_cluster_id=dest.id, dest_host=req.dest_host,
                                      dest_next_hop=req.dest_next_hop, options=req.options or MigrationOptions(),
                                      epoch=self.election.epoch() or 0)

    async def preflight(self, req: MigrationRequest) -> dict[str, Any]:
        rec = await self._build_record(req)
        checks = await run_preflight(rec, self.directory.drivers(rec.source_cluster_id),
                                     self.directory.drivers(rec.dest_cluster_id))
        passed = all(c.passed or c.severity != "error" for c in checks)
        return {"dry_run": True, "kind": str(rec.kind), "vm_id": rec.vm.id, "source_cluster_id":
                rec.source_cluster_id, "dest_cluster_id": rec.dest_cluster_id, "passed": passed,
                "checks": [c.to_dict() for c in checks]}

    async def request_migration(self, req: MigrationRequest) -> MigrationRecord:
        epoch = self.epoch()
        rec = await self._build_record(req)
        await self.store.create_migration(epoch, rec)
        log.info("migration_requested", migration_id=rec.id, vm_id=rec.vm.id, kind=str(rec.kind),
                 source=rec.source_cluster_id, dest=rec.dest_cluster_id)
        await self.runner.submit(rec.id)
        return rec

    async def abort(self, migration_id: str) -> MigrationRecord:
        rec = await self.store.request_abort(self.epoch(), migration_id)
        await self.runner.submit(migration_id)
        return rec

    async def show_migration(self, migration_id: str) -> dict[str, Any]:
        rec = await self.store.get_migration(migration_id)
        events = await self.store.events(migration_id)
        return migration_view(rec, [{"ts": e.ts, "kind": e.kind, "phase": e.phase, "step": e.step,
                                     "message": e.message, "data": e.data} for e in events])

    async def list_migrations(self, vm_id: str | None, state: str | None) -> list[dict[str, Any]]:
        return [migration_view(r) for r in await self.store.list_migrations(vm_id=vm_id, state=state)]

    # --- master ----------------------------------------------------------------------------------

    async def master(self) -> dict[str, Any]:
        info = await self.election.current_master()
        if info is None:
            from cnf.errors import NoMaster

            raise NoMaster("no master is elected right now", retry_after_s=1)
        d = info.to_dict()
        d["is_this_agent"] = info.cluster_id == self.config.cluster_id
        try:
            d["name"] = (await self.store.get_cluster(info.cluster_id)).name
        except NotFound:
            d["name"] = ""
        return d

    async def elect(self, cluster_id: str) -> dict[str, Any]:
        target = cluster_id
        try:
            target = (await self.store.get_cluster(cluster_id)).id
        except NotFound:
            pass
        await self.election.hand_over(target)
        return {"requested": target, "at": time.time()}


def migration_view(rec: MigrationRecord, events: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The operator's answer to "what happened to my VM?": state, phases, steps, timings, downtime, events."""
    ctx = rec.context
    out: dict[str, Any] = {
        "id": rec.id, "kind": str(rec.kind), "vm_id": rec.vm.id, "vm_name": rec.vm.name,
        "source_cluster_id": rec.source_cluster_id, "dest_cluster_id": rec.dest_cluster_id,
        "dest_host": ctx.get("dest_host", rec.dest_host), "dest_next_hop": rec.dest_next_hop,
        "state": str(rec.state), "phase": rec.phase, "step": rec.current_step,
        "point_of_no_return_passed": rec.passed_point_of_no_return, "abort_requested": rec.abort_requested,
        "created_at": rec.created_at, "updated_at": rec.updated_at, "finished_at": rec.finished_at,
        "duration_s": round((rec.finished_at or rec.updated_at) - rec.created_at, 3),
        "downtime": {"guest_pause_ms": ctx.get("guest_pause_ms"), "qemu_downtime_ms": ctx.get("qemu_downtime_ms"),
                     "network_blackout_ms": ctx.get("network_blackout_ms")},
        "progress": ctx.get("progress"), "mirror_lag_s": ctx.get("mirror_lag_s"),
        "convergence_actions": ctx.get("convergence_actions", []),
        "phases": rec.phase_summary(), "steps": [s.to_dict() for s in rec.steps], "error": rec.error,
        "options": rec.options.to_dict(), "preflight": ctx.get("preflight"), "epoch": rec.epoch,
    }
    if events is not None:
        out["events"] = events
    return out
