"""Invariants of every plan, on random federations (hypothesis), plus the plan's own API.

- caps: per cluster (in flight + proposed) and per federation are never exceeded;
- every move gains at least the margin and > 0; no VM moves twice; excluded, cooling-down, in-flight VMs and
  VMs of the wrong status never move; projected target capacity never goes negative;
- determinism: the same inputs in another order give the same plan;
- no oscillation: with static load and no cooldown, repeated rounds never revisit a placement (the sorted
  load vector strictly decreases with every move, see docs/scheduler.md) and settle.
"""

from __future__ import annotations

import json
import random
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnf.scheduler.model import (
    ClusterState,
    HostState,
    LastMove,
    MigrationInFlight,
    Snapshot,
    VmState,
    derive_usage,
    snapshot_from_dict,
)
from cnf.scheduler.rules import parse_rule
from cnf.scheduler.scheduler import evaluate

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def federations(draw: Any) -> dict[str, Any]:
    n_clusters = draw(st.integers(2, 4))
    seed = draw(st.integers(0, 10**6))
    rng = random.Random(seed)
    clusters, hosts, vms = [], [], []
    for ci in range(n_clusters):
        cid = f"c{ci}"
        clusters.append(ClusterState(cid, 0, 0))
        for hi in range(rng.randint(1, 3)):
            hosts.append(HostState(f"{cid}-h{hi}", cid, vcpus_total=rng.choice((8, 16, 32)),
                                   ram_mb_total=rng.choice((16384, 65536))))
    for vi in range(draw(st.integers(1, 14))):
        h = rng.choice(hosts)
        vms.append(VmState(f"v{vi:02d}", h.cluster_id, h.id, rng.choice(("web", "db")), rng.choice((1, 2, 4)),
                           rng.choice((1024, 2048, 4096)), float(rng.randint(0, 100)), 50.0,
                           rng.choice(("ACTIVE",) * 5 + ("SHUTOFF",)),
                           frozenset({"cnf:pinned"}) if rng.random() < 0.1 else frozenset()))
    # drop VMs that overflow their host so the inventory is physically possible
    used: dict[str, list[int]] = {h.id: [0, 0] for h in hosts}
    cap = {h.id: (h.vcpus_total, h.ram_mb_total) for h in hosts}
    fitting = []
    for v in vms:
        u = used[v.host_id]
        if u[0] + v.vcpus <= cap[v.host_id][0] and u[1] + v.ram_mb <= cap[v.host_id][1]:
            u[0] += v.vcpus
            u[1] += v.ram_mb
            fitting.append(v)
    rule = {"trigger": draw(st.sampled_from(["cpu_pct > 30", "cpu_pct > 60", "host.cpu_pct > 50",
                                             "vm.cpu_pct > 70 and cluster.cpu_pct > 20", "mem_pct > 10"])),
            "action": draw(st.sampled_from(["live_migrate", "migrate"])),
            "target": draw(st.sampled_from(["least_loaded", "most_free_ram", ["c0", "c1"]])),
            "margin_pct": draw(st.sampled_from([0, 2, 5])),
            "cooldown_s": 0,
            "caps": {"per_cluster": draw(st.integers(1, 4)), "per_federation": draw(st.integers(1, 6))},
            "exclude_projects": draw(st.sampled_from([[], ["db"]]))}
    return {"clusters": clusters, "hosts": hosts, "vms": fitting, "rule": rule, "seed": seed}


def _snapshot(fed: dict[str, Any], vms: list[VmState], in_flight: tuple[MigrationInFlight, ...] = (),
              last_moves: dict[str, LastMove] | None = None) -> Snapshot:
    cmap, hmap = derive_usage(fed["clusters"], fed["hosts"], vms)
    return Snapshot(cmap, hmap, vms, in_flight, last_moves or {})


