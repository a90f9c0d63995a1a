"""Live migration of the lab guest by CNF (full engine run: sim Nova/Ceph/BGP, real QEMU) versus raw QMP.

Why: CNF adds a switchover window (``pause-before-switchover``: the storage handover and the BGP flip run while
the source vCPUs are stopped) and orchestration around QEMU's own migration. This measures what that costs, in
the same run and on the same guest image/RAM size, against the bare QMP sequence a person would type
(``migrate-incoming`` + ``migrate``, no pause, wait for ``completed``).

Per run and RAM size (default 256 MiB and 1 GiB, idle heartbeat guest, TCG):
- ``pause_ms``: guest-visible pause = source STOP -> destination RESUME (QEMU's own event timestamps);
- ``qemu_downtime_ms``: QEMU's ``downtime`` (it includes the pre-switchover window);
- ``handover_window_ms``: source STOP -> ``migrate-continue`` issued by the engine (detection of pre-switchover
  by polling + the CUTOVER storage steps);
- ``total_ratio_vs_raw_qmp`` (the issue's "total time"): the same span on both sides, destination QEMU start ->
  guest running on the destination. CNF: ``memory.prepare_incoming`` started -> ``cutover.switchover`` done (it
  includes the early BGP announce, the pre-switchover window with the storage handover and the engine's polling);
  raw: destination QEMU start -> ``completed``. ``whole_run_ratio_vs_raw_qmp`` is CNF's whole engine run (PREFLIGHT,
  the sim disk sync, receiver creation, CLEANUP too) over the same raw span: work raw QMP does not do at all.
Numbers on a loaded 2-core TCG machine are noisy: read medians, and re-measure on KVM before trusting them.

Run: ``.venv/bin/python benchmarks/live_migration.py [--runs 3] [--sizes 256,1024]``; last line is the BENCH line.
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
from cnf.hypervisor.qemu import QemuMachine  # noqa: E402
from cnf.hypervisor.qmp_translation import bandwidth_bytes_per_s  # noqa: E402
from cnf.migration.model import MigrationKind, MigrationState  # noqa: E402
from cnf.migration.steps import STEP_TABLES  # noqa: E402
from lab.qemu import CnfOnQemu, QemuLab, heartbeats, wait_heartbeats  # noqa: E402

BANDWIDTH_MBPS = 10_000
DOWNTIME_LIMIT_MS = 300


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
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        self.procs.append(proc)
        return proc, d / "qmp.sock", d / "serial.log"

    @staticmethod
    async def _connect(path: Path) -> QMPClient:
        for _ in range(600):
            if await asyncio.to_thread(path.exists):
                c = QMPClient("raw")
                try:
                    await c.connect(str(path))
                    return c
                except Exception:
                    await asyncio.sleep(0.05)
                    continue
            await asyncio.sleep(0.05)
        raise RuntimeError(f"no QMP at {path}")

    async def boot(self) -> None:
        self.src, qmp, self.serial = self._spawn(incoming=False)
        self.src_qmp = await self._connect(qmp)
        await wait_heartbeats(self.serial, count=3, within_s=180)

    async def migrate(self) -> dict[str, float]:
        """One raw migration src -> new dst; the dst becomes the next src."""
        t0 = time.monotonic()
        dst, dqmp_path, dserial = self._spawn(incoming=True)
        dqmp = await self._connect(dqmp_path)
        src_events, dst_events = self.src_qmp.events, dqmp.events
        src_events.clear()
        for q in (self.src_qmp, dqmp):
            await q.execute("migrate-set-capabilities", {"capabilities": [
                {"capability": "events", "state": True}, {"capability": "pause-before-switchover", "state": False}]})
        await self.src_qmp.execute("migrate-set-parameters", {
            "downtime-limit": DOWNTIME_LIMIT_MS, "max-bandwidth": bandwidth_bytes_per_s(BANDWIDTH_MBPS)})
        await dqmp.execute("migrate-incoming", {"uri": "tcp:127.0.0.1:0"})
        info: Any = await dqmp.execute("query-migrate")
        port = info["socket-address"][0]["port"]
        await self.src_qmp.execute("migrate", {"uri": f"tcp:127.0.0.1:{port}"})
        stop = resume = None
        while True:
            ev: dict[str, Any] = dict(await asyncio.wait_for(src_events.get(), 120))
            if ev["event"] == "STOP" and stop is None:
                stop = _ts(ev)
            if ev["event"] == "MIGRATION" and ev["data"]["status"] in ("completed", "failed", "cancelled"):
                status = str(ev["data"]["status"])
                break
        t_done = time.monotonic()
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
        return {"total_s": t_done - t0, "pause_ms": (resume - stop) * 1000.0, "qemu_downtime_ms": final["downtime"]}

    async def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)


async def cnf_runs(lab: QemuLab, vm: str, ram_mb: int, runs: int) -> list[dict[str, float]]:
    hosts = lab.fresh_hosts()
    cnf = CnfOnQemu(hosts)
    where = "a"
    await hosts[where].boot(vm, ram_mb, append=lab.guest.append())
    await wait_heartbeats(hosts[where].serial_path(vm), count=3, within_s=180)
    cnf.register_vm(where, vm, ram_mb, "10.88.0.10")
    out = []
    try:
        for _ in range(runs):
            dest = "b" if where == "a" else "a"
            run = await cnf.migrate(vm, where, dest)
            if run.record.state != MigrationState.COMPLETED:
                raise RuntimeError(f"CNF migration {run.record.state}: {run.record.error}")
            src_p, dst_p = await hosts[where].progress(vm), await hosts[dest].progress(vm)
            last = max(heartbeats(hosts[where].archived_logs(vm)[-1]))
            await wait_heartbeats(hosts[dest].serial_path(vm), above=last, count=2, within_s=30)
            by_step = {e.step + ":" + e.kind: e.ts for e in run.events if e.step}
            assert src_p.stopped_at is not None and src_p.downtime_ms is not None
            out.append({
                "total_s": run.wall_s,
                "memory_cutover_s": by_step["cutover.switchover:step_done"]
                - by_step["memory.prepare_incoming:step_started"],
                "pause_ms": guest_pause_ms(src_p, dst_p) or float("nan"),
                "qemu_downtime_ms": src_p.downtime_ms,
                "handover_window_ms": (by_step["cutover.switchover:step_started"] - src_p.stopped_at) * 1000.0,
            })
            where = dest
    finally:
        for hv in hosts.values():
            await hv.close()
    return out


def _quiet_eof(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
    """qemu.qmp leaves an EOFError in a future when QEMU quits under it (expected at ``quit``): do not print it."""
    if isinstance(context.get("exception"), EOFError):
        return
    loop.default_exception_handler(context)


def med(rows: list[dict[str, float]], key: str) -> float:
    return statistics.median(r[key] for r in rows)


async def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--sizes", default="256,1024")
    ap.add_argument("--precopy-poll-s", type=float, default=None,
                    help="what-if: override the engine's memory.precopy poll interval (pre-switchover detection)")
    args = ap.parse_args(argv)
    asyncio.get_running_loop().set_exception_handler(_quiet_eof)
    if args.precopy_poll_s is not None:
        table = STEP_TABLES[MigrationKind.LIVE]
        STEP_TABLES[MigrationKind.LIVE] = tuple(
            dataclasses.replace(s, poll_s=args.precopy_poll_s) if s.name == "memory.precopy" else s for s in table)
        print(f"memory.precopy poll_s overridden to {args.precopy_poll_s}")
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    logging.getLogger("qemu").setLevel(logging.CRITICAL)
    lab = QemuLab.create()
    cnf_all: list[dict[str, float]] = []
    raw_all: list[dict[str, float]] = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            cnf_rows = await cnf_runs(lab, f"bench{size}", size, args.runs)
            for i, r in enumerate(cnf_rows):
                print(f"{size:5d} MiB cnf run {i}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
            raw = RawPair(lab.root / f"raw-{size}", lab.host("a").machine, size, lab.guest.append())
            try:
                await raw.boot()
                raw_rows = [await raw.migrate() for _ in range(args.runs)]
            finally:
                await raw.close()
            for i, r in enumerate(raw_rows):
                print(f"{size:5d} MiB raw run {i}: " + " ".join(f"{k}={v:.3f}" for k, v in r.items()), flush=True)
            print(f"{size:5d} MiB median: cnf pause {med(cnf_rows, 'pause_ms'):.0f} ms, raw pause "
                  f"{med(raw_rows, 'pause_ms'):.0f} ms; cnf QEMU downtime {med(cnf_rows, 'qemu_downtime_ms'):.0f} "
                  f"ms, raw {med(raw_rows, 'qemu_downtime_ms'):.0f} ms; total cnf {med(cnf_rows, 'total_s'):.2f} s "
                  f"(memory+cutover {med(cnf_rows, 'memory_cutover_s'):.2f} s), raw {med(raw_rows, 'total_s'):.2f} s")
            cnf_all += cnf_rows
            raw_all += raw_rows
    finally:
        await lab.down()
    whole_ratio = med(cnf_all, "total_s") / med(raw_all, "total_s")
    ratio = med(cnf_all, "memory_cutover_s") / med(raw_all, "total_s")
    print(f"BENCH live_migration pause_ms_median={med(cnf_all, 'pause_ms'):.1f} "
          f"qemu_downtime_ms_median={med(cnf_all, 'qemu_downtime_ms'):.1f} total_ratio_vs_raw_qmp={ratio:.2f} "
          f"handover_window_ms={med(cnf_all, 'handover_window_ms'):.1f} "
          f"raw_pause_ms_median={med(raw_all, 'pause_ms'):.1f} "
          f"raw_qemu_downtime_ms_median={med(raw_all, 'qemu_downtime_ms'):.1f} "
          f"added_ms_vs_raw_qmp={(med(cnf_all, 'memory_cutover_s') - med(raw_all, 'total_s')) * 1000.0:.0f} "
          f"whole_run_ratio_vs_raw_qmp={whole_ratio:.2f} runs={len(cnf_all)}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
