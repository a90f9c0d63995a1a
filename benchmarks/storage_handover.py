"""Benchmark: the storage handover (demote at the source -> promote at the destination) through ``CephRbdMirror``.

Why: the handover runs inside the guest's pause (DESIGN.md §4), so its length is guest downtime. Target: median
<= 250 ms on a tuned cluster (naive CLI sequence measured 3.5-5 s at Ceph's defaults).

What runs (one fresh ``lab.ceph`` lab; memstore OSDs by default as in the lab reports, peak ~5 GiB RSS with the
1 GiB image; ``--store bluestore`` keeps it at ~1.5 GiB but adds disk latency to every snapshot):
1. a 1 GiB image at site A, fully written, snapshot mirroring on, initial sync;
2. ``lag_ms_100MiB``: 100 MiB of random writes + a mirror snapshot -> destination holds it (median of 3);
3. ``handover``: N cutovers back and forth (``prepare_handover`` prunes the source's peer-less mirror snapshots),
   interleaved with ``handover_noprune`` (the same with ``prune_before_handover`` off: the control). Before
   each: a fresh 4 MiB delta + mirror snapshot synced (what the DISK phase leaves), then a *lock holder* process
   at the source writes another 4 MiB and keeps the image open with the exclusive lock (what a paused QEMU in
   ``pre-switchover`` looks like to librbd). Timed: ``demote`` at the source + ``promote`` at the destination.
   The holder's final write is verified at the destination (checksum of the 4 MiB region) on every cutover;
4. ``handover_nolock``: the same without a lock holder;
5. ``naive``: ``rbd mirror image demote`` (CLI) then ``rbd mirror image promote`` retried every 0.5 s (CLI),
   on the same tuned clusters;
6. ``handover_fastmon``: like 3, with the optional monitor profile of docs/storage.md (``paxos_propose_interval``
   0.001, ``paxos_min_wait`` 0, ``clog_to_monitors`` false on the mons), set at runtime and reverted after;
7. ``*_untuned``: mon ``paxos_propose_interval``/``paxos_min_wait`` set back to Ceph's defaults at runtime, one
   driver handover and one naive handover each (what PREFLIGHT's tuning warning is about).

The 1-minute load average is printed at the start and the end and goes into the BENCH line (``load1``, the larger
of the two): on this 2-core machine other labs running at the same time move every figure.

Usage: ``.venv/bin/python benchmarks/storage_handover.py [--n 10] [--store bluestore|memstore]``
Last line: ``BENCH storage_handover handover_ms_median=... handover_ms_max=... naive_ms_median=... lag_ms_100MiB=...
... load1=...``
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnf.storage.ceph import CephRbdMirror, CephSiteConfig
from lab.ceph import CephMirrorLab, CephSite

IMAGE = "bench1"
FINAL_MB = 4  # un-synced writes made by the lock holder right before the handover (the guest's last writes)
MiB = 1 << 20
HOLDER = """
import sys, rados, rbd
conf, cluster, image, off, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
c = rados.Rados(conffile=conf, clustername=cluster, name='client.admin', conf={'admin_socket': ''}); c.connect()
io = c.open_ioctx('vms'); im = rbd.Image(io, image)
data = sys.stdin.buffer.read(n)
im.write(data, off); im.flush()
print('held', im.is_exclusive_lock_owner(), flush=True)
sys.stdin.buffer.read()  # until the parent closes stdin: then leave like QEMU does after a migration
im.close(); io.close(); c.shutdown()
"""


def rbd_bench(site: CephSite, total_mb: int, pattern: str = "rand") -> None:
    site.rbd("bench", "--io-type", "write", "--io-size", "4M", "--io-total", f"{total_mb}M", "--io-pattern",
             pattern, f"vms/{IMAGE}", timeout=600)


def region_sha(site: CephSite, off: int, length: int) -> str:
    script = ("import sys, hashlib, rados, rbd\n"
              "c = rados.Rados(conffile=sys.argv[1], clustername=sys.argv[2], name='client.admin',"
              " conf={'admin_socket': ''}); c.connect()\n"
              "io = c.open_ioctx('vms')\n"
              "with rbd.Image(io, sys.argv[3], read_only=True) as im:\n"
              "    print(hashlib.sha256(im.read(int(sys.argv[4]), int(sys.argv[5]))).hexdigest())\n")
    p = subprocess.run(["/usr/bin/python3", "-I", "-c", script, str(site.conf), site.name, IMAGE, str(off),
                        str(length)], capture_output=True, text=True, timeout=60, check=True)
    return p.stdout.strip()


async def wait_synced(dst: CephRbdMirror, sid: int, limit_s: float = 300) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < limit_s:
        st = await dst.status(IMAGE)
        if st.in_sync and st.last_snapshot_id >= sid:
            return time.monotonic() - t0
        await asyncio.sleep(0.02)
    raise TimeoutError("mirror snapshot never arrived")


async def presync(src: CephRbdMirror, dst: CephRbdMirror, site: CephSite, prepare: bool = True) -> None:
    """What the DISK phase leaves: a fresh delta mirrored; then the handles opened (``prepare_handover``)."""
    await asyncio.to_thread(rbd_bench, site, 4)
    await wait_synced(dst, await src.create_mirror_snapshot(IMAGE))
    if prepare:
        await src.prepare_handover(IMAGE)
        await dst.prepare_handover(IMAGE)
    await asyncio.sleep(0.5)


async def driver_handover(src: CephRbdMirror, dst: CephRbdMirror, src_site: CephSite, dst_site: CephSite,
                          lock_holder: bool) -> dict[str, Any]:
    await presync(src, dst, src_site)
    holder = None
    off = random.randrange(1024 // FINAL_MB - 1) * FINAL_MB * MiB
    final = os.urandom(FINAL_MB * MiB)
    if lock_holder:
        holder = await asyncio.create_subprocess_exec(
            "/usr/bin/python3", "-I", "-c", HOLDER, str(src_site.conf), src_site.name, IMAGE, str(off),
            str(len(final)), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert holder.stdin is not None and holder.stdout is not None
        holder.stdin.write(final)
        await holder.stdin.drain()
        line = await asyncio.wait_for(holder.stdout.readline(), 60)
        assert line.strip() == b"held True", line
    try:
        t0 = time.monotonic()
        await src.demote(IMAGE)
        t1 = time.monotonic()
        await dst.promote(IMAGE)
        t2 = time.monotonic()
    finally:
        if holder is not None:  # a clean exit, like the source QEMU after migrate-continue; a SIGKILLed holder
            assert holder.stdin is not None  # leaves a dead watcher and stalls reverse replication ~30 s
            holder.stdin.close()
            try:
                await asyncio.wait_for(holder.wait(), 30)
            except TimeoutError:
                os.kill(holder.pid, signal.SIGKILL)
                await holder.wait()
    rec = {"demote_ms": (t1 - t0) * 1000, "promote_ms": (t2 - t1) * 1000, "total_ms": (t2 - t0) * 1000,
           "tries": dst.last_promote_tries, "dir": f"{src.cluster_id}->{dst.cluster_id}"}
    if lock_holder:
        rec["final_write_ok"] = await asyncio.to_thread(region_sha, dst_site, off, FINAL_MB * MiB) == \
            hashlib.sha256(final).hexdigest()
    return rec


async def naive_handover(src: CephRbdMirror, dst: CephRbdMirror, src_site: CephSite, dst_site: CephSite) -> dict:
    await presync(src, dst, src_site, prepare=False)
    await src.release(IMAGE)
    await dst.release(IMAGE)
    t0 = time.monotonic()
    p = await asyncio.to_thread(src_site.rbd, "mirror", "image", "demote", f"vms/{IMAGE}", check=False)
    assert p.returncode == 0, p.stderr
    t1 = time.monotonic()
    tries = 0
    while True:
        tries += 1
        p = await asyncio.to_thread(dst_site.rbd, "mirror", "image", "promote", f"vms/{IMAGE}", check=False)
        if p.returncode == 0:
            break
        if time.monotonic() - t0 > 120:
            raise TimeoutError(p.stderr)
        await asyncio.sleep(0.5)
    t2 = time.monotonic()
    return {"demote_ms": (t1 - t0) * 1000, "promote_ms": (t2 - t1) * 1000, "total_ms": (t2 - t0) * 1000,
            "tries": tries, "dir": f"{src.cluster_id}->{dst.cluster_id}"}


def set_paxos(lab: CephMirrorLab, interval: str, min_wait: str, clog_to_monitors: str = "true") -> None:
    """Runtime override on the running mon (the conf file outranks ``ceph config set``, so tell the daemon)."""
    for s in lab.sites:
        for key, value in (("paxos_propose_interval", interval), ("paxos_min_wait", min_wait),
                           ("clog_to_monitors", clog_to_monitors)):
            s.ceph("config", "set", "mon", key, value)
            s.ceph("tell", "mon.a", "config", "set", key, value)
        got = json.loads(s.ceph("tell", "mon.a", "config", "get", "paxos_propose_interval"))
        print(f"{s.name}: running paxos_propose_interval -> {got.get('paxos_propose_interval')}, "
              f"clog_to_monitors -> {clog_to_monitors}", flush=True)


def schedule(args: argparse.Namespace) -> list[str]:
    """Cutover kinds in run order: the headline (``handover``) alternates with its no-prune control so both see
    the same machine load (pairs in swapped order every other time, so each kind runs in both directions), then
    the runs without a lock holder, then the naive CLI sequence."""
    paired: list[str] = []
    for i in range(max(args.n, args.n_noprune)):
        pair = (["handover"] if i < args.n else []) + (["handover_noprune"] if i < args.n_noprune else [])
        paired += pair if i % 2 == 0 else pair[::-1]
    return paired + ["handover_nolock"] * args.n_nolock + ["naive"] * args.n_naive


def load1() -> float:
    return os.getloadavg()[0]


def summary(recs: list[dict[str, Any]]) -> str:
    t = [r["total_ms"] for r in recs]
    return f"n={len(t)} min={min(t):.0f} median={statistics.median(t):.0f} max={max(t):.0f} ms"


async def run(args: argparse.Namespace) -> None:
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)  # so the lab is torn down
    load_start = load1()
    print(f"load average (1 min) at start: {load_start:.2f}", flush=True)
    root = Path(tempfile.mkdtemp(prefix="cnf-bench-ceph-"))
    lab = CephMirrorLab.create(root, tuned=True, store=args.store)
    t = time.monotonic()
    lab.up(memstore_bytes=4 << 30)
    print(f"lab up ({args.store}): {time.monotonic() - t:.1f} s", flush=True)
    drv = {"a": CephRbdMirror("a", CephSiteConfig(**lab.a.driver_config()), promote_timeout_s=30),
           "b": CephRbdMirror("b", CephSiteConfig(**lab.b.driver_config()), promote_timeout_s=30)}
    site = {"a": lab.a, "b": lab.b}
    try:
        for one in drv.values():
            await one.start()
        lab.a.create_image(IMAGE, 1024)
        t = time.monotonic()
        rbd_bench(lab.a, 1024, "seq")
        print(f"1 GiB written: {time.monotonic() - t:.1f} s", flush=True)
        t = time.monotonic()
        await drv["a"].enable_mirroring(IMAGE)
        sid = max((await drv["a"].status(IMAGE)).last_snapshot_id, 1)
        await wait_synced(drv["b"], sid)
        print(f"initial sync 1 GiB: {time.monotonic() - t:.1f} s", flush=True)
        lags = []
        for _ in range(3):
            await asyncio.to_thread(rbd_bench, lab.a, 100)
            t = time.monotonic()
            sid = await drv["a"].create_mirror_snapshot(IMAGE)
            await wait_synced(drv["b"], sid)
            lags.append((time.monotonic() - t) * 1000)
        lag_ms = statistics.median(lags)
        print(f"lag 100 MiB (snapshot taken -> complete at dst): {[round(x) for x in lags]} ms", flush=True)

        primary = "a"

        def pair() -> tuple[str, str]:
            return primary, ("b" if primary == "a" else "a")

        results: dict[str, list[dict[str, Any]]] = {"handover": [], "handover_nolock": [], "naive": [],
                                                    "handover_noprune": [], "handover_fastmon": [],
                                                    "handover_untuned": [],
                                                    "naive_untuned": []}
        for kind in schedule(args):
            s, d = pair()
            if kind == "naive":
                rec = await naive_handover(drv[s], drv[d], site[s], site[d])
            else:
                for one in drv.values():
                    one.prune_before_handover = kind != "handover_noprune"
                rec = await driver_handover(drv[s], drv[d], site[s], site[d],
                                            lock_holder=kind in ("handover", "handover_noprune"))
                for one in drv.values():
                    one.prune_before_handover = True
            results[kind].append(rec)
            print(kind, json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in rec.items()}),
                  flush=True)
            primary = d
        if args.n_fastmon:
            set_paxos(lab, "0.001", "0", clog_to_monitors="false")
            await asyncio.sleep(1)
            for _ in range(args.n_fastmon):
                s, d = pair()
                rec = await driver_handover(drv[s], drv[d], site[s], site[d], lock_holder=True)
                results["handover_fastmon"].append(rec)
                print("handover_fastmon", json.dumps({k: round(v, 1) if isinstance(v, float) else v
                                                      for k, v in rec.items()}), flush=True)
                primary = d
        set_paxos(lab, "1.0", "0.05")
        await asyncio.sleep(2)
        for kind in ("handover_untuned", "naive_untuned"):
            for _ in range(args.n_untuned):
                s, d = pair()
                if kind == "naive_untuned":
                    rec = await naive_handover(drv[s], drv[d], site[s], site[d])
                else:
                    rec = await driver_handover(drv[s], drv[d], site[s], site[d], lock_holder=True)
                results[kind].append(rec)
                print(kind, json.dumps({k: round(v, 1) if isinstance(v, float) else v for k, v in rec.items()}),
                      flush=True)
                primary = d
        set_paxos(lab, "0.01", "0.001")
        ok = all(r.get("final_write_ok", True) for k in results for r in results[k])
        s, d = pair()
        same = await drv[s].checksum(IMAGE, timeout_s=600) == await drv[d].checksum(IMAGE, timeout_s=600)
        for k, recs in results.items():
            if recs:
                print(f"{k:18s} {summary(recs)}  (demote median {statistics.median(r['demote_ms'] for r in recs):.0f}"
                      f" ms, promote tries max {max(r['tries'] for r in recs)})")
        print(f"final writes present at the destination on every cutover: {ok}; 1 GiB checksums equal: {same}")
        load_end = load1()
        print(f"load average (1 min) at start {load_start:.2f}, at end {load_end:.2f}")
        if not (ok and same):
            raise SystemExit("data check failed")
        h = [r["total_ms"] for r in results["handover"]]
        nolock = [r["total_ms"] for r in results["handover_nolock"]] or [0.0]
        naive = [r["total_ms"] for r in results["naive"]]
        fm = [r["total_ms"] for r in results["handover_fastmon"]] or [0.0]
        npr = [r["total_ms"] for r in results["handover_noprune"]] or [0.0]
        hu = [r["total_ms"] for r in results["handover_untuned"]] or [0.0]
        nu = [r["total_ms"] for r in results["naive_untuned"]] or [0.0]
        print(f"BENCH storage_handover handover_ms_median={statistics.median(h):.0f} handover_ms_max={max(h):.0f} "
              f"naive_ms_median={statistics.median(naive):.0f} lag_ms_100MiB={lag_ms:.0f} "
              f"handover_nolock_ms_median={statistics.median(nolock):.0f} "
              f"handover_untuned_ms_median={statistics.median(hu):.0f} "
              f"handover_noprune_ms_median={statistics.median(npr):.0f} "
              f"handover_fastmon_ms_median={statistics.median(fm):.0f} "
              f"naive_untuned_ms_median={statistics.median(nu):.0f} n={len(h)} "
              f"load1={max(load_start, load_end):.2f}")
    finally:
        for one in drv.values():
            await one.close()
        lab.down()


def main() -> None:
    global FINAL_MB
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10, help="driver cutovers with a lock holder (headline)")
    ap.add_argument("--n-nolock", type=int, default=6)
    ap.add_argument("--n-naive", type=int, default=4)
    ap.add_argument("--n-noprune", type=int, default=6,
                    help="lock-holder cutovers without prune_before_handover, interleaved with the headline")
    ap.add_argument("--n-fastmon", type=int, default=4, help="driver cutovers with the optional mon profile")
    ap.add_argument("--n-untuned", type=int, default=2)
    ap.add_argument("--store", choices=["bluestore", "memstore"], default="memstore")
    ap.add_argument("--final-mb", type=int, default=FINAL_MB, help="un-synced MiB written by the lock holder")
    args = ap.parse_args()
    FINAL_MB = max(1, args.final_mb)
    asyncio.run(run(args))


if __name__ == "__main__":
    main()
