"""The scheduler's output: a plan an operator can read (``policy evaluate``) and the master can execute.

Every proposed move says which rule fired and on what values, which targets were considered with their scores
and why the chosen one won, and the expected effect on both clusters. Every candidate that was *not* moved is
accounted for in ``skipped`` (capped, cooldown, excluded, no improvement by the margin, ...) with exact
``skipped_counts``; the detailed list is truncated at a limit so a 100,000-VM federation gives a readable plan.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# skip reasons (stable strings: the API and tests use them)
EXCLUDED_TAG = "excluded_tag"
EXCLUDED_PROJECT = "excluded_project"
STATUS = "status"
IN_FLIGHT = "in_flight"
COOLDOWN = "cooldown"
CAPPED = "capped"
NO_IMPROVEMENT = "no_improvement"
NO_CAPACITY = "no_capacity"
NO_TARGET = "no_target"
UNKNOWN_CLUSTER = "unknown_cluster"


@dataclass(frozen=True)
class TargetScore:
    """One destination considered for a VM. ``score`` is what targets are ranked by (see ``Plan.docs``)."""

    cluster: str
    eligible: bool
    reason: str  # "chosen" | "eligible" | capped | no_capacity | no_improvement | no_host | unknown_cluster
    score: float | None = None
    load_after: float | None = None
    improvement: float | None = None


@dataclass(frozen=True)
class SideEffect:
    """Expected metrics of one side before → after the move (an estimate from the VM's own figures)."""

    cluster: str
    host: str
    cpu_pct: tuple[float, float]
    mem_pct: tuple[float, float]
    free_vcpus: tuple[float, float]
    free_ram_mb: tuple[float, float]
    vm_count: tuple[int, int]


@dataclass(frozen=True)
class Move:
    rule: str
    action: str  # live_migrate | migrate
    mode: str  # auto | plan
    priority: int
    vm_id: str
    project_id: str
    source_cluster: str
    source_host: str
    target_cluster: str
    target_host: str  # a hint (the fitting host with the lowest projected load); the destination may re-place it
    trigger: str
    trigger_values: dict[str, float]
    objective: str  # cpu | mem
    improvement: float  # percentage points of the objective the VM gains (source before - target after)
    candidates: tuple[TargetScore, ...]
    source_effect: SideEffect
    target_effect: SideEffect
    why: str


@dataclass(frozen=True)
class Notification:
    rule: str
    subject_kind: str  # cluster | host | vm
    subject_id: str
    cluster_id: str
    trigger: str
    trigger_values: dict[str, float]
    message: str


@dataclass(frozen=True)
class Skip:
    """A candidate the rule fired for but did not move. ``count`` > 1 summarises many VMs of one subject."""

    rule: str
    subject_kind: str  # vm | cluster | host
    subject_id: str
    reason: str
    detail: str
    count: int = 1


@dataclass(frozen=True)
class Pending:
    """The trigger holds now but not yet for its duration (``held_s`` of ``needed_s``): nothing moves yet."""

    rule: str
    subject_kind: str
    subject_id: str
    held_s: float
    needed_s: float


@dataclass
class Plan:
    evaluated_at: float
    moves: list[Move] = field(default_factory=list)
    notifications: list[Notification] = field(default_factory=list)
    skipped: list[Skip] = field(default_factory=list)
    skipped_counts: dict[str, int] = field(default_factory=dict)
    pending: list[Pending] = field(default_factory=list)
    truncated: int = 0  # skip/pending entries counted but not listed

    def auto_moves(self) -> list[Move]:
        """Moves the master may hand to the engine now (rules in ``auto`` mode)."""
        return [m for m in self.moves if m.mode == "auto"]

    def moves_awaiting_approval(self) -> list[Move]:
        return [m for m in self.moves if m.mode == "plan"]

    def render(self) -> str:
        """Plain text for ``openstack cnf policy evaluate`` and logs: what would move and why, what would not."""
        out: list[str] = []
        for m in self.moves:
            hint = f" ({m.target_host})" if m.target_host else ""
            out.append(f"{m.mode.upper():4} {m.action} {m.vm_id}: {m.source_cluster} -> {m.target_cluster}{hint}")
            out.append(f"     why: {m.why}")
            out.append(f"     {m.source_cluster} {m.objective} {_pair(m, m.source_effect)}, "
                       f"{m.target_cluster} {m.objective} {_pair(m, m.target_effect)}")
        for n in self.notifications:
            out.append(f"NOTE {n.message}")
        for p in self.pending:
            out.append(f"WAIT {p.rule}: {p.subject_kind} {p.subject_id} held {p.held_s:g}s of {p.needed_s:g}s")
        for s in self.skipped:
            many = f" x{s.count}" if s.count > 1 else ""
            out.append(f"SKIP {s.rule}: {s.subject_kind} {s.subject_id}{many} {s.reason}: {s.detail}")
        if self.truncated:
            out.append(f"... {self.truncated} more skip/pending entries not listed")
        if self.skipped_counts:
            out.append("skipped: " + ", ".join(f"{k}={v}" for k, v in sorted(self.skipped_counts.items())))
        if not out:
            out.append("nothing to do")
        return "\n".join(out)

    def to_dict(self) -> dict[str, Any]:
        return {
            "evaluated_at": self.evaluated_at,
            "moves": [asdict(m) for m in self.moves],
            "notifications": [asdict(n) for n in self.notifications],
            "skipped": [asdict(s) for s in self.skipped],
            "skipped_counts": dict(sorted(self.skipped_counts.items())),
            "pending": [asdict(p) for p in self.pending],
            "truncated": self.truncated,
        }


def _pair(m: Move, side: SideEffect) -> str:
    before, after = side.cpu_pct if m.objective == "cpu" else side.mem_pct
    return f"{before:.1f}% -> {after:.1f}%"
