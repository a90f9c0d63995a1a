"""OpenTelemetry tracing for CNF: one trace per migration, a span per phase and per step.

Why deterministic ids: a migration runs one step per task (Celery), possibly on several processes and, after a
failover, on another master. No in-memory span can stay open across that. So the trace id is derived from the
migration id, and the span ids of the root, each phase and each step from ``(migration id, phase/step)``. Any
process that holds the persisted ``MigrationRecord`` can therefore (a) emit a finished step's span with its real
start/end times, and (b) parent outgoing peer calls (gRPC metadata / HTTP headers, W3C ``traceparent``) to the
step span that will be emitted when the step finishes. The spans of one migration assemble in the backend
into one tree whatever process emitted them.

Emission protocol (what the engine calls, see ``MigrationTracer``):
  * while a step's ``do``/``check`` runs: ``with tracer.running_step(record, step_name): ...`` so that any
    ``client_span`` (peer gRPC, REST proxy) made inside becomes a child of the step span;
  * when a step finishes (done, failed, undone): ``tracer.record_step(record, step)``; it also emits the phase
    span when the step was the last of its phase and the phase is done;
  * when the migration reaches a terminal state: ``tracer.record_migration(record)`` (root span, plus the spans of
    phases that started but never completed).

Tracing is off by default (``exporter="none"``): the tracer is the OpenTelemetry no-op one and costs nothing;
propagation of an incoming ``traceparent`` still works. Exporters: ``console``, ``otlp`` (needs the optional
``opentelemetry-exporter-otlp`` package, not a CNF dependency), ``memory`` (tests: ``Tracing.memory_exporter``).
"""

from __future__ import annotations

import contextvars
import functools
import hashlib
import os
from collections.abc import Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import structlog
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from cnf.errors import ConfigError

log = structlog.get_logger(__name__)

EXPORTERS = ("none", "console", "otlp", "memory")
_W3C = TraceContextTextMapPropagator()
#: ids the next span must take (set only around one ``start_span`` call by this module)
_forced_ids: contextvars.ContextVar[tuple[int, int] | None] = contextvars.ContextVar("cnf_forced_ids", default=None)


# ---------------------------------------------------------------------------------------------- ids
@functools.lru_cache(maxsize=4096)
def _digest(text: str, n_bytes: int) -> int:
    value = int.from_bytes(hashlib.sha256(text.encode()).digest()[:n_bytes], "big")
    return value or 1  # 0 is the invalid id


def migration_trace_id(migration_id: str) -> int:
    """The 128-bit trace id of a migration: the same on every agent and after every restart."""
    return _digest(f"cnf-migration/{migration_id}", 16)


def _span_id(migration_id: str, part: str) -> int:
    return _digest(f"cnf-migration/{migration_id}/{part}", 8)


class _MigrationIdGenerator(IdGenerator):
    """Random ids, except for spans this module starts with ``_forced_ids`` set (deterministic migration spans)."""

    def __init__(self) -> None:
        self._random = RandomIdGenerator()

    def generate_span_id(self) -> int:
        forced = _forced_ids.get()
        return forced[1] if forced else self._random.generate_span_id()

    def generate_trace_id(self) -> int:
        forced = _forced_ids.get()
        return forced[0] if forced else self._random.generate_trace_id()


# ---------------------------------------------------------------------------------------------- propagation
def inject_http_headers(headers: MutableMapping[str, str] | None = None,
                        ctx: Context | None = None) -> MutableMapping[str, str]:
    """Add W3C ``traceparent``/``tracestate`` for ``ctx`` (default: the current context) to ``headers``."""
    carrier: MutableMapping[str, str] = headers if headers is not None else {}
    _W3C.inject(carrier, context=ctx)
    return carrier


def extract_http_context(headers: Mapping[str, str]) -> Context:
    """The context an incoming request carries (case-insensitive header lookup); empty context if none."""
    lowered = {str(k).lower(): str(v) for k, v in headers.items()}
    return _W3C.extract(lowered)


def inject_grpc_metadata(metadata: list[tuple[str, str]] | tuple[tuple[str, str], ...] | None = None,
                         ctx: Context | None = None) -> list[tuple[str, str]]:
    """gRPC call metadata (list of pairs) with the W3C keys added; keys are lower-case as gRPC requires."""
    carrier: dict[str, str] = {}
    _W3C.inject(carrier, context=ctx)
    out = [(k, v) for k, v in (metadata or ()) if k.lower() not in carrier]
    out.extend((k.lower(), v) for k, v in carrier.items())
    return out


