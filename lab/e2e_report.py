"""The e2e lab's figures: from the instruments' raw observations to what a user of the VM would notice.

Why a module of its own: the rules (what counts as pause, blackout, "the replies come from the destination")
are the lab's definitions and must be readable without the bring-up code around them (docs/lab.md states them).
Everything here is computed from the lab's own instruments (``lab.e2e_probe``) and the QEMU event timestamps;
CNF's own figures (``cnf_*``) are printed next to them for comparison only.
"""

from __future__ import annotations

import itertools
import json
import os
import statistics
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnf.migration.model import MigrationEvent, MigrationRecord
from lab.e2e_probe import RouteWatch, SerialTail, answered_between, disk_verdict, probe_blackout, route_blackout_ms

#: requests sent this close to the probe's stop may still be in flight: they are left out of the blackout window
PROBE_GRACE_S = 0.3


@dataclass
class Observation:
    """What the instruments recorded during one migration (wall-clock times)."""

    src: str
    dst: str
    t0: float  # the migration started
    t_end: float  # the engine (or the baseline) reached a terminal state
    t_probe_start: float
    t_probe_stop: float
    sends: dict[int, float]
    replies: dict[int, float]
    src_tail: SerialTail
    dst_tail: SerialTail
    route: RouteWatch
    src_next_hop: str
    dst_next_hop: str
    taps_at_end: dict[str, dict[str, int] | None]  # per cloud: packets through its tap when the run ended
    taps_after: dict[str, dict[str, int] | None]  # ... once the probe had seen its replies resume
    hb_ms: int


