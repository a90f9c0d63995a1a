"""The policy-driven scheduler (pure core): rules in, a plan out. See ``docs/scheduler.md``.

- :func:`parse_rule` validates ``policy set`` rules (``InvalidInput(field=...)`` on any mistake);
- :func:`evaluate` turns a :class:`Snapshot` (clusters, hosts, VMs, migrations in flight, last moves, metric
  history), the rules and the time into a :class:`Plan` (moves with their reasons, notifications, skips).

No I/O here (import-linter contract): the master's loop collects metrics and executes the plan.
"""

from cnf.scheduler.model import (
    ClusterState,
    HostState,
    LastMove,
    MetricHistory,
    MigrationInFlight,
    Snapshot,
    VmState,
    derive_usage,
    snapshot_from_dict,
)
from cnf.scheduler.plan import Move, Notification, Pending, Plan, Skip, TargetScore
from cnf.scheduler.rules import Rule, parse_rule
from cnf.scheduler.scheduler import evaluate
from cnf.scheduler.trigger import Trigger, parse_trigger

__all__ = [
    "ClusterState",
    "HostState",
    "LastMove",
    "MetricHistory",
    "MigrationInFlight",
    "Move",
    "Notification",
    "Pending",
    "Plan",
    "Rule",
    "Skip",
    "Snapshot",
    "TargetScore",
    "Trigger",
    "VmState",
    "derive_usage",
    "evaluate",
    "parse_rule",
    "parse_trigger",
    "snapshot_from_dict",
]