@PROPS
@given(federations(), st.data())
def test_plan_invariants(fed: dict[str, Any], data: Any) -> None:
    vms: list[VmState] = fed["vms"]
    rule = parse_rule("r", {**fed["rule"], "cooldown_s": 600})
    flying = tuple(MigrationInFlight(v.id, v.cluster_id, "c0") for v in vms[:data.draw(st.integers(0, 2))])
    recent = {v.id: LastMove(v.id, 1000.0 - 100) for v in vms[::5]}
    snap = _snapshot(fed, vms, flying, recent)
    plan = evaluate(snap, [rule], 1000.0)
    busy: dict[str, int] = {}
    for m in flying:
        for c in {m.source_cluster, m.dest_cluster}:
            busy[c] = busy.get(c, 0) + 1
    seen: set[str] = set()
    by_id = {v.id: v for v in vms}
    for mv in plan.moves:
        v = by_id[mv.vm_id]
        assert mv.vm_id not in seen
        seen.add(mv.vm_id)
        assert mv.improvement > 0 and mv.improvement >= rule.margin_pct - 1e-9
        assert "cnf:pinned" not in v.tags and v.project_id not in rule.exclude_projects
        assert v.id not in recent and v.id not in {m.vm_id for m in flying}
        assert v.status == "ACTIVE" or (rule.action == "migrate" and v.status == "SHUTOFF")
        assert mv.source_cluster == v.cluster_id != mv.target_cluster
        assert mv.target_effect.free_vcpus[1] >= 0 and mv.target_effect.free_ram_mb[1] >= 0
        for c in (mv.source_cluster, mv.target_cluster):
            busy[c] = busy.get(c, 0) + 1
            assert busy[c] <= max(rule.caps.per_cluster, sum(1 for m in flying if c in (m.source_cluster,
                                                                                       m.dest_cluster)))
    assert len(plan.moves) + len(flying) <= max(rule.caps.per_federation, len(flying))
    json.dumps(plan.to_dict())  # the API can return it as is
    # determinism
    shuffled = list(vms)
    random.Random(fed["seed"]).shuffle(shuffled)
    again = evaluate(_snapshot(fed, shuffled, flying, recent), [rule], 1000.0)
    assert again.to_dict() == plan.to_dict(), _first_difference(again.to_dict(), plan.to_dict())


def _first_difference(a: Any, b: Any, path: str = "") -> str:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k):
                return _first_difference(a.get(k), b.get(k), f"{path}.{k}")
    if isinstance(a, list | tuple) and isinstance(b, list | tuple) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            if x != y:
                return _first_difference(x, y, f"{path}[{i}]")
    return f"{path}: {a!r} != {b!r}"


@PROPS
@given(federations())
def test_rounds_never_revisit_a_placement(fed: dict[str, Any]) -> None:
    rule = parse_rule("r", fed["rule"])
    vms: list[VmState] = list(fed["vms"])
    seen = {tuple(sorted((v.id, v.host_id) for v in vms))}
    quiet = 0
    for _ in range(80):
        plan = evaluate(_snapshot(fed, vms), [rule], 1000.0)
        if not plan.moves:
            quiet += 1
            break
        moved = {m.vm_id: m for m in plan.moves}
        vms = [VmState(v.id, moved[v.id].target_cluster, moved[v.id].target_host, v.project_id, v.vcpus, v.ram_mb,
                       v.cpu_pct, v.mem_pct, v.status, v.tags) if v.id in moved else v for v in vms]
        state = tuple(sorted((v.id, v.host_id) for v in vms))
        assert state not in seen, f"placement revisited: {plan.moves}"
        seen.add(state)
    assert quiet, "did not settle in 80 rounds"


def test_detail_limit_keeps_counts_exact() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "hosts": [{"id": "a1", "vcpus_total": 64, "ram_mb_total": 262144}]},
                     {"id": "b", "hosts": [{"id": "b1", "vcpus_total": 64, "ram_mb_total": 262144}]}],
        "vms": [{"id": f"v{i:02d}", "host": "a1", "vcpus": 1, "ram_mb": 1024, "cpu_pct": 100,
                 "tags": ["cnf:pinned"]} for i in range(40)],
    }
    rule = parse_rule("r", {"trigger": "cpu_pct > 50", "action": "live_migrate", "target": "least_loaded",
                            "caps": {"per_cluster": 50, "per_federation": 50}})
    plan = evaluate(snapshot_from_dict(data), [rule], 0.0, detail_limit=5)
    assert plan.skipped_counts == {"excluded_tag": 40}
    assert len(plan.skipped) == 5 and plan.truncated == 35
    assert plan.moves == []