def extract_grpc_context(invocation_metadata: Any) -> Context:
    """The context in a server's ``context.invocation_metadata()`` (pairs or objects with key/value)."""
    carrier: dict[str, str] = {}
    for item in invocation_metadata or ():
        key, value = (item.key, item.value) if hasattr(item, "key") else (item[0], item[1])
        if isinstance(value, bytes):
            continue  # binary (-bin) metadata never carries W3C context
        carrier[str(key).lower()] = str(value)
    return _W3C.extract(carrier)


def current_trace_ids() -> tuple[str, str] | None:
    """``(trace_id, span_id)`` hex of the current span, for log correlation; None outside any span."""
    sc = trace.get_current_span().get_span_context()
    if not sc.is_valid:
        return None
    return f"{sc.trace_id:032x}", f"{sc.span_id:016x}"


# ---------------------------------------------------------------------------------------------- setup
@dataclass
class TracingConfig:
    """Where spans go. ``exporter``: none (default) | console | otlp | memory."""

    exporter: str = "none"
    otlp_endpoint: str = ""  # e.g. http://otel-collector:4317 (grpc) or http://collector:4318/v1/traces (http)
    otlp_protocol: str = "grpc"  # grpc | http/protobuf
    service_name: str = "cnf-agent"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> TracingConfig:
        """``CNF_TRACING_EXPORTER`` (else the standard ``OTEL_TRACES_EXPORTER``), ``OTEL_EXPORTER_OTLP_ENDPOINT``,
        ``OTEL_EXPORTER_OTLP_PROTOCOL``, ``OTEL_SERVICE_NAME``."""
        e = os.environ if env is None else env
        return cls(
            exporter=(e.get("CNF_TRACING_EXPORTER") or e.get("OTEL_TRACES_EXPORTER") or "none").strip().lower(),
            otlp_endpoint=e.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or e.get("OTEL_EXPORTER_OTLP_ENDPOINT") or "",
            otlp_protocol=(e.get("OTEL_EXPORTER_OTLP_PROTOCOL") or "grpc").strip().lower(),
            service_name=e.get("OTEL_SERVICE_NAME") or "cnf-agent",
        )


def _otlp_exporter(cfg: TracingConfig) -> SpanExporter:
    kwargs: dict[str, Any] = {"endpoint": cfg.otlp_endpoint} if cfg.otlp_endpoint else {}
    try:
        if cfg.otlp_protocol == "grpc":
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        elif cfg.otlp_protocol in ("http/protobuf", "http"):
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import (  # type: ignore[assignment]
                OTLPSpanExporter,
            )
        else:
            raise ConfigError(f"tracing: unknown OTLP protocol {cfg.otlp_protocol!r} (grpc or http/protobuf)",
                              key="OTEL_EXPORTER_OTLP_PROTOCOL")
    except ImportError:
        raise ConfigError("tracing: exporter 'otlp' needs the package opentelemetry-exporter-otlp "
                          "(pip install opentelemetry-exporter-otlp)", key="CNF_TRACING_EXPORTER") from None
    exporter: SpanExporter = OTLPSpanExporter(**kwargs)
    return exporter


