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
side, and the runs alternate (CNF first, then raw first, ...) so load changes hit both. Each migration starts
``--settle-s`` (default 8 s) after the previous one's source QEMU exited: on this host (a Firecracker VM with free
page reporting) memory freed less than ~2 s earlier is still backed by the host and ~5x cheaper for the
destination QEMU to fault in, so without the settle time the side that starts its destination sooner after the
previous migration (raw) copies faster for a reason that is neither side's (``settle``, docs/hypervisor.md).
The host keeps taking memory back for several seconds: with 3 s, CNF's destination (asked for ~0.5 s into its run,
after PREFLIGHT) still found more reclaimed memory than raw's (1 GiB ratio 1.29); with 8 s both find it all
reclaimed (1.00-1.03).
For the same reason each side first migrates ``--warmup`` times unmeasured per size (the first migration after
the boot is the coldest, and it used to be always CNF's).

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
- CPU in the copy window (``migrate`` -> the end noticed: raw at the STOP event, CNF when the driver first reports a
  status past ``active``), from the kernel's per-thread schedstat: ``cpu_<who>_<threads>_ms`` on a CPU,
  ``wait_..._ms`` runnable but waiting for a CPU, ``sys_..._ms`` of it in the kernel (10 ms ticks), for this
  process (``bench``: the engine, the sim clouds, the QMP clients), the source and destination QEMU (threads
  ``main``, ``vcpu``, ``migration``, ``other``; QEMU is started with ``-name debug-threads=on`` to name them),
  ``cpu_machine_ms`` (every core) and ``cpu_foreign_ms`` (the rest: the idle guest of the other side, other work
  on the host); ``qmp_in_copy``: QMP commands this process sent in the window; ``vm_*``: the kernel's THP fault
  counters over the window; ``since_free_s``: destination asked for, after the previous source exited.
- ``engine_total_s``: CNF's span until the engine *knows* (``cutover.switchover`` done), for reference;
  ``whole_run_ratio_vs_raw_qmp`` is CNF's whole engine run (PREFLIGHT, the sim disk sync, receiver creation,
  CLEANUP too) over the raw span: work raw QMP does not do at all.
Numbers on a loaded 2-core TCG machine are noisy: read medians, and re-measure on KVM before trusting them.

Run: ``.venv/bin/python benchmarks/live_migration.py [--runs 3] [--sizes 256,1024] [--fill 256:160,1024:832]
[--settle-s 8] [--warmup 1] [--rows runs.jsonl]``; the last line is the BENCH line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import logging
import os
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


#: QMP commands sent by this process, by name (both sides use ``QMPClient.execute``): counted per copy window
QMP_SENT: dict[str, int] = {}
_execute = QMPClient.execute


async def _counted_execute(self: QMPClient, cmd: str, arguments: Any = None, oob: bool = False) -> Any:
    QMP_SENT[cmd] = QMP_SENT.get(cmd, 0) + 1
    return await _execute(self, cmd, arguments, oob)


QMPClient.execute = _counted_execute  # type: ignore[method-assign]


def _schedstat(pid: int | str) -> dict[str, tuple[float, float, float]]:
    """Per thread group of ``pid``: (ms on a CPU, ms runnable but waiting for one, ms in the kernel), from the
    kernel's schedstat (ns) and stat (stime, in clock ticks of 10 ms: coarse).

    QEMU's threads (named with ``-name debug-threads=on``) are grouped: ``vcpu`` (TCG), ``migration`` (the source's
    live_migration thread), ``main`` (the main loop: QMP, the BQL holder for monitor commands, and on the
    destination the incoming stream's coroutine), ``other`` (RCU, workers).
    """
    out: dict[str, tuple[float, float, float]] = {}
    tick_ms = 1000.0 / os.sysconf("SC_CLK_TCK")
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return out
    for task in tasks:
        try:
            comm = (task / "comm").read_text().strip()
            run_ns, wait_ns = (int(x) for x in (task / "schedstat").read_text().split()[:2])
            stime = int((task / "stat").read_text().rsplit(")", 1)[1].split()[12])
        except (OSError, ValueError, IndexError):
            continue
        group = ("vcpu" if "CPU" in comm else "migration" if "migration" in comm
                 else "main" if comm.startswith(("qemu-system", "python")) else "other")
        r, w, k = out.get(group, (0.0, 0.0, 0.0))
        out[group] = (r + run_ns / 1e6, w + wait_ns / 1e6, k + stime * tick_ms)
    return out


