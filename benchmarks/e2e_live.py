"""End-to-end live migration with the real parts real (lab.e2e): N migrations back and forth.

Why: this is the figure a user of CNF cares about - how long the guest is paused and how long it does not answer
when it moves between two clouds - measured by the lab's own instruments (serial heartbeat, QEMU STOP/RESUME
events, a probe pinging the VM's IP every 10 ms from outside both clouds through the route server's BGP route),
with Ceph rbd-mirror, FRR and QEMU real and CNF's engine driving (cloud port: SimCloud). See docs/lab.md for the
definitions. Targets (issue 14): guest pause <= 500 ms, network blackout <= 600 ms.

Baseline, same run, same lab: ``direct`` = the same drivers called in the measured recipe's order without the
engine (no preflight, no check-before-do, no polling countdowns). The difference is CNF's orchestration cost.
Migrations alternate a->b / b->a; engine and direct runs alternate too, so both see the same machine load.
Numbers on a loaded 2-core TCG machine are noisy: after the bring-up the benchmark waits (up to ``--quiet-wait-s``)
for the 1-minute load average to drop to ``--quiet-load``, and the BENCH line carries the load it ran at.

Run: ``.venv/bin/python benchmarks/e2e_live.py [--n 6] [--root /tmp/cnf-lab-e2e-XXXX]`` (``--root``: reuse a lab
started with ``python -m lab.e2e up``; otherwise the benchmark brings up its own and tears it down). Last line:
``BENCH e2e_live pause_ms_median=... blackout_ms_median=... total_s_median=... qemu_downtime_ms_median=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lab.e2e import E2ELab, summary


def _row(f: dict[str, Any]) -> str:
    return (f"  {f['mode']:<6} {f['from']}->{f['to']} {f['state']:<9} hb_pause={f['guest_pause_ms_heartbeat']} ms "
            f"stop_resume={f['guest_pause_ms_stop_resume']} ms qemu_downtime={f['qemu_downtime_ms']} ms "
            f"blackout={f['network_blackout_ms']} ms (lost {f['probe']['lost_in_blackout']}, replies from "
            f"{f['probe']['replies_after_end_from']}) route_blackout={f['route_blackout_ms']} ms "
            f"total={f['total_s']} s "
            f"integrity={f.get('integrity', {}).get('ok')} load={f['loadavg_1m']}")


def _healthy(f: dict[str, Any]) -> bool:
    """Completed, the block reads back, the same guest keeps counting, and its kernel printed no error."""
    return (f["state"] == "completed" and bool(f.get("integrity", {}).get("ok")) and f["heartbeat"]["continues"]
            and not f["guest_kernel_errors"])


def _wait_quiet(limit: float, within_s: float) -> float:
    """Poll the 1-minute load average until it is <= ``limit`` or ``within_s`` passed; returns the last value."""
    deadline = time.monotonic() + within_s
    load = os.getloadavg()[0]
    while load > limit and time.monotonic() < deadline:
        time.sleep(5)
        load = os.getloadavg()[0]
    return load


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=6, help="engine migrations (as many direct ones are interleaved)")
    ap.add_argument("--root", help="an e2e lab already up (python -m lab.e2e up)")
    ap.add_argument("--downtime-limit-ms", type=int, help="QEMU downtime-limit for both modes (default: "
                    "MigrationOptions')")
    ap.add_argument("--quiet-load", type=float, default=1.5, help="wait for this 1-min load average before measuring")
    ap.add_argument("--quiet-wait-s", type=float, default=180.0, help="... for at most this long (0: do not wait)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    own = args.root is None
    lab = E2ELab.new() if own else E2ELab.load(Path(args.root))
    engine: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    try:
        if own:
            lab.up()
            print(f"lab up: {lab.bringup_s}", flush=True)
        load = _wait_quiet(args.quiet_load, args.quiet_wait_s)
        print(f"measuring at 1-min load {load:.2f} (wanted <= {args.quiet_load})", flush=True)
        for i in range(args.n):
            for mode in (("engine", "direct") if i % 2 == 0 else ("direct", "engine")):
                f = asyncio.run(lab.migrate(direct=mode == "direct", downtime_limit_ms=args.downtime_limit_ms))
                (direct if mode == "direct" else engine).append(f)
                print(_row(f), flush=True)
    finally:
        if own:
            lab.down()
    s, b = summary(engine), summary(direct)
    ok = sum(1 for f in engine if _healthy(f))
    sick = [f"{f['mode']} {f['from']}->{f['to']}" for f in engine + direct if not _healthy(f)]
    if sick:
        print(f"NOT healthy (not completed, integrity failed, heartbeat broken or guest kernel errors): {sick}")
    load = statistics.median(f["loadavg_1m"] for f in engine + direct) if engine + direct else os.getloadavg()[0]
    print(f"engine: {s}\ndirect: {b}")
    print(f"BENCH e2e_live pause_ms_median={s['pause_ms_median']} blackout_ms_median={s['blackout_ms_median']} "
          f"total_s_median={s['total_s_median']} qemu_downtime_ms_median={s['qemu_downtime_ms_median']} "
          f"stop_resume_ms_median={s['stop_resume_ms_median']} direct_pause_ms_median={b['pause_ms_median']} "
          f"direct_blackout_ms_median={b['blackout_ms_median']} direct_total_s_median={b['total_s_median']} "
          f"direct_qemu_downtime_ms_median={b['qemu_downtime_ms_median']} "
          f"route_blackout_ms_median={s['route_blackout_ms_median']} completed_healthy={ok}/{len(engine)} "
          f"loadavg_1m={load:.2f}")
    return 0 if ok == len(engine) else 1


if __name__ == "__main__":
    sys.exit(main())
