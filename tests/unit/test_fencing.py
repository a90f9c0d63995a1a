"""Pure fencing decisions (cnf.agent.fencing): table-driven cases plus properties over random schedules."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from cnf.agent.fencing import (
    DEFAULT_LEASE_TTL_S,
    MIN_LEASE_TTL_S,
    NEVER,
    EpochVerdict,
    FencingPolicy,
    accepts_epoch,
    advance_deadline,
    check_epoch,
    compare_epoch,
    may_act,
    may_campaign,
    remaining_s,
    validate_epoch,
    validate_ttl,
)
from cnf.clock import ManualClock
from cnf.errors import Fenced, InvalidInput

# -- TTL validation ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("ttl", [2, 2.0, 5, 7.5, 60])
def test_valid_ttls_are_accepted(ttl: float) -> None:
    assert validate_ttl(ttl) == float(ttl)


@pytest.mark.parametrize("ttl", [0, 1, 1.99, -5, math.inf, math.nan, "5", None, True])
def test_invalid_ttls_name_the_field(ttl: object) -> None:
    with pytest.raises(InvalidInput) as ei:
        validate_ttl(ttl, field="raft.lease_ttl_s")
    assert ei.value.field == "raft.lease_ttl_s"


def test_defaults() -> None:
    assert DEFAULT_LEASE_TTL_S == 5.0 and MIN_LEASE_TTL_S == 2.0
    p = FencingPolicy()
    assert p.ttl_s == 5.0 and p.margin_s == pytest.approx(1.0) and p.keepalive_interval_s == pytest.approx(5 / 3)


@pytest.mark.parametrize(("kwargs", "field"), [
    ({"ttl_s": 1.0}, "lease_ttl_s"),
    ({"ttl_s": 5.0, "margin_fraction": 0.5}, "margin_fraction"),
    ({"ttl_s": 5.0, "margin_fraction": -0.1}, "margin_fraction"),
    ({"ttl_s": 2.0, "min_margin_s": 1.0}, "min_margin_s"),
    ({"ttl_s": 2.0, "min_margin_s": -1.0}, "min_margin_s"),
])
def test_policy_rejects_bad_settings(kwargs: dict[str, float], field: str) -> None:
    with pytest.raises(InvalidInput) as ei:
        FencingPolicy(**kwargs)
    assert ei.value.field == field


# -- local deadline ------------------------------------------------------------------------------------------------

# (ttl, sent_at, granted_ttl, expected deadline): margin = max(0.2, 0.2 * ttl)
DEADLINE_CASES = [
    (5.0, 100.0, None, 104.0),  # configured TTL, margin 1.0
    (5.0, 100.0, 5, 104.0),
    (2.0, 100.0, 2, 101.6),  # margin 0.4
    (10.0, 0.0, 10, 8.0),  # margin 2.0
    (5.0, 100.0, 3, 102.0),  # etcd answered with less than asked: trust the smaller TTL
    (5.0, 100.0, 9, 104.0),  # ... but never more than configured
    (5.0, 100.0, 0, NEVER),  # lease gone
    (5.0, 100.0, -1, NEVER),
]


@pytest.mark.parametrize(("ttl", "sent", "granted", "expected"), DEADLINE_CASES)
def test_deadline_after_send_time(ttl: float, sent: float, granted: float | None, expected: float) -> None:
    assert FencingPolicy(ttl_s=ttl).deadline_after(sent, granted) == pytest.approx(expected)


def test_min_margin_applies_when_fraction_is_small() -> None:
    assert FencingPolicy(ttl_s=2.0, margin_fraction=0.0, min_margin_s=0.3).margin_s == pytest.approx(0.3)


# (now, deadline, may act?) -- strict: at the deadline the answer is already no
MAY_ACT_CASES = [
    (99.0, 100.0, True),
    (99.999, 100.0, True),
    (100.0, 100.0, False),
    (100.001, 100.0, False),
    (0.0, NEVER, False),
    (-1e9, NEVER, False),
]


@pytest.mark.parametrize(("now", "deadline", "expected"), MAY_ACT_CASES)
def test_may_act(now: float, deadline: float, expected: bool) -> None:
    assert may_act(now, deadline) is expected


@pytest.mark.parametrize(("now", "deadline", "left"), [(99.0, 100.0, 1.0), (100.0, 100.0, 0.0),
                                                       (101.0, 100.0, 0.0), (5.0, NEVER, 0.0)])
def test_remaining(now: float, deadline: float, left: float) -> None:
    assert remaining_s(now, deadline) == pytest.approx(left)


def test_deadline_never_moves_backwards() -> None:
    assert advance_deadline(104.0, 103.0) == 104.0
    assert advance_deadline(104.0, 105.0) == 105.0
    assert advance_deadline(NEVER, 101.0) == 101.0


@pytest.mark.parametrize(("now", "last_ok_sent", "expired"), [
    (104.9, 100.0, False), (105.0, 100.0, True), (200.0, 100.0, True), (0.0, None, True)])
def test_lease_presumed_expired(now: float, last_ok_sent: float | None, expired: bool) -> None:
    assert FencingPolicy(ttl_s=5.0).lease_presumed_expired(now, last_ok_sent) is expired


def test_manual_clock_scenario_master_pauses_past_its_ttl() -> None:
    """Keep-alives every TTL/3 keep the master acting; a pause longer than TTL - margin fences it before etcd can
    have expired the lease (etcd's expiry is at the earliest send + TTL)."""
    clock = ManualClock(start=1000.0)
    policy = FencingPolicy(ttl_s=2.0)
    deadline = NEVER
    for _ in range(30):  # 10 s of healthy keep-alives
        sent = clock.now()
        deadline = advance_deadline(deadline, policy.deadline_after(sent, 2))
        assert may_act(clock.now(), deadline)
        clock.advance(policy.keepalive_interval_s)
        assert may_act(clock.now(), deadline)
    last_sent = clock.now()
    deadline = advance_deadline(deadline, policy.deadline_after(last_sent, 2))
    clock.advance(2.0 - policy.margin_s - 0.001)  # paused, no keep-alive answered
    assert may_act(clock.now(), deadline)
    clock.advance(0.001)
    assert not may_act(clock.now(), deadline)
    earliest_etcd_expiry = last_sent + 2.0
    assert clock.now() <= earliest_etcd_expiry - policy.margin_s + 1e-9


def test_a_late_answer_does_not_extend_beyond_its_send_time() -> None:
    """The answer to a keep-alive sent at t=100 arrives at t=103.5 (network stall): the deadline still counts from
    100, so at 103.5 the master has 0.5 s left, not TTL - margin."""
    clock = ManualClock(start=100.0)
    policy = FencingPolicy(ttl_s=5.0)
    sent = clock.now()
    clock.advance(3.5)
    deadline = policy.deadline_after(sent, 5)
    assert remaining_s(clock.now(), deadline) == pytest.approx(0.5)


@given(ttl=st.floats(min_value=2.0, max_value=60.0),
       gaps=st.lists(st.floats(min_value=0.0, max_value=120.0), min_size=1, max_size=40),
       frac=st.floats(min_value=0.0, max_value=0.49), min_margin=st.floats(min_value=0.0, max_value=0.99))
def test_property_never_acts_after_etcd_could_expire(ttl: float, gaps: list[float], frac: float,
                                                     min_margin: float) -> None:
    """Whatever the schedule of successful keep-alives, whenever may_act() is true the lease cannot have expired
    in etcd yet (now < last successful send + TTL), and the node is fenced at least ``margin`` before that."""
    policy = FencingPolicy(ttl_s=ttl, margin_fraction=frac, min_margin_s=min_margin)
    clock = ManualClock(start=0.0)
    deadline = NEVER
    last_sent: float | None = None
    for gap in gaps:
        sent = clock.now()
        deadline = advance_deadline(deadline, policy.deadline_after(sent, ttl))
        last_sent = sent
        for probe in (0.0, gap / 3, gap / 2, gap):
            now = sent + probe
            if may_act(now, deadline):
                assert last_sent is not None and now < last_sent + ttl - policy.margin_s + 1e-9
            else:
                assert now >= deadline
        clock.advance(gap)


@given(ttl=st.floats(min_value=2.0, max_value=60.0), jitter=st.floats(min_value=0.0, max_value=0.3))
def test_property_regular_keepalives_keep_the_master_acting(ttl: float, jitter: float) -> None:
    """Keep-alives every TTL/3 (even each answered up to 30 % of the period late) never let the deadline lapse."""
    policy = FencingPolicy(ttl_s=ttl)
    clock = ManualClock(start=0.0)
    deadline = policy.deadline_after(clock.now(), ttl)
    for _ in range(20):
        clock.advance(policy.keepalive_interval_s)
        sent = clock.now()
        clock.advance(policy.keepalive_interval_s * jitter)  # answer latency
        assert may_act(clock.now(), deadline)
        deadline = advance_deadline(deadline, policy.deadline_after(sent, ttl))


# -- epochs --------------------------------------------------------------------------------------------------------

EPOCH_CASES = [
    (5, None, EpochVerdict.FIRST, True),
    (5, 5, EpochVerdict.SAME, True),
    (6, 5, EpochVerdict.NEWER, True),
    (1000, 5, EpochVerdict.NEWER, True),
    (4, 5, EpochVerdict.STALE, False),
    (1, 2, EpochVerdict.STALE, False),
]


@pytest.mark.parametrize(("incoming", "highest", "verdict", "accepted"), EPOCH_CASES)
def test_epoch_table(incoming: int, highest: int | None, verdict: EpochVerdict, accepted: bool) -> None:
    assert compare_epoch(incoming, highest) is verdict
    assert accepts_epoch(incoming, highest) is accepted
    if accepted:
        assert check_epoch(incoming, highest) == max(incoming, highest or 0)
    else:
        with pytest.raises(Fenced) as ei:
            check_epoch(incoming, highest)
        assert ei.value.details == {"epoch": incoming, "highest_seen": highest}


@pytest.mark.parametrize("bad", [0, -1, True, False, 1.5, "3", None])
def test_invalid_epochs_are_refused(bad: object) -> None:
    with pytest.raises(InvalidInput) as ei:
        validate_epoch(bad)
    assert ei.value.field == "epoch"
    with pytest.raises(InvalidInput):
        compare_epoch(bad, 3)  # type: ignore[arg-type]
    if bad is not None:  # None as highest_seen means "nothing recorded yet"
        with pytest.raises(InvalidInput) as ei2:
            compare_epoch(3, bad)  # type: ignore[arg-type]
        assert ei2.value.field == "highest_seen"


@given(st.lists(st.integers(min_value=1, max_value=10**12), min_size=1, max_size=50))
def test_property_recorded_epoch_is_the_running_maximum(epochs: list[int]) -> None:
    """A receiver that records check_epoch() results accepts exactly the non-decreasing prefix maxima."""
    highest: int | None = None
    for e in epochs:
        expect_ok = highest is None or e >= highest
        try:
            new = check_epoch(e, highest)
        except Fenced:
            assert not expect_ok
            continue
        assert expect_ok and new == e and (highest is None or new >= highest)
        highest = new
    assert highest == max(epochs)  # the newest term always wins in the end


@given(a=st.integers(min_value=1, max_value=10**9), b=st.integers(min_value=1, max_value=10**9))
def test_property_exactly_one_direction_is_stale_unless_equal(a: int, b: int) -> None:
    assume(a != b)
    assert accepts_epoch(a, b) != accepts_epoch(b, a)


# -- hand-over stand-back ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("me", "target", "ok"), [("A", None, True), ("A", "A", True), ("A", "B", False)])
def test_may_campaign(me: str, target: str | None, ok: bool) -> None:
    assert may_campaign(me, target) is ok
