"""Live migration of the lab guest by CNF (full engine run: sim Nova/Ceph/BGP, real QEMU) versus raw QMP.

Why: CNF adds a switchover window (``pause-before-switchover``: the storage handover and the BGP flip run while
the source vCPUs are stopped) and orchestration around QEMU's own migration. This measures what that costs, in
the same run and on the same guest image/RAM size, against the bare QMP sequence a person would type
(``migrate-incoming`` + ``migrate``, no pause, wait for ``completed``).

The guests' RAM is really used: each boots with ``fill_mb`` (lab/guest.py), i.e. writes that many MiB of
``/dev/urandom`` into a tmpfs once before its first heartbeat and then stays idle (default 160 MiB of a 256 MiB
guest, 832 MiB of a 1 GiB guest: what the guest kernel leaves free, minus ~30 MiB of room). Idle after the fill on
purpose: under QEMU 7.2 TCG a guest that keeps dirtying memory can be corrupted by a migration.

Same QEMU settings on both sides, taken from the product's own code: the options are ``MigrationOptions()``
(downtime-limit 50 ms, max-bandwidth 10 000 Mbit/s, auto-converge), turned into QMP by
``cnf.migration.steps.migration_params``, ``qmp_translation.source_capabilities`` / ``source_parameters`` /
``incoming_capabilities``. The one difference is the point of the comparison: raw QMP runs without
``pause-before-switchover`` (nothing to do in the window). A CNF guest and a raw guest of each size run side by
side, and the runs alternate (CNF first, then raw first, ...) so load changes hit both.

Per run and RAM size (TCG):
- ``pause_ms``: guest-visible pause = source STOP -> destination RESUME (QEMU's own event timestamps);
- ``qemu_downtime_ms``: QEMU's ``downtime`` (it includes the pre-switchover window);
- ``handover_window_ms``: source STOP -> ``cutover.switchover`` started (the engine noticed pre-switchover and ran
  the CUTOVER storage steps; ``migrate-continue`` follows);
- ``total_s`` (the issue's "total time"), the same span measured the same way on both sides: *the destination
  QEMU is asked for* (CNF: ``memory.prepare_incoming`` step started; raw: just before spawning it) -> *the guest
  runs on the destination* (the destination's RESUME event, QEMU's timestamp). CNF's span includes the destination
  start through the driver, the early BGP announce, the pre-copy, the pre-switchover window with the storage
  handover and the engine's step changes; raw's the same QEMU start, QMP set-up and copy.
  ``total_ratio_<size>`` = median CNF total / median raw total per size; ``total_ratio_vs_raw_qmp`` is the worst
  of the per-size ratios (the target must hold for each size). ``total_ratio_fastest_<size>``: fastest CNF run
  over fastest raw run. ``added_ms_outside_copy_<size>``: median of (total - copy) for CNF minus the same for raw,
  where copy = ``migrate`` issued (CNF: ``memory.precopy`` started) -> source STOP. The copy is QEMU's work with
  the same settings on both sides, but on a 2-core TCG host it alone varies ~5x from run to run (both sides), so
  a ratio of medians of a few runs mostly measures that noise; this figure is what CNF itself adds.
- ``engine_total_s``: CNF's span until the engine *knows* (``cutover.switchover`` done), for reference;
  ``whole_run_ratio_vs_raw_qmp`` is CNF's whole engine run (PREFLIGHT, the sim disk sync, receiver creation,
  CLEANUP too) over the raw span: work raw QMP does not do at all.
Numbers on a loaded 2-core TCG machine are noisy: read medians, and re-measure on KVM before trusting them.

Run: ``.venv/bin/python benchmarks/live_migration.py [--runs 3] [--sizes 256,1024] [--fill 256:160,1024:832]``;
the last line is the BENCH line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import structlog
from qemu.qmp import QMPClient

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cnf.hypervisor.base import guest_pause_ms  # noqa: E402
from cnf.hypervisor.qemu import QMP_CONNECT_POLL_S, QemuHypervisor, QemuMachine  # noqa: E402
from cnf.hypervisor.qmp_translation import (  # noqa: E402
    incoming_capabilities,
    source_capabilities,
    source_parameters,
)
from cnf.migration.model import MigrationKind, MigrationOptions, MigrationState  # noqa: E402
from cnf.migration.steps import STEP_TABLES, migration_params  # noqa: E402
from lab.qemu import CnfOnQemu, QemuLab, heartbeats, wait_heartbeats  # noqa: E402

#: the product's defaults, used by both sides
OPTIONS = MigrationOptions()
#: MiB of random data each guest writes at boot, by RAM size (MemFree after boot: ~188 / ~934 MiB)
DEFAULT_FILL = {256: 160, 1024: 832}
BOOT_WITHIN_S = 600.0  # filling 832 MiB from /dev/urandom takes ~30 s under TCG on an idle host


def fill_for(ram_mb: int, table: dict[int, int]) -> int:
    return table.get(ram_mb, ram_mb * 5 // 8)


def size_label(ram_mb: int) -> str:
    return f"{ram_mb // 1024}g" if ram_mb % 1024 == 0 else f"{ram_mb}m"


def _ts(ev: Any) -> float:
    t = ev.get("timestamp") or {}
    return float(t.get("seconds", 0)) + float(t.get("microseconds", 0)) / 1e6


class RawPair:
    """Two QEMU processes driven by plain QMP commands (the baseline), migrating one guest back and forth."""

    def __init__(self, root: Path, machine: QemuMachine, ram_mb: int, append: str) -> None:
        self.root, self.machine, self.ram_mb, self.append = root, machine, ram_mb, append
        self.procs: list[subprocess.Popen[bytes]] = []
        self.n = 0

    def _spawn(self, incoming: bool) -> tuple[subprocess.Popen[bytes], Path, Path]:
        self.n += 1
        d = self.root / f"raw{self.n}"
        d.mkdir(parents=True)
        argv = self.machine.argv(name=f"raw{self.n}", ram_mb=self.ram_mb, qmp_path=d / "qmp.sock",
                                 serial_path=d / "serial.log", append=self.append, incoming=incoming)
        with (d / "qemu.log").open("wb") as log:
            # own session, as the driver starts QEMU (it must outlive the agent): the same scheduling on both sides
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self.procs.append(proc)
        return proc, d / "qmp.sock", d / "serial.log"

    @staticmethod
    async def _connect(path: Path) -> QMPClient:
        for _ in range(3000):
            if path.exists():  # noqa: ASYNC240 - one stat, as the driver does
                c = QMPClient("raw")
                try:
                    await c.connect(str(path))
                    return c
                except Exception:
                    await asyncio.sleep(QMP_CONNECT_POLL_S)
                    continue
            await asyncio.sleep(QMP_CONNECT_POLL_S)  # as often as the driver looks (a fair baseline)
        raise RuntimeError(f"no QMP at {path}")

    async def boot(self) -> None:
        self.src, qmp, self.serial = self._spawn(incoming=False)
        self.src_qmp = await self._connect(qmp)
        await wait_heartbeats(self.serial, count=3, within_s=BOOT_WITHIN_S)

    async def migrate(self) -> dict[str, float]:
        """One raw migration src -> new dst with CNF's QEMU settings minus pause-before-switchover."""
        params = migration_params(OPTIONS)
        t0 = time.time()  # wall clock, as QEMU's event timestamps (and the engine's event log)
        dst, dqmp_path, dserial = self._spawn(incoming=True)
        dqmp = await self._connect(dqmp_path)
        src_events, dst_events = self.src_qmp.events, dqmp.events
        src_events.clear()
        await dqmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": k, "state": v} for k, v in incoming_capabilities(multifd=False).items()]})
        await dqmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        info: Any = await dqmp.execute("query-migrate")
        port = info["socket-address"][0]["port"]
        caps = {**source_capabilities(params, multifd=False), "pause-before-switchover": False}
        await self.src_qmp.execute("migrate-set-capabilities", {"capabilities": [
            {"capability": k, "state": v} for k, v in caps.items()]})
        await self.src_qmp.execute("migrate-set-parameters", source_parameters(params))
        await self.src_qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        t_migrate = time.time()
        stop = resume = None
        while True:
            ev: dict[str, Any] = dict(await asyncio.wait_for(src_events.get(), 300))
            if ev["event"] == "STOP" and stop is None:
                stop = _ts(ev)
            if ev["event"] == "MIGRATION" and ev["data"]["status"] in ("completed", "failed", "cancelled"):
                status = str(ev["data"]["status"])
                break
        if status != "completed":
            raise RuntimeError(f"raw migration {status}")
        while resume is None:
            ev = dict(await asyncio.wait_for(dst_events.get(), 30))
            if ev["event"] == "RESUME":
                resume = _ts(ev)
        final: Any = await self.src_qmp.execute("query-migrate")
        last = max(heartbeats(self.serial))
        await self.src_qmp.execute("quit")
        with contextlib.suppress(Exception):  # the peer closes the socket on quit: EOF is expected
            await self.src_qmp.disconnect()
        self.src.wait(10)
        self.src, self.src_qmp, self.serial = dst, dqmp, dserial
        await wait_heartbeats(dserial, above=last, count=2, within_s=30)  # the guest continues
        assert stop is not None
        return {"total_s": resume - t0, "setup_s": t_migrate - t0, "copy_s": stop - t_migrate,
                "pause_ms": (resume - stop) * 1000.0,
                "qemu_downtime_ms": final["downtime"], "transferred_mib": final["ram"]["transferred"] / 2**20}

    async def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


