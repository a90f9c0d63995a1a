"""One live migration with the real parts real, there and back, and one that fails before the point of no return.

The guest (tiny kernel + busybox, disk = RBD image, NIC = virtio-net on a tap in its host's namespace with the
VM's /32) is live-migrated by CNF's ``MigrationEngine`` with the real storage (``CephRbdMirror``), BGP
(``FrrBgpSpeaker``) and hypervisor (``QemuHypervisor``) drivers; the cloud port is ``SimCloud``. A probe outside
both clouds pings the VM every 10 ms through each run. What is checked comes from the components themselves, not
from CNF's record: the serial heartbeat, the probe's replies and the taps they went through, QEMU's run state on
both hosts, the image's mirror role at both sites, which FRR originates the /32, the route server's best path, the
hosts' routes, and the guest's own disk records: the guest reads back (O_DIRECT) the record it wrote last to its
RBD disk and writes the next one every 200 ms; the first read after the move must return the source's last write,
no read may be BAD, the guest must go on writing, and the serving site's image (read through librbd) must hold
its latest record. No timing is asserted
(benchmarks/e2e_live.py measures it); one lab bring-up serves every test (session fixture, conftest.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from e2e_checks import assert_guest_disk_intact, assert_served_by

from lab.e2e import E2ELab
from lab.e2e_report import print_report

pytestmark = [pytest.mark.lab]


def _assert_pings_before(fig: dict[str, Any]) -> None:
    pr = fig["probe"]
    assert pr["answered_before_migration"] >= 10, pr  # the probe reached the VM before the move ...
    assert pr["answered_before_stop"] > 0, pr  # ... and during pre-copy, until the guest stopped


def _assert_moved(lab: E2ELab, fig: dict[str, Any], src: str, dst: str) -> None:
    print_report(fig)  # the timeline and the figures (shown with -s, or with the failure)
    assert fig["state"] == "completed", fig["error"]
    assert (fig["from"], fig["to"]) == (src, dst)
    assert not fig["guest_kernel_errors"], fig["guest_kernel_errors"]
    hb = fig["heartbeat"]
    # the same guest keeps counting on the destination: no reboot, no lost or repeated beat
    assert hb["continues"], hb
    assert hb["destination_beats"] >= 3, hb
    _assert_pings_before(fig)
    pr = fig["probe"]
    # the replies resumed, and after the run they came through the destination host's tap only
    assert pr["resumed"] and pr["answered_after_end"] >= 20, pr
    assert pr["replies_after_end_from"] == [dst], pr
    assert fig["network_blackout_ms"] > 0, pr  # the guest did pause: some requests must have been lost
    assert_guest_disk_intact(fig, dst)
    assert fig["guest_pause_ms_stop_resume"] is not None and fig["guest_pause_ms_stop_resume"] > 0
    assert_served_by(lab, dst)


@pytest.mark.timeout(600)
def test_live_migration_there_and_back(e2e_lab: E2ELab) -> None:
    src = e2e_lab.where
    dst = "b" if src == "a" else "a"
    assert_served_by(e2e_lab, src)

    there = asyncio.run(e2e_lab.migrate())
    _assert_moved(e2e_lab, there, src, dst)

    back = asyncio.run(e2e_lab.migrate())
    _assert_moved(e2e_lab, back, dst, src)


@pytest.mark.timeout(300)
def test_destination_dies_before_the_point_of_no_return_vm_stays_at_source(e2e_lab: E2ELab) -> None:
    src = e2e_lab.where
    fig = asyncio.run(e2e_lab.migrate(fail_before_promote=True))
    print_report(fig)
    assert fig["state"] == "failed", fig.get("timeline")
    assert fig["error"] and fig["error"]["step"] == "cutover.promote_destination", fig["error"]
    assert e2e_lab.where == src
    # the source was paused in pre-switchover when the destination died; it runs on, same guest, same counter
    assert not fig["guest_kernel_errors"], fig["guest_kernel_errors"]
    hb = fig["heartbeat"]
    assert hb["source_beats_after_end"] >= 3 and hb["source_continues"], hb
    assert hb["first_destination"] is None, hb  # the destination never ran the guest
    _assert_pings_before(fig)
    pr = fig["probe"]
    assert pr["resumed"] and pr["answered_after_end"] >= 20, pr
    assert pr["replies_after_end_from"] == [src], pr
    assert_guest_disk_intact(fig, src)
    assert_served_by(e2e_lab, src)
