"""The migration record: everything the engine needs to decide its next action.

Why a plain, serialisable value: the record is persisted after every step
(PostgreSQL/SQLite row + event log). Whoever loads it — the same agent after a
crash, another Celery worker, a new master — decides the next action from it
alone (``MigrationEngine.decide``). No in-memory state survives a step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class MigrationKind(StrEnum):
    LIVE = "live"
    COLD = "cold"


class Phase(StrEnum):
    PREFLIGHT = "PREFLIGHT"
    DISK = "DISK"
    MEMORY = "MEMORY"
    CUTOVER = "CUTOVER"
    BGP = "BGP"
    CLEANUP = "CLEANUP"


PHASES_BY_KIND: dict[MigrationKind, tuple[Phase, ...]] = {
    MigrationKind.LIVE: (Phase.PREFLIGHT, Phase.DISK, Phase.MEMORY, Phase.CUTOVER, Phase.BGP, Phase.CLEANUP),
    MigrationKind.COLD: (Phase.PREFLIGHT, Phase.DISK, Phase.CUTOVER, Phase.BGP, Phase.CLEANUP),
}


class MigrationState(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    COMPENSATING = "compensating"  # undoing completed steps in reverse (failure or abort before the PONR)
    COMPLETED = "completed"
    FAILED = "failed"  # compensated: the VM is back where it was
    ABORTED = "aborted"  # compensated after an operator's abort
    NEEDS_OPERATOR = "needs_operator"  # could neither finish nor compensate; reason recorded

    @property
    def terminal(self) -> bool:
        return self in (MigrationState.COMPLETED, MigrationState.FAILED, MigrationState.ABORTED,
                        MigrationState.NEEDS_OPERATOR)


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"  # ``do`` issued, waiting for ``check``
    DONE = "done"
    FAILED = "failed"
    UNDONE = "undone"


@dataclass
class MigrationOptions:
    """Knobs an operator may set per migration (API body), with safe defaults."""

    #: QEMU stops pre-copy when the rest fits this; with pause-before-switchover that rest is sent after
    #: the storage handover, so a small limit keeps the guest pause short (e2e lab: 300 -> 30 ms saved ~150 ms)
    downtime_limit_ms: int = 50
    max_bandwidth_mbps: int = 10_000
    #: what to do when pre-copy stops converging: throttle the guest first, then post-copy or abort
    non_convergence: str = "auto_converge_then_abort"
    mirror_lag_limit_s: float = 30.0
    max_passes: int = 30

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> MigrationOptions:
        known = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in (data or {}).items() if k in known})


@dataclass
class VmRef:
    """The VM as it was when the migration was requested (what the destination must recreate)."""

    id: str
    name: str
    ip: str
    image: str
    flavor: str
    vcpus: int
    ram_mb: int
    host: str = ""
    project_id: str = ""
    status: str = "ACTIVE"

    @property
    def prefix(self) -> str:
        return f"{self.ip}/32"


@dataclass
class StepRecord:
    name: str
    phase: str
    status: StepStatus = StepStatus.PENDING
    attempts: int = 0
    started_at: float | None = None  # wall time
    finished_at: float | None = None
    waiting_since: float | None = None  # clock time ``do`` was issued (for the check deadline)
    error: dict[str, Any] | None = None
    irreversible: bool = False

    @property
    def duration_ms(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at) * 1000.0, 1)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["status"] = str(self.status)
        d["duration_ms"] = self.duration_ms
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> StepRecord:
        d = {k: v for k, v in d.items() if k != "duration_ms"}
        d["status"] = StepStatus(d.get("status", "pending"))
        return cls(**d)


@dataclass
class MigrationEvent:
    """One line of the append-only event log: what happened, when, why."""

    ts: float
    kind: str  # e.g. step_started, step_done, step_failed, retry, compensating, decision, completed
    message: str
    phase: str = ""
    step: str = ""
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class MigrationRecord:
    id: str
    kind: MigrationKind
    vm: VmRef
    source_cluster_id: str
    dest_cluster_id: str
    dest_host: str = ""
    dest_next_hop: str = ""
    options: MigrationOptions = field(default_factory=MigrationOptions)
    state: MigrationState = MigrationState.PENDING
    steps: list[StepRecord] = field(default_factory=list)
    cursor: int = 0  # index of the step being run (forward) or undone (compensating)
    abort_requested: bool = False
    passed_point_of_no_return: bool = False
    context: dict[str, Any] = field(default_factory=dict)  # step outputs: what was done, for undo and show
    error: dict[str, Any] | None = None
    created_at: float = 0.0
    updated_at: float = 0.0
    finished_at: float | None = None
    epoch: int = 0

    @property
    def phase(self) -> str:
        if self.state.terminal or not self.steps:
            return "" if self.state != MigrationState.COMPLETED else Phase.CLEANUP.value
        idx = max(0, min(self.cursor, len(self.steps) - 1))
        return self.steps[idx].phase

    @property
    def current_step(self) -> str:
        if self.state.terminal or not self.steps:
            return ""
        return self.steps[max(0, min(self.cursor, len(self.steps) - 1))].name

    def phase_summary(self) -> list[dict[str, Any]]:
        """Per phase: status and duration, in the seed's order (what ``migration show`` prints)."""
        out = []
        for ph in PHASES_BY_KIND[self.kind]:
            steps = [s for s in self.steps if s.phase == ph.value]
            if not steps:
                continue
            statuses = {s.status for s in steps}
            if statuses == {StepStatus.DONE}:
                status = "done"
            elif StepStatus.FAILED in statuses:
                status = "failed"
            elif statuses <= {StepStatus.UNDONE, StepStatus.PENDING} and StepStatus.UNDONE in statuses:
                status = "undone"
            elif statuses == {StepStatus.PENDING}:
                status = "pending"
            else:
                status = "running" if not self.state.terminal else "partial"
            starts = [s.started_at for s in steps if s.started_at is not None]
            ends = [s.finished_at for s in steps if s.finished_at is not None]
            dur = round((max(ends) - min(starts)) * 1000.0, 1) if starts and ends and status == "done" else None
            out.append({"phase": ph.value, "status": status, "duration_ms": dur})
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id, "kind": str(self.kind), "vm": asdict(self.vm),
            "source_cluster_id": self.source_cluster_id, "dest_cluster_id": self.dest_cluster_id,
            "dest_host": self.dest_host, "dest_next_hop": self.dest_next_hop, "options": self.options.to_dict(),
            "state": str(self.state), "steps": [s.to_dict() for s in self.steps], "cursor": self.cursor,
            "abort_requested": self.abort_requested, "passed_point_of_no_return": self.passed_point_of_no_return,
            "context": self.context, "error": self.error, "created_at": self.created_at,
            "updated_at": self.updated_at, "finished_at": self.finished_at, "epoch": self.epoch,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MigrationRecord:
        return cls(
            id=d["id"], kind=MigrationKind(d["kind"]), vm=VmRef(**d["vm"]),
            source_cluster_id=d["source_cluster_id"], dest_cluster_id=d["dest_cluster_id"],
            dest_host=d.get("dest_host", ""), dest_next_hop=d.get("dest_next_hop", ""),
            options=MigrationOptions.from_dict(d.get("options")), state=MigrationState(d["state"]),
            steps=[StepRecord.from_dict(s) for s in d.get("steps", [])], cursor=d.get("cursor", 0),
            abort_requested=d.get("abort_requested", False),
            passed_point_of_no_return=d.get("passed_point_of_no_return", False),
            context=dict(d.get("context") or {}), error=d.get("error"), created_at=d.get("created_at", 0.0),
            updated_at=d.get("updated_at", 0.0), finished_at=d.get("finished_at"), epoch=d.get("epoch", 0),
        )
