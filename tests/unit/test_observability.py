"""Metrics, traces and logs of CNF (cnf/observability): exposition parses, spans form one tree, JSON lines carry ids."""

from __future__ import annotations

import io
import json
import logging

import httpx
import pytest
import structlog
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from cnf.errors import ConfigError
from cnf.migration.model import (
    MigrationKind,
    MigrationRecord,
    MigrationState,
    StepRecord,
    StepStatus,
    VmRef,
)
from cnf.observability.logs import bound_ids, configure_logging, log_decision, reset_logging
from cnf.observability.metrics import METRIC_NAMES, CNFMetrics
from cnf.observability.telemetry import MigrationTelemetry
from cnf.observability.tracing import (
    MigrationTracer,
    TracingConfig,
    configure_tracing,
    extract_grpc_context,
    extract_http_context,
    inject_grpc_metadata,
    inject_http_headers,
    migration_trace_id,
)

pytestmark = pytest.mark.timeout(30)

LIVE_STEPS = [  # (name, phase) — shaped like the engine's live table; times are synthetic wall clock
    ("check_source", "PREFLIGHT"), ("check_dest", "PREFLIGHT"),
    ("enable_mirroring", "DISK"), ("sync_image", "DISK"),
    ("start_incoming", "MEMORY"), ("precopy", "MEMORY"),
    ("demote_source", "CUTOVER"), ("promote_dest", "CUTOVER"),
    ("announce_dest", "BGP"), ("withdraw_source", "BGP"),
    ("destroy_source", "CLEANUP"),
]


def _live_record(mid: str = "m-1", *, fail_at: str | None = None) -> MigrationRecord:
    t = 1_000_000.0
    steps = []
    for name, phase in LIVE_STEPS:
        status = StepStatus.DONE
        err = None
        if fail_at is not None and name == fail_at:
            status, err = StepStatus.FAILED, {"code": "driver_error", "message": "promote refused"}
        steps.append(StepRecord(name=name, phase=phase, status=status, attempts=1, started_at=t, finished_at=t + 0.5,
                                error=err, irreversible=name == "promote_dest"))
        t += 0.5
        if fail_at == name:
            break
    rec = MigrationRecord(
        id=mid, kind=MigrationKind.LIVE,
        vm=VmRef(id="vm-42", name="web-1", ip="10.0.0.42", image="img-42", flavor="m1.small", vcpus=1, ram_mb=512),
        source_cluster_id="c-src", dest_cluster_id="c-dst", steps=steps, epoch=7,
        state=MigrationState.FAILED if fail_at else MigrationState.COMPLETED, created_at=1_000_000.0,
        finished_at=t, context={"guest_pause_ms": 131.0, "network_blackout_ms": 220.0,
                                "memory_bytes_copied": 268_435_456, "disk_bytes_copied": 1_048_576},
        error={"code": "driver_error", "message": "promote refused"} if fail_at else None)
    return rec


def _families(body: bytes) -> dict[str, object]:
    return {f.name: f for f in text_string_to_metric_families(body.decode())}


# --------------------------------------------------------------------------------------------- metrics
def test_two_agents_have_separate_registries() -> None:
    a, b = CNFMetrics(cluster_id="a"), CNFMetrics(cluster_id="b")  # the global registry would raise here
    a.migration_started("live")
    fam_a, fam_b = _families(a.exposition()[0]), _families(b.exposition()[0])
    started_a = [s for s in fam_a["cnf_migrations_started"].samples if s.name.endswith("_total")]  # type: ignore[attr-defined]
    started_b = [s for s in fam_b["cnf_migrations_started"].samples if s.name.endswith("_total")]  # type: ignore[attr-defined]
    assert [s.value for s in started_a] == [1.0]
    assert started_b == []


