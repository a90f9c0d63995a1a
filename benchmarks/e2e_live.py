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

Modes: ``--mode agents`` (default) measures the whole product: ``--n`` direct runs first (they need the lab's own
QMP client, so before any agent holds the domains), then two ``cnf-agent`` processes with Celery workers
(``lab.e2e_agents.AgentClouds``; ``--openstack``: real Keystone + Nova, the running clouds reused, else brought up
and down here) and ``--n`` migrations back and forth through their REST API (``--via osc``: the operator's CLI).
``--mode engine``: the in-process ``MigrationEngine`` (SimCloud) interleaved with direct runs.

Run: ``.venv/bin/python benchmarks/e2e_live.py [--n 6] [--mode agents|engine] [--openstack] [--root DIR]``
(``--root``: reuse a lab started with ``python -m lab.e2e up --no-agents``; otherwise the benchmark brings up its
own and tears it down). Last line: ``BENCH e2e_live mode=... pause_ms_median=... blackout_ms_median=...
total_s_median=... qemu_downtime_ms_median=... stop_resume_ms_median=... direct_pause_ms_median=...
direct_blackout_ms_median=... pause_ms_over_direct=... blackout_ms_over_direct=... ... loadavg_1m=...``.
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


def _bench_line(mode: str, main: list[dict[str, Any]], direct: list[dict[str, Any]], load: float) -> str:
    s, b = summary(main), summary(direct)

    def diff(key: str) -> float | None:
        return None if s[key] is None or b[key] is None else round(s[key] - b[key], 1)  # type: ignore[operator]

    ok = sum(1 for f in main if _healthy(f))
    return (f"BENCH e2e_live mode={mode} pause_ms_median={s['pause_ms_median']} "
            f"blackout_ms_median={s['blackout_ms_median']} total_s_median={s['total_s_median']} "
            f"qemu_downtime_ms_median={s['qemu_downtime_ms_median']} "
            f"stop_resume_ms_median={s['stop_resume_ms_median']} "
            f"direct_pause_ms_median={b['pause_ms_median']} direct_blackout_ms_median={b['blackout_ms_median']} "
            f"pause_ms_over_direct={diff('pause_ms_median')} blackout_ms_over_direct={diff('blackout_ms_median')} "
            f"direct_total_s_median={b['total_s_median']} "
            f"direct_qemu_downtime_ms_median={b['qemu_downtime_ms_median']} "
            f"route_blackout_ms_median={s['route_blackout_ms_median']} completed_healthy={ok}/{len(main)} "
            f"loadavg_1m={load:.2f}")


def _openstack_for_bench() -> tuple[Any, bool]:
    """The running OpenStack lab's clouds (reused, never stopped here), else a new one (stopped at the end)."""
    from lab.e2e_federation import openstack_running
    from lab.e2e_nova import openstack_from_record
    from lab.openstack import up

    current = openstack_running()
    if current is not None:
        print(f"openstack: reusing {current}", flush=True)
        return openstack_from_record(current), False
    t0 = time.monotonic()
    lab = up()
    print(f"openstack: up in {time.monotonic() - t0:.1f} s", flush=True)
    return lab, True


def _run_agents(lab: E2ELab, args: argparse.Namespace, direct: list[dict[str, Any]],
                agents: list[dict[str, Any]]) -> None:
    """``--n`` direct runs first (the lab's own QMP client), then the agents, then ``--n`` migrations through them."""
    from lab.e2e_agents import AgentClouds, run_migration

    for _ in range(args.n):
        f = asyncio.run(lab.migrate(direct=True, downtime_limit_ms=args.downtime_limit_ms))
        direct.append(f)
        print(_row(f), flush=True)
    openstack, own_openstack = _openstack_for_bench() if args.openstack else (None, False)
    try:
        t0 = time.monotonic()
        where = {"controllers": args.controllers} if args.controllers else {}
        fed = AgentClouds.start(lab, openstack=openstack, tasks=args.tasks, **where)  # type: ignore[arg-type]
        print(f"agents up in {time.monotonic() - t0:.1f} s ({args.tasks}, "
              f"{'real Nova' if openstack else 'sim cloud'})", flush=True)
        try:
            for _ in range(args.n):
                f = run_migration(fed, downtime_limit_ms=args.downtime_limit_ms, via=args.via)
                agents.append(f)
                print(_row(f), flush=True)
        finally:
            fed.stop()
    finally:
        if own_openstack and openstack is not None:
            openstack.down()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=("agents", "engine"), default="agents",
                    help="agents: N direct runs, then N through two cnf-agents (REST/CLI, Celery); engine: N "
                         "in-process engine runs interleaved with N direct ones")
    ap.add_argument("--n", type=int, default=6, help="migrations per mode")
    ap.add_argument("--root", help="an e2e lab already up without agents (python -m lab.e2e up --no-agents)")
    ap.add_argument("--downtime-limit-ms", type=int, help="QEMU downtime-limit for both modes (default: "
                    "MigrationOptions')")
    ap.add_argument("--openstack", action="store_true", help="agents: real Keystone + Nova (reused if up)")
    ap.add_argument("--tasks", choices=("celery", "inprocess"), default="celery", help="agents: the task runner")
    ap.add_argument("--via", choices=("rest", "osc"), default="rest", help="agents: REST or `openstack cnf ...`")
    ap.add_argument("--controllers", choices=("netns", "loopback"), help="agents: where they run (default: "
                    "AgentClouds')")
    ap.add_argument("--quiet-load", type=float, default=1.5, help="wait for this 1-min load average before measuring")
    ap.add_argument("--quiet-wait-s", type=float, default=180.0, help="... for at most this long (0: do not wait)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    own = args.root is None
    if not own:
        from lab.e2e_federation import running_record

        if running_record(Path(args.root)):
            print("the lab's agents hold the guest's QMP connection: the direct baseline needs a lab without them "
                  "(`python -m lab.e2e up --no-agents`, or no --root)")
            return 2
    lab = E2ELab.new() if own else E2ELab.load(Path(args.root))
    main_runs: list[dict[str, Any]] = []
    direct: list[dict[str, Any]] = []
    load_start = os.getloadavg()[0]
    try:
        if own:
            lab.up()
            print(f"lab up: {lab.bringup_s}", flush=True)
        load = _wait_quiet(args.quiet_load, args.quiet_wait_s)
        print(f"measuring at 1-min load {load:.2f} (wanted <= {args.quiet_load}; {load_start:.2f} at the start)",
              flush=True)
        if args.mode == "agents":
            _run_agents(lab, args, direct, main_runs)
        else:
            for i in range(args.n):
                for mode in (("engine", "direct") if i % 2 == 0 else ("direct", "engine")):
                    f = asyncio.run(lab.migrate(direct=mode == "direct", downtime_limit_ms=args.downtime_limit_ms))
                    (direct if mode == "direct" else main_runs).append(f)
                    print(_row(f), flush=True)
    finally:
        if own:
            lab.down()
    sick = [f"{f['mode']} {f['from']}->{f['to']}" for f in main_runs + direct if not _healthy(f)]
    if sick:
        print(f"NOT healthy (not completed, integrity failed, heartbeat broken or guest kernel errors): {sick}")
    runs = main_runs + direct
    load = statistics.median(f["loadavg_1m"] for f in runs) if runs else os.getloadavg()[0]
    print(f"{args.mode}: {summary(main_runs)}\ndirect: {summary(direct)}")
    print(_bench_line(args.mode, main_runs, direct, load))
    ok = sum(1 for f in main_runs if _healthy(f))
    return 0 if main_runs and ok == len(main_runs) else 1


if __name__ == "__main__":
    sys.exit(main())
