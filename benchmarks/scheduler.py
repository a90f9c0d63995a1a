"""Benchmark: evaluate a set of policies over 10 clusters x 100,000 VMs (default: 100,000 VMs in total).

Run: ``.venv/bin/python benchmarks/scheduler.py [--vms N] [--clusters C] [--repeat R]``.

Measures ``cnf.scheduler.scheduler.evaluate`` (median of ``--repeat`` runs, the snapshot is built once and not
timed; its build time is printed separately) against a baseline measured in the same run: a naive per-VM
evaluation that builds each VM's metric dict, walks the trigger's AST for every (rule, VM) and scores every
target cluster for every firing VM — what a straightforward implementation costs, without projection or caps.
The last line is ``BENCH scheduler decision_s=… vms=… clusters=… moves=…``.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import structlog

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnf.scheduler.model import (
    ClusterState,
    HostState,
    LastMove,
    MetricHistory,
    Snapshot,
    VmState,
    derive_usage,
)
from cnf.scheduler.rules import Rule, parse_rule
from cnf.scheduler.scheduler import evaluate
from cnf.scheduler.trigger import interpret

POLICIES: dict[str, dict[str, Any]] = {
    "rebalance-cpu": {"trigger": "cpu_pct > 80 for 5m", "action": "live_migrate", "target": "least_loaded",
                      "mode": "auto", "caps": {"per_cluster": 3, "per_federation": 10}},
    "hot-host": {"trigger": "host.cpu_pct > 97", "action": "live_migrate", "target": "least_loaded",
                 "priority": 5, "caps": {"per_cluster": 3, "per_federation": 10}},
    "busy-vm": {"trigger": "cluster.cpu_pct > 75 and vm.cpu_pct >= 99", "action": "live_migrate",
                "target": "least_loaded", "exclude_projects": ["db"], "cooldown_s": 1800},
    "mem-pressure": {"trigger": "mem_pct > 80 for 2m", "action": "migrate", "target": "most_free_ram"},
    "notify-saturated": {"trigger": "vm.cpu_pct > 99.5", "action": "notify"},
}


def build(n_vms: int, n_clusters: int, seed: int = 7) -> tuple[Snapshot, float]:
    rng = random.Random(seed)
    hosts_per_cluster = 100
    per_cluster = n_vms // n_clusters
    # physical threads sized so a cool cloud (VMs at 20-70%) sits near 45% and a hot one (75-100%) near 85%;
    # vCPU over-commit 4:1 leaves room for moves
    pcpus = max(8, round(per_cluster * 2.25 / hosts_per_cluster))
    clusters: list[ClusterState] = []
    hosts: list[HostState] = []
    vms: list[VmState] = []
    for ci in range(n_clusters):
        cid = f"os{ci:02d}"
        clusters.append(ClusterState(cid, 0, 0))
        for hi in range(hosts_per_cluster):
            hosts.append(HostState(f"{cid}-h{hi:03d}", cid, vcpus_total=4 * pcpus,
                                   ram_mb_total=max(65536, per_cluster * 4096 * 100 // 85 // hosts_per_cluster),
                                   pcpus=pcpus))
        hot = ci < 3  # three hot clouds
        for vi in range(per_cluster):
            base = rng.uniform(75, 100) if hot else rng.uniform(20, 70)
            vms.append(VmState(
                id=f"{cid}-vm{vi:06d}", cluster_id=cid, host_id=f"{cid}-h{vi % hosts_per_cluster:03d}",
                project_id=rng.choice(("web", "batch", "db", "ci")), vcpus=rng.choice((1, 2, 2, 4)),
                ram_mb=rng.choice((1024, 2048, 4096, 8192)), cpu_pct=min(100.0, base + rng.uniform(-5, 5)),
                mem_pct=rng.uniform(10, 90), status="ACTIVE" if rng.random() > 0.02 else "SHUTOFF",
                tags=frozenset({"cnf:pinned"}) if rng.random() < 0.01 else frozenset()))
    t0 = time.perf_counter()
    cmap, hmap = derive_usage(clusters, hosts, vms)
    history = MetricHistory()
    now = 100_000.0
    for c in cmap.values():
        for k in range(21):  # a sample every 30 s for 10 minutes, drifting around the current value
            history.add(now - 600 + 30 * k, "cluster", c.id,
                        {"cpu_pct": c.cpu_pct + rng.uniform(-1, 1), "mem_pct": c.mem_pct + rng.uniform(-1, 1)})
    last_moves = {v.id: LastMove(v.id, now - rng.uniform(0, 7200)) for v in rng.sample(vms, min(len(vms), 2000))}
    snap = Snapshot(cmap, hmap, vms, (), last_moves, history)
    return snap, time.perf_counter() - t0


def naive(snap: Snapshot, rules: list[Rule]) -> tuple[int, int]:
    """Per (rule, VM): metric dict + tree-walking evaluation; every firing VM scores every target."""
    fired = scored = 0
    for rule in rules:
        for v in snap.vms:
            c = snap.clusters[v.cluster_id]
            h = snap.hosts[v.host_id]
            values = {}
            for lv, obj in (("cluster", c), ("host", h)):
                for m in ("cpu_pct", "mem_pct", "free_vcpus", "free_ram_mb", "vm_count"):
                    values[f"{lv}.{m}"] = getattr(obj, m)
            for m in ("cpu_pct", "mem_pct", "vcpus", "ram_mb"):
                values[f"vm.{m}"] = getattr(v, m)
            if not interpret(rule.trigger.expr, values):
                continue
            fired += 1
            if rule.moves:
                best = min((t.cpu_pct + 100.0 * v.cpu_load / t.cpu_capacity, t.id)
                           for t in snap.clusters.values() if t.id != c.id and t.free_vcpus >= v.vcpus)
                scored += best is not None
    return fired, scored


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--vms", type=int, default=100_000)
    ap.add_argument("--clusters", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--no-baseline", dest="baseline", action="store_false",
                    help="skip the naive baseline (slow at 1,000,000 VMs)")
    args = ap.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.INFO))
    rules = [parse_rule(name, data) for name, data in POLICIES.items()]
    snap, build_s = build(args.vms, args.clusters)
    now = 100_000.0
    print(f"snapshot: {len(snap.vms)} VMs, {len(snap.hosts)} hosts, {len(snap.clusters)} clusters "
          f"(derive_usage + history {build_s:.3f}s)")
    for c in sorted(snap.clusters.values(), key=lambda c: c.id):
        print(f"  {c.id}: cpu {c.cpu_pct:5.1f}%  mem {c.mem_pct:5.1f}%  vms {c.vm_count}")

    times, cpu_times = [], []
    plan = None
    for _ in range(args.repeat):
        t0, c0 = time.perf_counter(), time.process_time()
        plan = evaluate(snap, rules, now)
        times.append(time.perf_counter() - t0)
        cpu_times.append(time.process_time() - c0)
    assert plan is not None
    decision_s = statistics.median(times)
    cpu_s = statistics.median(cpu_times)
    fired = scored = 0
    baseline_s = math.nan
    if args.baseline:
        t0 = time.perf_counter()
        fired, scored = naive(snap, rules)
        baseline_s = time.perf_counter() - t0
    by_rule: dict[str, int] = {}
    for m in plan.moves:
        by_rule[m.rule] = by_rule.get(m.rule, 0) + 1
    print(f"evaluate: median {decision_s:.3f}s wall of {args.repeat} (min {min(times):.3f}s, max {max(times):.3f}s), "
          f"median {cpu_s:.3f}s CPU; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    print(f"plan: {len(plan.moves)} moves {by_rule}, {len(plan.notifications)} notifications, "
          f"skipped {plan.skipped_counts}, pending {len(plan.pending)}")
    for m in plan.moves[:3]:
        print(f"  {m.vm_id}: {m.why}")
    print(f"baseline (naive per-VM tree walk, no projection): {baseline_s:.3f}s, {fired} firings, {scored} scored")
    print(f"BENCH scheduler decision_s={decision_s:.3f} vms={len(snap.vms)} clusters={len(snap.clusters)} "
          f"moves={len(plan.moves)} cpu_s={cpu_s:.3f} notifications={len(plan.notifications)} "
          f"baseline_s={baseline_s:.3f} speedup={baseline_s / decision_s:.1f}")


if __name__ == "__main__":
    main()