def test_every_declared_name_is_exported_and_nothing_else() -> None:
    m = CNFMetrics(cluster_id="c1", cluster_name="openstack-1", version="0.1.0")
    m.migration_started("live")
    m.observe_finished_migration(_live_record())
    m.set_in_flight({("live", "MEMORY"): 2})
    m.set_mirror_lag("vms", "img-42", 3.5)
    m.set_bgp_sessions(up=2, configured=3)
    m.set_master(True, 12)
    m.count_proxied("POST", 202)
    m.observe_peer_rpc("StoragePromote", "c-dst", "OK", 0.02)
    m.count_driver_error("storage", "driver_unavailable")
    names = set()
    for fam in text_string_to_metric_families(m.exposition()[0].decode()):
        if fam.name.endswith("_created"):  # prometheus-client's creation timestamps, not metrics of ours
            continue
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert names == set(METRIC_NAMES)
    for name in METRIC_NAMES:
        assert name.startswith("cnf_")


def test_finished_live_migration_metrics_values() -> None:
    m = CNFMetrics()
    m.migration_started(MigrationKind.LIVE)
    m.observe_finished_migration(_live_record())
    m.migration_started("cold")
    m.observe_finished_migration(_live_record("m-2", fail_at="promote_dest"))
    reg = m.registry
    assert reg.get_sample_value("cnf_migrations_started_total", {"kind": "live"}) == 1
    assert reg.get_sample_value("cnf_migrations_completed_total", {"kind": "live"}) == 1
    assert reg.get_sample_value("cnf_migrations_failed_total", {"kind": "live", "state": "failed"}) == 1
    assert reg.get_sample_value("cnf_migration_guest_pause_seconds_count") == 2
    assert reg.get_sample_value("cnf_migration_guest_pause_seconds_sum") == pytest.approx(0.262)
    assert reg.get_sample_value("cnf_migration_guest_pause_seconds_bucket", {"le": "0.1"}) == 0
    assert reg.get_sample_value("cnf_migration_guest_pause_seconds_bucket", {"le": "0.15"}) == 2
    assert reg.get_sample_value("cnf_migration_network_blackout_seconds_count", {"kind": "live"}) == 2
    copied = reg.get_sample_value("cnf_migration_copied_bytes_total", {"kind": "live", "medium": "memory"})
    assert copied == 2 * 268_435_456
    # the completed migration: 6 phases of 1 s / 0.5 s each; the failed one: CUTOVER not observed as a phase
    assert reg.get_sample_value("cnf_migration_phase_duration_seconds_count", {"kind": "live", "phase": "CUTOVER"}) == 1
    assert reg.get_sample_value("cnf_migration_phase_duration_seconds_sum", {"kind": "live", "phase": "DISK"}) == 2.0
    assert reg.get_sample_value("cnf_migration_step_duration_seconds_count",
                                {"kind": "live", "phase": "CUTOVER", "step": "promote_dest", "outcome": "failed"}) == 1


def test_labels_stay_bounded() -> None:
    m = CNFMetrics()
    m.migration_started("warp")  # unknown kind
    m.count_driver_error("quantum", "x")  # unknown port
    m.count_proxied("BREW", 999)
    m.observe_phase("live", "TELEPORT", 1.0)
    reg = m.registry
    assert reg.get_sample_value("cnf_migrations_started_total", {"kind": "other"}) == 1
    assert reg.get_sample_value("cnf_driver_errors_total", {"port": "other", "code": "x"}) == 1
    assert reg.get_sample_value("cnf_proxied_requests_total", {"method": "other", "status_class": "other"}) == 1
    assert reg.get_sample_value("cnf_migration_phase_duration_seconds_count", {"kind": "live", "phase": "other"}) == 1


def test_master_epoch_never_goes_backwards_and_mirror_series_can_be_dropped() -> None:
    m = CNFMetrics()
    m.set_master(True, 9)
    m.set_master(False, 4)
    assert m.registry.get_sample_value("cnf_master_epoch") == 9
    assert m.registry.get_sample_value("cnf_agent_is_master") == 0
    m.set_mirror_lag("vms", "img-1", 2.0)
    m.forget_mirror_image("vms", "img-1")
    m.forget_mirror_image("vms", "never-there")
    assert m.registry.get_sample_value("cnf_mirror_lag_seconds", {"pool": "vms", "image": "img-1"}) is None