@dataclass
class Tracing:
    """One agent's tracing: its provider (None when off), tracer, and the in-memory exporter in tests."""

    config: TracingConfig
    provider: TracerProvider | None
    tracer: trace.Tracer
    memory_exporter: InMemorySpanExporter | None = None
    migrations: MigrationTracer = field(init=False)

    def __post_init__(self) -> None:
        self.migrations = MigrationTracer(self.tracer, enabled=self.provider is not None)

    @property
    def enabled(self) -> bool:
        return self.provider is not None

    def finished_spans(self) -> tuple[ReadableSpan, ...]:
        """Spans the memory exporter holds (tests); empty for other exporters."""
        return tuple(self.memory_exporter.get_finished_spans()) if self.memory_exporter else ()

    def shutdown(self) -> None:
        """Flush and stop the exporter (agent shutdown)."""
        if self.provider is not None:
            self.provider.shutdown()

    @contextmanager
    def client_span(self, name: str, *, attributes: Mapping[str, Any] | None = None,
                    ctx: Context | None = None) -> Iterator[dict[str, str]]:
        """A CLIENT span around one outgoing call; yields the W3C carrier to send with it.

        REST proxy: ``with tracing.client_span("proxy POST /v1/migrations") as h: httpx.post(..., headers={**hdrs,
        **h})``. gRPC: ``with tracing.client_span("CNFPeer/StoragePromote") as h: stub.X(req,
        metadata=list(h.items()))``. The carrier is filled even when tracing is off (propagates the incoming
        context unchanged).
        """
        with self.tracer.start_as_current_span(name, context=ctx, kind=SpanKind.CLIENT,
                                               attributes=dict(attributes or {})):
            carrier: dict[str, str] = {}
            _W3C.inject(carrier)
            yield carrier

    @contextmanager
    def server_span(self, name: str, carrier: Mapping[str, str] | Any, *,
                    attributes: Mapping[str, Any] | None = None) -> Iterator[trace.Span]:
        """A SERVER span continuing the caller's trace (``carrier``: HTTP headers mapping or gRPC metadata)."""
        parent = (extract_http_context(carrier) if isinstance(carrier, Mapping)
                  else extract_grpc_context(carrier))
        with self.tracer.start_as_current_span(name, context=parent, kind=SpanKind.SERVER,
                                               attributes=dict(attributes or {})) as span:
            yield span


def configure_tracing(config: TracingConfig | None = None, *, cluster_id: str = "", cluster_name: str = "",
                      install_global: bool = False) -> Tracing:
    """Build the agent's tracing from ``config`` (default: from the environment; off unless asked).

    ``install_global=True`` also makes it OpenTelemetry's global provider (the agent process does this once;
    tests leave it False so several agents can live side by side). Raises ``ConfigError`` for an unknown
    exporter or a missing OTLP package.
    """
    cfg = config if config is not None else TracingConfig.from_env()
    if cfg.exporter not in EXPORTERS:
        raise ConfigError(f"tracing: unknown exporter {cfg.exporter!r} (one of {', '.join(EXPORTERS)})",
                          key="CNF_TRACING_EXPORTER")
    if cfg.exporter == "none":
        return Tracing(cfg, None, trace.NoOpTracer())
    resource = Resource.create({"service.name": cfg.service_name, "cnf.cluster.id": cluster_id,
                                "cnf.cluster.name": cluster_name})
    provider = TracerProvider(resource=resource, id_generator=_MigrationIdGenerator(), shutdown_on_exit=False)
    memory: InMemorySpanExporter | None = None
    if cfg.exporter == "memory":
        memory = InMemorySpanExporter()
        provider.add_span_processor(SimpleSpanProcessor(memory))
    elif cfg.exporter == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        provider.add_span_processor(BatchSpanProcessor(_otlp_exporter(cfg)))
    if install_global:
        trace.set_tracer_provider(provider)
    log.info("tracing_configured", exporter=cfg.exporter, endpoint=cfg.otlp_endpoint or None)
    return Tracing(cfg, provider, provider.get_tracer("cnf"), memory)


# ---------------------------------------------------------------------------------------------- migrations
def _val(x: Any) -> str:
    return str(getattr(x, "value", x))


def _ns(wall_seconds: float | None) -> int | None:
    return None if wall_seconds is None else int(wall_seconds * 1e9)