def test_modes_split_the_plan_and_unknown_scope_is_reported() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "vcpus_total": 8, "ram_mb_total": 32768},
                     {"id": "b", "vcpus_total": 8, "ram_mb_total": 32768},
                     {"id": "c", "vcpus_total": 8, "ram_mb_total": 32768}],
        "vms": [{"id": f"v{i}", "cluster": "a", "vcpus": 2, "ram_mb": 1024, "cpu_pct": 100} for i in range(4)],
    }
    snap = snapshot_from_dict(data)
    auto = parse_rule("auto-one", {"trigger": "cpu_pct > 90", "action": "live_migrate", "target": "b",
                                   "mode": "auto", "priority": 2})
    planned = parse_rule("plan-one", {"trigger": "cpu_pct > 60", "action": "migrate", "target": "c",
                                      "scope": {"clusters": ["a", "zz"]}})
    plan = evaluate(snap, [planned, auto], 0.0)
    # a: 8 cores / 8 = 100% -> auto-one moves v0 to b (a 75%); plan-one (a > 60) moves v1 to c (a 50%).
    assert [(m.rule, m.vm_id, m.target_cluster, m.mode) for m in plan.moves] == [
        ("auto-one", "v0", "b", "auto"), ("plan-one", "v1", "c", "plan")]
    assert [m.vm_id for m in plan.auto_moves()] == ["v0"]
    assert [m.vm_id for m in plan.moves_awaiting_approval()] == ["v1"]
    assert plan.moves[0].target_host == ""  # clusters without host detail: the destination cloud places it
    assert {(s.subject_id, s.reason) for s in plan.skipped} == {("zz", "unknown_cluster")}


def test_vm_trigger_with_duration_reads_vm_history() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "hosts": [{"id": "a1", "vcpus_total": 8, "ram_mb_total": 32768}]},
                     {"id": "b", "hosts": [{"id": "b1", "vcpus_total": 8, "ram_mb_total": 32768}]}],
        "vms": [{"id": "steady", "host": "a1", "vcpus": 2, "ram_mb": 1024, "cpu_pct": 100},
                {"id": "spiky", "host": "a1", "vcpus": 2, "ram_mb": 1024, "cpu_pct": 100}],
        "history": [{"t": 0, "vm": "steady", "cpu_pct": 99}, {"t": 0, "vm": "spiky", "cpu_pct": 10},
                    {"t": 250, "vm": "spiky", "cpu_pct": 99}],
    }
    rule = parse_rule("r", {"trigger": "vm.cpu_pct > 90 for 5m", "action": "live_migrate",
                            "target": "least_loaded", "margin_pct": 0})
    plan = evaluate(snapshot_from_dict(data), [rule], 400.0)
    assert [m.vm_id for m in plan.moves] == ["steady"]
    assert [(p.subject_kind, p.subject_id, p.held_s) for p in plan.pending] == [("vm", "spiky", 150.0)]


def test_host_trigger_ignores_vms_without_a_host() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "vcpus_total": 8, "ram_mb_total": 32768},
                     {"id": "b", "vcpus_total": 8, "ram_mb_total": 32768}],
        "vms": [{"id": "v", "cluster": "a", "vcpus": 8, "ram_mb": 1024, "cpu_pct": 100}],
    }
    for action in ("live_migrate", "notify"):
        rule = parse_rule("r", {"trigger": "host.cpu_pct > 1 or vm.cpu_pct > 1", "action": action,
                                "target": "least_loaded"})
        plan = evaluate(snapshot_from_dict(data), [rule], 0.0)
        assert plan.moves == [] and plan.notifications == []


