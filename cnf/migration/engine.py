"""The migration engine: pure decisions over a persisted record, one action per call.

Contract of ``MigrationEngine.advance(record)``:
- performs at most ONE action (run or poll one step, or undo one step) and returns
  the updated record, the events to append, and when to call again
  (``delay_s``: ``None`` once terminal). The caller persists the record and the
  events *before* scheduling the next call, so a crash anywhere resumes from the
  last committed action (redelivery of the same action is safe: ``check`` runs
  before ``do`` and every ``do``/``undo`` is idempotent);
- never sleeps: waiting for a ``check`` is a ``delay_s`` for the caller (a
  countdown re-enqueue in Celery, an ``await clock.sleep`` in-process);
- before the point of no return a failed step (after its retries) makes the
  engine compensate the steps already done, in reverse; after it, it rolls
  forward (retry with backoff, then ``needs_operator`` with the reason);
- an abort requested before the point of no return compensates and ends
  ``aborted``; after it the abort is refused upstream (409) and ignored here.

No I/O library is imported here (import-linter contract): drivers come in
through the ``DriverDirectory`` and time through the ``Clock``.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass, field
from typing import Any

from cnf.clock import Clock
from cnf.errors import CNFError, DriverError, DriverUnavailable, NotFound, StepTimeout
from cnf.migration.model import (
    MigrationEvent,
    MigrationKind,
    MigrationOptions,
    MigrationRecord,
    MigrationState,
    StepRecord,
    StepStatus,
    VmRef,
)
from cnf.migration.steps import STEP_TABLES, Step, StepContext
from cnf.ports import DriverDirectory


@dataclass(frozen=True)
class EngineSettings:
    call_timeout_s: float = 30.0  # one step function (its driver calls) may not take longer
    retry_backoff_s: float = 0.5  # first retry delay, doubled per attempt, capped below
    retry_backoff_max_s: float = 10.0
    attempts_after_ponr: int = 5  # roll-forward retries of a step after the point of no return
    undo_attempts: int = 3


@dataclass
class Advance:
    record: MigrationRecord
    events: list[MigrationEvent] = field(default_factory=list)
    delay_s: float | None = 0.0  # None: terminal, nothing more to do


class MigrationEngine:
    def __init__(self, directory: DriverDirectory, clock: Clock, settings: EngineSettings | None = None) -> None:
        self.directory = directory
        self.clock = clock
        self.settings = settings or EngineSettings()

    # --- creation --------------------------------------------------------------------------------

    def new_record(self, *, kind: MigrationKind, vm: VmRef, source_cluster_id: str, dest_cluster_id: str,
                   dest_host: str = "", dest_next_hop: str = "", options: MigrationOptions | None = None,
                   migration_id: str | None = None, epoch: int = 0) -> MigrationRecord:
        now = self.clock.wall()
        return MigrationRecord(
            id=migration_id or str(uuid.uuid4()), kind=kind, vm=vm, source_cluster_id=source_cluster_id,
            dest_cluster_id=dest_cluster_id, dest_host=dest_host, dest_next_hop=dest_next_hop,
            options=options or MigrationOptions(),
            steps=[StepRecord(name=s.name, phase=s.phase.value, irreversible=s.irreversible)
                   for s in STEP_TABLES[kind]],
            created_at=now, updated_at=now, epoch=epoch)

    @staticmethod
    def steps(kind: MigrationKind) -> tuple[Step, ...]:
        return STEP_TABLES[kind]

    # --- the loop body ---------------------------------------------------------------------------

    async def advance(self, rec: MigrationRecord) -> Advance:
        out = Advance(record=rec)
        if rec.state.terminal:
            out.delay_s = None
            return out
        if rec.state == MigrationState.PENDING:
            rec.state = MigrationState.RUNNING
            self._event(out, "started", f"{rec.kind} migration of {rec.vm.name} ({rec.vm.id}) from "
                        f"{rec.source_cluster_id} to {rec.dest_cluster_id}")
        if rec.abort_requested and rec.state == MigrationState.RUNNING:
            if rec.passed_point_of_no_return:
                rec.abort_requested = False
                self._event(out, "decision", "abort ignored: the point of no return has passed; rolling forward")
            else:
                rec.state = MigrationState.COMPENSATING
                rec.error = {"code": "migration_aborted", "message": "aborted by the operator"}
                self._event(out, "compensating", "abort requested: undoing completed steps in reverse")
                out.delay_s = 0.0
                rec.updated_at = self.clock.wall()
                return out
        if rec.state == MigrationState.RUNNING:
            await self._forward(rec, out)
        elif rec.state == MigrationState.COMPENSATING:
            await self._compensate(rec, out)
        rec.updated_at = self.clock.wall()
        return out

    # --- forward ---------------------------------------------------------------------------------

    def _context(self, rec: MigrationRecord, notes: list[tuple[str, dict[str, Any]]]) -> StepContext:
        try:
            src = self.directory.drivers(rec.source_cluster_id)
            dst = self.directory.drivers(rec.dest_cluster_id)
        except NotFound as e:
            # e.g. a new master that has not reached that cloud's agent yet: retry, do not fail the migration
            raise DriverUnavailable(f"no route to a cloud of this migration yet: {e.message}") from None
        return StepContext(record=rec, src=src, dst=dst, now=self.clock.now, notes=notes)

    async def _timed(self, coro: Any) -> Any:
        try:
            return await asyncio.wait_for(coro, timeout=self.settings.call_timeout_s)
        except TimeoutError:
            raise DriverUnavailable(f"driver call did not answer within {self.settings.call_timeout_s:g} s") from None

    async def _forward(self, rec: MigrationRecord, out: Advance) -> None:
        table = STEP_TABLES[rec.kind]
        if rec.cursor >= len(table):
            self._finish(rec, out, MigrationState.COMPLETED, "migration completed")
            return
        step, sr = table[rec.cursor], rec.steps[rec.cursor]
        notes: list[tuple[str, dict[str, Any]]] = []
        try:
            sc = self._context(rec, notes)
            if sr.status != StepStatus.RUNNING or sr.waiting_since is None:
                if sr.status != StepStatus.RUNNING:
                    sr.status = StepStatus.RUNNING
                    sr.started_at = sr.started_at or self.clock.wall()
                    self._event(out, "step_started", f"{step.name} started", step)
                sr.attempts += 1
                if await self._timed(step.check(sc)):
                    self._done(rec, out, step, sr, already=True)
                    return
                await self._timed(step.do(sc))
                sr.waiting_since = self.clock.now()
            if await self._timed(step.check(sc)):
                self._done(rec, out, step, sr)
                return
            if self.clock.now() - (sr.waiting_since or self.clock.now()) > step.timeout_s:
                raise StepTimeout(f"{step.name}: not done after {step.timeout_s:g} s", step=step.name)
            if step.on_wait is not None:
                await self._timed(step.on_wait(sc))
            out.delay_s = step.poll_fn(sc) if step.poll_fn is not None else step.poll_s
        except CNFError as e:
            await self._failed(rec, out, step, sr, e)
        except Exception as e:  # a bug or an untranslated library error: still never lose the VM
            await self._failed(rec, out, step, sr, DriverError(f"{type(e).__name__}: {e}", step=step.name))
        finally:
            for message, data in notes:
                self._event(out, "decision", message, step, **data)

    def _done(self, rec: MigrationRecord, out: Advance, step: Step, sr: StepRecord, already: bool = False) -> None:
        sr.status = StepStatus.DONE
        sr.finished_at = self.clock.wall()
        sr.waiting_since = None
        sr.error = None
        msg = f"{step.name} done" + (" (already in place)" if already else "")
        self._event(out, "step_done", msg, step, duration_ms=sr.duration_ms)
        if step.irreversible:
            rec.passed_point_of_no_return = True
            self._event(out, "decision", "point of no return passed: from now on the migration rolls forward", step)
        rec.cursor += 1
        out.delay_s = 0.0

    async def _failed(self, rec: MigrationRecord, out: Advance, step: Step, sr: StepRecord, err: CNFError) -> None:
        sr.error = err.to_dict()
        if step.irreversible:
            # The call may have failed after the effect happened (e.g. a timeout): look before compensating.
            try:
                if await self._timed(step.check(self._context(rec, []))):
                    self._done(rec, out, step, sr, already=True)
                    return
            except CNFError:
                pass
        after_ponr = rec.passed_point_of_no_return
        limit = max(step.max_attempts, self.settings.attempts_after_ponr) if after_ponr else step.max_attempts
        if (err.retryable or after_ponr) and sr.attempts < limit:
            sr.waiting_since = None
            delay = float(err.details.get("retry_after_s") or min(
                self.settings.retry_backoff_max_s, self.settings.retry_backoff_s * (2 ** (sr.attempts - 1))))
            self._event(out, "retry", f"{step.name} failed ({err.code}: {err.message}); retry "
                        f"{sr.attempts + 1}/{limit} in {delay:g} s", step, error=err.to_dict())
            out.delay_s = delay
            return
        sr.status = StepStatus.FAILED
        sr.finished_at = self.clock.wall()
        self._event(out, "step_failed", f"{step.name} failed: {err.message}", step, error=err.to_dict())
        rec.error = {**err.to_dict(), "step": step.name}
        if after_ponr:
            self._finish(rec, out, MigrationState.NEEDS_OPERATOR,
                         f"{step.name} keeps failing after the point of no return ({err.message}); the destination "
                         "owns the disk — fix the cause and retry the migration's remaining steps")
            return
        rec.state = MigrationState.COMPENSATING
        self._event(out, "compensating", f"undoing completed steps in reverse because {step.name} failed", step)
        out.delay_s = 0.0

    # --- compensation ----------------------------------------------------------------------------

    async def _compensate(self, rec: MigrationRecord, out: Advance) -> None:
        table = STEP_TABLES[rec.kind]
        i = min(rec.cursor, len(table) - 1)
        while i >= 0 and (rec.steps[i].status in (StepStatus.PENDING, StepStatus.UNDONE) or table[i].undo is None):
            i -= 1
        rec.cursor = max(i, 0)
        if i < 0:
            final = MigrationState.ABORTED if rec.abort_requested else MigrationState.FAILED
            why = (rec.error or {}).get("message", "")
            self._finish(rec, out, final, f"migration {final}: every completed step was undone; the VM stays in "
                         f"{rec.source_cluster_id}" + (f" ({why})" if why else ""))
            return
        step, sr = table[i], rec.steps[i]
        undo = step.undo
        assert undo is not None
        tries = rec.context.setdefault("undo_attempts", {})
        tries[step.name] = int(tries.get(step.name, 0)) + 1
        try:
            await self._timed(undo(self._context(rec, [])))
        except CNFError as e:
            if tries[step.name] < self.settings.undo_attempts:
                self._event(out, "retry", f"undo of {step.name} failed ({e.message}); retrying", step,
                            error=e.to_dict())
                out.delay_s = min(self.settings.retry_backoff_max_s,
                                  self.settings.retry_backoff_s * (2 ** (tries[step.name] - 1)))
                return
            rec.error = {**e.to_dict(), "step": step.name}
            self._finish(rec, out, MigrationState.NEEDS_OPERATOR,
                         f"could not undo {step.name}: {e.message}; the VM's state needs an operator")
            return
        sr.status = StepStatus.UNDONE
        self._event(out, "step_undone", f"{step.name} undone", step)
        rec.cursor = i - 1  # may become -1: the next call finds nothing left and finishes
        out.delay_s = 0.0

    # --- bookkeeping -----------------------------------------------------------------------------

    def _finish(self, rec: MigrationRecord, out: Advance, state: MigrationState, message: str) -> None:
        rec.state = state
        rec.finished_at = self.clock.wall()
        self._event(out, str(state), message)
        out.delay_s = None

    def _event(self, out: Advance, kind: str, message: str, step: Step | None = None, **data: Any) -> None:
        out.events.append(MigrationEvent(ts=self.clock.wall(), kind=kind, message=message,
                                         phase=step.phase.value if step else "", step=step.name if step else "",
                                         data=data))
