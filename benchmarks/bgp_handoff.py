"""Benchmark: a VM /32 handoff between two clouds through FrrBgpSpeaker, next to the same handoff with bare vtysh.

What is timed (per round, clouds alternate c1 -> c2 -> c1 ...): from t0 = just before the destination's announce
until *every other router* (the route server, the uninvolved cloud c3 and the old source) has its best path via
the destination. One thread per observed router polls ``show bgp ipv4 unicast <p> json`` every ~10 ms; the same
pollers serve both methods, and the methods alternate round by round so they share the machine's load.

- ``handoff``: ``await dst.announce(p)`` then ``await src.withdraw(p)`` (FrrBgpSpeaker: one vtysh session per change
  with read-back, and announce waits until FRR has advertised the route to its peers).
- ``bare_vtysh``: the lab recipe: one ``vtysh -c 'network p'`` at the destination, one ``no network`` at the source,
  no read-back (what FRR itself costs; it does not guard against the withdraw overtaking the announce).

Runs a private lab (``lab.frr``, needs root) unless ``--token`` names a running one. Last line:
``BENCH bgp_handoff handoff_s_median=... handoff_s_max=... bare_vtysh_s_median=...``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cnf.network import frr_json  # noqa: E402
from cnf.network.bgp import FrrBgpSpeaker  # noqa: E402
from lab.frr import FrrLab, LabRouter  # noqa: E402

PREFIX = "10.96.0.1/32"


def vtysh(ns: str, *commands: str, timeout: float = 10.0) -> str:
    argv = ["vtysh", "-N", ns]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False).stdout


def best_next_hop(r: LabRouter) -> str | None:
    try:
        view = frr_json.load_trailing_object(vtysh(r.pathspace, f"show bgp ipv4 unicast {PREFIX} json"))
    except frr_json.FrrOutputError:
        return None
    best = frr_json.best_path(PREFIX, view, local_as=r.as_number, self_next_hop=r.address)
    return best.next_hop if best else None


def wait_all(routers: list[LabRouter], want: str, t0: float, limit: float = 30.0) -> dict[str, float]:
    """Seconds since ``t0`` until each router's best next-hop is ``want`` (polled back to back, one thread each)."""
    out: dict[str, float] = {}

    def poll(r: LabRouter) -> None:
        while time.monotonic() - t0 < limit:
            if best_next_hop(r) == want:
                out[r.name] = time.monotonic() - t0
                return
            time.sleep(0.01)  # leave the CPU to FRR between polls (2 cores, 3 pollers)
        out[r.name] = float("inf")

    threads = [threading.Thread(target=poll, args=(r,)) for r in routers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def bare_network(r: LabRouter, on: bool) -> None:
    vtysh(r.pathspace, "configure terminal", f"router bgp {r.as_number}", "address-family ipv4 unicast",
          f"{'' if on else 'no '}network {PREFIX}")


def settle_on(lab: FrrLab, src: LabRouter) -> None:
    """Start state of a round: only ``src`` announces and every router uses it."""
    for r in lab.cloud_routers:
        bare_network(r, r is src)
    others = [r for r in lab.routers if r.name.startswith("c") and r is not src] + [lab.route_server]
    res = wait_all(others, src.address, time.monotonic())
    if max(res.values()) == float("inf"):
        raise RuntimeError(f"fabric did not settle on {src.name}: {res}")
    time.sleep(0.5)


async def speaker_handoff(src: FrrBgpSpeaker, dst: FrrBgpSpeaker, calls: dict[str, list[float]]) -> float:
    """Returns the monotonic time the withdraw started."""
    t = time.monotonic()
    await dst.announce(PREFIX)
    calls["announce"].append(time.monotonic() - t)
    t = time.monotonic()
    await src.withdraw(PREFIX)
    calls["withdraw"].append(time.monotonic() - t)
    return t


def run(lab: FrrLab, rounds: int) -> str:
    c1, c2, c3 = lab.cloud_routers[:3]
    speakers = {r.name: FrrBgpSpeaker(r.name, r.as_number, r.address, pathspace=r.pathspace) for r in (c1, c2)}
    results: dict[str, list[float]] = {"handoff": [], "bare_vtysh": []}
    calls: dict[str, list[float]] = {"announce": [], "withdraw": []}
    after_withdraw: dict[str, list[float]] = {"handoff": [], "bare_vtysh": []}
    time.sleep(3.0)  # the first announcement right after the sessions come up is slow (lab report pitfall 8)
    src, dst = c1, c2
    for rnd in range(rounds):
        # both methods move the prefix the same way in a round; which goes first alternates
        for method in (("handoff", "bare_vtysh") if rnd % 2 == 0 else ("bare_vtysh", "handoff")):
            settle_on(lab, src)
            res: dict[str, float] = {}
            t0 = time.monotonic()
            poller = threading.Thread(target=lambda out=res, t0=t0, dst=dst, watch=[lab.route_server, c3, src]:
                                      out.update(wait_all(watch, dst.address, t0)))
            poller.start()
            if method == "handoff":
                t_withdraw = asyncio.run(speaker_handoff(speakers[src.name], speakers[dst.name], calls))
            else:
                bare_network(dst, True)
                t_withdraw = time.monotonic()
                bare_network(src, False)
            poller.join()
            total = max(res.values())
            results[method].append(total)
            after_withdraw[method].append(total - (t_withdraw - t0))
            print(f"round {rnd} {method:10s} {src.name}->{dst.name}: "
                  + " ".join(f"{k}={v:.3f}" for k, v in sorted(res.items())) + f" all={total:.3f}", flush=True)
        src, dst = dst, src
    for r in lab.cloud_routers:
        bare_network(r, False)

    h, b = results["handoff"], results["bare_vtysh"]
    aw_h, aw_b = statistics.median(after_withdraw["handoff"]), statistics.median(after_withdraw["bare_vtysh"])
    print(f"from withdraw start to all on the destination (the lab report's figure): median handoff={aw_h:.3f}s "
          f"bare={aw_b:.3f}s")
    print(f"FrrBgpSpeaker call time: announce median={statistics.median(calls['announce']):.3f}s "
          f"withdraw median={statistics.median(calls['withdraw']):.3f}s; load average {os.getloadavg()[0]:.1f}")
    print(f"handoff  min/median/max = {min(h):.3f}/{statistics.median(h):.3f}/{max(h):.3f} s over {len(h)} rounds")
    print(f"bare     min/median/max = {min(b):.3f}/{statistics.median(b):.3f}/{max(b):.3f} s over {len(b)} rounds")
    return (f"BENCH bgp_handoff handoff_s_median={statistics.median(h):.3f} handoff_s_max={max(h):.3f} "
            f"bare_vtysh_s_median={statistics.median(b):.3f} bare_vtysh_s_max={max(b):.3f} "
            f"ratio={statistics.median(h) / statistics.median(b):.2f} rounds={len(h)} "
            f"announce_call_s_median={statistics.median(calls['announce']):.3f} "
            f"withdraw_call_s_median={statistics.median(calls['withdraw']):.3f} "
            f"after_withdraw_s_median={aw_h:.3f} bare_after_withdraw_s_median={aw_b:.3f} "
            f"loadavg={os.getloadavg()[0]:.1f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=8, help="handoffs per method")
    ap.add_argument("--token", help="use the running lab with this token (python -m lab.frr up)")
    args = ap.parse_args()
    lab = FrrLab(token=args.token) if args.token else FrrLab()
    if not args.token:
        t = time.monotonic()
        lab.up()
        print(f"lab {lab.token} up in {time.monotonic() - t:.1f}s", flush=True)
    try:
        line = run(lab, args.rounds)
    finally:
        if not args.token:
            lab.down()
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