def test_peer_rpc_timer_labels_error_code() -> None:
    from cnf.errors import DriverUnavailable

    m = CNFMetrics()
    with m.time_peer_rpc("BgpAnnounce", "c-dst"):
        pass
    with pytest.raises(DriverUnavailable), m.time_peer_rpc("BgpAnnounce", "c-dst"):
        raise DriverUnavailable("frr down")
    reg = m.registry
    assert reg.get_sample_value("cnf_peer_rpc_duration_seconds_count",
                                {"method": "BgpAnnounce", "peer_cluster": "c-dst", "code": "OK"}) == 1
    assert reg.get_sample_value("cnf_peer_rpc_duration_seconds_count",
                                {"method": "BgpAnnounce", "peer_cluster": "c-dst", "code": "driver_unavailable"}) == 1


async def test_metrics_scraped_over_http_route_and_mount() -> None:
    m = CNFMetrics(cluster_id="c1")
    m.migration_started("live")
    app = Starlette()
    app.add_route("/metrics", m.starlette_endpoint())
    app.mount("/mounted", m.asgi_app())
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://agent") as client:
        r = await client.get("/metrics")
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/plain")
        fams = _families(r.content)
        assert fams["cnf_migrations_started"].samples[0].value == 1  # type: ignore[attr-defined]
        r2 = await client.get("/mounted/")
        assert r2.status_code == 200 and b"cnf_agent_info" in r2.content
        r3 = await client.get("/metrics", headers={"Accept": "application/openmetrics-text; version=1.0.0"})
        assert r3.headers["content-type"].startswith("application/openmetrics-text")
        assert r3.text.rstrip().endswith("# EOF")


# --------------------------------------------------------------------------------------------- tracing
def test_tracing_off_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("CNF_TRACING_EXPORTER", "OTEL_TRACES_EXPORTER"):
        monkeypatch.delenv(var, raising=False)
    t = configure_tracing()
    assert not t.enabled
    t.migrations.record_migration(_live_record())  # no-op, no error
    assert t.finished_spans() == ()


def test_tracing_config_errors_name_the_setting() -> None:
    with pytest.raises(ConfigError) as e:
        configure_tracing(TracingConfig(exporter="jaeger"))
    assert e.value.key == "CNF_TRACING_EXPORTER"
    assert TracingConfig.from_env({"OTEL_TRACES_EXPORTER": "Console", "OTEL_SERVICE_NAME": "x"}).exporter == "console"


def test_otlp_without_package_is_a_clear_config_error() -> None:
    try:
        import opentelemetry.exporter.otlp.proto.grpc.trace_exporter  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="opentelemetry-exporter-otlp"):
            configure_tracing(TracingConfig(exporter="otlp"))
    else:
        t = configure_tracing(TracingConfig(exporter="otlp", otlp_endpoint="http://127.0.0.1:1"))
        assert t.enabled
        t.shutdown()


def test_one_trace_per_migration_with_phase_and_step_spans() -> None:
    t = configure_tracing(TracingConfig(exporter="memory"), cluster_id="c-src")
    rec = _live_record("m-trace")
    for step in rec.steps:
        t.migrations.record_step(rec, step)
    t.migrations.record_migration(rec)
    spans = t.finished_spans()
    trace_ids = {s.context.trace_id for s in spans}
    assert trace_ids == {migration_trace_id("m-trace")}
    root = [s for s in spans if s.parent is None]
    assert [s.name for s in root] == ["migration live"]
    phases = [s for s in spans if s.name.startswith("phase ")]
    assert [s.name for s in phases] == ["phase PREFLIGHT", "phase DISK", "phase MEMORY", "phase CUTOVER", "phase BGP",
                                        "phase CLEANUP"]
    assert all(p.parent.span_id == root[0].context.span_id for p in phases)  # type: ignore[union-attr]
    by_id = {s.context.span_id: s for s in spans}
    steps = [s for s in spans if s.name.startswith("step ")]
    assert len(steps) == len(LIVE_STEPS)
    for s in steps:
        parent = by_id[s.parent.span_id]  # type: ignore[union-attr]
        assert parent.name == f"phase {s.attributes['cnf.phase']}"
        assert s.attributes["cnf.migration.id"] == "m-trace"
        assert s.attributes["cnf.vm.id"] == "vm-42"
        assert s.attributes["cnf.cluster.source_id"] == "c-src"
        assert s.attributes["cnf.cluster.dest_id"] == "c-dst"
        assert s.attributes["cnf.epoch"] == 7
    assert root[0].end_time - root[0].start_time == pytest.approx(len(LIVE_STEPS) * 0.5e9, rel=1e-6)
    assert root[0].resource.attributes["cnf.cluster.id"] == "c-src"


