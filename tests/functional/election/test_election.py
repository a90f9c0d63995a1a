"""EtcdElection against a real 3-member etcd 3.5 cluster: one master, crash failover, self-fencing, member loss."""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable

import pytest

from cnf.agent.etcd_gateway import EtcdGateway
from cnf.agent.raft import MASTER_KEY, EtcdElection, MasterInfo, master_info_from_kv
from cnf.errors import InvalidInput
from lab.etcd import EtcdCluster

from .conftest import TTL_S, Candidate, async_wait_until, wait_until

pytestmark = [pytest.mark.functional, pytest.mark.timeout(90)]

# Liveness bound for "a new master appears": lease expiry (<= TTL after the last keep-alive) + etcd's expiry check
# (500 ms) + a raft election when a member died (~1 s) + slack for a loaded 2-core CI machine.
FAILOVER_BOUND_S = 4 * TTL_S + 6


async def read_master(endpoints: list[str]) -> MasterInfo | None:
    gw = EtcdGateway(endpoints, request_timeout_s=2.0)
    try:
        kv = await gw.get(MASTER_KEY)
        return None if kv is None else master_info_from_kv(kv)
    finally:
        await gw.close()


def masters(elections: list[EtcdElection]) -> list[EtcdElection]:
    return [e for e in elections if e.is_master()]


async def test_one_master_among_candidates(make_election: Callable[..., EtcdElection]) -> None:
    elections = [make_election(n) for n in ("A", "B", "C", "D")]
    seen: dict[str, list[MasterInfo | None]] = {e.cluster_id: [] for e in elections}
    for e in elections:
        e.on_change(seen[e.cluster_id].append)
        await e.start()
    winner = (await async_wait_until(lambda: masters(elections), 10, "a master"))[0]
    epoch = winner.epoch()
    assert epoch is not None and epoch > 0
    # Sample the safety invariant for 1.5 TTL (several keep-alive rounds): never two masters, never another node
    # or another term (a loaded machine may make the winner fence itself for a moment; that is allowed).
    end = asyncio.get_running_loop().time() + 1.5 * TTL_S
    while asyncio.get_running_loop().time() < end:
        assert [e.cluster_id for e in masters(elections)] in ([winner.cluster_id], [])
        assert winner.epoch() in (epoch, None)
        await asyncio.sleep(0.05)
    await async_wait_until(winner.is_master, TTL_S, "the winner is (still) master")
    info = await elections[0].current_master()
    assert info is not None and (info.cluster_id, info.epoch, info.lease_ttl_s) == (winner.cluster_id, epoch, TTL_S)
    assert info.address == winner.address
    for e in elections:
        assert (e.epoch() is None) == (e is not winner)
        assert seen[e.cluster_id][-1] == info  # every node was told who the master is
    assert sorted(await elections[0].live_agents()) == ["A", "B", "C", "D"]


async def test_graceful_stop_hands_over_at_once_with_a_higher_epoch(
        make_election: Callable[..., EtcdElection]) -> None:
    elections = [make_election(n) for n in ("A", "B", "C")]
    for e in elections:
        await e.start()
    first = (await async_wait_until(lambda: masters(elections), 10, "a master"))[0]
    old_epoch = first.epoch()
    assert old_epoch is not None
    await first.stop()
    assert not first.is_master()
    rest = [e for e in elections if e is not first]
    # A revoked lease deletes the key immediately: the bound here is well under one TTL.
    second = (await async_wait_until(lambda: masters(rest), TTL_S, "a new master after resign"))[0]
    new_epoch = second.epoch()
    assert new_epoch is not None and new_epoch > old_epoch
    assert sorted(await second.live_agents()) == sorted(e.cluster_id for e in rest)


def test_sigkill_master_elects_another_with_higher_epoch(spawn_candidate: Callable[..., Candidate]) -> None:
    cands = [spawn_candidate(n) for n in ("A", "B", "C")]
    first = wait_until(lambda: next((c for c in cands if c.won()), None), 30, "a master among the candidates")
    old_epoch = first.won()[-1]["epoch"]
    first.signal(signal.SIGKILL)
    first.proc.wait(timeout=5)
    rest = [c for c in cands if c is not first]

    def new_master() -> dict[str, object] | None:
        return next((w for c in rest for w in c.won() if w["epoch"] > old_epoch), None)

    won = wait_until(new_master, FAILOVER_BOUND_S, "a new master after SIGKILL of the old one")
    assert won["cluster_id"] != first.cluster_id
    # The other survivor follows the new master (no second master for that term).
    other = next(c for c in rest if c.cluster_id != won["cluster_id"])
    wait_until(lambda: any(x["master"] == won["cluster_id"] for x in other.changes()), TTL_S * 2,
               "the other survivor sees the new master")
    assert not [w for w in other.won() if w["epoch"] == won["epoch"]]