class CnfSide:
    """One guest migrated back and forth between the lab's two QEMU hosts by CNF's engine."""

    def __init__(self, lab: QemuLab, vm: str, ram_mb: int, append: str) -> None:
        self.hosts: dict[str, QemuHypervisor] = lab.fresh_hosts()
        self.cnf = CnfOnQemu(self.hosts)
        self.vm, self.ram_mb, self.append, self.where = vm, ram_mb, append, "a"

    async def boot(self) -> None:
        await self.hosts[self.where].boot(self.vm, self.ram_mb, append=self.append)
        await wait_heartbeats(self.hosts[self.where].serial_path(self.vm), count=3, within_s=BOOT_WITHIN_S)
        self.cnf.register_vm(self.where, self.vm, self.ram_mb, "10.88.0.10")

    async def migrate(self) -> tuple[dict[str, float], list[str]]:
        """One CNF live migration; returns its figures and its step timeline (ms from prepare_incoming)."""
        src, dest = self.where, "b" if self.where == "a" else "a"
        run = await self.cnf.migrate(self.vm, src, dest, OPTIONS, deadline_s=600.0)
        if run.record.state != MigrationState.COMPLETED:
            raise RuntimeError(f"CNF migration {run.record.state}: {run.record.error}")
        src_p, dst_p = await self.hosts[src].progress(self.vm), await self.hosts[dest].progress(self.vm)
        last = max(heartbeats(self.hosts[src].archived_logs(self.vm)[-1]))
        await wait_heartbeats(self.hosts[dest].serial_path(self.vm), above=last, count=2, within_s=30)
        self.where = dest
        by_step = {e.step + ":" + e.kind: e.ts for e in run.events if e.step}
        t0 = by_step["memory.prepare_incoming:step_started"]
        assert src_p.stopped_at is not None and src_p.downtime_ms is not None and dst_p.resumed_at is not None
        stop, resume = src_p.stopped_at, dst_p.resumed_at  # QEMU's event times: wall clock, as the event log
        marks = sorted([(ts, key) for key, ts in by_step.items() if ts >= t0]
                       + [(stop, "source STOP"), (resume, "destination RESUME")])
        timeline = [f"{(ts - t0) * 1000.0:7.1f} {key}" for ts, key in marks
                    if ts <= by_step["cutover.switchover:step_done"]]
        return {
            "total_s": resume - t0,
            "setup_s": by_step["memory.precopy:step_started"] - t0,  # (``migrate`` follows within ~5 ms)
            "copy_s": stop - by_step["memory.precopy:step_started"],
            "engine_total_s": by_step["cutover.switchover:step_done"] - t0,
            "whole_run_s": run.wall_s,
            "pause_ms": guest_pause_ms(src_p, dst_p) or float("nan"),
            "qemu_downtime_ms": src_p.downtime_ms,
            "handover_window_ms": (by_step["cutover.switchover:step_started"] - stop) * 1000.0,
            "transferred_mib": src_p.transferred_bytes / 2**20,
            "at_switchover_remaining_mib": float(run.record.context.get("progress", {}).get("remaining_bytes", 0))
            / 2**20,
        }, timeline

    async def close(self) -> None:
        for hv in self.hosts.values():
            await hv.close()


