"""The trigger language of scheduler rules: a tokenizer, a recursive-descent parser and a compiler to closures.

Why a parser and not ``eval``: rules arrive over the REST API from operators; a trigger must never run code,
and a mistake must come back as an ``InvalidInput`` that says where it is (1-based column) and what was
expected. The grammar (also in ``docs/scheduler.md``)::

    trigger    := expr [ "for" duration ] END
    expr       := and_expr ( "or" and_expr )*
    and_expr   := not_expr ( "and" not_expr )*
    not_expr   := "not" not_expr | primary
    primary    := "(" expr ")" | comparison
    comparison := operand cmp operand            (at least one side is a metric)
    cmp        := ">" | ">=" | "<" | "<=" | "==" | "!="
    operand    := metric | NUMBER [ unit ]
    metric     := [ ("cluster" | "host" | "vm") "." ] NAME
    duration   := ( NUMBER ("s" | "m" | "h") )+     e.g. 90s, 5m, 1h30m (also sec, min, hour, ...)

A bare metric name means the **cluster** metric (clusters are what CNF moves VMs between); ``host.`` and
``vm.`` select the VM's host or the VM itself. Keywords and units are case-insensitive; metric names are not.

Contract: :func:`parse_trigger` either returns a :class:`Trigger` or raises ``InvalidInput(field=...)`` with
``column``, ``expected`` and ``found`` details — never another exception, whatever the input (hypothesis-tested).
"""

from __future__ import annotations

import difflib
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from cnf.errors import InvalidInput

MAX_TRIGGER_CHARS = 500
MAX_DEPTH = 24
MAX_DURATION_S = 7 * 24 * 3600.0

LEVELS = ("cluster", "host", "vm")
#: level rank: the finest level a trigger references decides what it is evaluated for (its "subject").
LEVEL_RANK = {"cluster": 0, "host": 1, "vm": 2}

# dimension of each metric, per level: "pct" accepts "%", "ram" accepts MB/GB/TB (and MiB/GiB/TiB), "count" no unit.
METRICS: dict[str, dict[str, str]] = {
    "cluster": {"cpu_pct": "pct", "mem_pct": "pct", "free_vcpus": "count", "free_ram_mb": "ram", "vm_count": "count"},
    "host": {"cpu_pct": "pct", "mem_pct": "pct", "free_vcpus": "count", "free_ram_mb": "ram", "vm_count": "count"},
    "vm": {"cpu_pct": "pct", "mem_pct": "pct", "vcpus": "count", "ram_mb": "ram"},
}

# OpenStack's "MB" is a mebibyte (flavor ram is in MiB); GB = 1024 MB here, as in Nova.
RAM_UNITS = {"mb": 1.0, "mib": 1.0, "gb": 1024.0, "gib": 1024.0, "tb": 1024.0 * 1024.0, "tib": 1024.0 * 1024.0}
DURATION_UNITS = {"s": 1.0, "sec": 1.0, "secs": 1.0, "second": 1.0, "seconds": 1.0,
                  "m": 60.0, "min": 60.0, "mins": 60.0, "minute": 60.0, "minutes": 60.0,
                  "h": 3600.0, "hr": 3600.0, "hrs": 3600.0, "hour": 3600.0, "hours": 3600.0}
KEYWORDS = ("and", "or", "not", "for")
COMPARATORS: dict[str, Callable[[Any, Any], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le, "==": operator.eq, "!=": operator.ne,
}
_CMP_EXPECTED = "a comparison operator (>, >=, <, <=, ==, !=)"

# --- tokens ------------------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(
    r"""
    (?P<ws>\s+)
  | (?P<number>\d+(?:\.\d+)?)(?P<suffix>%|[A-Za-z]+)?
  | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<op>>=|<=|==|!=|>|<)
  | (?P<lparen>\()
  | (?P<rparen>\))
  | (?P<dot>\.)
  | (?P<percent>%)
    """,
    re.VERBOSE,
)


