"""Election failover after a crash of the master, next to the lower bound set by etcd's lease expiry.

What it measures (same run, same host clock):
- ``failover_s``: SIGKILL of the master candidate process -> the moment a surviving candidate's campaign txn
  returned success (its ``change`` line, printed right after the txn). This is *election-level* failover; the
  agent's first accepted write under the new master adds the agent's own reaction on top of it.
- ``lease_bound_s`` (the baseline): SIGKILL -> the DELETE of ``/cnf/master`` seen by an independent watcher in this
  process, i.e. when etcd expired the dead master's lease. No election over leases can beat it; the difference
  ``failover_s - lease_bound_s`` is what our election adds (watch delivery + one txn).

Setup: a fresh 3-member etcd 3.5 cluster on loopback (lab.etcd), three ``python -m cnf.agent.raft`` candidates per
TTL; before each kill it waits TTL + 1 s + a random fraction of the keep-alive period (random phase against the
keep-alive timer, which decides how much lease is left). The killed candidate is replaced by a fresh one.

usage: .venv/bin/python benchmarks/failover.py [--rounds 6] [--ttl 2 5]
Last line: ``BENCH failover failover_s_median=.. failover_s_max=.. lease_bound_s_median=.. ttl_s=..`` for the
largest TTL (the default 5 s), with the same figures for the other TTLs as suffixed keys.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from cnf.agent.etcd_gateway import EtcdGateway  # noqa: E402
from cnf.agent.raft import MASTER_KEY  # noqa: E402
from lab.etcd import EtcdCluster  # noqa: E402


@dataclass
class Candidate:
    name: str
    proc: asyncio.subprocess.Process
    wins: list[dict[str, Any]] = field(default_factory=list)
    reader: asyncio.Task[None] | None = None


LOG_DIR = Path(tempfile.mkdtemp(prefix="cnf-bench-failover-"))


def _log_file(name: str) -> BinaryIO:
    return open(LOG_DIR / f"{name}.log", "ab")  # structlog events of the candidate, for diagnosis


async def spawn(name: str, endpoints: list[str], ttl: float) -> Candidate:
    with _log_file(name) as err:
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "cnf.agent.raft", "--cluster-id", name, "--endpoints", ",".join(endpoints),
            "--ttl", str(ttl), "--status-interval", "0", stdout=asyncio.subprocess.PIPE, stderr=err,
            cwd=str(ROOT))
    cand = Candidate(name, proc)

    async def read() -> None:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if line.get("event") == "change" and line.get("is_master") and line.get("master") == name:
                cand.wins.append(line)

    cand.reader = asyncio.create_task(read())
    return cand


async def kill(c: Candidate) -> None:
    if c.proc.returncode is None:
        try:
            os.kill(c.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await c.proc.wait()


async def watch_deletes(endpoints: list[str], deletes: list[float], stop: asyncio.Event) -> None:
    """Record the wall time of every DELETE of the master key (lease expiry or revoke)."""
    gw = EtcdGateway(endpoints)
    try:
        rev, _ = await gw.range(MASTER_KEY)
        while not stop.is_set():
            try:  # always resume from the last revision seen: history fills any gap, nothing is missed
                events = await gw.watch_once(MASTER_KEY, None, rev + 1, timeout_s=1.0)
            except Exception:
                await asyncio.sleep(0.05)
                continue
            now = time.time()
            for ev in events:
                rev = max(rev, ev.kv.mod_revision)
                if ev.type == "DELETE":
                    deletes.append(now)
    finally:
        await gw.close()


async def wait_for(pred: Any, within: float) -> Any:
    end = time.monotonic() + within
    while time.monotonic() < end:
        v = pred()
        if v:
            return v
        await asyncio.sleep(0.01)
    return None


async def run_ttl(cluster: EtcdCluster, ttl: float, rounds: int) -> tuple[list[float], list[float]]:
    endpoints = cluster.endpoints
    deletes: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.create_task(watch_deletes(endpoints, deletes, stop))
    cands = [await spawn(f"t{int(ttl)}-{n}", endpoints, ttl) for n in "ABC"]
    seq = 0
    failovers: list[float] = []
    bounds: list[float] = []
    try:
        master = await wait_for(lambda: next((c for c in cands if c.wins), None), 20)
        if master is None:
            raise RuntimeError("no master elected")
        for r in range(rounds):
            await asyncio.sleep(ttl + 1.0 + random.uniform(0, ttl / 3))
            epoch = master.wins[-1]["epoch"]
            t_kill = time.time()
            await kill(master)
            rest = [c for c in cands if c is not master]
            new = await wait_for(lambda rest=rest, epoch=epoch: next(
                ((c, w) for c in rest for w in c.wins if w["epoch"] > epoch), None), 3 * ttl + 10)
            if new is None:
                raise RuntimeError(f"round {r}: no new master")
            cand, win = new
            exp = next((t for t in deletes if t >= t_kill), None)
            failovers.append(win["t"] - t_kill)
            if exp is not None:
                bounds.append(exp - t_kill)
            print(f"ttl={ttl:g} round={r} killed={master.name} new={cand.name} epoch {epoch}->{win['epoch']} "
                  f"failover_s={win['t'] - t_kill:.3f} lease_expiry_s={(exp - t_kill) if exp else float('nan'):.3f}",
                  flush=True)
            cands.remove(master)
            seq += 1
            cands.append(await spawn(f"t{int(ttl)}-R{seq}", endpoints, ttl))
            master = cand
    finally:
        stop.set()
        for c in cands:
            await kill(c)
        await watcher
    return failovers, bounds


async def main_async(rounds: int, ttls: list[float]) -> None:
    with EtcdCluster(3) as cluster:
        results = {}
        for ttl in ttls:
            results[ttl] = await run_ttl(cluster, ttl, rounds)
    keys: list[str] = []
    headline = max(ttls)
    for ttl in sorted(ttls, key=lambda t: t != headline):
        fo, lb = results[ttl]
        med, mx = statistics.median(fo), max(fo)
        lbm = statistics.median(lb) if lb else float("nan")
        print(f"ttl={ttl:g}: failover min/median/max = {min(fo):.3f}/{med:.3f}/{mx:.3f} s "
              f"(= {med / ttl:.2f} x TTL), lease expiry median {lbm:.3f} s, election overhead median "
              f"{med - lbm:.3f} s, rounds={len(fo)}", flush=True)
        sfx = "" if ttl == headline else f"_ttl{ttl:g}"
        keys += [f"failover_s_median{sfx}={med:.3f}", f"failover_s_max{sfx}={mx:.3f}",
                 f"lease_bound_s_median{sfx}={lbm:.3f}", f"ttl_s{sfx}={ttl:g}"]
    print(f"candidate logs: {LOG_DIR}; load average at the end: {os.getloadavg()[0]:.1f}", flush=True)
    print("BENCH failover " + " ".join(keys), flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--ttl", type=float, nargs="+", default=[2.0, 5.0])
    args = p.parse_args()
    asyncio.run(main_async(args.rounds, args.ttl))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
