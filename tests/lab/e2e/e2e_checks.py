"""Checks the e2e lab tests share (in-process engine and through the agents): what the components say, not CNF."""

from __future__ import annotations

from typing import Any

from lab.e2e import E2ELab, ping_check, state_of_world


def assert_guest_disk_intact(fig: dict[str, Any], serving: str) -> None:
    """The guest's own disk records (``lab.guest`` ``disk_ms``) say the handover lost no write and it writes on."""
    i = fig["integrity"]
    assert i["ok"] is True and i["cloud"] == serving, i
    assert not i["bad"] and i["continues"] and i["contiguous"], i
    # the first record after the switchover is the one after the last before: its read returned that record
    assert i["first_after"] == i["last_before"] + 1, i
    assert i["records_before"] >= 1 and i["records_after_end"] >= 2, i  # the guest kept writing afterwards
    assert i["site_ok"] and i["site_record"] >= i["site_last_seen"], i


def assert_served_by(lab: E2ELab, cid: str, *, via_qmp: bool = True) -> None:
    """The VM runs, owns its disk, is announced and answers pings in cloud ``cid`` only (``via_qmp=False`` while
    the agents hold the QMP connections: "runs" = its QEMU lives and its heartbeat advances)."""
    world = state_of_world(lab, via_qmp=via_qmp)
    assert world["running"] == [cid], world
    assert world["primary"] == [cid], world
    assert world["announcing"] == [cid], world
    assert world["rs_best_next_hop"] == lab.next_hop(cid), world
    assert world["host_routes"] == [cid], world
    pings = ping_check(lab)
    assert pings["ok"], pings
    assert pings["through"] == [cid], pings