@dataclass(slots=True)
class Token:
    kind: str  # number | name | op | lparen | rparen | dot | percent | end
    text: str
    col: int  # 1-based
    value: float = 0.0
    suffix: str | None = None

    def describe(self) -> str:
        if self.kind == "end":
            return "end of trigger"
        if self.kind == "number":
            return f"number '{self.text}'"
        if self.kind == "name":
            return f"keyword '{self.text}'" if self.text.lower() in KEYWORDS else f"name '{self.text}'"
        return f"'{self.text}'"


def _error(field: str, col: int, expected: str, found: str, hint: str = "") -> InvalidInput:
    msg = f"column {col}: expected {expected}, found {found}"
    if hint:
        msg += f" ({hint})"
    return InvalidInput(msg, field=field, column=col, expected=expected, found=found)


def tokenize(text: str, field: str = "rule.trigger") -> list[Token]:
    """Split ``text`` into tokens; the last one is always ``end``. Unknown characters are an ``InvalidInput``."""
    out: list[Token] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            ch = text[pos]
            hint = {"=": "use '==' to compare", "&": "use 'and'", "|": "use 'or'",
                    "!": "use 'not', or '!=' to compare"}.get(ch, "")
            raise _error(field, pos + 1, "a metric, a number, a comparison, 'and', 'or', 'not' or '('",
                         f"character {ch!r}", hint)
        kind = m.lastgroup or ""
        if kind == "suffix" or kind == "number":
            out.append(Token("number", m.group(0), pos + 1, float(m.group("number")), m.group("suffix")))
        elif kind != "ws":
            out.append(Token(kind, m.group(0), pos + 1))
        pos = m.end()
    out.append(Token("end", "", len(text) + 1))
    return out


# --- AST ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Metric:
    level: str
    name: str
    col: int = 0

    @property
    def key(self) -> str:
        return f"{self.level}.{self.name}"


@dataclass(frozen=True, slots=True)
class Number:
    value: float
    col: int = 0


@dataclass(frozen=True, slots=True)
class Compare:
    op: str
    left: Metric | Number
    right: Metric | Number
    col: int = 0


@dataclass(frozen=True, slots=True)
class And:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Or:
    items: tuple[Expr, ...]


@dataclass(frozen=True, slots=True)
class Not:
    item: Expr


Expr = Compare | And | Or | Not


def metrics_of(expr: Expr) -> list[Metric]:
    """Every metric an expression reads, in source order, without duplicates (by key)."""
    seen: dict[str, Metric] = {}

    def walk(e: Expr) -> None:
        if isinstance(e, Compare):
            for side in (e.left, e.right):
                if isinstance(side, Metric):
                    seen.setdefault(side.key, side)
        elif isinstance(e, And | Or):
            for item in e.items:
                walk(item)
        else:
            walk(e.item)

    walk(expr)
    return list(seen.values())


@dataclass(frozen=True)
class Trigger:
    """A parsed trigger. ``subject`` is the finest level it reads: it is evaluated once per cluster, host or VM."""

    text: str
    expr: Expr
    duration_s: float | None
    metrics: tuple[Metric, ...]
    subject: str

    def compile(self) -> Callable[[Any, Any, Any], bool]:
        """A closure ``f(cluster, host, vm) -> bool`` reading metrics as attributes (fast path, no tree walk)."""
        return compile_expr(self.expr)

    def cluster_gate(self) -> Callable[[Any, Any, Any], bool] | None:
        """A necessary condition that reads only cluster metrics (the cluster-level conjuncts), or None.

        Why: ``cluster.cpu_pct > 70 and vm.cpu_pct > 95`` need not look at one VM of a cool cluster.
        """
        items = self.expr.items if isinstance(self.expr, And) else (self.expr,)
        gate = tuple(e for e in items if all(m.level == "cluster" for m in metrics_of(e)))
        if not gate:
            return None
        return compile_expr(gate[0] if len(gate) == 1 else And(gate))

    def vm_residual(self) -> Callable[[Any], bool] | None:
        """When everything but the cluster gate reads only VM metrics: that part as a one-argument predicate
        ``f(vm)`` (the hot loop over every VM of a cloud), else None."""
        items = self.expr.items if isinstance(self.expr, And) else (self.expr,)
        rest = tuple(e for e in items if not all(m.level == "cluster" for m in metrics_of(e)))
        if not rest or not all(m.level == "vm" for e in rest for m in metrics_of(e)):
            return None
        return _compile_vm(rest[0] if len(rest) == 1 else And(rest))