def test_paused_master_fences_itself_before_a_new_master_exists(
        spawn_candidate: Callable[..., Candidate]) -> None:
    """SIGSTOP the master past its TTL: a new master is elected with a higher epoch; the old one's local deadline
    had already passed before that (is_master() was False from then on) and after SIGCONT it reports not-master
    before anything else and then follows the new master."""
    cands = [spawn_candidate(n, status_interval=0.05) for n in ("A", "B", "C")]
    old = wait_until(lambda: next((c for c in cands if c.won()), None), 30, "a master among the candidates")
    old_epoch = old.won()[-1]["epoch"]
    wait_until(lambda: any(x["event"] == "status" and x["is_master"] for x in old.snapshot()), 5,
               "the master reports is_master in its status")
    old.signal(signal.SIGSTOP)
    n_before = len(old.snapshot())
    rest = [c for c in cands if c is not old]
    new_win = wait_until(lambda: next((w for c in rest for w in c.won() if w["epoch"] > old_epoch), None),
                         FAILOVER_BOUND_S, "a new master while the old one is stopped")
    old.signal(signal.SIGCONT)
    after = wait_until(lambda: [x for x in old.snapshot()[n_before:] if x["event"] == "status"], 5,
                       "a status line from the resumed old master")
    first = after[0]
    assert first["is_master"] is False and first["epoch"] is None
    # The deadline it had when it was stopped (it cannot have been renewed since: its lease is gone) lies
    # before the moment the new master's txn returned (CLOCK_MONOTONIC is shared by all processes).
    assert first["deadline"] is not None and first["deadline"] < new_win["mono"]
    assert new_win["epoch"] > old_epoch
    # It never claims mastership again and ends up following the new master.
    wait_until(lambda: any(x["event"] == "change" and x["master"] == new_win["cluster_id"]
                           for x in old.snapshot()[n_before:]), 5, "the old master follows the new one")
    assert not any(x.get("is_master") for x in old.snapshot()[n_before:])


@pytest.mark.parametrize("which", ["follower-member", "raft-leader"])
def test_election_survives_loss_of_one_etcd_member(which: str, etcd: EtcdCluster,
                                                   spawn_candidate: Callable[..., Candidate]) -> None:
    """Kill one member of three (a follower member, or the Raft leader); the candidates all talk to that member
    first, so they must rotate. The master keeps its term; a crash of the master still fails over."""
    leader = etcd.leader_name()
    victim = leader if which == "raft-leader" else next(m.name for m in etcd.members if m.name != leader)
    endpoints = [etcd.member(victim).client_url] + [m.client_url for m in etcd.members if m.name != victim]
    cands = [spawn_candidate(n, endpoints=endpoints) for n in ("A", "B", "C")]
    master = wait_until(lambda: next((c for c in cands if c.won()), None), 30, "a master among the candidates")
    old_epoch = master.won()[-1]["epoch"]
    etcd.kill_member(victim)
    if which == "raft-leader":
        new_leader = etcd.leader_name(timeout=10)
        assert new_leader != victim
    # The master's lease outlives the member loss (a new Raft leader even renews every lease): same term.
    survivors = [m.client_url for m in etcd.members if m.name != victim]
    for _ in range(3):  # sampled over a few keep-alive periods
        info = asyncio.run(read_master(survivors))
        assert info is not None and (info.cluster_id, info.epoch) == (master.cluster_id, old_epoch)
        time.sleep(TTL_S / 3)
    rest = [c for c in cands if c is not master]
    master.signal(signal.SIGKILL)
    master.proc.wait(timeout=5)
    won = wait_until(lambda: next((w for c in rest for w in c.won() if w["epoch"] > old_epoch), None),
                     FAILOVER_BOUND_S, f"a new master with {victim} ({which}) down")
    assert won["cluster_id"] in {c.cluster_id for c in rest}
    # A fresh candidate can join with the member still down and sees the new master.
    late = spawn_candidate("D", endpoints=endpoints)
    wait_until(lambda: any(x["master"] == won["cluster_id"] for x in late.changes()), 10,
               "a late candidate follows the new master")


async def test_invalid_settings_are_refused() -> None:
    with pytest.raises(InvalidInput) as ei:
        EtcdElection(cluster_id="A", address="", endpoints=["127.0.0.1:1"], lease_ttl_s=1)
    assert ei.value.field == "lease_ttl_s"
    with pytest.raises(InvalidInput) as ei:
        EtcdElection(cluster_id="A", address="", endpoints=[])
    assert ei.value.field == "etcd_endpoints"
    with pytest.raises(InvalidInput) as ei:
        EtcdElection(cluster_id="a/b", address="", endpoints=["127.0.0.1:1"])
    assert ei.value.field == "cluster_id"


async def test_master_fences_itself_when_etcd_is_gone_and_the_election_recovers(
        etcd: EtcdCluster, make_election: Callable[..., EtcdElection]) -> None:
    """All three members down: nobody can renew, so the master's deadline passes and it stops acting (within one
    TTL of its last keep-alive); nobody else claims mastership. Once etcd is back, there is a master again."""
    elections = [make_election(n) for n in ("A", "B")]
    changes: list[MasterInfo | None] = []
    for e in elections:
        await e.start()
    master = (await async_wait_until(lambda: masters(elections), 10, "a master"))[0]
    master.on_change(changes.append)
    old_epoch = master.epoch()
    assert old_epoch is not None
    for m in etcd.members:
        etcd.kill_member(m.name)
    await async_wait_until(lambda: not masters(elections), TTL_S + 1, "the master fences itself")
    await async_wait_until(lambda: changes and changes[-1] is None, 0.5, "on_change(None): stop acting")
    for _ in range(20):  # and stays fenced while etcd is gone
        assert masters(elections) == []
        await asyncio.sleep(0.05)
    for m in etcd.members:
        etcd.restart_member(m.name, wait=False)
    await asyncio.to_thread(etcd.wait_healthy)
    back = (await async_wait_until(lambda: masters(elections), 4 * TTL_S + 10, "a master after etcd is back"))[0]
    assert (back.epoch() or 0) >= old_epoch  # the same term if the lease survived the restart, else a newer one
