"""Scheduler rules: the validated form of ``openstack cnf policy set NAME --rule '{...}'``.

The seed's rule is ``{"trigger":"cpu_pct>80","action":"live_migrate","target":"least_loaded"}``; every other
field is optional and has a documented default (``docs/scheduler.md``). :func:`parse_rule` is the one place a
rule is validated (the REST API calls it on ``PUT /v1/policies/{name}``); anything wrong raises
``InvalidInput`` whose ``field`` names the offending part (``rule.trigger``, ``rule.caps.per_cluster``,
``rule.target[1]`` ...). ``Rule.to_dict()`` gives back a complete rule (defaults filled in) that parses to an
equal ``Rule``.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from cnf.errors import InvalidInput
from cnf.scheduler.trigger import Trigger, parse_trigger

ACTIONS = ("live_migrate", "migrate", "notify")
MOVE_ACTIONS = ("live_migrate", "migrate")
TARGET_KEYWORDS = ("least_loaded", "most_free_ram")
MODES = ("auto", "plan")
OBJECTIVES = ("cpu", "mem")

DEFAULT_EXCLUDE_TAGS = ("cnf:pinned",)
DEFAULT_PER_CLUSTER = 2
DEFAULT_PER_FEDERATION = 5
DEFAULT_COOLDOWN_S = 3600.0
DEFAULT_MARGIN_PCT = 5.0
DEFAULT_MODE = "plan"

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,62}$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,127}$")
_FIELDS = ("trigger", "action", "target", "scope", "exclude_tags", "exclude_projects", "caps", "cooldown_s",
           "priority", "mode", "margin_pct", "objective")


@dataclass(frozen=True)
class Target:
    """Where moved VMs go. ``kind`` is ``least_loaded``, ``most_free_ram`` or ``clusters`` (an explicit list).

    An explicit list is ranked by the rule's objective (lowest projected load first); one id means "exactly
    there". ``single`` remembers that the operator wrote a string, so ``to_json`` gives back the same shape.
    """

    kind: str
    clusters: tuple[str, ...] = ()
    single: bool = False

    def to_json(self) -> str | list[str]:
        if self.kind != "clusters":
            return self.kind
        return self.clusters[0] if self.single else list(self.clusters)


@dataclass(frozen=True)
class Scope:
    """Which VMs a rule may act on: source clusters and projects; an empty tuple means "all"."""

    clusters: tuple[str, ...] = ()
    projects: tuple[str, ...] = ()


@dataclass(frozen=True)
class Caps:
    """Concurrent migrations allowed (in flight + proposed by this plan), per cluster (as source or destination)
    and for the whole federation."""

    per_cluster: int = DEFAULT_PER_CLUSTER
    per_federation: int = DEFAULT_PER_FEDERATION


@dataclass(frozen=True)
class Rule:
    name: str
    trigger: Trigger
    action: str
    target: Target | None
    scope: Scope = Scope()
    exclude_tags: tuple[str, ...] = DEFAULT_EXCLUDE_TAGS
    exclude_projects: tuple[str, ...] = ()
    caps: Caps = Caps()
    cooldown_s: float = DEFAULT_COOLDOWN_S
    priority: int = 0
    mode: str = DEFAULT_MODE
    margin_pct: float = DEFAULT_MARGIN_PCT
    objective: str = "cpu"

    @property
    def moves(self) -> bool:
        return self.action in MOVE_ACTIONS

    def to_dict(self) -> dict[str, Any]:
        """The complete JSON form (defaults included); ``parse_rule(name, r.to_dict()) == r``."""
        out: dict[str, Any] = {"trigger": self.trigger.text, "action": self.action}
        if self.target is not None:
            out["target"] = self.target.to_json()
        out["scope"] = {"clusters": list(self.scope.clusters), "projects": list(self.scope.projects)}
        out["exclude_tags"] = list(self.exclude_tags)
        out["exclude_projects"] = list(self.exclude_projects)
        out["caps"] = {"per_cluster": self.caps.per_cluster, "per_federation": self.caps.per_federation}
        out["cooldown_s"] = self.cooldown_s
        out["priority"] = self.priority
        out["mode"] = self.mode
        out["margin_pct"] = self.margin_pct
        out["objective"] = self.objective
        return out


# --- validation --------------------------------------------------------------------------------------------------


def _one_of(value: Any, allowed: tuple[str, ...], field: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        hint = ""
        if isinstance(value, str):
            close = difflib.get_close_matches(value.lower(), list(allowed), n=1, cutoff=0.6)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise InvalidInput(f"expected one of {', '.join(allowed)}, got {value!r}{hint}", field=field,
                           expected=list(allowed), found=repr(value))
    return value


def _string_list(value: Any, field: str, pattern: re.Pattern[str] | None = None, allow_empty: bool = True,
                 ) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple):
        raise InvalidInput(f"expected a list of strings, got {type(value).__name__}", field=field)
    if not value and not allow_empty:
        raise InvalidInput("expected at least one entry, got an empty list", field=field)
    out: list[str] = []
    for i, item in enumerate(value):
        f = f"{field}[{i}]"
        if not isinstance(item, str) or not item:
            raise InvalidInput(f"expected a non-empty string, got {item!r}", field=f)
        if pattern is not None and not pattern.match(item):
            raise InvalidInput(f"{item!r} is not a valid id (letters, digits, '_.:@-', at most 128)", field=f)
        if item in out:
            raise InvalidInput(f"{item!r} is listed twice", field=f)
        out.append(item)
    return tuple(out)


def _number(value: Any, field: str, lo: float, hi: float, integer: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"expected a {'whole ' if integer else ''}number, got {value!r}", field=field)
    if integer and isinstance(value, float) and not value.is_integer():
        raise InvalidInput(f"expected a whole number, got {value!r}", field=field)
    if not math.isfinite(value) or not lo <= value <= hi:
        raise InvalidInput(f"expected a number between {lo:g} and {hi:g}, got {value!r}", field=field)
    return float(value)


def _mapping(value: Any, field: str, keys: tuple[str, ...]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise InvalidInput(f"expected an object with keys {', '.join(keys)}, got {type(value).__name__}",
                           field=field)
    for k in value:
        if k not in keys:
            raise InvalidInput(f"unknown key {k!r}; expected one of {', '.join(keys)}", field=f"{field}.{k}")
    return value


def _target(value: Any, known_clusters: Collection[str] | None) -> Target:
    field = "rule.target"
    if isinstance(value, str):
        if value in TARGET_KEYWORDS:
            return Target(value)
        if known_clusters is not None and value not in known_clusters:
            close = difflib.get_close_matches(value, [*TARGET_KEYWORDS, *sorted(known_clusters)], n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InvalidInput(f"{value!r} is neither least_loaded, most_free_ram nor a known cluster id{hint}",
                               field=field)
        if known_clusters is None:
            close = difflib.get_close_matches(value.lower().replace("-", "_"), list(TARGET_KEYWORDS), n=1,
                                              cutoff=0.8)
            if close:
                raise InvalidInput(f"{value!r} looks like a misspelt '{close[0]}'; a cluster id that close to a "
                                   "keyword is refused", field=field)
        ids = _string_list([value], field, _ID_RE)
        return Target("clusters", ids, single=True)
    if isinstance(value, list | tuple):
        ids = _string_list(value, field, _ID_RE, allow_empty=False)
        if known_clusters is not None:
            for i, cid in enumerate(ids):
                if cid not in known_clusters:
                    raise InvalidInput(f"{cid!r} is not a known cluster id", field=f"{field}[{i}]")
        return Target("clusters", ids)
    raise InvalidInput("expected least_loaded, most_free_ram, a cluster id or a list of cluster ids, "
                       f"got {type(value).__name__}", field=field)


def parse_rule(name: str, data: Mapping[str, Any], *, known_clusters: Collection[str] | None = None) -> Rule:
    """Validate a rule. ``known_clusters`` (optional) lets the caller refuse targets/scopes naming no cluster.

    Raises ``InvalidInput`` naming the field: ``name``, ``rule``, ``rule.<key>`` or ``rule.<key>.<sub>``/``[i]``.
    """
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise InvalidInput(f"policy name {name!r} must be 1-63 characters: letters, digits, '_.:-', "
                           "starting with a letter or digit", field="name")
    if not isinstance(data, Mapping):
        raise InvalidInput(f"expected a JSON object, got {type(data).__name__}", field="rule")
    for key in data:
        if key not in _FIELDS:
            close = difflib.get_close_matches(str(key), list(_FIELDS), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise InvalidInput(f"unknown field {key!r}{hint}", field=f"rule.{key}")
    for key in ("trigger", "action"):
        if key not in data:
            raise InvalidInput(f"the rule needs a {key!r}", field=f"rule.{key}")
    trigger = parse_trigger(data["trigger"], "rule.trigger")
    action = _one_of(data["action"], ACTIONS, "rule.action")

    target: Target | None = None
    if "target" in data and data["target"] is not None:
        target = _target(data["target"], known_clusters)
    elif action in MOVE_ACTIONS:
        raise InvalidInput(f"action {action!r} needs a 'target' (least_loaded, most_free_ram, a cluster id or a "
                           "list of cluster ids)", field="rule.target")

    scope = Scope()
    if data.get("scope") is not None:
        raw = _mapping(data["scope"], "rule.scope", ("clusters", "projects"))
        clusters = _string_list(raw.get("clusters", []), "rule.scope.clusters", _ID_RE)
        if known_clusters is not None:
            for i, cid in enumerate(clusters):
                if cid not in known_clusters:
                    raise InvalidInput(f"{cid!r} is not a known cluster id", field=f"rule.scope.clusters[{i}]")
        scope = Scope(clusters, _string_list(raw.get("projects", []), "rule.scope.projects"))

    exclude_tags: tuple[str, ...] = DEFAULT_EXCLUDE_TAGS
    if data.get("exclude_tags") is not None:
        exclude_tags = _string_list(data["exclude_tags"], "rule.exclude_tags")
    exclude_projects: tuple[str, ...] = ()
    if data.get("exclude_projects") is not None:
        exclude_projects = _string_list(data["exclude_projects"], "rule.exclude_projects")
    overlap = set(scope.projects) & set(exclude_projects)
    if overlap:
        raise InvalidInput(f"project(s) {sorted(overlap)} are both in scope.projects and exclude_projects",
                           field="rule.exclude_projects")

    caps = Caps()
    if data.get("caps") is not None:
        raw = _mapping(data["caps"], "rule.caps", ("per_cluster", "per_federation"))
        per_cluster = int(_number(raw.get("per_cluster", DEFAULT_PER_CLUSTER), "rule.caps.per_cluster", 1, 1000,
                                  integer=True))
        per_fed = int(_number(raw.get("per_federation", max(DEFAULT_PER_FEDERATION, per_cluster)),
                              "rule.caps.per_federation", 1, 10000, integer=True))
        caps = Caps(per_cluster, per_fed)

    cooldown = DEFAULT_COOLDOWN_S
    if data.get("cooldown_s") is not None:
        cooldown = _number(data["cooldown_s"], "rule.cooldown_s", 0, 30 * 24 * 3600)
    priority = 0
    if data.get("priority") is not None:
        priority = int(_number(data["priority"], "rule.priority", -1000, 1000, integer=True))
    mode = DEFAULT_MODE
    if data.get("mode") is not None:
        mode = _one_of(data["mode"], MODES, "rule.mode")
    margin = DEFAULT_MARGIN_PCT
    if data.get("margin_pct") is not None:
        margin = _number(data["margin_pct"], "rule.margin_pct", 0, 100)
    objective = "mem" if target is not None and target.kind == "most_free_ram" else "cpu"
    if data.get("objective") is not None:
        objective = _one_of(data["objective"], OBJECTIVES, "rule.objective")

    return Rule(name=name, trigger=trigger, action=action, target=target, scope=scope,
                exclude_tags=exclude_tags, exclude_projects=exclude_projects, caps=caps, cooldown_s=cooldown,
                priority=priority, mode=mode, margin_pct=margin, objective=objective)