# --- parser ------------------------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, tokens: list[Token], field: str) -> None:
        self.toks = tokens
        self.i = 0
        self.field = field
        self.depth = 0

    @property
    def tok(self) -> Token:
        return self.toks[self.i]

    def advance(self) -> Token:
        t = self.toks[self.i]
        if t.kind != "end":
            self.i += 1
        return t

    def is_kw(self, word: str) -> bool:
        return self.tok.kind == "name" and self.tok.text.lower() == word

    def fail(self, expected: str, hint: str = "") -> InvalidInput:
        return _error(self.field, self.tok.col, expected, self.tok.describe(), hint)

    def parse(self) -> tuple[Expr, float | None]:
        expr = self.expr()
        duration = None
        if self.is_kw("for"):
            self.advance()
            duration = self.duration()
            if self.tok.kind != "end":
                raise self.fail("end of trigger: 'for <duration>' applies to the whole trigger and comes last")
        if self.tok.kind != "end":
            exp = "'and', 'or', 'for' or end of trigger"
            if self.tok.kind == "rparen":
                exp = "end of trigger (unbalanced ')')"
            raise self.fail(exp)
        return expr, duration

    def expr(self) -> Expr:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"at most {MAX_DEPTH} levels of nesting")
        items = [self.and_expr()]
        while self.is_kw("or"):
            self.advance()
            items.append(self.and_expr())
        self.depth -= 1
        return items[0] if len(items) == 1 else Or(tuple(items))

    def and_expr(self) -> Expr:
        items = [self.not_expr()]
        while self.is_kw("and"):
            self.advance()
            items.append(self.not_expr())
        return items[0] if len(items) == 1 else And(tuple(items))

    def not_expr(self) -> Expr:
        if self.is_kw("not"):
            self.advance()
            self.depth += 1
            if self.depth > MAX_DEPTH:
                raise self.fail(f"at most {MAX_DEPTH} levels of nesting")
            inner = self.not_expr()
            self.depth -= 1
            return Not(inner)
        return self.primary()

    def primary(self) -> Expr:
        if self.tok.kind == "lparen":
            self.advance()
            inner = self.expr()
            if self.tok.kind != "rparen":
                raise self.fail("')' or 'and'/'or'")
            self.advance()
            return inner
        return self.comparison()

    def comparison(self) -> Compare:
        left = self.operand()
        if self.tok.kind != "op":
            raise self.fail(_CMP_EXPECTED)
        op_tok = self.advance()
        right = self.operand()
        if isinstance(left, _NumberWithUnit) and isinstance(right, _NumberWithUnit):
            raise _error(self.field, left.col, "a metric on one side of the comparison", "two numbers")
        self._check_units(left, right)
        return Compare(op_tok.text, self._strip(left), self._strip(right), op_tok.col)

    # operands carry their unit until the comparison checks it against the metric's dimension
    def operand(self) -> Metric | _NumberWithUnit:
        t = self.tok
        if t.kind == "number":
            self.advance()
            unit = t.suffix
            unit_col = t.col + len(t.text) - len(unit) if unit else t.col
            if unit is None and self.tok.kind == "percent":
                unit, unit_col = "%", self.tok.col
                self.advance()
            elif unit is None and self.tok.kind == "name" and self.tok.text.lower() in RAM_UNITS:
                unit, unit_col = self.tok.text, self.tok.col
                self.advance()
            return _NumberWithUnit(t.value, t.col, unit, unit_col)
        if t.kind == "name" and t.text.lower() not in KEYWORDS:
            return self.metric()
        raise self.fail("a metric name or a number")

    def metric(self) -> Metric:
        first = self.advance()
        level, name, name_tok = "cluster", first.text, first
        if self.tok.kind == "dot":
            if first.text not in LEVELS:
                raise _error(self.field, first.col, "a level prefix 'cluster.', 'host.' or 'vm.'",
                             f"'{first.text}.'", _suggest(first.text, LEVELS))
            self.advance()
            if self.tok.kind != "name":
                raise self.fail(f"a {first.text} metric name ({', '.join(METRICS[first.text])})")
            name_tok = self.advance()
            level, name = first.text, name_tok.text
        known = METRICS[level]
        if name not in known:
            others = [lv for lv in LEVELS if name in METRICS[lv]]
            if others:
                hint = f"did you mean {others[0]}.{name}? a bare name is a cluster metric"
            else:
                hint = _suggest(name, list(known))
            raise _error(self.field, name_tok.col, f"a {level} metric ({', '.join(known)})",
                         f"'{name}'", hint)
        return Metric(level, name, first.col)

    def duration(self) -> float:
        total = 0.0
        parts = 0
        while self.tok.kind == "number":
            t = self.advance()
            unit = t.suffix
            if unit is None and self.tok.kind == "name" and self.tok.text.lower() in DURATION_UNITS:
                unit = self.advance().text
            if unit is None or unit.lower() not in DURATION_UNITS:
                col = t.col + len(t.text) - len(unit) if unit else t.col + len(t.text)
                raise _error(self.field, col, "a duration unit (s, m, h)", f"'{unit}'" if unit else "no unit")
            total += t.value * DURATION_UNITS[unit.lower()]
            parts += 1
        if parts == 0:
            raise self.fail("a duration such as 90s, 5m or 1h30m")
        if total <= 0 or total > MAX_DURATION_S:
            raise _error(self.field, self.toks[self.i - 1].col, "a duration above 0s and at most 7 days",
                         f"{total:g}s")
        return total

    def _check_units(self, left: Metric | _NumberWithUnit, right: Metric | _NumberWithUnit) -> None:
        for num, other in ((left, right), (right, left)):
            if not isinstance(num, _NumberWithUnit) or num.unit is None:
                continue
            if not isinstance(other, Metric):
                continue
            dim = METRICS[other.level][other.name]
            unit = num.unit.lower()
            if dim == "pct" and unit == "%":
                continue
            if dim == "ram" and unit in RAM_UNITS:
                continue
            allowed = {"pct": "'%' or no unit", "ram": "MB, GB, TB (or MiB, GiB, TiB) or no unit (MB)",
                       "count": "no unit"}[dim]
            raise _error(self.field, num.unit_col, f"a unit for {other.key}: {allowed}", f"unit '{num.unit}'")

    @staticmethod
    def _strip(side: Metric | _NumberWithUnit) -> Metric | Number:
        if isinstance(side, Metric):
            return side
        value = side.value
        if side.unit is not None and side.unit.lower() in RAM_UNITS:
            value *= RAM_UNITS[side.unit.lower()]
        return Number(value, side.col)


