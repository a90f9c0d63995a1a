"""CNFControl: agent status/health, inventory snapshot and master hand-over, as served by one agent.

The values exchanged are plain dataclasses here so the agent (election, REST) never handles protobuf.
The election itself is not implemented here: an agent that takes part in ``master elect`` passes a
``HandoverParticipant`` (its election object) to ``PeerServer``; the RPCs only carry the messages.

Hand-over sequence driven by the current master M (epoch E) towards target T:
1. M -> T ``HandoverPrepare(E, M, T)``: T checks it can lead (etcd reachable, drivers healthy) and
   arms itself to campaign; replies ``accepted``.
2. M resigns (deletes its etcd key / revokes its lease).
3. M -> T ``HandoverReady(E, M, T)``: T campaigns now; replies ``accepted`` and its new epoch once it
   holds the key (0 if not yet). Both messages are fenced by E like any mutation.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from cnf.errors import CNFError, Forbidden, InvalidInput
from cnf.grpc import convert
from cnf.grpc.wire import pb, rpc
from cnf.hypervisor.base import Domain
from cnf.openstack.base import CloudMetrics, Flavor, Host, Server
from cnf.ports import ClusterDrivers

if TYPE_CHECKING:
    from cnf.grpc.server import CallGate

HEALTH_CHECK_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class AgentRole:
    role: str = "unknown"  # master | follower | unknown
    master_id: str = ""


@dataclass(frozen=True)
class HandoverDecision:
    accepted: bool
    detail: str = ""
    epoch: int = 0


class HandoverParticipant(Protocol):
    async def prepare(self, from_cluster_id: str, epoch: int) -> HandoverDecision:
        """Get ready to take the master role from ``from_cluster_id`` (term ``epoch``)."""

    async def ready(self, from_cluster_id: str, epoch: int) -> HandoverDecision:
        """The old master has resigned: campaign now; report the new epoch once held."""


@dataclass(frozen=True)
class HealthCheck:
    name: str
    ok: bool
    detail: str = ""


@dataclass(frozen=True)
class AgentStatus:
    cluster_id: str
    version: str
    healthy: bool
    checks: tuple[HealthCheck, ...]
    role: str
    master_id: str
    highest_epoch: int
    uptime_s: float


@dataclass(frozen=True)
class InventorySnapshot:
    cluster_id: str
    taken_at: float
    servers: list[Server] = field(default_factory=list)
    hosts: list[Host] = field(default_factory=list)
    flavors: list[Flavor] = field(default_factory=list)
    metrics: CloudMetrics | None = None


def status_from_pb(m: pb.AgentStatus) -> AgentStatus:
    return AgentStatus(cluster_id=m.cluster_id, version=m.version, healthy=m.healthy,
                       checks=tuple(HealthCheck(c.name, c.ok, c.detail) for c in m.checks), role=m.role,
                       master_id=m.master_id, highest_epoch=m.highest_epoch, uptime_s=m.uptime_s)


def inventory_from_pb(m: pb.InventorySnapshot) -> InventorySnapshot:
    return InventorySnapshot(cluster_id=m.cluster_id, taken_at=m.taken_at,
                             servers=[convert.server_from_pb(s) for s in m.servers],
                             hosts=[convert.host_from_pb(h) for h in m.hosts],
                             flavors=[convert.flavor_from_pb(f) for f in m.flavors],
                             metrics=convert.metrics_from_pb(m.metrics) if m.HasField("metrics") else None)


async def _probe(name: str, thunk: Callable[[], Awaitable[Any]]) -> HealthCheck:
    try:
        async with asyncio.timeout(HEALTH_CHECK_TIMEOUT_S):
            await thunk()
    except TimeoutError:
        return HealthCheck(name, False, f"no answer within {HEALTH_CHECK_TIMEOUT_S} s")
    except CNFError as err:
        return HealthCheck(name, False, f"{err.code}: {err.message}")
    return HealthCheck(name, True, "")


async def _no_domain(drivers: ClusterDrivers) -> Domain | None:
    return await drivers.hypervisor.domain("cnf-health-probe")


class ControlServicer(rpc.CNFControlServicer):  # type: ignore[misc]
    def __init__(self, drivers: ClusterDrivers, gate: CallGate, *, version: str,
                 role_provider: Callable[[], AgentRole] | None, handover: HandoverParticipant | None) -> None:
        self._d = drivers
        self._gate = gate
        self._version = version
        self._role = role_provider
        self._participant = handover
        self._started = time.monotonic()

    async def GetStatus(self, request: pb.Empty, context: Any) -> pb.AgentStatus:
        async def status() -> pb.AgentStatus:
            d = self._d
            checks = await asyncio.gather(
                _probe("cloud", d.cloud.metrics), _probe("storage", d.storage.peer_reachable),
                _probe("bgp", d.bgp.peers), _probe("hypervisor", lambda: _no_domain(d)))
            role = self._role() if self._role is not None else AgentRole()
            return pb.AgentStatus(cluster_id=d.cluster_id, version=self._version, healthy=all(c.ok for c in checks),
                                  checks=[pb.HealthCheck(name=c.name, ok=c.ok, detail=c.detail) for c in checks],
                                  role=role.role, master_id=role.master_id,
                                  highest_epoch=self._gate.epochs.highest(),
                                  uptime_s=time.monotonic() - self._started)

        return await self._gate.run(context, "control.status", None, status)

    async def GetInventory(self, request: pb.Empty, context: Any) -> pb.InventorySnapshot:
        async def inventory() -> pb.InventorySnapshot:
            c = self._d.cloud
            servers, hosts, flavors, metrics = await asyncio.gather(
                c.list_servers(), c.list_hosts(), c.list_flavors(), c.metrics())
            return pb.InventorySnapshot(cluster_id=self._d.cluster_id, taken_at=time.time(),
                                        servers=[convert.server_to_pb(s) for s in servers],
                                        hosts=[convert.host_to_pb(h) for h in hosts],
                                        flavors=[convert.flavor_to_pb(f) for f in flavors],
                                        metrics=convert.metrics_to_pb(metrics))

        return await self._gate.run(context, "control.inventory", None, inventory)

    async def _handover(self, request: pb.HandoverRequest, context: Any, step: str) -> pb.HandoverReply:
        async def run() -> pb.HandoverReply:
            if request.to_cluster_id != self._d.cluster_id:
                raise InvalidInput(f"hand-over addressed to {request.to_cluster_id!r}, this agent is "
                                   f"{self._d.cluster_id}", field="to_cluster_id")
            caller = self._gate.caller(context)
            if caller is not None and caller != request.from_cluster_id:
                raise Forbidden(f"{caller} cannot hand over on behalf of {request.from_cluster_id}",
                                reason="cluster_id_mismatch")
            if self._participant is None:
                return pb.HandoverReply(accepted=False, detail="this agent takes no part in elections")
            fn = self._participant.prepare if step == "prepare" else self._participant.ready
            decision = await fn(request.from_cluster_id, request.epoch)
            return pb.HandoverReply(accepted=decision.accepted, detail=decision.detail, epoch=decision.epoch)

        return await self._gate.run(context, f"control.handover_{step}", request.epoch, run)

    async def HandoverPrepare(self, request: pb.HandoverRequest, context: Any) -> pb.HandoverReply:
        return await self._handover(request, context, "prepare")

    async def HandoverReady(self, request: pb.HandoverRequest, context: Any) -> pb.HandoverReply:
        return await self._handover(request, context, "ready")
