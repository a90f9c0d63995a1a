"""Rule validation: every error is an InvalidInput whose ``field`` names the offending part."""

from __future__ import annotations

import json
from typing import Any

import pytest

from cnf.errors import InvalidInput
from cnf.scheduler.rules import Caps, Scope, Target, parse_rule
from cnf.scheduler.trigger import And, Compare, Metric, Not, Number, Or, parse_trigger

SEED = {"trigger": "cpu_pct>80", "action": "live_migrate", "target": "least_loaded"}


def _err(data: Any, name: str = "p", **kw: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as info:
        parse_rule(name, data, **kw)
    return info.value


def test_seed_rule_gets_documented_defaults() -> None:
    r = parse_rule("rebalance-cpu", SEED)
    assert r.action == "live_migrate" and r.target == Target("least_loaded")
    assert r.trigger.subject == "cluster" and r.trigger.duration_s is None
    assert r.trigger.expr == Compare(">", Metric("cluster", "cpu_pct", 1), Number(80.0, 9), 8)
    assert r.exclude_tags == ("cnf:pinned",) and r.exclude_projects == ()
    assert r.caps == Caps(2, 5) and r.scope == Scope()
    assert (r.cooldown_s, r.priority, r.mode, r.margin_pct, r.objective) == (3600.0, 0, "plan", 5.0, "cpu")


@pytest.mark.parametrize("data", [
    SEED,
    {**SEED, "target": "os2"},
    {**SEED, "target": ["os2", "os3"], "mode": "auto", "priority": 7, "margin_pct": 2.5, "cooldown_s": 600},
    {"trigger": "host.mem_pct >= 90% for 1h30m", "action": "migrate", "target": "most_free_ram",
     "scope": {"clusters": ["os1"], "projects": ["web"]}, "exclude_tags": [], "exclude_projects": ["db"],
     "caps": {"per_cluster": 1, "per_federation": 3}},
    {"trigger": "vm.cpu_pct > 99 or not (free_ram_mb > 2 GB)", "action": "notify"},
])
def test_to_dict_round_trips(data: dict[str, Any]) -> None:
    r = parse_rule("p", data)
    again = parse_rule("p", json.loads(json.dumps(r.to_dict())))
    assert again == r
    assert again.to_dict() == r.to_dict()
    for key, value in data.items():
        assert r.to_dict()[key] == value


def test_target_shape_is_kept() -> None:
    assert parse_rule("p", {**SEED, "target": "os2"}).to_dict()["target"] == "os2"
    assert parse_rule("p", {**SEED, "target": ["os2"]}).to_dict()["target"] == ["os2"]


def test_objective_defaults_to_memory_for_most_free_ram() -> None:
    assert parse_rule("p", {**SEED, "target": "most_free_ram"}).objective == "mem"
    assert parse_rule("p", {**SEED, "target": "most_free_ram", "objective": "cpu"}).objective == "cpu"


@pytest.mark.parametrize(("data", "field", "words"), [
    ({"action": "notify"}, "rule.trigger", "needs a 'trigger'"),
    ({"trigger": "cpu_pct > 80"}, "rule.action", "needs a 'action'"),
    ({**SEED, "action": "live-migrate"}, "rule.action", "did you mean 'live_migrate'"),
    ({**SEED, "action": 3}, "rule.action", "expected one of"),
    ({"trigger": "cpu_pct > 80", "action": "migrate"}, "rule.target", "needs a 'target'"),
    ({**SEED, "target": "least-loaded"}, "rule.target", "misspelt 'least_loaded'"),
    ({**SEED, "target": "most_free_mem"}, "rule.target", "misspelt 'most_free_ram'"),
    ({**SEED, "target": []}, "rule.target", "at least one"),
    ({**SEED, "target": ["os1", "os1"]}, "rule.target[1]", "twice"),
    ({**SEED, "target": ["os1", "bad id!"]}, "rule.target[1]", "not a valid id"),
    ({**SEED, "target": 5}, "rule.target", "a cluster id"),
    ({**SEED, "scope": "os1"}, "rule.scope", "expected an object"),
    ({**SEED, "scope": {"hosts": ["h1"]}}, "rule.scope.hosts", "unknown key"),
    ({**SEED, "scope": {"projects": [1]}}, "rule.scope.projects[0]", "non-empty string"),
    ({**SEED, "scope": {"clusters": 7}}, "rule.scope.clusters", "list of strings"),
    ({**SEED, "exclude_tags": ["ok", ""]}, "rule.exclude_tags[1]", "non-empty string"),
    ({**SEED, "exclude_projects": {"a": 1}}, "rule.exclude_projects", "list of strings"),
    ({**SEED, "scope": {"projects": ["web"]}, "exclude_projects": ["web"]}, "rule.exclude_projects", "both"),
    ({**SEED, "caps": {"per_cluster": 0}}, "rule.caps.per_cluster", "between 1 and 1000"),
    ({**SEED, "caps": {"per_cluster": 1.5}}, "rule.caps.per_cluster", "whole number"),
    ({**SEED, "caps": {"per_federation": "3"}}, "rule.caps.per_federation", "number"),
    ({**SEED, "caps": {"per_federation": True}}, "rule.caps.per_federation", "number"),
    ({**SEED, "caps": {"per_vm": 1}}, "rule.caps.per_vm", "unknown key"),
    ({**SEED, "caps": 3}, "rule.caps", "expected an object"),
    ({**SEED, "cooldown_s": -1}, "rule.cooldown_s", "between 0"),
    ({**SEED, "cooldown_s": "5m"}, "rule.cooldown_s", "number"),
    ({**SEED, "cooldown_s": float("nan")}, "rule.cooldown_s", "between 0"),
    ({**SEED, "priority": 1.5}, "rule.priority", "whole number"),
    ({**SEED, "priority": 5000}, "rule.priority", "between -1000 and 1000"),
    ({**SEED, "mode": "automatic"}, "rule.mode", "did you mean 'auto'"),
    ({**SEED, "margin_pct": 150}, "rule.margin_pct", "between 0 and 100"),
    ({**SEED, "objective": "disk"}, "rule.objective", "cpu, mem"),
    ({**SEED, "triger": "x"}, "rule.triger", "did you mean 'trigger'"),
    ({**SEED, "trigger": 80}, "rule.trigger", "expected a string"),
    ({**SEED, "trigger": "   "}, "rule.trigger", "empty"),
    (["not", "a", "mapping"], "rule", "JSON object"),
])
def test_each_error_names_the_part(data: Any, field: str, words: str) -> None:
    err = _err(data)
    assert err.field == field, err.message
    assert words in err.message
    assert err.to_dict()["field"] == field and err.code == "invalid_input"


@pytest.mark.parametrize("name", ["", "-x", "a b", "x" * 64, None, "é"])
def test_bad_policy_name(name: Any) -> None:
    assert _err(SEED, name=name).field == "name"


def test_known_clusters_are_checked_when_given() -> None:
    known = {"os1", "os2"}
    assert parse_rule("p", {**SEED, "target": "os2"}, known_clusters=known).target == Target("clusters", ("os2",),
                                                                                             single=True)
    err = _err({**SEED, "target": "os3"}, known_clusters=known)
    assert err.field == "rule.target" and "known cluster" in err.message
    assert _err({**SEED, "target": ["os1", "os9"]}, known_clusters=known).field == "rule.target[1]"
    assert _err({**SEED, "scope": {"clusters": ["os9"]}}, known_clusters=known).field == "rule.scope.clusters[0]"


@pytest.mark.parametrize(("text", "column", "expected", "found"), [
    ("cpu_pct 80", 9, "comparison operator", "number '80'"),
    ("cpu_pct = 80", 9, "a metric, a number", "character '='"),
    ("cpu_pct > 80 && mem_pct > 5", 14, "a metric, a number", "character '&'"),
    ("cpu_pct >", 10, "a metric name or a number", "end of trigger"),
    ("cpu_pct > 80 and", 17, "a metric name or a number", "end of trigger"),
    ("(cpu_pct > 80", 14, "')'", "end of trigger"),
    ("cpu_pct > 80)", 13, "end of trigger", "')'"),
    ("cpu_pct > 80 mem_pct > 3", 14, "'and', 'or', 'for'", "name 'mem_pct'"),
    ("cpu > 80", 1, "a cluster metric", "'cpu'"),
    ("ram_mb > 80", 1, "a cluster metric", "'ram_mb'"),
    ("vm.free_vcpus > 1", 4, "a vm metric", "'free_vcpus'"),
    ("hots.cpu_pct > 1", 1, "a level prefix", "'hots.'"),
    ("host.", 6, "a host metric name", "end of trigger"),
    ("80 > 90", 1, "a metric on one side", "two numbers"),
    ("vm_count > 5%", 13, "a unit for cluster.vm_count", "unit '%'"),
    ("cpu_pct > 80 GB", 14, "a unit for cluster.cpu_pct", "unit 'GB'"),
    ("free_ram_mb < 4XB", 16, "a unit for cluster.free_ram_mb", "unit 'XB'"),
    ("cpu_pct > 80 for", 17, "a duration", "end of trigger"),
    ("cpu_pct > 80 for 5", 19, "a duration unit", "no unit"),
    ("cpu_pct > 80 for 5d", 19, "a duration unit", "'d'"),
    ("cpu_pct > 80 for 0s", 18, "above 0s", "0s"),
    ("cpu_pct > 80 for 8d", 19, "a duration unit", "'d'"),
    ("cpu_pct > 80 for 200h", 18, "at most 7 days", "720000s"),
    ("cpu_pct > 80 for 5m and mem_pct > 1", 21, "comes last", "keyword 'and'"),
    ("not", 4, "a metric name or a number", "end of trigger"),
    ("and cpu_pct > 1", 1, "a metric name or a number", "keyword 'and'"),
    ("(" * 30 + "cpu_pct > 1" + ")" * 30, 25, "levels of nesting", "'('"),
])
def test_trigger_errors_point_at_the_column(text: str, column: int, expected: str, found: str) -> None:
    err = _err({**SEED, "trigger": text})
    assert err.field == "rule.trigger"
    assert err.details["column"] == column, err.message
    assert expected in err.details["expected"], err.message
    assert err.details["found"] == found, err.message
    assert err.message.startswith(f"column {column}: expected ")


def test_trigger_hints() -> None:
    assert "did you mean vm.ram_mb" in _err({**SEED, "trigger": "ram_mb > 1"}).message
    assert "did you mean 'host'" in _err({**SEED, "trigger": "hots.cpu_pct > 1"}).message
    assert "use 'or'" in _err({**SEED, "trigger": "cpu_pct > 1 || mem_pct > 1"}).message
    assert "use '==' to compare" in _err({**SEED, "trigger": "cpu_pct = 1"}).message
    assert "use 'not'" in _err({**SEED, "trigger": "!(cpu_pct > 1)"}).message


def test_overlong_trigger() -> None:
    err = _err({**SEED, "trigger": "cpu_pct > 1 or " * 40 + "cpu_pct > 1"})
    assert err.field == "rule.trigger" and "at most 500" in err.message


def test_grammar_precedence_and_units() -> None:
    t = parse_trigger("not cpu_pct > 1 or host.cpu_pct > 2 and vm.ram_mb <= 2 GiB for 1h 30m 15s")
    assert t.duration_s == 5415.0
    assert t.subject == "vm"
    assert [m.key for m in t.metrics] == ["cluster.cpu_pct", "host.cpu_pct", "vm.ram_mb"]
    assert isinstance(t.expr, Or)
    left, right = t.expr.items
    assert isinstance(left, Not)
    assert isinstance(right, And)
    last = right.items[1]
    assert isinstance(last, Compare) and last.right == Number(2048.0, 54) and last.op == "<="
    assert parse_trigger("free_ram_mb < 1 TB").expr.right == Number(1024.0 * 1024.0, 15)  # type: ignore[union-attr]
    assert parse_trigger("cpu_pct>80AND mem_pct>1" .replace("AND", " AND ")).subject == "cluster"
    assert parse_trigger("80 < host.cpu_pct").subject == "host"
    assert parse_trigger("cpu_pct > 80 for 5 min").duration_s == 300.0
    assert parse_trigger("cpu_pct > 80 for 1 hour 30 minutes").duration_s == 5400.0
    assert parse_trigger("host.free_vcpus < cluster.free_vcpus").subject == "host"


def test_compiled_trigger_reads_the_three_levels() -> None:
    from types import SimpleNamespace as NS
    t = parse_trigger("cluster.cpu_pct > 70 and (host.free_ram_mb < 1 GB or vm.cpu_pct >= 95)")
    f = t.compile()
    assert f(NS(cpu_pct=71), NS(free_ram_mb=100), NS(cpu_pct=0))
    assert f(NS(cpu_pct=71), NS(free_ram_mb=5000), NS(cpu_pct=95))
    assert not f(NS(cpu_pct=71), NS(free_ram_mb=5000), NS(cpu_pct=94.9))
    assert not f(NS(cpu_pct=70), NS(free_ram_mb=1), NS(cpu_pct=100))
    g = parse_trigger("not host.vm_count != 3").compile()
    assert g(None, NS(vm_count=3), None) and not g(None, NS(vm_count=4), None)