@dataclass(frozen=True, slots=True)
class _NumberWithUnit:
    value: float
    col: int
    unit: str | None
    unit_col: int


def _suggest(word: str, choices: list[str] | tuple[str, ...]) -> str:
    close = difflib.get_close_matches(word.lower(), list(choices), n=1, cutoff=0.6)
    return f"did you mean '{close[0]}'?" if close else ""


def parse_trigger(text: Any, field: str = "rule.trigger") -> Trigger:
    """Parse a trigger string. Raises ``InvalidInput(field=field, column=…, expected=…, found=…)`` on any error."""
    if not isinstance(text, str):
        raise InvalidInput(f"expected a string such as 'cpu_pct > 80 for 5m', got {type(text).__name__}",
                           field=field)
    if not text.strip():
        raise InvalidInput("the trigger is empty; expected a condition such as 'cpu_pct > 80'", field=field,
                           column=1, expected="a condition", found="nothing")
    if len(text) > MAX_TRIGGER_CHARS:
        raise InvalidInput(f"the trigger is {len(text)} characters long; at most {MAX_TRIGGER_CHARS} allowed",
                           field=field, column=MAX_TRIGGER_CHARS + 1, expected="a shorter trigger",
                           found=f"{len(text)} characters")
    tokens = tokenize(text, field)
    expr, duration = _Parser(tokens, field).parse()
    metrics = tuple(metrics_of(expr))
    subject = max((m.level for m in metrics), key=LEVEL_RANK.__getitem__)
    return Trigger(text=text, expr=expr, duration_s=duration, metrics=metrics, subject=subject)


