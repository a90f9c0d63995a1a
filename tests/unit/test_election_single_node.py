"""SingleNodeElection: the embedded default (always master, epoch 1, no I/O) honours the Election protocol."""

from __future__ import annotations

import pytest

from cnf.agent.raft import Election, MasterInfo, SingleNodeElection
from cnf.clock import ManualClock
from cnf.errors import InvalidInput, NotFound


async def test_single_node_is_always_master_with_epoch_one() -> None:
    clock = ManualClock(start=1234.0)
    e = SingleNodeElection("A", "127.0.0.1:8080", clock=clock)
    assert isinstance(e, Election)
    seen: list[MasterInfo | None] = []
    e.on_change(seen.append)
    await e.start()
    assert e.is_master() and e.epoch() == 1
    info = await e.current_master()
    assert info == MasterInfo(cluster_id="A", address="127.0.0.1:8080", epoch=1, since=1234.0, lease_ttl_s=0.0)
    assert seen == [info]
    await e.hand_over("A")  # to itself: no-op
    with pytest.raises(NotFound):
        await e.hand_over("B")
    with pytest.raises(InvalidInput) as ei:
        await e.hand_over("")
    assert ei.value.field == "cluster_id"
    await e.stop()
    assert seen == [info, None]


def test_cluster_id_is_validated() -> None:
    with pytest.raises(InvalidInput):
        SingleNodeElection("a/b")
