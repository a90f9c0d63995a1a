"""One object the migration engine's driver loop calls: metrics + spans + log context for a migration.

Why a facade: the engine loop has four moments worth observing (started, a step running, a step finished, the
migration terminal); each produces metrics, spans and log context. Calling one method per moment keeps the
loop readable and makes it impossible to emit a span but forget the metric. The records are duck-typed
(``cnf.migration.model.MigrationRecord``/``StepRecord``) so the pure core never imports this module — the
caller (the agent's task runner) does.

Contract: every method is idempotent per (record, moment) only as far as the caller calls it once; none raises
because of observability (a broken exporter must not fail a migration).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import structlog

from cnf.observability.logs import migration_log_context
from cnf.observability.metrics import CNFMetrics
from cnf.observability.tracing import Tracing, TracingConfig, configure_tracing

log = structlog.get_logger(__name__)


_TERMINAL = frozenset({"completed", "failed", "aborted", "needs_operator"})


def _val(x: Any) -> str:
    return str(getattr(x, "value", x))


class MigrationTelemetry:
    """Metrics, traces and log context of migrations, for one agent."""

    def __init__(self, metrics: CNFMetrics, tracing: Tracing | None = None, *, log_lifecycle: bool = True) -> None:
        """``log_lifecycle=False`` when another observer already logs the engine's events (no duplicate lines)."""
        self.metrics = metrics
        self.log_lifecycle = log_lifecycle
        self.tracing = tracing if tracing is not None else configure_tracing(TracingConfig(exporter="none"))
        #: migration id -> (kind, phase) of the migrations this agent has seen advancing and not finish
        self._in_flight: dict[str, tuple[str, str]] = {}

    # ------------------------------------------------------------------ the runner's observer
    def observe(self, record: Any, events: Sequence[Any]) -> None:
        """An ``EventObserver`` for ``cnf.tasks.runner`` (``observers=[telemetry.observe]``).

        Called after each persisted engine action with the record and the events of that action; maps the
        engine's event kinds to the moments below, and keeps the in-flight gauge. It sees every action of every
        migration this agent drives, so after a failover the new master's gauge heals at each migration's next
        action (``reset_in_flight`` when this agent stops being master).
        """
        for ev in events:
            kind = _val(getattr(ev, "kind", ""))
            if kind == "started":
                self.migration_started(record)
            elif kind in ("step_done", "step_failed", "step_undone"):
                step = next((s for s in record.steps if s.name == getattr(ev, "step", "")), None)
                if step is not None:
                    self.step_finished(record, step)
            elif kind in _TERMINAL:
                self.migration_finished(record)
        if getattr(record.state, "terminal", _val(record.state) in _TERMINAL):
            self._in_flight.pop(str(record.id), None)
        else:
            self._in_flight[str(record.id)] = (_val(record.kind), str(getattr(record, "phase", "") or "PREFLIGHT"))
        self._publish_in_flight()

    def reset_in_flight(self) -> None:
        """Forget the in-flight migrations (this agent is no longer master: another one drives them)."""
        self._in_flight.clear()
        self._publish_in_flight()

    def _publish_in_flight(self) -> None:
        counts: dict[tuple[str, str], int] = {}
        for key in self._in_flight.values():
            counts[key] = counts.get(key, 0) + 1
        self.metrics.set_in_flight(counts)

    def migration_started(self, record: Any) -> None:
        """Call once, right after the record was first persisted."""
        self.metrics.migration_started(_val(record.kind))
        if not self.log_lifecycle:
            return
        with migration_log_context(record):
            log.info("migration_started", kind=_val(record.kind), source_cluster_id=record.source_cluster_id,
                     dest_cluster_id=record.dest_cluster_id)

    @contextmanager
    def running_step(self, record: Any, step_name: str, *, undo: bool = False) -> Iterator[None]:
        """Wrap a step's ``do``/``check``/``undo`` call: log lines carry the ids, peer calls the step's trace."""
        with ExitStack() as stack:
            stack.enter_context(migration_log_context(record))
            stack.enter_context(self.tracing.migrations.running_step(record, step_name, undo=undo))
            yield

    def step_finished(self, record: Any, step: Any) -> None:
        """Call after persisting a step that reached done, failed or undone."""
        try:
            if step.started_at is not None and step.finished_at is not None:
                status = _val(step.status)
                self.metrics.observe_step(_val(record.kind), step.phase, step.name,
                                          step.finished_at - step.started_at,
                                          outcome=status if status in ("done", "undone", "failed") else "done")
            self.tracing.migrations.record_step(record, step)
        except Exception as exc:  # observability must never break a migration
            log.warning("telemetry_step_failed", error=str(exc), step=getattr(step, "name", ""))

    def migration_finished(self, record: Any) -> None:
        """Call once, after persisting the terminal state."""
        try:
            self.metrics.observe_finished_migration(record, include_steps=False)
            self.tracing.migrations.record_migration(record)
        except Exception as exc:
            log.warning("telemetry_migration_failed", error=str(exc))
        if not self.log_lifecycle:
            return
        with migration_log_context(record):
            log.info("migration_finished", state=_val(record.state), kind=_val(record.kind),
                     error=(record.error or {}).get("code") if isinstance(record.error, dict) else None)