@pytest.mark.parametrize("bad", [
    {"clusters": [{"id": "a"}]},
    {"clusters": [{"id": "a", "vcpus_total": 1, "ram_mb_total": 1}], "vms": [{"id": "v", "vcpus": 1,
                                                                             "ram_mb": 1}]},
    {"clusters": [{"id": "a", "vcpus_total": 1, "ram_mb_total": 1}], "vms": [{"id": "v", "cluster": "zz",
                                                                             "vcpus": 1, "ram_mb": 1}]},
    {"clusters": [{"id": "a", "vcpus_total": "x", "ram_mb_total": 1}]},
    {"clusters": [], "history": [{"t": 1, "cluster": "a", "host": "b"}]},
])
def test_snapshot_from_dict_names_the_bad_field(bad: dict[str, Any]) -> None:
    from cnf.errors import InvalidInput
    with pytest.raises(InvalidInput) as info:
        snapshot_from_dict(bad)
    assert info.value.field.startswith(("clusters", "vms", "history"))


def test_history_record_and_prune_keep_the_window_provable() -> None:
    from cnf.scheduler.model import MetricHistory
    snap = snapshot_from_dict({
        "clusters": [{"id": "a", "hosts": [{"id": "a1", "vcpus_total": 8, "ram_mb_total": 8192}]}],
        "vms": [{"id": "v", "host": "a1", "vcpus": 4, "ram_mb": 4096, "cpu_pct": 50}],
    })
    hist = MetricHistory()
    for t in (0.0, 60.0, 120.0, 180.0):
        hist.record(t, snap.clusters.values(), snap.hosts.values(), snap.vms)
    assert hist.value_at("cluster", "a", "cpu_pct", 90.0) == 25.0
    assert hist.value_at("host", "a1", "free_ram_mb", 0.0) == 4096.0
    assert hist.value_at("vm", "v", "vcpus", 200.0) == 4.0
    assert hist.value_at("cluster", "a", "cpu_pct", -1.0) is None
    hist.prune(before=100.0)
    assert hist.series("cluster", "a", "cpu_pct") == ([60.0, 120.0, 180.0], [25.0, 25.0, 25.0])
    assert hist.value_at("cluster", "a", "cpu_pct", 100.0) == 25.0


def test_a_fixed_target_that_is_the_source_gives_one_no_target_entry() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "vcpus_total": 8, "ram_mb_total": 32768},
                     {"id": "b", "vcpus_total": 8, "ram_mb_total": 32768}],
        "vms": [{"id": f"v{i}", "cluster": "a", "vcpus": 2, "ram_mb": 1024, "cpu_pct": 100} for i in range(4)],
    }
    for target in ("a", ["a", "nowhere"]):
        rule = parse_rule("r", {"trigger": "cpu_pct > 50", "action": "migrate", "target": target})
        plan = evaluate(snapshot_from_dict(data), [rule], 0.0)
        assert plan.moves == []
        assert [(s.subject_id, s.reason, s.count) for s in plan.skipped] == [("a", "no_target", 4)]


def test_render_says_what_moves_and_why() -> None:
    data: dict[str, Any] = {
        "clusters": [{"id": "a", "hosts": [{"id": "a1", "vcpus_total": 8, "ram_mb_total": 32768}]},
                     {"id": "b", "hosts": [{"id": "b1", "vcpus_total": 8, "ram_mb_total": 32768}]}],
        "vms": [{"id": f"v{i}", "host": "a1", "vcpus": 2, "ram_mb": 1024, "cpu_pct": 100,
                 "tags": ["cnf:pinned"] if i == 0 else []} for i in range(4)],
    }
    rule = parse_rule("hot", {"trigger": "cpu_pct > 90", "action": "live_migrate", "target": "least_loaded",
                              "mode": "auto"})
    text = evaluate(snapshot_from_dict(data), [rule], 0.0).render()
    lines = text.splitlines()
    assert lines[0] == "AUTO live_migrate v1: a -> b (b1)"
    assert "hot: 'cpu_pct > 90' (cluster.cpu_pct=100)" in lines[1]
    assert lines[2].strip() == "a cpu 100.0% -> 75.0%, b cpu 0.0% -> 25.0%"
    assert "SKIP hot: vm v0 excluded_tag: tagged cnf:pinned" in lines
    assert lines[-1] == "skipped: excluded_tag=1"
    empty = evaluate(snapshot_from_dict(data), [], 0.0)
    assert empty.render() == "nothing to do"
