"""Property tests of the rule parser: whatever arrives, the answer is a Rule or an InvalidInput — never a crash.

And for well-formed triggers generated from the grammar: they parse, and the compiled closure agrees with the
reference tree-walking interpreter on random metric values.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cnf.errors import InvalidInput
from cnf.scheduler.rules import parse_rule
from cnf.scheduler.trigger import METRICS, interpret, parse_trigger

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=50, deadline=None,
                     suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])

WORDS = ["cpu_pct", "mem_pct", "free_vcpus", "free_ram_mb", "vm_count", "vcpus", "ram_mb", "vm.", "host.",
         "cluster.", "vm.cpu_pct", "host.mem_pct", "and", "or", "not", "for", "AND", "(", ")", ">", ">=", "<",
         "<=", "==", "!=", "=", "80", "4.5", "0", "5m", "1h30m", "90s", "%", "GB", "MiB", "x", ".", "&&", "-1",
         "1e5", "for 5m", " ", "\t", "é", "\x00"]


def _check_trigger(text: str) -> None:
    try:
        t = parse_trigger(text)
    except InvalidInput as e:
        assert e.field == "rule.trigger"
        col = e.details.get("column")
        if col is not None:
            assert 1 <= col <= len(text) + 1, (text, e.message)
        return
    assert t.metrics and t.subject in ("cluster", "host", "vm")
    assert t.duration_s is None or 0 < t.duration_s <= 7 * 24 * 3600


@FUZZ
@given(st.text(max_size=120))
def test_random_text_never_crashes(text: str) -> None:
    _check_trigger(text)


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=25).map(" ".join))
def test_random_token_soup_never_crashes(text: str) -> None:
    _check_trigger(text)


@FUZZ
@given(st.lists(st.sampled_from(WORDS), max_size=25).map("".join))
def test_random_glued_tokens_never_crash(text: str) -> None:
    _check_trigger(text)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-10**6, 10**6) | st.floats(allow_nan=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4),
    max_leaves=6,
)
rule_keys = st.sampled_from(["trigger", "action", "target", "scope", "exclude_tags", "exclude_projects", "caps",
                             "cooldown_s", "priority", "mode", "margin_pct", "objective"])
plausible = {
    "trigger": st.sampled_from(["cpu_pct>80", "vm.cpu_pct > 90 for 5m", "x", ""]) | st.text(max_size=30),
    "action": st.sampled_from(["live_migrate", "migrate", "notify", "move"]),
    "target": st.sampled_from(["least_loaded", "most_free_ram", "os1", ["os1", "os2"], []]) | json_values,
    "scope": st.fixed_dictionaries({}, optional={"clusters": json_values, "projects": json_values}) | json_values,
    "caps": st.fixed_dictionaries({}, optional={"per_cluster": json_values, "per_federation": json_values}),
    "mode": st.sampled_from(["auto", "plan", "AUTO"]),
}


@st.composite
def rule_dicts(draw: Any) -> dict[str, Any]:
    keys = draw(st.lists(rule_keys | st.text(max_size=8), max_size=8, unique=True))
    out: dict[str, Any] = {}
    for k in keys:
        out[k] = draw(plausible.get(k, json_values) if draw(st.booleans()) else json_values)
    return out


@FUZZ_SLOW
@given(st.text(max_size=70), rule_dicts() | json_values)
def test_random_rules_give_a_rule_or_invalid_input(name: str, data: Any) -> None:
    try:
        rule = parse_rule(name, data)
    except InvalidInput as e:
        assert e.field == "name" or e.field.startswith("rule"), e.field
        return
    assert parse_rule(name, rule.to_dict()) == rule


# --- grammar-generated triggers ----------------------------------------------------------------------------------

metric_refs = st.sampled_from([f"{lv}.{m}" for lv, ms in METRICS.items() for m in ms] +
                              [m for m in METRICS["cluster"]])
ops = st.sampled_from([">", ">=", "<", "<=", "==", "!="])
numbers = st.integers(0, 200).map(str) | st.sampled_from(["0.5", "12.25", "99.9"])


@st.composite
def comparisons(draw: Any) -> str:
    left, op = draw(metric_refs), draw(ops)
    right = draw(metric_refs | numbers)
    return f"{right} {op} {left}" if draw(st.booleans()) and not right[0].isalpha() else f"{left} {op} {right}"


expressions = st.recursive(
    comparisons(),
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["and", "or", "AND", "Or"]), inner).map(" ".join),
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"({e})"),
    ),
    max_leaves=8,
)


@FUZZ_SLOW
@given(expressions, st.sampled_from(["", " for 5m", " for 1h30m", " for 90 s"]),
       st.dictionaries(metric_refs, st.integers(0, 200), min_size=0))
def test_generated_triggers_parse_and_compile_like_the_interpreter(expr: str, suffix: str,
                                                                   raw: dict[str, int]) -> None:
    try:
        t = parse_trigger(expr + suffix)
    except InvalidInput as e:
        # the only legal refusal for grammar-made text is the nesting limit
        assert "levels of nesting" in e.message, (expr, e.message)
        return
    values = {m.key: float(raw.get(m.key, raw.get(m.name, 50))) for m in t.metrics}
    views: dict[str, SimpleNamespace] = {lv: SimpleNamespace() for lv in ("cluster", "host", "vm")}
    for m in t.metrics:
        setattr(views[m.level], m.name, values[m.key])
    expected = interpret(t.expr, values)
    c, h, v = views["cluster"], views["host"], views["vm"]
    assert t.compile()(c, h, v) == expected
    # the fast paths the scheduler uses agree with the whole trigger
    gate, pred = t.cluster_gate(), t.vm_residual()
    if gate is not None and not gate(c, h, v):
        assert not expected
    if pred is not None:
        assert ((gate is None or gate(c, h, v)) and pred(v)) == expected


@pytest.mark.parametrize("text", ["cpu_pct>80", "(((vm.cpu_pct>1)))", "not not host.vm_count == 0 for 10s"])
def test_examples_parse(text: str) -> None:
    assert parse_trigger(text).metrics
