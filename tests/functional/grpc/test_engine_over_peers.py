"""The lead's migration engine, unchanged, driving three clouds through their agents over mTLS gRPC.

The directory handed to the engine holds only ``Remote*`` drivers: every cloud-local step must
travel to the owning agent. The proof is an equality, per cloud and per driver method, between the
calls the sim world saw on that cloud and the calls that cloud's agent served: nothing reached a
cloud except through its own agent.
"""

from __future__ import annotations

from collections import Counter

import pytest
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.grpc.directory import PeerDirectory
from cnf.grpc.server import PeerServer
from cnf.migration.engine import EngineSettings, MigrationEngine
from cnf.migration.model import MigrationKind, MigrationState, VmRef
from cnf.ports import StaticDirectory
from cnf.sim.demo import sim_drivers

A, B, C = CLUSTERS
SETTINGS = EngineSettings(call_timeout_s=10.0, retry_backoff_s=0.1, retry_backoff_max_s=1.0)

pytestmark = [pytest.mark.functional, pytest.mark.timeout(120)]


async def _directory(fed: Federation) -> StaticDirectory:
    return StaticDirectory({cid: await fed.remote(cid) for cid in CLUSTERS})


async def _peer_directory(fed: Federation) -> PeerDirectory:
    """What a master uses in a real federation: every cluster through its agent (none in-process here)."""
    directory = PeerDirectory(local_cluster_id=MASTER, tls=fed.pki.files(MASTER),
                              epoch_provider=lambda: fed.epoch[0])
    for cid in CLUSTERS:
        c = fed.fabric.clusters[cid]
        directory.register(cid, fed.servers[cid].address, as_number=c.as_number, default_next_hop=c.next_hop)
    fed.cleanups.append(directory.close)
    return directory


def _vm(fed: Federation, cluster_id: str, index: int) -> VmRef:
    s = list(fed.fabric.clusters[cluster_id].servers.values())[index]
    return VmRef(id=s.id, name=s.name, ip=s.ip, image=s.image, flavor=s.flavor, vcpus=s.vcpus, ram_mb=s.ram_mb,
                 host=s.host, status=s.status)


def _served(fed: Federation, cluster_id: str) -> Counter[tuple[str, str]]:
    out: Counter[tuple[str, str]] = Counter()
    for r in fed.servers[cluster_id].recent_calls:
        port, _, method = r.operation.partition(".")
        if port in ("cloud", "storage", "bgp", "hypervisor"):
            out[(port, method)] += 1
            if (port, method) == ("cloud", "metrics"):
                out[("cloud", "list_hosts")] += 1  # SimCloud.metrics() reads its hosts itself
    return out


def _seen_by_world(fed: Federation, cluster_id: str) -> Counter[tuple[str, str]]:
    return Counter({(port, method): n for (cid, port, method), n in fed.fabric.calls.items() if cid == cluster_id})


def _assert_only_through_owner(fed: Federation) -> None:
    for cid in CLUSTERS:
        assert _seen_by_world(fed, cid) == _served(fed, cid), cid


async def _drive(fed: Federation, engine: MigrationEngine, rec, on_event=None):  # type: ignore[no-untyped-def]
    for _ in range(20_000):
        adv = await engine.advance(rec)
        for e in adv.events:
            if on_event is not None:
                await on_event(e)
        if adv.delay_s is None:
            return rec
        await fed.clock.sleep(adv.delay_s)
    raise AssertionError(f"did not finish: {rec.state} at {rec.current_step}")