def _system_busy_ms() -> float:
    """CPU time all processes of the machine used so far (every core; /proc/stat, non-idle jiffies)."""
    f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (f[0] + f[1] + f[2] + f[5] + f[6]) * 1000.0 / os.sysconf("SC_CLK_TCK")  # user nice system irq softirq


#: kernel memory counters (machine-wide) that tell how the destination's RAM was faulted in during the copy
VMSTAT_KEYS = ("thp_fault_alloc", "thp_fault_fallback", "compact_stall", "pgfault")


def _vmstat() -> dict[str, int]:
    pairs = (ln.split() for ln in Path("/proc/vmstat").read_text().splitlines())
    return {k: int(v) for k, v in pairs if k in VMSTAT_KEYS}


@dataclasses.dataclass
class CpuSnap:
    """What the machine's CPUs did so far: this process, the migration's two QEMUs, the whole machine."""

    bench: dict[str, tuple[float, float, float]]
    src: dict[str, tuple[float, float, float]]
    dst: dict[str, tuple[float, float, float]]
    busy_ms: float
    qmp: int
    vmstat: dict[str, int]

    @classmethod
    def take(cls, src_pid: int | None, dst_pid: int | None) -> CpuSnap:
        return cls(bench=_schedstat("self"), src=_schedstat(src_pid) if src_pid else {},
                   dst=_schedstat(dst_pid) if dst_pid else {}, busy_ms=_system_busy_ms(),
                   qmp=sum(QMP_SENT.values()), vmstat=_vmstat())

    def since(self, start: CpuSnap) -> dict[str, float]:
        """Per copy window: run/wait ms of each thread group, QMP commands sent, the machine's busy ms."""
        row: dict[str, float] = {}
        for side in ("bench", "src", "dst"):
            now, before = getattr(self, side), getattr(start, side)
            for group, (r, w, k) in now.items():
                r0, w0, k0 = before.get(group, (0.0, 0.0, 0.0))
                row[f"cpu_{side}_{group}_ms"] = r - r0
                row[f"wait_{side}_{group}_ms"] = w - w0
                row[f"sys_{side}_{group}_ms"] = k - k0
        row["cpu_machine_ms"] = self.busy_ms - start.busy_ms
        # everything else on the machine (the other side's idle guest, other work on the host)
        row["cpu_foreign_ms"] = row["cpu_machine_ms"] - sum(v for k, v in row.items() if k.startswith(
            ("cpu_bench_", "cpu_src_", "cpu_dst_")))
        for k in VMSTAT_KEYS:
            row[f"vm_{k}"] = float(self.vmstat.get(k, 0) - start.vmstat.get(k, 0))
        row["qmp_in_copy"] = float(self.qmp - start.qmp)
        return row


#: wall-clock time the last migrated-away source QEMU exited (its RAM went back to the kernel); see ``settle``
LAST_FREE = [0.0]


