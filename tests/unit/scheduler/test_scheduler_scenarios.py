"""Scenario tests as data: each ``scenarios/*.yaml`` is a federation, policies and the plan they must produce.

Format (see ``scenarios/README.md``): the snapshot keys of ``cnf.scheduler.model.snapshot_from_dict`` plus
``now``, ``policies: {name: rule}`` and ``expect`` (one evaluation) and/or ``rounds`` (a simulation: apply the
moves, advance the clock, re-evaluate — used for ping-pong and drifting load).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from cnf.scheduler.model import snapshot_from_dict
from cnf.scheduler.plan import Plan
from cnf.scheduler.rules import Rule, parse_rule
from cnf.scheduler.scheduler import evaluate

SCENARIOS = sorted((Path(__file__).parent / "scenarios").glob("*.yaml"))


def _load(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text())
    assert isinstance(data, dict), path
    return data


def _rules(data: dict[str, Any]) -> list[Rule]:
    return [parse_rule(name, rule) for name, rule in (data.get("policies") or {}).items()]


def _check_plan(plan: Plan, expect: dict[str, Any], where: str) -> None:
    if "moves" in expect:
        got = [{"vm": m.vm_id, "rule": m.rule, "source": m.source_cluster, "target": m.target_cluster}
               for m in plan.moves]
        want = [{k: e[k] for k in ("vm", "rule", "source", "target")} for e in expect["moves"]]
        assert got == want, f"{where}: moves\n{[m.why for m in plan.moves]}\nskipped={plan.skipped}"
        for m, e in zip(plan.moves, expect["moves"], strict=True):
            for key, attr in (("target_host", "target_host"), ("mode", "mode"), ("action", "action")):
                if key in e:
                    assert getattr(m, attr) == e[key], f"{where}: {m.vm_id}.{key}"
            if "improvement" in e:
                assert m.improvement == pytest.approx(e["improvement"], abs=0.01), f"{where}: {m.vm_id}"
            if "trigger_values" in e:
                assert m.trigger_values == pytest.approx(e["trigger_values"], abs=0.01), f"{where}: {m.vm_id}"
            if "candidates" in e:
                got_c = {c.cluster: c.reason for c in m.candidates}
                assert got_c == e["candidates"], f"{where}: {m.vm_id} candidates {m.candidates}"
            if "source_cpu_pct" in e:
                assert list(m.source_effect.cpu_pct) == pytest.approx(e["source_cpu_pct"], abs=0.01)
            if "target_cpu_pct" in e:
                assert list(m.target_effect.cpu_pct) == pytest.approx(e["target_cpu_pct"], abs=0.01)
            assert m.why and m.rule in m.why
    if "notifications" in expect:
        got_n = [{"rule": n.rule, "kind": n.subject_kind, "id": n.subject_id} for n in plan.notifications]
        assert got_n == expect["notifications"], f"{where}: notifications {plan.notifications}"
    if "skipped" in expect:
        got_s = [{"rule": s.rule, "kind": s.subject_kind, "id": s.subject_id, "reason": s.reason, "count": s.count}
                 for s in plan.skipped]
        for e in expect["skipped"]:
            want_s = {"kind": "vm", "count": 1, **e}
            match = [g for g in got_s if all(g[k] == v for k, v in want_s.items())]
            assert match, f"{where}: skip {want_s} not in {got_s}"
    if "skipped_counts" in expect:
        assert plan.skipped_counts == expect["skipped_counts"], f"{where}: {plan.skipped}"
    if "pending" in expect:
        got_p = [{"rule": p.rule, "kind": p.subject_kind, "id": p.subject_id} for p in plan.pending]
        assert got_p == [{k: e[k] for k in ("rule", "kind", "id")} for e in expect["pending"]], where
        for p, e in zip(plan.pending, expect["pending"], strict=True):
            if "held_s" in e:
                assert p.held_s == pytest.approx(e["held_s"]), f"{where}: {p}"


class FederationSimulation:
    """Apply each plan's moves to the scenario's data, advance the clock, record history, evaluate again.

    Moves complete within one step (the engine's job is not simulated); each moved VM gets a ``last_moves``
    entry, so cooldowns apply as they would in the master's loop.
    """

    def __init__(self, data: dict[str, Any]) -> None:
        self.data = copy.deepcopy(data)
        self.data.setdefault("history", [])
        self.data.setdefault("last_moves", {})
        self.now = float(self.data.get("now", 0.0))
        self.rules = _rules(self.data)
        self.host_cluster = {h["id"]: c["id"] for c in self.data["clusters"] for h in c.get("hosts") or []}
        self.vm_by_id = {v["id"]: v for v in self.data["vms"]}
        self.trail: dict[str, list[str]] = {}  # vm -> clusters it was in, in order

    def record_history(self) -> None:
        snap = snapshot_from_dict(self.data)
        for c in snap.clusters.values():
            self.data["history"].append({"t": self.now, "cluster": c.id, "cpu_pct": c.cpu_pct,
                                         "mem_pct": c.mem_pct, "free_vcpus": c.free_vcpus,
                                         "free_ram_mb": c.free_ram_mb, "vm_count": c.vm_count})
        for h in snap.hosts.values():
            self.data["history"].append({"t": self.now, "host": h.id, "cpu_pct": h.cpu_pct, "mem_pct": h.mem_pct,
                                         "free_vcpus": h.free_vcpus, "free_ram_mb": h.free_ram_mb,
                                         "vm_count": h.vm_count})
        for v in snap.vms:
            self.data["history"].append({"t": self.now, "vm": v.id, "cpu_pct": v.cpu_pct, "mem_pct": v.mem_pct,
                                         "vcpus": v.vcpus, "ram_mb": v.ram_mb})

    def step(self, apply: str) -> Plan:
        self.record_history()
        plan = evaluate(snapshot_from_dict(self.data), self.rules, self.now)
        for m in plan.moves:
            if apply == "auto" and m.mode != "auto":
                continue
            vm = self.vm_by_id[m.vm_id]
            self.trail.setdefault(m.vm_id, [m.source_cluster]).append(m.target_cluster)
            vm.pop("host", None)
            vm.pop("cluster", None)
            if m.target_host:
                vm["host"] = m.target_host
            else:
                vm["cluster"] = m.target_cluster
            self.data["last_moves"][m.vm_id] = {"t": self.now, "source": m.source_cluster,
                                                "dest": m.target_cluster}
        return plan

    def apply_events(self, events: list[dict[str, Any]]) -> None:
        for ev in events:
            vm = self.vm_by_id[ev["vm"]]
            vm.update({k: v for k, v in ev.items() if k != "vm"})


def _run_rounds(data: dict[str, Any], where: str) -> None:
    spec = data["rounds"]
    sim = FederationSimulation(data)
    events = {int(k): v for k, v in (spec.get("events") or {}).items()}
    per_round: list[int] = []
    for i in range(int(spec["count"])):
        sim.apply_events(events.get(i, []))
        plan = sim.step(spec.get("apply", "all"))
        per_round.append(len(plan.moves))
        sim.now += float(spec.get("step_s", 60))
    exp = spec["expect"]
    if "moves_per_round" in exp:
        assert per_round == exp["moves_per_round"], f"{where}: {per_round} trail={sim.trail}"
    if "total_moves" in exp:
        assert sum(per_round) == exp["total_moves"], f"{where}: {per_round} trail={sim.trail}"
    if "max_moves_per_vm" in exp:
        worst = max((len(t) - 1 for t in sim.trail.values()), default=0)
        assert worst <= exp["max_moves_per_vm"], f"{where}: trail={sim.trail}"
    if exp.get("no_return", False):
        for vm, trail in sim.trail.items():
            assert len(trail) == len(set(trail)), f"{where}: {vm} went back: {trail}"
    if "converged_after" in exp:
        assert all(n == 0 for n in per_round[exp["converged_after"]:]), f"{where}: {per_round}"
    if "final_trail" in exp:
        assert sim.trail == exp["final_trail"], f"{where}: {sim.trail}"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("path", SCENARIOS, ids=[p.stem for p in SCENARIOS])
def test_scenario(path: Path) -> None:
    data = _load(path)
    assert "expect" in data or "rounds" in data, f"{path.name} expects nothing"
    if "expect" in data:
        plan = evaluate(snapshot_from_dict(data), _rules(data), float(data.get("now", 0.0)))
        _check_plan(plan, data["expect"], path.stem)
        # deterministic: the same inputs give the same plan, whatever the input order of VMs and rules
        shuffled = dict(data, vms=list(reversed(data.get("vms") or [])))
        again = evaluate(snapshot_from_dict(shuffled), list(reversed(_rules(data))), float(data.get("now", 0.0)))
        assert again.to_dict() == plan.to_dict(), f"{path.stem}: plan depends on input order"
    if "rounds" in data:
        _run_rounds(data, path.stem)


def test_there_are_scenarios() -> None:
    names = {p.stem for p in SCENARIOS}
    for required in ("pingpong_rounds", "duration_spike", "caps_per_cluster", "caps_federation", "cooldown",
                     "exclusions", "tie_breaking"):
        assert required in names


def _naive_round(data: dict[str, Any], rule: Rule) -> tuple[str, str, str] | None:
    """A scheduler without the objective check: a hot cluster sends its biggest fitting VM to the least loaded
    other cluster. Used only to prove the ping-pong scenario is a trap worth testing."""
    snap = snapshot_from_dict(data)
    fires = rule.trigger.compile()
    for c in sorted(snap.clusters.values(), key=lambda c: (-c.cpu_pct, c.id)):
        if not fires(c, None, None):
            continue
        t = min((t for t in snap.clusters.values() if t.id != c.id), key=lambda t: (t.cpu_pct, t.id))
        fitting = sorted((v for v in snap.vms if v.cluster_id == c.id and v.vcpus <= t.free_vcpus),
                         key=lambda v: (-v.cpu_load, v.id))
        if fitting:
            return fitting[0].id, c.id, t.id
    return None


@pytest.mark.timeout(30)
def test_pingpong_scenario_is_a_real_trap() -> None:
    """Without the margin/objective rule the same federation oscillates: a VM goes back where it came from."""
    data = copy.deepcopy(_load(Path(__file__).parent / "scenarios" / "pingpong_rounds.yaml"))
    rule = _rules(data)[0]
    hosts = {c["id"]: c["hosts"][0]["id"] for c in data["clusters"]}
    trail: dict[str, list[str]] = {}
    for _ in range(4):
        move = _naive_round(data, rule)
        assert move is not None
        vm_id, src, dst = move
        trail.setdefault(vm_id, [src]).append(dst)
        next(v for v in data["vms"] if v["id"] == vm_id)["host"] = hosts[dst]
    assert any(len(t) != len(set(t)) for t in trail.values()), trail
