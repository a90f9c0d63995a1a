"""One live migration with the real parts real, there and back (issue 14, first slice).

The guest (tiny kernel + busybox, disk = RBD image at Ceph site a) is live-migrated to cloud b by CNF's
``MigrationEngine`` with the real storage (``CephRbdMirror``), BGP (``FrrBgpSpeaker``) and hypervisor
(``QemuHypervisor``) drivers; the cloud port is ``SimCloud``. Then it is moved back. What is checked comes from
the components themselves, not from CNF's record: the serial heartbeat, QEMU's run state on both hosts, the image's
mirror role at both sites, which FRR originates the /32, the route server's kernel route, and a block written
through the source QEMU read back at the destination. No timing is asserted here (benchmarks/e2e_live.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lab.e2e import E2ELab, state_of_world

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]


def _assert_moved(lab: E2ELab, fig: dict[str, Any], src: str, dst: str) -> None:
    assert fig["state"] == "completed", fig["error"]
    assert (fig["from"], fig["to"]) == (src, dst)
    hb = fig["heartbeat"]
    # the same guest keeps counting on the destination: no reboot, no lost or repeated beat
    assert hb["continues"], hb
    assert hb["destination_beats"] >= 3, hb
    world = state_of_world(lab)
    assert world["running"] == [dst], world
    assert world["primary"] == [dst], world
    assert world["announcing"] == [dst], world
    assert world["rs_best_next_hop"] == lab.next_hop(dst), world
    assert fig["integrity"]["ok"], fig["integrity"]
    # the lab's own instruments saw the switch: QEMU's STOP/RESUME and a pause/blackout figure
    assert fig["guest_pause_ms_stop_resume"] is not None and fig["guest_pause_ms_stop_resume"] > 0
    assert fig["network_blackout_ms"] > 0


def test_live_migration_there_and_back(e2e_lab: E2ELab) -> None:
    before = state_of_world(e2e_lab)
    assert before["running"] == ["a"] and before["primary"] == ["a"] and before["announcing"] == ["a"], before

    there = asyncio.run(e2e_lab.migrate())
    _assert_moved(e2e_lab, there, "a", "b")

    back = asyncio.run(e2e_lab.migrate())
    _assert_moved(e2e_lab, back, "b", "a")
