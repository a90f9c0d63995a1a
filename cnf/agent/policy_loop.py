"""``PolicyLoop``: the master's scheduler round — observe the clouds, evaluate the policies, act within caps.

Pure evaluation lives in ``cnf.scheduler``; this module only gathers its inputs (cluster and host metrics
through each cloud's drivers, the VM inventory, migrations in flight, when each VM last moved, a rolling
metric history for "held for" triggers) and hands ``auto`` moves to the engine. ``plan`` moves wait for an
operator's approval (``POST /v1/policies/{name}/approve``). Every decision is logged with its reason.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import structlog

from cnf.agent.service import FederationService, MigrationRequest
from cnf.errors import CNFError, NotFound
from cnf.migration.model import MigrationKind, MigrationState
from cnf.scheduler.model import ClusterState, HostState, LastMove, MetricHistory, MigrationInFlight, Snapshot, VmState
from cnf.scheduler.plan import Move, Plan
from cnf.scheduler.rules import Rule, parse_rule
from cnf.scheduler.scheduler import evaluate

log = structlog.get_logger(__name__)

HISTORY_WINDOW_S = 3600.0


class PolicyLoop:
    def __init__(self, service: FederationService, *, interval_s: float = 30.0) -> None:
        self.service = service
        self.interval_s = interval_s
        self.history = MetricHistory()
        self.last_plans: dict[str, Plan] = {}
        self._started_at = time.time()

    async def snapshot(self, now: float) -> Snapshot:
        svc = self.service
        clusters: dict[str, ClusterState] = {}
        hosts: dict[str, HostState] = {}
        for row in await svc.store.list_clusters():
            if row.status != "active":
                continue
            try:
                d = svc.directory.drivers(row.id)
                m = await d.cloud.metrics()
                hs = await d.cloud.list_hosts()
            except (CNFError, KeyError) as e:
                log.warning("decision", decision="skip_cluster", reason=f"metrics unavailable: {e}",
                            cluster_id=row.id)
                continue
            clusters[row.id] = ClusterState(id=row.id, vcpus_total=m.vcpus, ram_mb_total=m.ram_mb,
                                            vcpus_used=m.vcpus_used, ram_mb_used=m.ram_mb_used, cpu_pct=m.cpu_pct,
                                            mem_pct=m.mem_pct, vm_count=m.vm_count,
                                            hosts=tuple(f"{row.id}/{h.name}" for h in hs))
            for h in hs:
                hid = f"{row.id}/{h.name}"
                hosts[hid] = HostState(id=hid, cluster_id=row.id, vcpus_total=h.vcpus, ram_mb_total=h.ram_mb,
                                       vcpus_used=h.vcpus_used, ram_mb_used=h.ram_mb_used, cpu_pct=h.cpu_pct,
                                       mem_pct=100.0 * h.ram_mb_used / max(1, h.ram_mb))
        vms = [VmState(id=v.id, cluster_id=v.cluster_id, host_id=f"{v.cluster_id}/{v.host}" if v.host else "",
                       project_id=v.project_id, vcpus=v.vcpus, ram_mb=v.ram_mb, cpu_pct=v.cpu_pct,
                       mem_pct=v.mem_pct, status=v.status, tags=frozenset(v.tags or ()))
               for v in await svc.store.list_vms() if v.cluster_id in clusters]
        in_flight: list[MigrationInFlight] = []
        last_moves: dict[str, LastMove] = {}
        for rec in await svc.store.list_migrations(limit=1000):
            if not rec.state.terminal:
                in_flight.append(MigrationInFlight(rec.vm.id, rec.source_cluster_id, rec.dest_cluster_id))
            elif rec.state == MigrationState.COMPLETED and rec.finished_at:
                prior = last_moves.get(rec.vm.id)
                if prior is None or prior.t < rec.finished_at:
                    last_moves[rec.vm.id] = LastMove(rec.vm.id, rec.finished_at, rec.source_cluster_id,
                                                     rec.dest_cluster_id)
        self.history.record(now, clusters.values(), hosts.values())
        self.history.prune(now - HISTORY_WINDOW_S)
        return Snapshot(clusters=clusters, hosts=hosts, vms=vms, in_flight=in_flight, last_moves=last_moves,
                        history=self.history)

    async def rules(self, only: str | None = None) -> list[Rule]:
        svc = self.service
        rows = [await svc.store.get_policy(only)] if only else await svc.store.list_policies()
        known = [c.id for c in await svc.store.list_clusters()]
        return [parse_rule(r.name, r.rule, known_clusters=known) for r in rows if r.enabled or only]

    async def evaluate(self, only: str | None = None) -> Plan:
        now = time.time()
        plan = evaluate(await self.snapshot(now), await self.rules(only), now)
        for m in plan.moves:
            self.last_plans[m.rule] = plan
        if only:
            self.last_plans[only] = plan
        return plan

    async def execute(self, moves: list[Move]) -> list[dict[str, Any]]:
        started = []
        for m in moves:
            kind = MigrationKind.LIVE if m.action == "live_migrate" else MigrationKind.COLD
            try:
                rec = await self.service.request_migration(MigrationRequest(vm_id=m.vm_id, kind=kind,
                                                                            dest_cluster_id=m.target_cluster))
            except CNFError as e:
                log.warning("decision", decision="policy_move_refused", rule=m.rule, vm_id=m.vm_id, reason=e.message)
                continue
            log.info("decision", decision="policy_move", rule=m.rule, vm_id=m.vm_id, migration_id=rec.id,
                     source=m.source_cluster, target=m.target_cluster, reason=m.why)
            started.append({"migration_id": rec.id, "vm_id": m.vm_id, "rule": m.rule, "action": m.action,
                            "source_cluster": m.source_cluster, "target_cluster": m.target_cluster, "why": m.why})
        return started

    async def approve(self, name: str, vm_ids: list[str] | None = None) -> list[dict[str, Any]]:
        plan = self.last_plans.get(name)
        if plan is None:
            raise NotFound(f"no evaluated plan for policy {name}: evaluate it first", policy=name)
        moves = [m for m in plan.moves_awaiting_approval() if m.rule == name and (not vm_ids or m.vm_id in vm_ids)]
        started = await self.execute(moves)
        self.last_plans.pop(name, None)
        return started

    async def round(self) -> list[dict[str, Any]]:
        if not self.service.election.is_master():
            return []
        if not await self.service.store.list_policies():
            return []
        plan = await self.evaluate()
        for n in plan.notifications:
            log.info("decision", decision="policy_notify", reason=n.message)
        return await self.execute(plan.auto_moves())

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.round()
            except Exception as e:  # one bad round never stops the loop
                log.warning("decision", decision="policy_round_failed", reason=repr(e))