def test_spans_of_one_migration_from_two_processes_join_one_tree() -> None:
    """A step finished by the old master and the rest by a new one: same ids, so one tree."""
    old, new = (configure_tracing(TracingConfig(exporter="memory")) for _ in range(2))
    rec = _live_record("m-failover")
    old.migrations.record_step(rec, rec.steps[0])
    for step in rec.steps[1:]:
        new.migrations.record_step(rec, step)
    new.migrations.record_migration(rec)
    spans = old.finished_spans() + new.finished_spans()
    ids = {s.context.span_id for s in spans}
    assert all(s.parent is None or s.parent.span_id in ids for s in spans)
    assert len({s.context.trace_id for s in spans}) == 1


def test_failed_migration_marks_error_and_emits_incomplete_phase() -> None:
    t = configure_tracing(TracingConfig(exporter="memory"))
    rec = _live_record("m-fail", fail_at="promote_dest")
    for step in rec.steps:
        t.migrations.record_step(rec, step)
    t.migrations.record_migration(rec)
    spans = {s.name: s for s in t.finished_spans()}
    assert spans["step promote_dest"].status.status_code.name == "ERROR"
    assert spans["phase CUTOVER"].attributes["cnf.phase.status"] == "incomplete"
    assert spans["migration live"].status.status_code.name == "ERROR"
    assert "phase BGP" not in spans


def test_peer_call_inside_a_step_is_a_child_of_the_step_span() -> None:
    master = configure_tracing(TracingConfig(exporter="memory"))
    peer = configure_tracing(TracingConfig(exporter="memory"))
    rec = _live_record("m-prop")
    promote = rec.steps[7]
    with master.migrations.running_step(rec, promote.name), \
            master.client_span("CNFPeer/StoragePromote") as carrier:
        metadata = inject_grpc_metadata([("x-cnf-epoch", "7")])
        assert ("x-cnf-epoch", "7") in metadata and any(k == "traceparent" for k, _ in metadata)
        with peer.server_span("CNFPeer/StoragePromote", metadata):
            pass
        assert "traceparent" in carrier
    master.migrations.record_step(rec, promote)
    client = next(s for s in master.finished_spans() if s.name == "CNFPeer/StoragePromote")
    server = next(s for s in peer.finished_spans() if s.name == "CNFPeer/StoragePromote")
    step_span = next(s for s in master.finished_spans() if s.name == "step promote_dest")
    assert client.parent.span_id == step_span.context.span_id  # type: ignore[union-attr]
    assert server.parent.span_id == client.context.span_id  # type: ignore[union-attr]
    assert server.context.trace_id == migration_trace_id("m-prop")


def test_propagation_passes_through_when_tracing_is_off() -> None:
    off = configure_tracing(TracingConfig(exporter="none"))
    rec = _live_record("m-off")
    with off.migrations.running_step(rec, "sync_image"), off.client_span("CNFPeer/StorageStatus") as carrier:
        _, trace_hex, span_hex, _ = carrier["traceparent"].split("-")
    assert trace_hex == f"{migration_trace_id('m-off'):032x}"
    step_ctx = off.migrations.step_context(rec, "sync_image")
    from opentelemetry import trace

    assert span_hex == f"{trace.get_current_span(step_ctx).get_span_context().span_id:016x}"
    assert off.finished_spans() == ()


def test_http_header_propagation_round_trip() -> None:
    rec = _live_record("m-http")
    ctx = MigrationTracer(configure_tracing().tracer).step_context(rec, "sync_image")
    headers = inject_http_headers({"Accept": "application/json"}, ctx)
    assert headers["traceparent"].split("-")[1] == f"{migration_trace_id('m-http'):032x}"
    back = extract_http_context({"TraceParent": headers["traceparent"]})
    from opentelemetry import trace

    assert trace.get_current_span(back).get_span_context().trace_id == migration_trace_id("m-http")
    assert extract_grpc_context([("traceparent", b"binary")]) == extract_http_context({})