def figures(rec: MigrationRecord, events: list[MigrationEvent], ob: Observation) -> dict[str, Any]:
    """Every figure of one migration, plus its timeline (ms since the start)."""
    ctx = rec.context
    joined = ob.dst_tail.joined_beat(ob.src_tail)  # a heartbeat line split by the switchover
    dst_beats = [*([joined] if joined else []), *ob.dst_tail.beats]
    last_src = max(ob.src_tail.beats, default=None)
    first_dst = min(dst_beats, default=None)
    moved = str(rec.state) == "completed"
    # the longest gap between two heartbeats wherever the guest ran (source, then destination if it moved)
    beats = sorted(t for t, _ in [*ob.src_tail.beats, *dst_beats])
    gap = max(itertools.pairwise(beats), key=lambda ab: ab[1] - ab[0]) \
        if len(beats) >= 2 and (first_dst or not moved) else None
    hb_gap = round((gap[1] - gap[0]) * 1000.0 - ob.hb_ms, 1) if gap else None
    stop_at, resume_at = ctx.get("e2e_src_stopped_at"), ctx.get("e2e_dst_resumed_at")
    if resume_at is None and stop_at is not None:  # the migration was given up: the source resumed instead
        resume_at = next((t for side, name, t in ctx.get("e2e_qmp_events", [])
                          if side == "source" and name == "RESUME" and t >= stop_at), None)
    pause = round((resume_at - stop_at) * 1000.0, 1) if stop_at and resume_at else None
    # Without QEMU's events (through the agents the lab holds no QMP client) the route rule takes the pause from
    # the heartbeat gap: from the last beat before it (at most one period before the STOP) to the first after it.
    # Without any bounds the rule would count every moment after the BGP handoff until the window's end as "the
    # route leads to no running guest" (seconds, not a route event at all).
    marks_from = "qemu_events" if stop_at is not None else "heartbeat_gap" if gap else "none"
    route_stop, route_resume = (stop_at, resume_at) if stop_at is not None else gap if gap else (None, None)
    window_end = ob.t_probe_stop - PROBE_GRACE_S
    probe = probe_blackout(ob.sends, ob.replies, ob.t0, window_end)
    src_after = [b for b in ob.src_tail.beats if b[0] > ob.t_end]
    joined_disk = ob.dst_tail.joined_disk(ob.src_tail)
    dst_disk = [*([joined_disk] if joined_disk else []), *ob.dst_tail.disk]
    disk = disk_verdict(ob.src_tail.disk, dst_disk, moved=moved, t_end=ob.t_end,
                        split_at=ctx.get("e2e_injected_at"))
    out: dict[str, Any] = {
        "from": ob.src, "to": ob.dst, "state": str(rec.state), "error": rec.error,
        "total_s": round(ob.t_end - ob.t0, 2),
        "guest_pause_ms_heartbeat": hb_gap,
        "guest_pause_ms_stop_resume": pause,
        "qemu_downtime_ms": ctx.get("qemu_downtime_ms"),
        "network_blackout_ms": probe.blackout_ms,
        "route_blackout_ms": route_blackout_ms(ob.route.changes, ob.t0, window_end, ob.src_next_hop,
                                               ob.dst_next_hop if moved else ob.src_next_hop, route_stop,
                                               route_resume),
        "route_pause_marks": marks_from,
        "loadavg_1m": round(os.getloadavg()[0], 2),
        "cnf_network_blackout_ms": ctx.get("network_blackout_ms"),
        "cnf_guest_pause_ms": ctx.get("guest_pause_ms"),
        "probe": {
            "sent": probe.sent, "answered": probe.answered, "lost_in_blackout": probe.lost,
            "late_in_blackout": probe.late, "resumed": probe.resumed,
            "answered_before_migration": answered_between(ob.sends, ob.replies, ob.t_probe_start, ob.t0),
            "answered_before_stop": answered_between(ob.sends, ob.replies, ob.t0, stop_at or ob.t_end),
            "answered_after_end": answered_between(ob.sends, ob.replies, ob.t_end, window_end),
            "replies_after_end_from": replies_from(ob.taps_at_end, ob.taps_after),
        },
        "heartbeat": {"last_source": last_src[1] if last_src else None,
                      "first_destination": first_dst[1] if first_dst else None,
                      "continues": bool(last_src and first_dst and first_dst[1] == last_src[1] + 1),
                      "destination_beats": len(dst_beats), "split_line_joined": joined is not None,
                      "source_beats_after_end": len(src_after),
                      "source_continues": _contiguous([n for _, n in ob.src_tail.beats])},
        "guest_kernel_errors": [*ob.src_tail.kernel_errors, *ob.dst_tail.kernel_errors][:10],
        # the guest's own disk records; the lab adds the read of the record sector at the serving site (librbd)
        "integrity": {"cloud": ob.dst if moved else ob.src, **disk},
    }
    timeline = [{"t_ms": _ms(e.ts, ob.t0), "kind": e.kind, "step": e.step, "message": e.message}
                for e in events if e.kind in ("step_done", "step_failed", "step_undone", "retry", "compensating",
                                              "completed", "failed", "needs_operator")]
    marks: list[tuple[str, float | None]] = [
        ("source STOP", stop_at), ("destination RESUME", resume_at),
        ("last source heartbeat", last_src[0] if last_src else None),
        ("first destination heartbeat", first_dst[0] if first_dst else None),
        ("failure injected: destination QEMU killed", ctx.get("e2e_injected_at")),
        (f"guest disk: last record before ({disk.get('last_before')})",
         _record_time([*ob.src_tail.disk, *dst_disk], disk.get("last_before"))),
        (f"guest disk: first record after ({disk.get('first_after')}, read back record {disk.get('last_before')})",
         _record_time(dst_disk if moved else ob.src_tail.disk, disk.get("first_after"))),
        (f"probe: last reply before the longest silence ({probe.lost} requests lost, {probe.late} late in it)",
         probe.silent_from if probe.blackout_ms > 0 else None),
        ("probe: first reply after it", probe.silent_until if probe.blackout_ms > 0 else None)]
    marks += [(f"route server route -> {nh or 'none'}", t) for t, nh in ob.route.changes]
    marks += [(f"QEMU {side}: {name}", t) for side, name, t in ctx.get("e2e_qmp_events", [])]
    timeline += [{"t_ms": _ms(t, ob.t0), "kind": "lab", "step": "", "message": m} for m, t in marks if t is not None]
    out["timeline"] = sorted(timeline, key=lambda e: float(e["t_ms"]))
    out["steps_ms"] = {s.name: s.duration_ms for s in rec.steps}
    return out


def replies_from(before: Mapping[str, Mapping[str, int] | None],
                 after: Mapping[str, Mapping[str, int] | None]) -> list[str]:
    """The clouds whose tap carried packets *from* the guest between two samples (sorted).

    Why: the probe cannot tell two hosts apart by the replies (same address, same path length); the taps can.
    A tap that did not exist at the first sample counts from zero.
    """
    out = []
    for cid, b in sorted(after.items()):
        if b is None:
            continue
        a = before.get(cid) or {"from_guest": 0}
        if b["from_guest"] > a["from_guest"]:
            out.append(cid)
    return out