async def settle(settle_s: float) -> None:
    """Start a migration only ``settle_s`` after the previous source QEMU freed its RAM.

    Why (measured, docs/hypervisor.md): this machine is a Firecracker VM with free page reporting; ~2 s after a
    process frees its memory the kernel reports it to the host, which drops it, and faulting it in again costs
    the destination QEMU ~5x more kernel time (raw QMP, 229 MiB: copy 155 ms right after the previous migration,
    730 ms 3 s later). Without a settle time the side that starts its destination sooner after the previous
    free gets the cheap pages: that is raw QMP, whose destination starts at once, while CNF's starts after
    PREFLIGHT, the disk sync and the receiver. With it both sides fault into memory the host has reclaimed, as a
    destination host's long-free memory would be.
    """
    wait = LAST_FREE[0] + settle_s - time.time()
    if wait > 0:
        await asyncio.sleep(wait)


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
        cpu0 = CpuSnap.take(self.src.pid, dst.pid)
        cpu: dict[str, float] = {}
        stop = resume = None
        while True:
            ev: dict[str, Any] = dict(await asyncio.wait_for(src_events.get(), 300))
            if ev["event"] == "STOP" and stop is None:
                cpu = CpuSnap.take(self.src.pid, dst.pid).since(cpu0)  # the copy ends here (noticed)
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
        since_free, LAST_FREE[0] = t0 - LAST_FREE[0], time.time()
        self.src, self.src_qmp, self.serial = dst, dqmp, dserial
        await wait_heartbeats(dserial, above=last, count=2, within_s=30)  # the guest continues
        assert stop is not None
        return {"total_s": resume - t0, "setup_s": t_migrate - t0, "copy_s": stop - t_migrate,
                "since_free_s": since_free,
                "pause_ms": (resume - stop) * 1000.0,
                "qemu_downtime_ms": final["downtime"], "transferred_mib": final["ram"]["transferred"] / 2**20,
                **cpu}

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
        self.cpu0: CpuSnap | None = None
        self.cpu: dict[str, float] = {}
        self.pids: tuple[int | None, int | None] = (None, None)
        for cid, hv in self.hosts.items():
            self._account(cid, hv)

    def _account(self, cid: str, hv: QemuHypervisor) -> None:
        """Take CPU snapshots where the copy starts (``migrate`` sent) and where the engine notices its end
        (a ``progress`` past ``active``), as the raw side does at ``migrate`` and at the STOP event."""
        start_migration, progress = hv.start_migration, hv.progress

        async def started(vm_id: str, dest_uri: str, params: Any) -> None:
            dest = "b" if cid == "a" else "a"
            self.pids = (hv.pid(vm_id), self.hosts[dest].pid(vm_id))
            await start_migration(vm_id, dest_uri, params)
            self.cpu0, self.cpu = CpuSnap.take(*self.pids), {}

        async def looked(vm_id: str, wait_s: float = 0.0) -> Any:
            p = await progress(vm_id, wait_s)
            if self.cpu0 is not None and not self.cpu and p.status not in ("none", "setup", "active"):
                self.cpu = CpuSnap.take(*self.pids).since(self.cpu0)
            return p

        hv.start_migration = started  # type: ignore[method-assign]
        hv.progress = looked  # type: ignore[method-assign]

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
        since_free, LAST_FREE[0] = t0 - LAST_FREE[0], by_step["cleanup.destroy_source_domain:step_done"]
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
            "since_free_s": since_free,  # destination asked for, since the previous source freed its RAM
            "engine_total_s": by_step["cutover.switchover:step_done"] - t0,
            "whole_run_s": run.wall_s,
            "pause_ms": guest_pause_ms(src_p, dst_p) or float("nan"),
            "qemu_downtime_ms": src_p.downtime_ms,
            "handover_window_ms": (by_step["cutover.switchover:step_started"] - stop) * 1000.0,
            "transferred_mib": src_p.transferred_bytes / 2**20,
            "at_switchover_remaining_mib": float(run.record.context.get("progress", {}).get("remaining_bytes", 0))
            / 2**20,
            **self.cpu,
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


