"""The QEMU driver's pure parts, against real ``query-migrate`` replies and events captured in lab/qemu.

No QEMU runs here (not marked ``lab``): the fixtures in ``tests/data/qemu/lab_query_migrate.json`` are copied from
``../shared/lab/qemu/results.jsonl`` (QEMU 7.2.22, TCG): an idle 256 MiB guest (``m256-idle-h0``), auto-converge
at 32 MiB/s (``bw32-d64-ac``), post-copy (``bw32-d16-pc``), a destination killed mid-copy (``f1b-kill-dst-active``),
a cancel in pre-switchover (``f5-cancel-pre``) and a cancel of a non-converging copy (``bw32-d64``).
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from cnf.errors import InvalidInput
from cnf.hypervisor.base import MigrationParams, MigrationProgress, guest_pause_ms
from cnf.hypervisor.qemu import QemuHypervisor, QemuMachine
from cnf.hypervisor.qmp_translation import (
    bandwidth_bytes_per_s,
    incoming_capabilities,
    progress_from_query_migrate,
    source_capabilities,
    source_parameters,
    stop_resume_times,
    validate_params,
)

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from lab.guest import _NewcArchive, build_initrd  # noqa: E402

DATA = json.loads((ROOT / "tests" / "data" / "qemu" / "lab_query_migrate.json").read_text())


def test_completed_idle_migration() -> None:
    p = progress_from_query_migrate(DATA["m256-idle-h0"]["final"], history=(10985472, 0))
    assert p.status == "completed"
    assert p.downtime_ms == DATA["m256-idle-h0"]["final"]["downtime"]
    assert p.passes == DATA["m256-idle-h0"]["final"]["ram"]["dirty-sync-count"]
    assert p.total_bytes == 268967936 and p.remaining_bytes == 0
    assert p.transferred_bytes == DATA["m256-idle-h0"]["final"]["ram"]["transferred"]
    assert p.history == (10985472, 0)
    assert p.percent == 100.0


def test_pre_switchover_snapshot() -> None:
    info = DATA["m256-idle-h0"]["at_pre_switchover"]
    p = progress_from_query_migrate(info)
    assert p.status == "pre-switchover"
    assert p.remaining_bytes == info["ram"]["remaining"] > 0
    assert p.expected_downtime_ms == info["expected-downtime"]
    assert p.downtime_ms is None  # QEMU reports downtime only once completed
    assert p.dirty_rate_bps == info["ram"]["dirty-pages-rate"] * info["ram"]["page-size"]
    assert 0 < p.percent < 100


def test_failed_and_cancelled_have_no_ram_stats() -> None:
    failed = progress_from_query_migrate(DATA["f1b-kill-dst-active"]["final"])
    assert failed.status == "failed"
    assert failed.error == "Unable to write to socket: Broken pipe"
    assert failed.transferred_bytes == 0 and failed.total_bytes == 0 and failed.percent == 0.0
    for run in ("f5-cancel-pre", "bw32-d64"):
        p = progress_from_query_migrate(DATA[run]["final"])
        assert p.status == "cancelled" and p.error == ""


def test_auto_converged_migration_reports_its_passes() -> None:
    p = progress_from_query_migrate(DATA["bw32-d64-ac"]["final"])
    assert p.status == "completed" and p.passes == 19
    assert p.transferred_bytes > 6 * p.total_bytes  # 19 passes re-sent the dirtied pages many times


def test_throttle_percentage_is_read_when_present() -> None:
    info: dict[str, Any] = {"status": "active", "cpu-throttle-percentage": 80, "ram": {"dirty-sync-count": 12}}
    assert progress_from_query_migrate(info).throttle_percent == 80
    assert progress_from_query_migrate({"status": "active"}).throttle_percent == 0


def _side(run: str, side: str) -> list[tuple[str, float]]:
    return [(e["event"], float(e["t"])) for e in DATA[run]["events"] if e["side"] == side]


def test_guest_pause_from_stop_and_resume_events() -> None:
    src_stop, src_resume = stop_resume_times(_side("m256-idle-h0", "src"))
    dst_stop, dst_resume = stop_resume_times(_side("m256-idle-h0", "dst"))
    assert src_stop == pytest.approx(0.589) and src_resume is None  # the source never runs again
    assert dst_stop is None and dst_resume == pytest.approx(0.707)  # the destination only resumes
    pause = guest_pause_ms(MigrationProgress(status="completed", stopped_at=src_stop),
                           MigrationProgress(status="none", resumed_at=dst_resume))
    assert pause == pytest.approx(118.0)


def test_cancel_in_pre_switchover_resumes_the_source() -> None:
    stop, resume = stop_resume_times(_side("f5-cancel-pre", "src"))
    assert stop is not None and resume is not None and resume >= stop


def test_pause_unknown_without_both_events() -> None:
    assert guest_pause_ms(MigrationProgress(status="completed"), MigrationProgress(status="none")) is None


def test_capabilities_are_all_explicit() -> None:
    caps = source_capabilities(MigrationParams(auto_converge=False, non_convergence_action="abort"), multifd=False)
    assert caps == {"events": True, "pause-before-switchover": True, "auto-converge": False, "postcopy-ram": False,
                    "multifd": False}
    caps = source_capabilities(MigrationParams(auto_converge=False, non_convergence_action="post_copy"), multifd=True)
    assert caps["postcopy-ram"] and caps["multifd"] and not caps["auto-converge"]
    assert source_capabilities(MigrationParams(auto_converge=False), multifd=False)["auto-converge"]
    params = MigrationParams(auto_converge=False, non_convergence_action="auto_converge_then_post_copy")
    both = source_capabilities(params, multifd=False)
    assert both["auto-converge"] and both["postcopy-ram"]


def test_bandwidth_is_megabits() -> None:
    assert bandwidth_bytes_per_s(8) == 1_000_000
    assert bandwidth_bytes_per_s(10_000) == 1_250_000_000


@pytest.mark.parametrize(("params", "field"), [
    (MigrationParams(downtime_limit_ms=0), "params.downtime_limit_ms"),
    (MigrationParams(max_bandwidth_mbps=-1), "params.max_bandwidth_mbps"),
    (MigrationParams(non_convergence_action="pray"), "params.non_convergence_action"),
    (MigrationParams(max_passes=0), "params.max_passes"),
])
def test_bad_params_name_the_field(params: MigrationParams, field: str) -> None:
    with pytest.raises(InvalidInput) as exc:
        validate_params(params)
    assert exc.value.field == field


async def test_bad_arguments_are_refused_before_any_qemu_call(tmp_path: Path) -> None:
    hv = QemuHypervisor("x", tmp_path, QemuMachine())
    with pytest.raises(InvalidInput) as exc:
        await hv.start_migration("vm1", "http://evil", MigrationParams())
    assert exc.value.field == "dest_uri"
    with pytest.raises(InvalidInput) as exc:
        await hv.domain("../etc")
    assert exc.value.field == "vm_id"
    with pytest.raises(InvalidInput) as exc:
        await hv.apply_convergence("vm1", "warp")
    assert exc.value.field == "action"
    with pytest.raises(InvalidInput) as exc:
        await hv.prepare_incoming("vm1", 0, "")
    assert exc.value.field == "ram_mb"
    assert await hv.domain("vm1") is None


def test_machine_argv() -> None:
    m = QemuMachine(kernel="/k", initrd="/i", append="console=ttyS0", disk_template="rbd:{image}:conf=/c")
    src = m.argv(name="vm1", ram_mb=256, qmp_path=Path("/r/q"), serial_path=Path("/r/s"), image="vms/vm1")
    dst = m.argv(name="vm1", ram_mb=256, qmp_path=Path("/r/q"), serial_path=Path("/r/s"), image="vms/vm1",
                 incoming=True)
    assert dst[:-2] == src and dst[-2:] == ["-incoming", "defer"]  # same machine on both sides
    assert "-accel" in src and src[src.index("-accel") + 1] == "tcg"
    drive = src[src.index("-drive") + 1]
    assert drive.startswith("file=rbd:vms/vm1:conf=/c,") and "werror=stop" in drive and "rerror=stop" in drive
    diskless = QemuMachine(disk_template="").argv(name="v", ram_mb=64, qmp_path=Path("/q"),
                                                  serial_path=Path("/s"), image="img")
    assert "-drive" not in diskless


def _cpio_names(data: bytes) -> dict[str, int]:
    names: dict[str, int] = {}
    pos = 0
    while True:
        assert data[pos:pos + 6] == b"070701"
        fields = [int(data[pos + 6 + 8 * i: pos + 14 + 8 * i], 16) for i in range(13)]
        mode, size, namesize = fields[1], fields[6], fields[11]
        name = data[pos + 110: pos + 110 + namesize - 1].decode()
        pos = (pos + 110 + namesize + 3) & ~3
        pos = (pos + size + 3) & ~3
        if name == "TRAILER!!!":
            return names
        names[name] = mode


def test_initramfs_is_a_valid_newc_archive(tmp_path: Path) -> None:
    out = tmp_path / "initrd.gz"
    build_initrd(None, out)
    names = _cpio_names(gzip.decompress(out.read_bytes()))
    assert names["init"] & 0o100755 == 0o100755
    assert names["dev/console"] & 0o170000 == 0o020000  # a character device
    assert "bin/busybox" in names
    arc = _NewcArchive()
    arc.file("x", b"abc")
    assert _cpio_names(arc.finish()) == {"x": 0o100755}


def test_source_parameters_carry_the_migration_s_limits() -> None:
    params = MigrationParams(downtime_limit_ms=75, max_bandwidth_mbps=8000, auto_converge=True, post_copy=False,
                             non_convergence_action="auto_converge")
    out = source_parameters(params)
    assert out["downtime-limit"] == 75 and out["max-bandwidth"] == 1_000_000_000
    assert "multifd-channels" not in out
    assert source_parameters(params, multifd_channels=4)["multifd-channels"] == 4


def test_the_destination_opens_its_disk_late() -> None:
    caps = incoming_capabilities(multifd=False)
    assert caps["late-block-activate"] and caps["events"] and not caps["multifd"]
    assert incoming_capabilities(multifd=True, postcopy=False) == {
        "events": True, "late-block-activate": True, "postcopy-ram": False, "multifd": True}