def _record_time(records: list[tuple[float, int, str]], n: Any) -> float | None:
    return next((t for t, m, _ in records if m == n), None) if n is not None else None


def _contiguous(counters: list[int]) -> bool:
    return all(b == a + 1 for a, b in itertools.pairwise(counters))


def _ms(t: float, t0: float) -> float:
    return round((t - t0) * 1000.0, 1)


def print_report(fig: dict[str, Any], say: Any = print) -> None:
    say(f"\n== live migration {fig['from']} -> {fig['to']}: {fig['state']}" +
        (f" ({fig['error']})" if fig.get("error") else ""))
    for e in fig["timeline"]:
        label = f"{e['step']}: " if e["step"] else ""
        say(f"  {e['t_ms']:>9.1f} ms  {e['kind']:<11} {label}{e['message']}")
    hb, pr = fig["heartbeat"], fig["probe"]
    say("figures (measured by the lab):")
    say(f"  guest pause, serial heartbeat gap : {fig['guest_pause_ms_heartbeat']} ms "
        f"(HB {hb['last_source']} on source -> HB {hb['first_destination']} on destination, "
        f"continues={hb['continues']})")
    say(f"  guest pause, QEMU STOP->RESUME    : {fig['guest_pause_ms_stop_resume']} ms")
    say(f"  QEMU reported downtime            : {fig['qemu_downtime_ms']} ms")
    say(f"  network blackout, 10 ms ping probe: {fig['network_blackout_ms']} ms (no reply for that long: "
        f"{pr['lost_in_blackout']} requests lost, {pr['late_in_blackout']} answered late; {pr['answered']}/"
        f"{pr['sent']} answered in all; resumed={pr['resumed']}; replies "
        f"after the end came through the tap of {pr['replies_after_end_from'] or 'no host'})")
    say(f"  route server's route to no guest  : {fig['route_blackout_ms']} ms (secondary; pause bounds from "
        f"{fig.get('route_pause_marks', 'qemu_events')})")
    say(f"  CNF's own figures                 : pause {fig['cnf_guest_pause_ms']} ms, "
        f"blackout {fig['cnf_network_blackout_ms']} ms")
    if fig["guest_kernel_errors"]:
        say(f"  GUEST KERNEL ERRORS on the console: {fig['guest_kernel_errors'][:3]}")
    say(f"  machine load (1 min average)      : {fig['loadavg_1m']} on {os.cpu_count()} CPUs")
    say(f"  total                             : {fig['total_s']} s")
    i = fig.get("integrity") or {}
    if i.get("ok") is None:
        say(f"  data integrity                    : not checked ({i.get('why', 'no figures')})")
    else:
        say(f"  data integrity, written by guest  : {'OK' if i['ok'] else 'FAILED: ' + i['why']} (record "
            f"{i['last_before']} last written before, record {i['first_after']} first after: its read-back "
            f"returned {i['last_before']}; {i['records_after_end']} records after the end, {len(i['bad'])} BAD; "
            f"site {i['cloud']} via librbd: record {i.get('site_record')}, not older than the guest's last "
            f"{i.get('site_last_seen')}: {i.get('site_ok')})")
    say("E2E " + json.dumps({k: v for k, v in fig.items() if k != "timeline"}))


def summary(figs: list[dict[str, Any]]) -> dict[str, float | None]:
    """Medians over the completed migrations (the BENCH line's figures)."""

    def med(key: str) -> float | None:
        vals = [float(f[key]) for f in figs if f.get(key) is not None and f["state"] == "completed"]
        return round(statistics.median(vals), 1) if vals else None

    return {"pause_ms_median": med("guest_pause_ms_heartbeat"), "blackout_ms_median": med("network_blackout_ms"),
            "total_s_median": med("total_s"), "qemu_downtime_ms_median": med("qemu_downtime_ms"),
            "stop_resume_ms_median": med("guest_pause_ms_stop_resume"),
            "route_blackout_ms_median": med("route_blackout_ms")}
