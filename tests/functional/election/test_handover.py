"""Graceful hand-over (``master elect <cluster-id>``) against real etcd."""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable

import pytest

from cnf.agent.etcd_gateway import EtcdGateway
from cnf.agent.raft import HANDOVER_KEY, HANDOVER_READY_KEY, EtcdElection
from cnf.errors import NotFound, NotMaster, StepTimeout
from lab.etcd import EtcdCluster

from .conftest import TTL_S, Candidate, async_wait_until

pytestmark = [pytest.mark.functional, pytest.mark.timeout(60)]


async def _started(make_election: Callable[..., EtcdElection], *names: str, **kw: object) -> list[EtcdElection]:
    out = [make_election(n, **kw) for n in names]
    for e in out:
        await e.start()
    return out


async def _master_of(elections: list[EtcdElection]) -> EtcdElection:
    found: list[EtcdElection] = await async_wait_until(lambda: [e for e in elections if e.is_master()], 10,
                                                       "a master")
    return found[0]


async def _handover_keys(endpoints: list[str]) -> list[str]:
    gw = EtcdGateway(endpoints)
    try:
        _, kvs = await gw.range(HANDOVER_KEY, HANDOVER_READY_KEY + "\0")
        return [kv.key for kv in kvs]
    finally:
        await gw.close()


async def test_hand_over_to_a_live_target(etcd: EtcdCluster, make_election: Callable[..., EtcdElection]) -> None:
    elections = await _started(make_election, "A", "B", "C")
    old = await _master_of(elections)
    old_epoch = old.epoch()
    assert old_epoch is not None
    target, bystander = [e for e in elections if e is not old]
    violations: list[str] = []

    async def watch_invariants() -> None:  # sampled during the whole hand-over
        while True:
            current = [e.cluster_id for e in elections if e.is_master()]
            if len(current) > 1 or bystander.is_master():
                violations.append(f"masters={current}")
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(watch_invariants())
    try:
        await old.hand_over(target.cluster_id)
        assert not old.is_master() and old.epoch() is None  # resigned before hand_over returned
        await async_wait_until(target.is_master, 2 * TTL_S, "the target becomes master")
    finally:
        sampler.cancel()
    assert violations == []
    new_epoch = target.epoch()
    assert new_epoch is not None and new_epoch > old_epoch
    info = await bystander.current_master()
    assert info is not None and (info.cluster_id, info.epoch) == (target.cluster_id, new_epoch)
    assert await _handover_keys(etcd.endpoints) == []  # the winner removed the pending record atomically
    # The old master stays a follower and registered; it can be handed the role back.
    await target.hand_over(old.cluster_id)
    await async_wait_until(old.is_master, 2 * TTL_S, "hand-over back to the first master")
    assert (old.epoch() or 0) > new_epoch


async def test_hand_over_to_self_is_a_no_op(make_election: Callable[..., EtcdElection]) -> None:
    elections = await _started(make_election, "A", "B")
    m = await _master_of(elections)
    epoch = m.epoch()
    await m.hand_over(m.cluster_id)
    assert m.is_master() and m.epoch() == epoch


async def test_hand_over_to_an_unknown_target_is_refused(etcd: EtcdCluster,
                                                        make_election: Callable[..., EtcdElection]) -> None:
    elections = await _started(make_election, "A", "B")
    m = await _master_of(elections)
    epoch = m.epoch()
    with pytest.raises(NotFound) as ei:
        await m.hand_over("nosuchcloud")
    assert "unknown or down" in str(ei.value) and ei.value.details["cluster_id"] == "nosuchcloud"
    assert m.is_master() and m.epoch() == epoch
    assert await _handover_keys(etcd.endpoints) == []


async def test_hand_over_to_a_dead_target_is_refused(etcd: EtcdCluster, make_election: Callable[..., EtcdElection],
                                                    spawn_candidate: Callable[..., Candidate]) -> None:
    (m,) = await _started(make_election, "A")
    await _master_of([m])
    epoch = m.epoch()
    z = spawn_candidate("Z")
    await async_wait_until(lambda: z.changes(), 10, "Z runs and follows A")
    assert "Z" in await m.live_agents()
    z.signal(signal.SIGKILL)
    z.proc.wait(timeout=5)

    async def z_gone() -> bool:
        return "Z" not in await m.live_agents()

    for _ in range(int((TTL_S + 3) / 0.1)):  # its registration expires with its lease
        if await z_gone():
            break
        await asyncio.sleep(0.1)
    assert await z_gone()
    with pytest.raises(NotFound):
        await m.hand_over("Z")
    assert m.is_master() and m.epoch() == epoch


async def test_hand_over_to_an_unresponsive_target_times_out_and_master_stays(
        etcd: EtcdCluster, make_election: Callable[..., EtcdElection],
        spawn_candidate: Callable[..., Candidate]) -> None:
    (m,) = await _started(make_election, "A", handover_timeout_s=2.0)
    await _master_of([m])
    epoch = m.epoch()
    z = spawn_candidate("Z", ttl=30.0)  # its registration outlives the pause below
    await async_wait_until(lambda: z.changes(), 10, "Z runs and follows A")
    z.signal(signal.SIGSTOP)  # registered (lease alive) but cannot acknowledge
    try:
        with pytest.raises(StepTimeout) as ei:
            await m.hand_over("Z")
        assert "did not acknowledge" in str(ei.value)
    finally:
        z.signal(signal.SIGCONT)
    assert m.is_master() and m.epoch() == epoch
    assert await _handover_keys(etcd.endpoints) == []  # pending record revoked: nobody keeps standing back


async def test_a_follower_cannot_hand_over(make_election: Callable[..., EtcdElection]) -> None:
    elections = await _started(make_election, "A", "B")
    m = await _master_of(elections)
    follower = next(e for e in elections if e is not m)
    with pytest.raises(NotMaster):
        await follower.hand_over(m.cluster_id)


async def test_candidates_stand_back_while_a_hand_over_to_another_is_pending(
        etcd: EtcdCluster, make_election: Callable[..., EtcdElection]) -> None:
    """A pending hand-over naming someone else keeps a candidate from campaigning, but only until the record's
    own lease expires (so a target that died after the old master resigned cannot block the election)."""
    gw = EtcdGateway(etcd.endpoints)
    try:
        lease, _ = await gw.lease_grant(3)
        await gw.put(HANDOVER_KEY, json.dumps({"target": "Z", "from": "old", "epoch": 1}), lease=lease)
        (c,) = await _started(make_election, "C")
        saw_pending = 0
        while await gw.get(HANDOVER_KEY) is not None:
            assert not c.is_master()
            saw_pending += 1
            await asyncio.sleep(0.05)
        assert saw_pending > 5
        await async_wait_until(c.is_master, TTL_S + 2, "C campaigns once the pending hand-over expired")
    finally:
        await gw.close()