# --- compiler ----------------------------------------------------------------------------------------------------

Evaluator = Callable[[Any, Any, Any], bool]
_Getter = Callable[[Any, Any, Any], Any]


def _getter(side: Metric | Number) -> _Getter:
    if isinstance(side, Number):
        k = side.value
        return lambda c, h, v: k
    name = side.name
    if side.level == "cluster":
        return lambda c, h, v: getattr(c, name)
    if side.level == "host":
        return lambda c, h, v: getattr(h, name)
    return lambda c, h, v: getattr(v, name)


def compile_expr(expr: Expr) -> Evaluator:
    """Turn the AST into nested closures; ``and``/``or`` short-circuit left to right, like the source reads."""
    if isinstance(expr, Compare):
        fn = COMPARATORS[expr.op]
        if isinstance(expr.right, Number) and isinstance(expr.left, Metric):
            k = expr.right.value
            name = expr.left.name
            # specialised hot path: "<metric> <op> <number>"
            if expr.left.level == "cluster":
                return lambda c, h, v: fn(getattr(c, name), k)
            if expr.left.level == "host":
                return lambda c, h, v: fn(getattr(h, name), k)
            return lambda c, h, v: fn(getattr(v, name), k)
        lg, rg = _getter(expr.left), _getter(expr.right)
        return lambda c, h, v: fn(lg(c, h, v), rg(c, h, v))
    if isinstance(expr, Not):
        inner = compile_expr(expr.item)
        return lambda c, h, v: not inner(c, h, v)
    parts = [compile_expr(e) for e in expr.items]
    # fold pairwise: nested two-argument closures are faster than all()/any() over a generator
    acc = parts[-1]
    for p in reversed(parts[:-1]):
        acc = _and2(p, acc) if isinstance(expr, And) else _or2(p, acc)
    return acc


def _and2(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda c, h, v: a(c, h, v) and b(c, h, v)


def _or2(a: Evaluator, b: Evaluator) -> Evaluator:
    return lambda c, h, v: a(c, h, v) or b(c, h, v)


def _vm_getter(side: Metric | Number) -> Callable[[Any], Any]:
    if isinstance(side, Metric):
        return operator.attrgetter(side.name)
    k = side.value
    return lambda v: k


def _compile_vm(expr: Expr) -> Callable[[Any], bool]:
    """Like :func:`compile_expr` for an expression that reads only VM metrics: ``f(vm) -> bool``."""
    if isinstance(expr, Compare):
        fn = COMPARATORS[expr.op]
        if isinstance(expr.right, Number) and isinstance(expr.left, Metric):
            get, k = operator.attrgetter(expr.left.name), expr.right.value
            return lambda v: fn(get(v), k)
        lg, rg = _vm_getter(expr.left), _vm_getter(expr.right)
        return lambda v: fn(lg(v), rg(v))
    if isinstance(expr, Not):
        inner = _compile_vm(expr.item)
        return lambda v: not inner(v)
    parts = [_compile_vm(e) for e in expr.items]
    acc = parts[-1]
    for p in reversed(parts[:-1]):
        acc = (lambda a, b: lambda v: a(v) and b(v))(p, acc) if isinstance(expr, And) else \
            (lambda a, b: lambda v: a(v) or b(v))(p, acc)
    return acc


def interpret(expr: Expr, values: dict[str, float]) -> bool:
    """Reference tree-walking evaluation over ``{"cluster.cpu_pct": 85.0, ...}`` (tests, naive baseline)."""
    if isinstance(expr, Compare):
        left = values[expr.left.key] if isinstance(expr.left, Metric) else expr.left.value
        right = values[expr.right.key] if isinstance(expr.right, Metric) else expr.right.value
        return COMPARATORS[expr.op](left, right)
    if isinstance(expr, Not):
        return not interpret(expr.item, values)
    if isinstance(expr, And):
        return all(interpret(e, values) for e in expr.items)
    return any(interpret(e, values) for e in expr.items)
