"""CNFControl: status/health, inventory snapshot, and the master hand-over messages."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.errors import Forbidden, InvalidInput
from cnf.grpc.control import AgentRole, HandoverDecision
from cnf.grpc.peer_client import ControlClient
from cnf.grpc.server import PeerServer
from cnf.grpc.wire import pb
from cnf.sim.demo import sim_drivers
from cnf.sim.fabric import FaultRule

A, B, _C = CLUSTERS

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


@dataclass
class RecordingElection:
    """A hand-over participant that records what it was asked (stands in for the agent's election)."""

    calls: list[tuple[str, str, int]] = field(default_factory=list)
    new_epoch: int = 0

    async def prepare(self, from_cluster_id: str, epoch: int) -> HandoverDecision:
        self.calls.append(("prepare", from_cluster_id, epoch))
        return HandoverDecision(accepted=True, detail="armed")

    async def ready(self, from_cluster_id: str, epoch: int) -> HandoverDecision:
        self.calls.append(("ready", from_cluster_id, epoch))
        self.new_epoch = epoch + 1
        return HandoverDecision(accepted=True, detail="campaigned", epoch=self.new_epoch)


async def test_status_reports_health_of_each_port(federation: Federation) -> None:
    control = ControlClient(federation.connection(A))
    status = await control.status()
    assert status.cluster_id == A and status.healthy
    assert [c.name for c in status.checks] == ["cloud", "storage", "bgp", "hypervisor"]
    federation.fabric.faults.down.add((A, "bgp"))
    degraded = await control.status()
    assert not degraded.healthy
    bgp = next(c for c in degraded.checks if c.name == "bgp")
    assert not bgp.ok and "driver_unavailable" in bgp.detail


async def test_status_health_check_of_a_hung_port_is_bounded(federation: Federation) -> None:
    federation.fabric.faults.add(FaultRule(port="storage", method="peer_reachable", kind="hang", times=-1))
    status = await ControlClient(federation.connection(A)).status()
    storage = next(c for c in status.checks if c.name == "storage")
    assert not storage.ok and "no answer" in storage.detail


async def test_inventory_snapshot_is_the_agents_own_cloud(federation: Federation) -> None:
    inv = await ControlClient(federation.connection(B)).inventory()
    local = sim_drivers(federation.fabric, B).cloud
    assert inv.cluster_id == B
    assert inv.servers == await local.list_servers()
    assert inv.hosts == await local.list_hosts()
    assert inv.flavors == await local.list_flavors()
    assert inv.metrics == await local.metrics()


async def test_handover_prepare_and_ready(federation: Federation) -> None:
    election = RecordingElection()
    srv = PeerServer(sim_drivers(federation.fabric, A), tls=federation.pki.files(A), known_peers={MASTER},
                     handover=election, role_provider=lambda: AgentRole("follower", MASTER))
    await srv.start()
    federation.servers["elect"] = srv
    control = ControlClient(federation.connection(A, target=srv.address))
    assert (await control.handover_prepare()).accepted
    ready = await control.handover_ready()
    assert ready.accepted and ready.epoch == 11
    assert election.calls == [("prepare", MASTER, 10), ("ready", MASTER, 10)]
    status = await control.status()
    assert (status.role, status.master_id) == ("follower", MASTER)


async def test_handover_without_participant_is_declined(federation: Federation) -> None:
    decision = await ControlClient(federation.connection(A)).handover_prepare()
    assert not decision.accepted and "no part in elections" in decision.detail


async def test_handover_to_the_wrong_agent_or_on_behalf_of_another(federation: Federation) -> None:
    conn = federation.connection(A)
    with pytest.raises(InvalidInput) as exc:
        await conn.write("HandoverPrepare", lambda e: pb.HandoverRequest(epoch=e, from_cluster_id=MASTER,
                                                                        to_cluster_id=B), service="control")
    assert exc.value.field == "to_cluster_id"
    with pytest.raises(Forbidden):
        await conn.write("HandoverPrepare", lambda e: pb.HandoverRequest(epoch=e, from_cluster_id=B,
                                                                        to_cluster_id=A), service="control")
