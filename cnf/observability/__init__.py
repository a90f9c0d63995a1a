"""Observability of a CNF agent: Prometheus metrics, structlog JSON logs, OpenTelemetry traces.

- ``metrics.CNFMetrics``: every metric, in a registry of its own (one per agent);
- ``logs.configure_logging`` / ``bound_ids`` / ``migration_log_context``: JSON lines carrying the bound ids;
- ``tracing.configure_tracing``: one trace per migration, W3C propagation over HTTP and gRPC, off by default;
- ``telemetry.MigrationTelemetry``: the one object the task runner calls (observer + step context).

See docs/observability.md for names, labels and where each call belongs.
"""
