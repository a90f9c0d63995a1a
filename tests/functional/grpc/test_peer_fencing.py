"""Peer-side fencing: every mutating call carries the master's epoch; lower ones are refused, durably."""

from __future__ import annotations

from pathlib import Path

import pytest
from peer_federation import CLUSTERS, MASTER, Federation

from cnf.errors import Fenced, InvalidInput, NotMaster
from cnf.grpc.epoch import FileEpochStore
from cnf.grpc.peer_client import ControlClient, connect_drivers
from cnf.grpc.server import PeerServer
from cnf.grpc.wire import pb
from cnf.sim.demo import sim_drivers

A, B, _C = CLUSTERS

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


async def test_stale_epoch_is_refused_and_nothing_runs(federation: Federation) -> None:
    new_master = await federation.remote(A)
    vm = (await new_master.cloud.list_servers())[0]
    old_epoch = [7]
    old_master = await connect_drivers(federation.connection(A, epoch_provider=lambda: old_epoch[0]))
    await old_master.cloud.stop_server(vm.id)  # epoch 7: accepted while nothing newer was seen
    await new_master.cloud.start_server(vm.id)  # epoch 10 raises the bar
    effects_before = dict(federation.fabric.effects)
    with pytest.raises(Fenced) as exc:
        await old_master.cloud.stop_server(vm.id)
    assert (exc.value.details["epoch"], exc.value.details["highest_seen"]) == (7, 10)
    with pytest.raises(Fenced):
        await old_master.bgp.withdraw(f"{vm.ip}/32")
    with pytest.raises(Fenced):
        await old_master.storage.demote(vm.image)
    assert dict(federation.fabric.effects) == effects_before
    assert (await new_master.cloud.get_server(vm.id)).status == "ACTIVE"  # type: ignore[union-attr]
    # reads are not fenced: an old master may still look
    assert await old_master.cloud.get_server(vm.id) is not None
    records = [r for r in federation.servers[A].recent_calls if r.epoch == 7]
    assert [r.outcome for r in records] == ["ok", "fenced", "fenced", "fenced"]


async def test_fencing_survives_an_agent_restart(federation: Federation, tmp_path: Path) -> None:
    store_path = tmp_path / "restart" / "peer-epoch"
    srv = PeerServer(sim_drivers(federation.fabric, A), tls=federation.pki.files(A), known_peers={MASTER},
                     epoch_store=FileEpochStore(store_path))
    await srv.start()
    try:
        vm_id = next(iter(federation.fabric.clusters[A].servers))
        await federation.connection(A, target=srv.address, epoch_provider=lambda: 42).write(
            "CloudStartServer", lambda e: pb.VmMutation(epoch=e, vm_id=vm_id))
    finally:
        await srv.stop(0)
    assert store_path.read_text().strip() == "42"
    restarted = PeerServer(sim_drivers(federation.fabric, A), tls=federation.pki.files(A), known_peers={MASTER},
                           epoch_store=FileEpochStore(store_path))
    await restarted.start()
    try:
        stale = federation.connection(A, target=restarted.address, epoch_provider=lambda: 41)
        with pytest.raises(Fenced):
            await (await connect_drivers(stale)).cloud.start_server("any-vm")
        status = await ControlClient(stale).status()
        assert status.highest_epoch == 42
    finally:
        await restarted.stop(0)


async def test_newer_epoch_is_accepted_and_persisted(federation: Federation) -> None:
    remote = await federation.remote(B)
    vm = (await remote.cloud.list_servers())[0]
    federation.epoch[0] = 11
    await remote.cloud.start_server(vm.id)
    federation.epoch[0] = 10
    with pytest.raises(Fenced):
        await remote.cloud.start_server(vm.id)
    assert (await ControlClient(federation.connection(B)).status()).highest_epoch == 11


async def test_no_epoch_means_no_mutating_call(federation: Federation) -> None:
    follower = await connect_drivers(federation.connection(A, epoch_provider=lambda: None))
    with pytest.raises(NotMaster):
        await follower.cloud.stop_server("any-vm")
    with pytest.raises(NotMaster):
        await (await connect_drivers(federation.connection(A, epoch_provider=lambda: 0))).bgp.withdraw("10.0.0.1/32")
    assert all(r.epoch is None for r in federation.servers[A].recent_calls)  # nothing was sent


async def test_a_request_without_epoch_is_invalid(federation: Federation) -> None:
    conn = federation.connection(A)
    with pytest.raises(InvalidInput) as exc:
        await conn.write("CloudStopServer", lambda _e: pb.VmMutation(epoch=0, vm_id="any-vm"))
    assert exc.value.field == "epoch"


async def test_handover_is_fenced_too(federation: Federation) -> None:
    await (await federation.remote(A)).cloud.start_server(next(iter(federation.fabric.clusters[A].servers)))
    stale = ControlClient(federation.connection(A, epoch_provider=lambda: 3))
    with pytest.raises(Fenced):
        await stale.handover_prepare()


def test_epoch_file_store_rejects_a_corrupt_file(tmp_path: Path) -> None:
    from cnf.errors import ConfigError

    path = tmp_path / "peer-epoch"
    path.write_text("not a number")
    with pytest.raises(ConfigError):
        FileEpochStore(path)
    path.unlink()
    store = FileEpochStore(path)
    assert store.highest() == 0
    assert store.admit(5) == 5 and store.admit(5) == 5
    with pytest.raises(Fenced):
        store.admit(4)
    assert FileEpochStore(path).highest() == 5
