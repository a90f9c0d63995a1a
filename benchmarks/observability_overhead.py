"""Cost of observability per migration-engine action: metrics + spans + JSON logs vs the bare engine.

Runs the same sim live migrations twice in one process — baseline (engine only) and instrumented
(``MigrationTelemetry.observe`` + ``running_step`` with the in-memory span exporter) — then the cost of one JSON
log line inside a step, and the ``/metrics`` exposition after them. Prints the figures; the last line is the BENCH line.
    .venv/bin/python benchmarks/observability_overhead.py [migrations]
"""

from __future__ import annotations

import asyncio
import io
import sys
import time

import structlog

from cnf.clock import ManualClock
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import MigrationKind, VmRef
from cnf.observability.logs import configure_logging, reset_logging
from cnf.observability.metrics import CNFMetrics
from cnf.observability.telemetry import MigrationTelemetry
from cnf.observability.tracing import TracingConfig, configure_tracing
from cnf.sim.demo import DEMO_CLUSTERS, demo_directory, demo_fabric


async def run(n: int, telemetry: MigrationTelemetry | None, *, log_line: bool = False) -> tuple[float, int]:
    """Drive ``n`` live migrations (fresh world each); returns (seconds spent, engine actions)."""
    spent, actions = 0.0, 0
    log = structlog.get_logger("bench")
    for _ in range(n):
        clock = ManualClock()
        fabric = demo_fabric(clock)
        engine = MigrationEngine(demo_directory(fabric), clock)
        src, dst = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]
        srv = next(iter(fabric.clusters[src].servers.values()))
        vm = VmRef(id=srv.id, name=srv.name, ip=srv.ip, image=srv.image, flavor=srv.flavor, vcpus=srv.vcpus,
                   ram_mb=srv.ram_mb, host=srv.host)
        rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=src, dest_cluster_id=dst, epoch=1)
        while True:
            t0 = time.perf_counter()
            if telemetry is None:
                adv = await engine.advance(rec)
            else:
                with telemetry.running_step(rec, rec.current_step):
                    if log_line:
                        log.info("advancing", step=rec.current_step)
                    adv = await engine.advance(rec)
                telemetry.observe(adv.record, adv.events)
            spent += time.perf_counter() - t0
            actions += 1
            rec = adv.record
            if adv.delay_s is None:
                break
            clock.advance(adv.delay_s)
        assert str(rec.state) == "completed", rec.state
    return spent, actions


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 30
    configure_logging("info", json=True, stream=io.StringIO(), cluster_id=DEMO_CLUSTERS[0][0])
    asyncio.run(run(2, None))  # warm-up (imports, caches)
    base_s, actions = asyncio.run(run(n, None))
    metrics = CNFMetrics(cluster_id=DEMO_CLUSTERS[0][0])
    tracing = configure_tracing(TracingConfig(exporter="memory"))
    tel = MigrationTelemetry(metrics, tracing)
    inst_s, actions2 = asyncio.run(run(n, tel))
    logged_s, _ = asyncio.run(run(n, MigrationTelemetry(CNFMetrics(), tracing), log_line=True))
    reset_logging()
    assert actions == actions2
    log_us = (logged_s - inst_s) / actions * 1e6
    t0 = time.perf_counter()
    reps = 50
    for _ in range(reps):
        body, _ctype = metrics.exposition()
    expo_ms = (time.perf_counter() - t0) / reps * 1000
    base_us = base_s / actions * 1e6
    inst_us = inst_s / actions * 1e6
    spans = len(tracing.finished_spans())
    print(f"migrations={n} engine_actions={actions} spans={spans} exposition_bytes={len(body)}")
    print(f"baseline   {base_us:8.1f} us/action")
    print(f"instrumented {inst_us:6.1f} us/action  (+{inst_us - base_us:.1f} us, x{inst_us / base_us:.2f})")
    print(f"one JSON log line (stdlib + structlog, ids + trace ids) {log_us:.1f} us")
    print(f"/metrics exposition {expo_ms:.2f} ms")
    print(f"BENCH observability_overhead overhead_us_per_action={inst_us - base_us:.1f} "
          f"ratio={inst_us / base_us:.2f} baseline_us_per_action={base_us:.1f} "
          f"instrumented_us_per_action={inst_us:.1f} json_log_line_us={log_us:.1f} exposition_ms={expo_ms:.2f}")


if __name__ == "__main__":
    main()