# --------------------------------------------------------------------------------------------- logs
@pytest.fixture
def log_stream() -> io.StringIO:
    stream = io.StringIO()
    configure_logging("debug", json=True, stream=stream, cluster_id="c-src")
    yield stream
    reset_logging()


def _lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines() if line.strip()]


def test_json_lines_carry_bound_ids(log_stream: io.StringIO) -> None:
    log = structlog.get_logger("cnf.migration.engine")
    with bound_ids(migration_id="m-1", vm_id="vm-42"):
        log.info("step_done", step="promote_dest")
        logging.getLogger("uvicorn.error").warning("a stdlib line")  # library logs get the ids too
        log_decision(log, "compensate", "promote refused before the point of no return", step="promote_dest")
    log.info("after")
    lines = _lines(log_stream)
    assert [ln["event"] for ln in lines] == ["step_done", "a stdlib line", "decision", "after"]
    for ln in lines[:3]:
        assert ln["migration_id"] == "m-1" and ln["vm_id"] == "vm-42" and ln["cluster_id"] == "c-src"
        assert "timestamp" in ln and "level" in ln
    assert lines[0]["logger"] == "cnf.migration.engine"
    assert lines[2]["reason"].startswith("promote refused")
    assert "migration_id" not in lines[3] and lines[3]["cluster_id"] == "c-src"


def test_log_lines_carry_trace_ids_inside_a_step(log_stream: io.StringIO) -> None:
    t = configure_tracing(TracingConfig(exporter="memory"))
    tel = MigrationTelemetry(CNFMetrics(), t)
    rec = _live_record("m-log")
    with tel.running_step(rec, "sync_image"):
        structlog.get_logger("x").info("copying")
    line = _lines(log_stream)[-1]
    assert line["migration_id"] == "m-log" and line["vm_id"] == "vm-42" and line["epoch"] == 7
    assert line["trace_id"] == f"{migration_trace_id('m-log'):032x}"


def test_bad_level_and_unknown_id_are_refused() -> None:
    with pytest.raises(ConfigError) as e:
        configure_logging("loud")
    assert e.value.key == "log_level"
    with pytest.raises(ValueError, match="unknown log id"), bound_ids(tenant="x"):
        pass


# --------------------------------------------------------------------------------------------- the facade
def test_telemetry_facade_records_everything_once(log_stream: io.StringIO) -> None:
    metrics = CNFMetrics()
    tracing = configure_tracing(TracingConfig(exporter="memory"))
    tel = MigrationTelemetry(metrics, tracing)
    rec = _live_record("m-facade")
    tel.migration_started(rec)
    for step in rec.steps:
        with tel.running_step(rec, step.name):
            pass
        tel.step_finished(rec, step)
    tel.migration_finished(rec)
    reg = metrics.registry
    assert reg.get_sample_value("cnf_migration_step_duration_seconds_count",
                                {"kind": "live", "phase": "DISK", "step": "sync_image", "outcome": "done"}) == 1
    assert reg.get_sample_value("cnf_migrations_completed_total", {"kind": "live"}) == 1
    assert len([s for s in tracing.finished_spans() if s.name.startswith("phase ")]) == 6
    events = [ln for ln in _lines(log_stream) if ln.get("migration_id") == "m-facade"]
    assert [e["event"] for e in events] == ["migration_started", "migration_finished"]


# --------------------------------------------------------------------------------------------- a sim live migration
async def _serve_metrics(metrics: CNFMetrics):  # type: ignore[no-untyped-def]
    import asyncio
    import socket

    import uvicorn

    app = Starlette()
    app.add_route("/metrics", metrics.starlette_endpoint())
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_config=None, access_log=False, lifespan="off"))
    task = asyncio.create_task(server.serve(sockets=[sock]))
    for _ in range(200):
        if server.started:
            break
        await asyncio.sleep(0.01)
    return server, task, sock.getsockname()[1]


