"""Every Prometheus metric a CNF agent exports, defined in one place.

Why one module and one object: the Grafana dashboard and the Prometheus config under ``deploy/`` name these
metrics, and a test checks that every name they use is defined here (``METRIC_NAMES``). Why a dedicated
``CollectorRegistry`` per ``CNFMetrics`` instead of prometheus-client's global one: tests (and the functional
suite) run several agents in one process; with the global registry the second agent would fail with
"Duplicated timeseries".

Conventions (https://prometheus.io/docs/practices/naming/): every name starts with ``cnf_``, carries its unit
(``_seconds``, ``_bytes``) and counters end in ``_total``. Label sets are bounded: label values are checked
against closed vocabularies (kinds, phases, ports, media, final states, HTTP status classes); a value outside
the vocabulary is recorded as ``other`` rather than raising, because a metric must never break a migration.
The only open-ended labels are ``image`` on the mirror-lag gauge (bounded by the images this cloud mirrors;
``forget_mirror_image`` drops a series when mirroring stops), ``step`` (bounded by the step tables), ``method``
(bounded by ``proto/cnf.proto``) and ``peer_cluster`` (bounded by the federation's size).

Contract for callers: every method is cheap, thread-safe and never raises on odd input.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import choose_encoder, make_asgi_app

log = structlog.get_logger(__name__)

#: closed label vocabularies (lower-case, as exported)
KINDS = frozenset({"live", "cold"})
PHASES = frozenset({"PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP"})
FINAL_FAILURE_STATES = frozenset({"failed", "aborted", "needs_operator"})
PORTS = frozenset({"cloud", "storage", "bgp", "hypervisor"})
COPY_MEDIA = frozenset({"memory", "disk"})
HTTP_METHODS = frozenset({"GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"})
OTHER = "other"

#: bucket boundaries, chosen from the measured figures in DESIGN.md §4-5
STEP_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
PHASE_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14400.0)
#: guest pause measured 0.10-0.14 s; budget 0.5 s; naive CLI handover 3.2-3.6 s
PAUSE_BUCKETS = (0.025, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0)
#: BGP convergence measured 0.18-0.25 s after the withdraw; hold timer 9 s
BLACKOUT_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)
RPC_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)

#: every metric family name this module defines, as Prometheus sees it (counters without ``_total``,
#: the info metric with its ``_info`` suffix); what the dashboard/scrape-config test checks against.
METRIC_NAMES: frozenset[str] = frozenset({
    "cnf_agent_info",
    "cnf_migrations_started_total",
    "cnf_migrations_completed_total",
    "cnf_migrations_failed_total",
    "cnf_migrations_in_flight",
    "cnf_migration_phase_duration_seconds",
    "cnf_migration_step_duration_seconds",
    "cnf_migration_guest_pause_seconds",
    "cnf_migration_network_blackout_seconds",
    "cnf_migration_copied_bytes_total",
    "cnf_mirror_lag_seconds",
    "cnf_bgp_sessions_up",
    "cnf_bgp_sessions_configured",
    "cnf_agent_is_master",
    "cnf_master_epoch",
    "cnf_proxied_requests_total",
    "cnf_peer_rpc_duration_seconds",
    "cnf_driver_errors_total",
})


def _closed(value: object, vocabulary: frozenset[str], *, upper: bool = False) -> str:
    text = str(getattr(value, "value", value))
    text = text.upper() if upper else text.lower()
    return text if text in vocabulary else OTHER


def _status_class(status: int | str) -> str:
    """HTTP status → ``2xx``..``5xx`` (bounded); anything unparsable → ``other``."""
    try:
        code = int(status)
    except (TypeError, ValueError):
        return OTHER
    return f"{code // 100}xx" if 100 <= code <= 599 else OTHER


class CNFMetrics:
    """The metric objects of one agent, in their own registry.

    Create one per agent (``CNFMetrics(cluster_id=..., cluster_name=...)``) and pass it to whatever records.
    The attributes are the raw prometheus-client objects (for tests and unusual cases); the methods are what
    the engine, API and drivers call, and they enforce the bounded label sets.
    """

    def __init__(self, *, cluster_id: str = "", cluster_name: str = "", version: str = "",
                 registry: CollectorRegistry | None = None) -> None:
        self._epoch_seen = 0
        self._in_flight_keys: set[tuple[str, str]] = set()
        self.registry = registry if registry is not None else CollectorRegistry(auto_describe=True)
        r = self.registry
        self.agent_info = Info("cnf_agent", "Static facts about this agent (value is always 1).", registry=r)
        self.agent_info.info({"cluster_id": cluster_id, "cluster_name": cluster_name, "version": version})

        # -- migrations (recorded by the master, which runs the engine)
        self.migrations_started = Counter(
            "cnf_migrations_started_total", "Migrations accepted and started, by kind.", ["kind"], registry=r)
        self.migrations_completed = Counter(
            "cnf_migrations_completed_total", "Migrations that reached state completed, by kind.", ["kind"],
            registry=r)
        self.migrations_failed = Counter(
            "cnf_migrations_failed_total",
            "Migrations that ended without completing, by kind and final state (failed, aborted, needs_operator).",
            ["kind", "state"], registry=r)
        self.migrations_in_flight = Gauge(
            "cnf_migrations_in_flight", "Migrations not yet in a terminal state, by kind and current phase.",
            ["kind", "phase"], registry=r)
        self.phase_duration = Histogram(
            "cnf_migration_phase_duration_seconds", "Wall time of a completed migration phase.",
            ["kind", "phase"], buckets=PHASE_BUCKETS, registry=r)
        self.step_duration = Histogram(
            "cnf_migration_step_duration_seconds",
            "Wall time of a migration step from do to a passing check; outcome is done or undone.",
            ["kind", "phase", "step", "outcome"], buckets=STEP_BUCKETS, registry=r)
        self.guest_pause = Histogram(
            "cnf_migration_guest_pause_seconds",
            "Guest vCPU pause of a live migration (QEMU STOP to RESUME), one observation per migration.",
            buckets=PAUSE_BUCKETS, registry=r)
        self.network_blackout = Histogram(
            "cnf_migration_network_blackout_seconds",
            "Time the VM's /32 was unreachable during a migration, one observation per migration.",
            ["kind"], buckets=BLACKOUT_BUCKETS, registry=r)
        self.copied_bytes = Counter(
            "cnf_migration_copied_bytes_total", "Bytes moved between clouds by migrations, by kind and medium.",
            ["kind", "medium"], registry=r)

        # -- this cloud's infrastructure
        self.mirror_lag = Gauge(
            "cnf_mirror_lag_seconds", "Age of the newest mirror snapshot the peer has applied, per RBD image.",
            ["pool", "image"], registry=r)
        self.bgp_sessions_up = Gauge(
            "cnf_bgp_sessions_up", "BGP sessions of this cloud's speaker in state Established.", registry=r)
        self.bgp_sessions_configured = Gauge(
            "cnf_bgp_sessions_configured", "BGP sessions configured on this cloud's speaker.", registry=r)

        # -- federation / control plane
        self.is_master = Gauge(
            "cnf_agent_is_master", "1 while this agent holds the master lease, else 0.", registry=r)
        self.master_epoch = Gauge(
            "cnf_master_epoch", "Highest master epoch (etcd create_revision) this agent has seen.", registry=r)
        self.proxied_requests = Counter(
            "cnf_proxied_requests_total", "REST requests this agent forwarded to the master, by method and status.",
            ["method", "status_class"], registry=r)
        self.peer_rpc_duration = Histogram(
            "cnf_peer_rpc_duration_seconds", "Latency of gRPC calls to peer agents, by method, peer and status.",
            ["method", "peer_cluster", "code"], buckets=RPC_BUCKETS, registry=r)
        self.driver_errors = Counter(
            "cnf_driver_errors_total", "Errors raised by a driver port, by port and CNFError code.",
            ["port", "code"], registry=r)

    # ------------------------------------------------------------------ migrations
    def migration_started(self, kind: str) -> None:
        """The engine accepted a migration (call once, when the record is created)."""
        self.migrations_started.labels(kind=_closed(kind, KINDS)).inc()

    def migration_finished(self, kind: str, state: str) -> None:
        """The migration reached a terminal state (``completed``, ``failed``, ``aborted``, ``needs_operator``)."""
        k = _closed(kind, KINDS)
        s = str(getattr(state, "value", state)).lower()
        if s == "completed":
            self.migrations_completed.labels(kind=k).inc()
        else:
            self.migrations_failed.labels(kind=k, state=_closed(s, FINAL_FAILURE_STATES)).inc()

    def set_in_flight(self, counts: dict[tuple[str, str], int]) -> None:
        """Replace the in-flight gauge with ``{(kind, phase): n}`` (the reconciler's view of the DB).

        A full replacement rather than inc/dec so a new master, or an agent restart, shows the truth at once.
        """
        wanted: dict[tuple[str, str], int] = {}
        for (kind, phase), n in counts.items():
            key = (_closed(kind, KINDS), _closed(phase, PHASES, upper=True))
            wanted[key] = wanted.get(key, 0) + n
        for key in self._in_flight_keys - wanted.keys():
            self.migrations_in_flight.remove(*key)
        for key, n in wanted.items():
            self.migrations_in_flight.labels(*key).set(n)
        self._in_flight_keys = set(wanted)

    def observe_phase(self, kind: str, phase: str, seconds: float) -> None:
        self.phase_duration.labels(kind=_closed(kind, KINDS), phase=_closed(phase, PHASES, upper=True)).observe(
            max(0.0, seconds))

    def observe_step(self, kind: str, phase: str, step: str, seconds: float, *, outcome: str = "done") -> None:
        self.step_duration.labels(kind=_closed(kind, KINDS), phase=_closed(phase, PHASES, upper=True), step=step,
                                  outcome=_closed(outcome, frozenset({"done", "undone", "failed"}))).observe(
            max(0.0, seconds))

    def observe_downtime(self, kind: str, *, guest_pause_s: float | None = None,
                         network_blackout_s: float | None = None) -> None:
        """Record a finished migration's measured downtime; guest pause only exists for live migrations."""
        if guest_pause_s is not None and _closed(kind, KINDS) == "live":
            self.guest_pause.observe(max(0.0, guest_pause_s))
        if network_blackout_s is not None:
            self.network_blackout.labels(kind=_closed(kind, KINDS)).observe(max(0.0, network_blackout_s))

    def add_copied_bytes(self, kind: str, medium: str, n_bytes: int) -> None:
        """Bytes moved between clouds (``medium`` = ``memory`` for QEMU pre-copy, ``disk`` for the mirror delta)."""
        if n_bytes > 0:
            self.copied_bytes.labels(kind=_closed(kind, KINDS), medium=_closed(medium, COPY_MEDIA)).inc(n_bytes)

    # ------------------------------------------------------------------ infrastructure
    def set_mirror_lag(self, pool: str, image: str, seconds: float) -> None:
        self.mirror_lag.labels(pool=pool, image=image).set(max(0.0, seconds))

    def forget_mirror_image(self, pool: str, image: str) -> None:
        """Drop the series of an image that is no longer mirrored (keeps the label set bounded)."""
        try:
            self.mirror_lag.remove(pool, image)
        except KeyError:
            pass

    def set_bgp_sessions(self, up: int, configured: int) -> None:
        self.bgp_sessions_up.set(up)
        self.bgp_sessions_configured.set(configured)

    def set_master(self, is_master: bool, epoch: int) -> None:
        """Called on every election change and lease renewal; the epoch gauge never goes backwards."""
        self.is_master.set(1 if is_master else 0)
        if epoch > self._epoch_seen:
            self._epoch_seen = epoch
            self.master_epoch.set(epoch)

    def count_proxied(self, method: str, status: int | str) -> None:
        self.proxied_requests.labels(method=_closed(method, HTTP_METHODS, upper=True),
                                     status_class=_status_class(status)).inc()

    def observe_peer_rpc(self, method: str, peer_cluster: str, code: str, seconds: float) -> None:
        self.peer_rpc_duration.labels(method=method, peer_cluster=peer_cluster, code=code).observe(max(0.0, seconds))

    @contextmanager
    def time_peer_rpc(self, method: str, peer_cluster: str) -> Iterator[None]:
        """Time one peer call; the ``code`` label is ``OK`` or the raised error's ``code`` (CNFError) or class name."""
        start = time.perf_counter()
        code = "OK"
        try:
            yield
        except BaseException as exc:
            raw = getattr(exc, "code", None)
            code = type(exc).__name__
            if callable(raw):  # grpc.RpcError.code() → StatusCode
                try:
                    code = str(raw().name)
                except Exception:
                    pass
            elif raw:  # CNFError.code
                code = str(raw)
            raise
        finally:
            self.observe_peer_rpc(method, peer_cluster, code, time.perf_counter() - start)

    def count_driver_error(self, port: str, code: str) -> None:
        """A driver raised a ``cnf.errors`` error: ``port`` is cloud/storage/bgp/hypervisor, ``code`` its code."""
        self.driver_errors.labels(port=_closed(port, PORTS), code=code).inc()

    # ------------------------------------------------------------------ whole records
    def observe_finished_migration(self, record: Any, *, include_steps: bool = True) -> None:
        """Everything a terminal ``MigrationRecord`` tells, recorded once (call when it reaches a terminal state).

        Counts the outcome, observes the duration of every phase whose steps all completed and of every step
        that finished, and the downtime figures the engine stored in ``record.context`` (``guest_pause_ms``,
        ``network_blackout_ms``) and the copied bytes (``memory_bytes_copied`` else QEMU's last
        ``progress.transferred_bytes``; ``disk_bytes_copied``).
        Duck-typed so this module does not import the engine. ``include_steps=False`` when the steps were
        already observed one by one as they finished (``MigrationTelemetry`` does that).
        """
        kind = str(getattr(record.kind, "value", record.kind))
        self.migration_finished(kind, str(getattr(record.state, "value", record.state)))
        for step in record.steps if include_steps else ():
            if step.started_at is not None and step.finished_at is not None:
                status = str(getattr(step.status, "value", step.status))
                self.observe_step(kind, step.phase, step.name, step.finished_at - step.started_at,
                                  outcome=status if status in ("done", "undone", "failed") else "done")
        for phase in {s.phase for s in record.steps}:
            steps = [s for s in record.steps if s.phase == phase]
            if all(str(getattr(s.status, "value", s.status)) == "done" for s in steps):
                starts = [s.started_at for s in steps if s.started_at is not None]
                ends = [s.finished_at for s in steps if s.finished_at is not None]
                if starts and ends:
                    self.observe_phase(kind, phase, max(ends) - min(starts))
        ctx = getattr(record, "context", {}) or {}
        pause, blackout = ctx.get("guest_pause_ms"), ctx.get("network_blackout_ms")
        self.observe_downtime(kind, guest_pause_s=None if pause is None else float(pause) / 1000.0,
                              network_blackout_s=None if blackout is None else float(blackout) / 1000.0)
        raw_progress = ctx.get("progress")
        progress: dict[str, Any] = raw_progress if isinstance(raw_progress, dict) else {}
        copied = {"memory": ctx.get("memory_bytes_copied", progress.get("transferred_bytes")),
                  "disk": ctx.get("disk_bytes_copied")}
        for medium, n in copied.items():
            if isinstance(n, int | float):
                self.add_copied_bytes(kind, medium, int(n))

    # ------------------------------------------------------------------ exposition
    def exposition(self, accept: str | None = None) -> tuple[bytes, str]:
        """The registry in text format (or OpenMetrics when ``accept`` asks for it): ``(body, content_type)``."""
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type

    def asgi_app(self) -> Callable[..., Any]:
        """An ASGI app serving this registry; ``app.mount("/metrics", metrics.asgi_app())``."""
        return make_asgi_app(registry=self.registry)

    def starlette_endpoint(self) -> Callable[[Any], Any]:
        """A Starlette/FastAPI endpoint: ``app.add_route("/metrics", metrics.starlette_endpoint())``.

        Preferred over mounting because a mount answers ``/metrics`` with a redirect to ``/metrics/``.
        """
        from starlette.responses import Response

        async def metrics_endpoint(request: Any) -> Response:
            body, content_type = self.exposition(request.headers.get("accept"))
            return Response(content=body, media_type=None, headers={"Content-Type": content_type})

        return metrics_endpoint