class MigrationTracer:
    """Emits a migration's spans from its persisted record (duck-typed ``MigrationRecord``/``StepRecord``)."""

    def __init__(self, tracer: trace.Tracer, *, enabled: bool = True) -> None:
        self._tracer = tracer
        self._enabled = enabled

    # -- contexts (valid whether or not tracing is on: they only carry ids)
    @staticmethod
    def _ctx(record: Any, part: str) -> Context:
        sc = SpanContext(trace_id=migration_trace_id(record.id), span_id=_span_id(record.id, part),
                         is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED))
        return trace.set_span_in_context(NonRecordingSpan(sc))

    def root_context(self, record: Any) -> Context:
        return self._ctx(record, "root")

    def phase_context(self, record: Any, phase: str) -> Context:
        return self._ctx(record, f"phase/{_val(phase)}")

    def step_context(self, record: Any, step_name: str, *, undo: bool = False) -> Context:
        return self._ctx(record, f"{'undo' if undo else 'step'}/{step_name}")

    @contextmanager
    def running_step(self, record: Any, step_name: str, *, undo: bool = False) -> Iterator[Context]:
        """Make the step's span the current context while its do/check runs (outgoing calls become children)."""
        ctx = self.step_context(record, step_name, undo=undo)
        token = otel_context.attach(ctx)
        try:
            yield ctx
        finally:
            otel_context.detach(token)

    # -- emission
    @staticmethod
    def attributes(record: Any) -> dict[str, Any]:
        vm = getattr(record, "vm", None)
        return {
            "cnf.migration.id": str(record.id),
            "cnf.migration.kind": _val(record.kind),
            "cnf.vm.id": str(getattr(vm, "id", "")),
            "cnf.cluster.source_id": str(getattr(record, "source_cluster_id", "")),
            "cnf.cluster.dest_id": str(getattr(record, "dest_cluster_id", "")),
            "cnf.epoch": int(getattr(record, "epoch", 0) or 0),
        }

    def _emit(self, record: Any, name: str, part: str, parent: Context | None, start: float | None,
              end: float | None, attrs: dict[str, Any], error: Any = None) -> None:
        if not self._enabled or start is None:
            return
        token = _forced_ids.set((migration_trace_id(record.id), _span_id(record.id, part)))
        try:
            span = self._tracer.start_span(name, context=parent if parent is not None else Context(),
                                           attributes=attrs, start_time=_ns(start))
        finally:
            _forced_ids.reset(token)
        if error:
            code = error.get("code", "error") if isinstance(error, dict) else str(error)
            message = error.get("message", "") if isinstance(error, dict) else ""
            span.set_attribute("cnf.error.code", str(code))
            span.set_status(Status(StatusCode.ERROR, f"{code}: {message}".rstrip(": ")))
        span.end(end_time=_ns(end if end is not None else start))

    def record_step(self, record: Any, step: Any) -> None:
        """Emit the span of a finished step (status done, failed or undone) with its recorded times."""
        status = _val(step.status)
        undo = status == "undone"
        attrs = {**self.attributes(record), "cnf.phase": _val(step.phase), "cnf.step": step.name,
                 "cnf.step.status": status, "cnf.step.attempts": int(getattr(step, "attempts", 0) or 0),
                 "cnf.step.irreversible": bool(getattr(step, "irreversible", False))}
        self._emit(record, f"{'undo' if undo else 'step'} {step.name}", f"{'undo' if undo else 'step'}/{step.name}",
                   self.phase_context(record, step.phase), step.started_at, step.finished_at, attrs,
                   step.error if status == "failed" else None)
        if status == "done":
            same_phase = [s for s in record.steps if s.phase == step.phase]
            if same_phase and same_phase[-1].name == step.name and all(_val(s.status) == "done" for s in same_phase):
                self.record_phase(record, step.phase)

    def record_phase(self, record: Any, phase: str) -> None:
        """Emit a phase span spanning its steps' recorded times."""
        steps = [s for s in record.steps if s.phase == _val(phase)]
        starts = [s.started_at for s in steps if s.started_at is not None]
        ends = [s.finished_at for s in steps if s.finished_at is not None]
        if not starts:
            return
        statuses = {_val(s.status) for s in steps}
        failed = next((s.error for s in steps if _val(s.status) == "failed"), None)
        attrs = {**self.attributes(record), "cnf.phase": _val(phase),
                 "cnf.phase.status": "done" if statuses == {"done"} else "incomplete"}
        self._emit(record, f"phase {_val(phase)}", f"phase/{_val(phase)}", self.root_context(record),
                   min(starts), max(ends) if ends else None, attrs, failed or None)

    def record_migration(self, record: Any) -> None:
        """At a terminal state: the root span, and the spans of phases that started but did not complete."""
        phases: list[str] = []
        for s in record.steps:
            if s.phase not in phases:
                phases.append(s.phase)
        for ph in phases:
            steps = [s for s in record.steps if s.phase == ph]
            started = any(s.started_at is not None for s in steps)
            if started and not all(_val(s.status) == "done" for s in steps):
                self.record_phase(record, ph)
        attrs = {**self.attributes(record), "cnf.migration.state": _val(record.state),
                 "cnf.vm.name": str(getattr(getattr(record, "vm", None), "name", ""))}
        state = _val(record.state)
        error = record.error if state != "completed" else None
        if state != "completed" and not error:
            error = {"code": state, "message": ""}
        self._emit(record, f"migration {_val(record.kind)}", "root", None, record.created_at or None,
                   getattr(record, "finished_at", None) or getattr(record, "updated_at", None), attrs, error)