def _quiet_eof(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """qemu.qmp leaves an EOFError in a future when QEMU quits under it (expected at ``quit``): do not print it."""
    if isinstance(context.get("exception"), EOFError):
        return
    loop.default_exception_handler(context)


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def measure_size(lab: QemuLab, size: int, fill_mb: int, runs: int, *, verbose: bool
                       ) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
    """Boot a CNF guest and a raw guest of ``size`` MiB side by side, then alternate their migrations."""
    append = lab.guest.append(fill_mb=fill_mb)
    cnf = CnfSide(lab, f"bench{size}", size, append)
    raw = RawPair(lab.root / f"raw-{size}", lab.host("a").machine, size, append)
    cnf_rows: list[dict[str, float]] = []
    raw_rows: list[dict[str, float]] = []
    try:
        t = time.monotonic()
        await asyncio.gather(cnf.boot(), raw.boot())
        print(f"{size:5d} MiB guests booted and filled ({fill_mb} MiB each) in {time.monotonic() - t:.0f} s",
              flush=True)
        for i in range(runs):
            order = ("cnf", "raw") if i % 2 == 0 else ("raw", "cnf")
            for side in order:
                if side == "cnf":
                    row, timeline = await cnf.migrate()
                    cnf_rows.append(row)
                    if verbose:
                        print("\n".join(f"      {ln}" for ln in timeline))
                else:
                    row = await raw.migrate()
                    raw_rows.append(row)
                print(f"{size:5d} MiB {side} run {i}: " + " ".join(f"{k}={v:.3f}" for k, v in row.items()),
                      flush=True)
    finally:
        await cnf.close()
        await raw.close()
    return cnf_rows, raw_rows


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--fill", default=",".join(f"{k}:{v}" for k, v in DEFAULT_FILL.items()),
                    help="MiB of random data per guest size, e.g. 256:160,1024:832 (others: 5/8 of RAM)")
    ap.add_argument("--timeline", action="store_true", help="print each CNF run's step timeline")
    ap.add_argument("--precopy-poll-s", type=float, default=None,
                    help="what-if: override the engine's memory.precopy poll interval (pre-switchover detection)")
    args = ap.parse_args(argv)
    fills = {int(k): int(v) for k, v in (kv.split(":") for kv in args.fill.split(",") if kv)}
    asyncio.get_running_loop().set_exception_handler(_quiet_eof)
    if args.precopy_poll_s is not None:
        table = STEP_TABLES[MigrationKind.LIVE]
        STEP_TABLES[MigrationKind.LIVE] = tuple(
            dataclasses.replace(s, poll_s=args.precopy_poll_s, poll_fn=None) if s.name == "memory.precopy" else s
            for s in table)
        print(f"memory.precopy poll_s overridden to {args.precopy_poll_s}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    print(f"options: {OPTIONS.to_dict()}", flush=True)
    lab = QemuLab.create()
    cnf_all: list[dict[str, float]] = []
    raw_all: list[dict[str, float]] = []
    per_size: list[str] = []
    ratios: list[float] = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            cnf_rows, raw_rows = await measure_size(lab, size, fill_for(size, fills), args.runs,
                                                    verbose=args.timeline)
            ratio = med(cnf_rows, "total_s") / med(raw_rows, "total_s")
            ratios.append(ratio)
            label = size_label(size)
            fastest = min(r["total_s"] for r in cnf_rows) / min(r["total_s"] for r in raw_rows)
            # CNF's time outside QEMU's copy (destination start, detection, handover window, resume) minus raw's:
            # the copy itself is QEMU's work with the same settings on both sides, and on this host it alone varies
            # 5x from run to run (150-800 ms for 230 MiB), which swamps a ratio of medians of a few runs
            added = (med([{"x": r["total_s"] - r["copy_s"]} for r in cnf_rows], "x")
                     - med([{"x": r["total_s"] - r["copy_s"]} for r in raw_rows], "x")) * 1000.0
            per_size.append(f"total_ratio_{label}={ratio:.2f} total_ratio_fastest_{label}={fastest:.2f} "
                            f"added_ms_outside_copy_{label}={added:.0f} "
                            f"cnf_total_s_{label}={med(cnf_rows, 'total_s'):.3f} "
                            f"raw_total_s_{label}={med(raw_rows, 'total_s'):.3f} "
                            f"pause_ms_{label}={med(cnf_rows, 'pause_ms'):.1f} "
                            f"raw_pause_ms_{label}={med(raw_rows, 'pause_ms'):.1f} "
                            f"fill_mib_{label}={fill_for(size, fills)}")
            print(f"{size:5d} MiB median: cnf pause {med(cnf_rows, 'pause_ms'):.0f} ms, raw pause "
                  f"{med(raw_rows, 'pause_ms'):.0f} ms; cnf QEMU downtime {med(cnf_rows, 'qemu_downtime_ms'):.0f} "
                  f"ms, raw {med(raw_rows, 'qemu_downtime_ms'):.0f} ms; total (dest QEMU asked -> dest RESUME) "
                  f"cnf {med(cnf_rows, 'total_s'):.3f} s, raw {med(raw_rows, 'total_s'):.3f} s, ratio {ratio:.3f}; "
                  f"cnf until the engine knows {med(cnf_rows, 'engine_total_s'):.3f} s; copied cnf "
                  f"{med(cnf_rows, 'transferred_mib'):.0f} MiB, raw {med(raw_rows, 'transferred_mib'):.0f} MiB",
                  flush=True)
            print(f"{size:5d} MiB median segments (ms): dest start -> migrate: cnf "
                  f"{med(cnf_rows, 'setup_s') * 1e3:.0f}, raw {med(raw_rows, 'setup_s') * 1e3:.0f}; migrate -> "
                  f"source STOP (the copy): cnf {med(cnf_rows, 'copy_s') * 1e3:.0f}, raw "
                  f"{med(raw_rows, 'copy_s') * 1e3:.0f}; STOP -> RESUME: cnf {med(cnf_rows, 'pause_ms'):.0f} (of "
                  f"which handover window {med(cnf_rows, 'handover_window_ms'):.0f}), raw "
                  f"{med(raw_rows, 'pause_ms'):.0f}; fastest total: cnf {min(r['total_s'] for r in cnf_rows):.3f} s, "
                  f"raw {min(r['total_s'] for r in raw_rows):.3f} s", flush=True)
            cnf_all += cnf_rows
            raw_all += raw_rows
    finally:
        await lab.down()
    whole_ratio = med(cnf_all, "whole_run_s") / med(raw_all, "total_s")
    added_ms = statistics.median(
        (c["total_s"] - r["total_s"]) * 1000.0 for c, r in zip(cnf_all, raw_all, strict=True))
    print(f"BENCH live_migration pause_ms_median={med(cnf_all, 'pause_ms'):.1f} "
          f"qemu_downtime_ms_median={med(cnf_all, 'qemu_downtime_ms'):.1f} total_ratio_vs_raw_qmp={max(ratios):.2f} "
          f"handover_window_ms={med(cnf_all, 'handover_window_ms'):.1f} "
          f"raw_pause_ms_median={med(raw_all, 'pause_ms'):.1f} "
          f"raw_qemu_downtime_ms_median={med(raw_all, 'qemu_downtime_ms'):.1f} "
          f"added_ms_vs_raw_qmp={added_ms:.0f} "
          f"whole_run_ratio_vs_raw_qmp={whole_ratio:.2f} {' '.join(per_size)} runs={len(cnf_all)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