@pytest.mark.parametrize("kind", [MigrationKind.LIVE, MigrationKind.COLD])
async def test_migration_runs_each_step_at_the_owning_agent(federation: Federation, kind: MigrationKind) -> None:
    for srv in federation.servers.values():
        srv.gate.recent = type(srv.gate.recent)(maxlen=100_000)
    engine = MigrationEngine(await _peer_directory(federation), federation.clock, SETTINGS)
    vm = _vm(federation, A, 0)
    rec = engine.new_record(kind=kind, vm=vm, source_cluster_id=A, dest_cluster_id=B, epoch=10)
    await _drive(federation, engine, rec)
    assert rec.state == MigrationState.COMPLETED, (rec.state, rec.error)
    f = federation.fabric
    assert f.running_clusters(vm.id) == [B]
    assert f.primary_clusters(vm.image) == [B]
    assert f.announcing_clusters(vm.prefix) == [B]
    _assert_only_through_owner(federation)
    mutations = {cid: {r.operation for r in federation.servers[cid].recent_calls if r.epoch is not None}
                 for cid in CLUSTERS}
    assert {"storage.demote", "bgp.withdraw", "cloud.retire_server"} <= mutations[A]
    assert {"storage.promote", "bgp.announce", "cloud.create_receiver"} <= mutations[B]
    assert "storage.promote" not in mutations[A] and "storage.demote" not in mutations[B]
    assert mutations[C] == set()


async def test_destination_agent_down_fails_cleanly_before_the_point_of_no_return(federation: Federation) -> None:
    directory = await _directory(federation)
    engine = MigrationEngine(directory, federation.clock, SETTINGS)
    vm = _vm(federation, A, 1)
    await federation.servers[B].stop(0)
    rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=A, dest_cluster_id=B, epoch=10)
    await _drive(federation, engine, rec)
    assert rec.state == MigrationState.FAILED, (rec.state, rec.error)
    assert not rec.passed_point_of_no_return
    assert rec.error is not None and rec.error["code"] == "driver_unavailable"
    f = federation.fabric
    assert f.running_clusters(vm.id) == [A] and f.primary_clusters(vm.image) == [A]
    assert f.announcing_clusters(vm.prefix) == [A]


async def test_source_agent_down_after_the_point_of_no_return_waits_and_resumes(federation: Federation) -> None:
    directory = await _directory(federation)
    engine = MigrationEngine(directory, federation.clock, SETTINGS)
    vm = _vm(federation, A, 2)
    rec = engine.new_record(kind=MigrationKind.COLD, vm=vm, source_cluster_id=A, dest_cluster_id=B, epoch=10)
    old = federation.servers[A]
    state = {"stopped": False, "restarted": False}

    async def chaos(event) -> None:  # type: ignore[no-untyped-def]
        if event.kind == "decision" and "point of no return passed" in event.message and not state["stopped"]:
            state["stopped"] = True
            await old.stop(0)  # the source agent dies right after the promote
        elif event.kind == "retry" and state["stopped"] and not state["restarted"]:
            state["restarted"] = True  # ... and comes back on the same address
            back = PeerServer(sim_drivers(federation.fabric, A), listen=f"127.0.0.1:{old.port}", tls=old.tls,
                              known_peers=old.gate.verifier.known() if old.gate.verifier else (),
                              epoch_store=old.gate.epochs)
            await back.start()
            federation.servers[A] = back

    await _drive(federation, engine, rec, on_event=chaos)
    assert state == {"stopped": True, "restarted": True}
    assert rec.state == MigrationState.COMPLETED, (rec.state, rec.error)
    f = federation.fabric
    assert f.running_clusters(vm.id) == [B] and f.primary_clusters(vm.image) == [B]
    assert f.announcing_clusters(vm.prefix) == [B]


async def test_peer_directory_local_and_unknown(federation: Federation) -> None:
    from cnf.errors import NotFound

    local = sim_drivers(federation.fabric, A)
    directory = PeerDirectory(local_cluster_id=A, tls=federation.pki.files(A), epoch_provider=lambda: 10,
                              local=local)
    federation.cleanups.append(directory.close)
    c = federation.fabric.clusters[B]
    remote = directory.register(B, federation.servers[B].address, as_number=c.as_number,
                                default_next_hop=c.next_hop)
    assert directory.drivers(A) is local and directory.connection(A) is None
    assert directory.drivers(B) is remote and sorted(directory.cluster_ids()) == sorted([A, B])
    assert (await remote.cloud.metrics()).vm_count > 0
    assert federation.servers[B].recent_calls[-1].caller == A  # the agent of A, by its own certificate
    with pytest.raises(NotFound):
        directory.drivers(C)
