"""Benchmark: a VM /32 handoff between two clouds through FrrBgpSpeaker, next to the same handoff with bare vtysh.

What is timed (per round, clouds alternate c1 -> c2 -> c1 ...): from t0 = just before the destination's announce
until *every other router* (the route server, the uninvolved cloud c3 and the old source) has its best path via
the destination. The observer holds one persistent session per observed router on bgpd's vtysh socket
(``cnf.network.frr_vty``) and reads ``show bgp ipv4 unicast <p> json`` every 3 ms: ~0.2 ms of bgpd's time a read,
so the measurement itself no longer loads the 2 cores (it used to spawn a ``vtysh`` process per read, 3 threads
back to back, which slowed FRR and the driver it was measuring). The same observer serves every method, and the
methods rotate round by round so they share the machine's load.

- ``handoff``: ``await dst.announce(p)`` then ``await src.withdraw(p)`` with FrrBgpSpeaker's default transport
  (bgpd's vtysh socket): one batch per change with read-back; announce returns once FRR has processed the route
  and advertised it to its peers, withdraw once FRR has dropped it. The headline.
- ``handoff_vtysh``: the same calls with ``transport="vtysh"`` (a ``vtysh`` process per batch and per poll).
- ``bare_vtysh``: the lab recipe: one ``vtysh -c 'network p'`` at the destination, one ``no network`` at the source,
  no read-back (what FRR costs through vtysh; it does not guard against the withdraw overtaking the announce).

FRR's floor (docs/bgp.md): every router runs best-path 50 ms after a change (hard-coded work-queue hold), so a
handoff is >= 50 ms (destination) + 3 x 50 ms (source, route server, observer) = 0.2 s.

Runs a private lab (``lab.frr``, needs root) unless ``--token`` names a running one. Last line:
``BENCH bgp_handoff handoff_s_median=... handoff_s_max=... handoff_vtysh_transport_s_median=...
bare_vtysh_s_median=...``.
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

from cnf.network import frr_json, frr_vty  # noqa: E402
from cnf.network.bgp import FrrBgpSpeaker  # noqa: E402
from lab.frr import FRR_RUN, FrrLab, LabRouter  # noqa: E402

PREFIX = "10.96.0.1/32"
POLL_S = 0.003


def vtysh(ns: str, *commands: str, timeout: float = 10.0) -> str:
    argv = ["vtysh", "-N", ns]
    for c in commands:
        argv += ["-c", c]
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False).stdout


async def _watch(routers: list[LabRouter], want: str, t0: float, limit: float) -> dict[str, float]:
    """Seconds since ``t0`` until each router's best next-hop is ``want``: one persistent vtysh-socket session per
    router, polled every ``POLL_S`` (~0.2 ms of bgpd's time per poll, so the measurement does not load the CPU)."""

    async def poll(r: LabRouter) -> tuple[str, float]:
        session = frr_vty.FrrVtySession(frr_vty.socket_path(FRR_RUN, r.pathspace), timeout=5.0)
        try:
            while time.monotonic() - t0 < limit:
                rc, text = await session.run([f"show bgp ipv4 unicast {PREFIX} json"])
                seen = time.monotonic() - t0
                view = frr_json.load_trailing_object(text) if rc == 0 else {}
                best = frr_json.best_path(PREFIX, view, local_as=r.as_number, self_next_hop=r.address)
                if best is not None and best.next_hop == want:
                    return r.name, seen
                await asyncio.sleep(POLL_S)
            return r.name, float("inf")
        finally:
            await session.close()

    return dict(await asyncio.gather(*(poll(r) for r in routers)))


def wait_all(routers: list[LabRouter], want: str, t0: float, limit: float = 30.0) -> dict[str, float]:
    return asyncio.run(_watch(routers, want, t0, limit))


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
    return asyncio.run(_run(lab, rounds))


async def _run(lab: FrrLab, rounds: int) -> str:
    c1, c2, c3 = lab.cloud_routers[:3]
    speakers = {(r.name, transport): FrrBgpSpeaker(r.name, r.as_number, r.address, pathspace=r.pathspace,
                                                   transport=transport)
                for r in (c1, c2) for transport in ("socket", "vtysh")}
    methods = ("handoff", "handoff_vtysh", "bare_vtysh")
    results: dict[str, list[float]] = {m: [] for m in methods}
    calls: dict[str, list[float]] = {"announce": [], "withdraw": []}
    vtysh_calls: dict[str, list[float]] = {"announce": [], "withdraw": []}
    after_withdraw: dict[str, list[float]] = {m: [] for m in methods}
    await asyncio.sleep(3.0)  # the first announcement right after the sessions come up is slow (lab report pitfall 8)
    src, dst = c1, c2
    for rnd in range(rounds):
        # every method moves the prefix the same way in a round; which goes first rotates
        for method in methods[rnd % 3:] + methods[:rnd % 3]:
            await asyncio.to_thread(settle_on, lab, src)
            res: dict[str, float] = {}
            t0 = time.monotonic()
            poller = threading.Thread(target=lambda out=res, t0=t0, dst=dst, watch=[lab.route_server, c3, src]:
                                      out.update(wait_all(watch, dst.address, t0)))
            poller.start()
            if method == "handoff":
                t_withdraw = await speaker_handoff(speakers[src.name, "socket"], speakers[dst.name, "socket"], calls)
            elif method == "handoff_vtysh":
                t_withdraw = await speaker_handoff(speakers[src.name, "vtysh"], speakers[dst.name, "vtysh"],
                                                   vtysh_calls)
            else:
                bare_network(dst, True)
                t_withdraw = time.monotonic()
                bare_network(src, False)
            await asyncio.to_thread(poller.join)
            total = max(res.values())
            results[method].append(total)
            after_withdraw[method].append(total - (t_withdraw - t0))
            print(f"round {rnd} {method:10s} {src.name}->{dst.name}: "
                  + " ".join(f"{k}={v:.3f}" for k, v in sorted(res.items())) + f" all={total:.3f}"
                  + f" (withdraw started {t_withdraw - t0:.3f})", flush=True)
        src, dst = dst, src
    for sp in speakers.values():
        await sp.close()
    for r in lab.cloud_routers:
        bare_network(r, False)

    h, hv, b = results["handoff"], results["handoff_vtysh"], results["bare_vtysh"]
    aw_h, aw_b = statistics.median(after_withdraw["handoff"]), statistics.median(after_withdraw["bare_vtysh"])
    print(f"from withdraw start to all on the destination (the lab report's figure): median handoff={aw_h:.3f}s "
          f"bare={aw_b:.3f}s")
    print(f"FrrBgpSpeaker call time: announce median={statistics.median(calls['announce']):.3f}s "
          f"withdraw median={statistics.median(calls['withdraw']):.3f}s; load average {os.getloadavg()[0]:.1f}")
    print(f"handoff  min/median/max = {min(h):.3f}/{statistics.median(h):.3f}/{max(h):.3f} s over {len(h)} rounds")
    print(f"handoff over vtysh processes min/median/max = {min(hv):.3f}/{statistics.median(hv):.3f}/{max(hv):.3f} s; "
          f"announce call median={statistics.median(vtysh_calls['announce']):.3f}s "
          f"withdraw call median={statistics.median(vtysh_calls['withdraw']):.3f}s")
    print(f"bare     min/median/max = {min(b):.3f}/{statistics.median(b):.3f}/{max(b):.3f} s over {len(b)} rounds")
    return (f"BENCH bgp_handoff handoff_s_median={statistics.median(h):.3f} handoff_s_max={max(h):.3f} "
            f"handoff_vtysh_transport_s_median={statistics.median(hv):.3f} "
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