async def measure_size(lab: QemuLab, size: int, fill_mb: int, runs: int, *, verbose: bool, settle_s: float,
                       warmup: int) -> tuple[list[dict[str, float]], list[dict[str, float]]]:
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
        for _ in range(warmup):  # not measured: the first migration after the boot faults into memory this VM
            # never used since its own boot, several times slower again (1 GiB: copy 4.9 s vs 1.9-2.4 s), and
            # would always fall on the side that goes first
            for side in ("raw", "cnf"):
                await settle(settle_s)
                row = (await cnf.migrate())[0] if side == "cnf" else await raw.migrate()
                print(f"{size:5d} MiB {side} warm-up (not counted): total_s={row['total_s']:.3f} "
                      f"copy_s={row['copy_s']:.3f}", flush=True)
        for i in range(runs):
            order = ("cnf", "raw") if i % 2 == 0 else ("raw", "cnf")
            for side in order:
                await settle(settle_s)
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
    ap.add_argument("--settle-s", type=float, default=8.0,
                    help="start each migration this long after the previous source freed its RAM (0: at once)")
    ap.add_argument("--warmup", type=int, default=1, help="unmeasured migrations per side and size first")
    ap.add_argument("--rows", type=Path, default=None, help="write every run's figures there (JSON lines)")
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
    print(f"options: {OPTIONS.to_dict()}; settle {args.settle_s:g} s", flush=True)
    lab = QemuLab.create()
    for hv in lab.hosts.values():  # QEMU names its threads (vCPU, live_migration, ...) for the CPU accounting
        hv.machine = dataclasses.replace(hv.machine, extra_args=(*hv.machine.extra_args, "-name",
                                                                 "debug-threads=on"))
    cnf_all: list[dict[str, float]] = []
    raw_all: list[dict[str, float]] = []
    per_size: list[str] = []
    ratios: list[float] = []
    ratios_excl: list[float] = []
    try:
        for size in (int(s) for s in args.sizes.split(",")):
            cnf_rows, raw_rows = await measure_size(lab, size, fill_for(size, fills), args.runs,
                                                    verbose=args.timeline, settle_s=args.settle_s,
                                                    warmup=args.warmup)
            ratio = med(cnf_rows, "total_s") / med(raw_rows, "total_s")
            ratios.append(ratio)
            label = size_label(size)
            fastest = min(r["total_s"] for r in cnf_rows) / min(r["total_s"] for r in raw_rows)
            # CNF's time outside QEMU's copy (destination start, detection, handover window, resume) minus raw's:
            # the copy itself is QEMU's work with the same settings on both sides, and on this host it alone varies
            # 5x from run to run (150-800 ms for 230 MiB), which swamps a ratio of medians of a few runs
            added = (med([{"x": r["total_s"] - r["copy_s"]} for r in cnf_rows], "x")
                     - med([{"x": r["total_s"] - r["copy_s"]} for r in raw_rows], "x")) * 1000.0
            # the same ratio without the storage handover CNF runs inside the pause (raw QMP moves no storage):
            # what the orchestration itself adds to QEMU's migration
            excl = med([{"x": r["total_s"] - r["handover_window_ms"] / 1000.0} for r in cnf_rows], "x") \
                / med(raw_rows, "total_s")
            ratios_excl.append(excl)
            per_size.append(f"total_ratio_{label}={ratio:.2f} total_ratio_excl_handover_{label}={excl:.2f} "
                            f"total_ratio_fastest_{label}={fastest:.2f} "
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
            keys = sorted(k for k in cnf_rows[0] if k.startswith(("cpu_", "wait_", "sys_", "qmp_", "vm_"))
                          and all(k in r for r in cnf_rows + raw_rows))
            print(f"{size:5d} MiB median CPU in the copy window (migrate -> end noticed; ms on a CPU / ms waiting "
                  "for one): " + ", ".join(f"{k[:-3] if k.endswith('_ms') else k} cnf {med(cnf_rows, k):.0f} raw "
                                           f"{med(raw_rows, k):.0f}" for k in keys), flush=True)
            if args.rows is not None:
                with args.rows.open("a") as f:
                    for side, rows in (("cnf", cnf_rows), ("raw", raw_rows)):
                        for i, r in enumerate(rows):
                            f.write(json.dumps({"size": size, "side": side, "run": i, **r}) + "\n")
            cnf_all += cnf_rows
            raw_all += raw_rows
    finally:
        await lab.down()
    whole_ratio = med(cnf_all, "whole_run_s") / med(raw_all, "total_s")
    added_ms = statistics.median(
        (c["total_s"] - r["total_s"]) * 1000.0 for c, r in zip(cnf_all, raw_all, strict=True))
    # how much of a core other work took during the copies (the other side's idle guest, anything else on the host)
    foreign = statistics.median(r["cpu_foreign_ms"] / (r["copy_s"] * 1000.0) for r in cnf_all + raw_all)
    print(f"BENCH live_migration pause_ms_median={med(cnf_all, 'pause_ms'):.1f} "
          f"qemu_downtime_ms_median={med(cnf_all, 'qemu_downtime_ms'):.1f} total_ratio_vs_raw_qmp={max(ratios):.2f} "
          f"handover_window_ms={med(cnf_all, 'handover_window_ms'):.1f} "
          f"total_ratio_excl_handover={max(ratios_excl):.2f} "
          f"raw_pause_ms_median={med(raw_all, 'pause_ms'):.1f} "
          f"raw_qemu_downtime_ms_median={med(raw_all, 'qemu_downtime_ms'):.1f} "
          f"added_ms_vs_raw_qmp={added_ms:.0f} "
          f"whole_run_ratio_vs_raw_qmp={whole_ratio:.2f} {' '.join(per_size)} runs={len(cnf_all)} "
          f"settle_s={args.settle_s:g} foreign_cores_in_copy={foreign:.2f} load1_end={os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