async def test_sim_live_migration_produces_metrics_trace_and_logs(log_stream: io.StringIO) -> None:
    """The issue's acceptance test: the real engine drives a live migration between two sim clouds."""
    from cnf.clock import ManualClock
    from cnf.migration.engine import MigrationEngine
    from cnf.sim.demo import DEMO_CLUSTERS, demo_directory, demo_fabric

    clock = ManualClock()
    fabric = demo_fabric(clock)
    engine = MigrationEngine(demo_directory(fabric), clock)
    src, dst = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]
    srv = next(iter(fabric.clusters[src].servers.values()))
    vm = VmRef(id=srv.id, name=srv.name, ip=srv.ip, image=srv.image, flavor=srv.flavor, vcpus=srv.vcpus,
               ram_mb=srv.ram_mb, host=srv.host)
    rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=src, dest_cluster_id=dst, epoch=3)
    metrics = CNFMetrics(cluster_id=src)
    tracing = configure_tracing(TracingConfig(exporter="memory"), cluster_id=src)
    telemetry = MigrationTelemetry(metrics, tracing)
    in_flight_seen = 0.0
    for _ in range(500):  # what cnf.tasks.runner.drive_one_action does, minus the database
        with telemetry.running_step(rec, rec.current_step):
            structlog.get_logger("cnf.tasks.runner").debug("advancing", step=rec.current_step)
            adv = await engine.advance(rec)
        telemetry.observe(adv.record, adv.events)
        rec = adv.record
        in_flight_seen = max(in_flight_seen, sum(
            metrics.registry.get_sample_value("cnf_migrations_in_flight", {"kind": "live", "phase": ph}) or 0
            for ph in ("PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP")))
        if adv.delay_s is None:
            break
        clock.advance(adv.delay_s)
    assert rec.state == MigrationState.COMPLETED

    # metrics, scraped over HTTP from a real server and parsed
    server, task, port = await _serve_metrics(metrics)
    try:
        async with httpx.AsyncClient() as client:
            body = (await client.get(f"http://127.0.0.1:{port}/metrics", timeout=5)).content
    finally:
        server.should_exit = True
        await task
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body.decode()) for s in fam.samples}
    assert samples[("cnf_migrations_started_total", (("kind", "live"),))] == 1
    assert samples[("cnf_migrations_completed_total", (("kind", "live"),))] == 1
    assert samples[("cnf_migration_guest_pause_seconds_count", ())] == 1
    assert samples[("cnf_migration_guest_pause_seconds_sum", ())] == pytest.approx(rec.context["guest_pause_ms"] / 1000)
    assert samples[("cnf_migration_network_blackout_seconds_count", (("kind", "live"),))] == 1
    assert samples[("cnf_migration_copied_bytes_total", (("kind", "live"), ("medium", "memory")))] > 0
    phases = {dict(k[1])["phase"] for k in samples if k[0] == "cnf_migration_phase_duration_seconds_count"}
    assert phases == {"PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP"}
    steps = {dict(k[1])["step"] for k in samples if k[0] == "cnf_migration_step_duration_seconds_count"}
    assert steps == {s.name for s in rec.steps}
    assert in_flight_seen == 1
    assert not any(v for k, v in samples.items() if k[0] == "cnf_migrations_in_flight")  # finished: none left

    # one trace, a span per phase and per step, all parented inside the trace
    spans = tracing.finished_spans()
    assert {s.context.trace_id for s in spans} == {migration_trace_id(rec.id)}
    assert sorted(s.name for s in spans if s.name.startswith("phase ")) == sorted(
        f"phase {p}" for p in ("PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP"))
    assert sorted(s.name for s in spans if s.name.startswith("step ")) == sorted(f"step {s.name}" for s in rec.steps)
    ids = {s.context.span_id for s in spans}
    assert [s.name for s in spans if s.parent is None] == ["migration live"]
    assert all(s.parent is None or s.parent.span_id in ids for s in spans)

    # JSON log lines carry the migration id (and the trace id inside a step)
    lines = [ln for ln in _lines(log_stream) if ln.get("migration_id") == rec.id]
    events = [ln["event"] for ln in lines]
    assert events.count("migration_started") == 1 and events[-1] == "migration_finished"
    advancing = [ln for ln in lines if ln["event"] == "advancing"]
    assert len(advancing) > len(rec.steps)
    assert all(ln["vm_id"] == vm.id and ln["trace_id"] == f"{migration_trace_id(rec.id):032x}" for ln in advancing)
