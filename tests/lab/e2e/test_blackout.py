"""The lab's blackout rule (pure): longest interval in which the route server's route leads to no running guest."""

from __future__ import annotations

from lab.e2e import blackout_ms

A, B = "10.255.0.1", "10.255.0.2"


def test_route_switches_after_resume_blackout_runs_from_stop_to_switch() -> None:
    changes = [(0.0, A), (5.0, B)]
    assert blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 3000.0


def test_route_switched_before_resume_blackout_is_the_pause() -> None:
    changes = [(0.0, A), (2.5, B)]
    assert blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 1000.0


def test_route_switched_before_stop_counts_from_the_switch() -> None:
    changes = [(0.0, A), (1.0, B)]
    assert blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=3.0) == 2000.0


def test_route_missing_for_a_while_after_resume_is_the_longest_gap() -> None:
    changes = [(0.0, A), (3.5, B), (6.0, None), (8.0, B)]
    assert blackout_ms(changes, 0.0, 10.0, A, B, stop_at=2.0, resume_at=2.2) == 2000.0


def test_guest_never_resumed_blackout_lasts_to_the_end() -> None:
    assert blackout_ms([(0.0, A)], 0.0, 10.0, A, B, stop_at=4.0, resume_at=None) == 6000.0
