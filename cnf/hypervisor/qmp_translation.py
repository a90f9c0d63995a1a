"""QEMU's QMP replies and arguments in CNF's words: pure functions, unit-tested against lab captures.

Why separate from ``cnf.hypervisor.qemu``: these hold the facts learnt about QEMU 7.2's QMP (which fields are
absent when, units, which capabilities must be set up front) and need no process, socket or event loop; the
driver module keeps the I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cnf.errors import InvalidInput
from cnf.hypervisor.base import MigrationParams, MigrationProgress

VM_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NON_CONVERGENCE_ACTIONS = ("auto_converge_then_abort", "auto_converge_then_post_copy", "post_copy", "abort")
CONVERGENCE_ACTIONS = ("auto_converge", "post_copy")
#: query-migrate statuses in which a migration is under way (start is a no-op, cancel acts)
IN_FLIGHT = ("setup", "active", "pre-switchover", "device", "wait-unplug", "cancelling", "postcopy-active",
             "postcopy-paused", "postcopy-recover")
#: QEMU run states -> the port's domain states
RUN_STATES = {"running": "running", "inmigrate": "incoming", "postmigrate": "migrated", "shutdown": "shutoff"}



def progress_from_query_migrate(info: Mapping[str, Any], *, history: Sequence[int] = (),
                                stopped_at: float | None = None,
                                resumed_at: float | None = None) -> MigrationProgress:
    """Translate QEMU's ``query-migrate`` reply into the port's ``MigrationProgress``.

    ``ram`` is absent before the first pass and after failed/cancelled migrations (QEMU 7.2), so every figure
    defaults to 0. ``dirty-pages-rate`` is pages/s; the port wants bytes/s.
    """
    ram: Mapping[str, Any] = info.get("ram") or {}
    page = int(ram.get("page-size", 4096) or 4096)
    downtime = info.get("downtime")
    return MigrationProgress(
        status=str(info.get("status", "none")),
        transferred_bytes=int(ram.get("transferred", 0)),
        remaining_bytes=int(ram.get("remaining", 0)),
        total_bytes=int(ram.get("total", 0)),
        passes=int(ram.get("dirty-sync-count", 0)),
        dirty_rate_bps=float(ram.get("dirty-pages-rate", 0)) * page,
        expected_downtime_ms=float(info.get("expected-downtime", 0)),
        downtime_ms=float(downtime) if downtime is not None else None,
        error=str(info.get("error-desc", "")),
        history=tuple(history),
        stopped_at=stopped_at,
        resumed_at=resumed_at,
        throttle_percent=int(info.get("cpu-throttle-percentage", 0)),
    )


def stop_resume_times(events: Sequence[tuple[str, float]]) -> tuple[float | None, float | None]:
    """From (event name, timestamp) pairs of one QEMU since a migration began: first STOP, then first RESUME after it.

    On a destination there is no STOP (it never ran), so its first RESUME is when the guest started there.
    """
    stopped: float | None = None
    resumed: float | None = None
    for name, ts in events:
        if name == "STOP" and stopped is None:
            stopped = ts
        elif name == "RESUME" and resumed is None and (stopped is None or ts >= stopped):
            resumed = ts
    return stopped, resumed


def bandwidth_bytes_per_s(mbps: int) -> int:
    """``max_bandwidth_mbps`` is megabits/s; QEMU's ``max-bandwidth`` is bytes/s (its 7.2 default is 32 MiB/s)."""
    return mbps * 1_000_000 // 8


def validate_params(params: MigrationParams) -> None:
    if params.downtime_limit_ms <= 0:
        raise InvalidInput("downtime_limit_ms must be > 0", field="params.downtime_limit_ms")
    if params.max_bandwidth_mbps <= 0:
        raise InvalidInput("max_bandwidth_mbps must be > 0", field="params.max_bandwidth_mbps")
    if params.non_convergence_action not in NON_CONVERGENCE_ACTIONS:
        raise InvalidInput(f"non_convergence_action must be one of {', '.join(NON_CONVERGENCE_ACTIONS)}",
                           field="params.non_convergence_action")
    if params.max_passes <= 0:
        raise InvalidInput("max_passes must be > 0", field="params.max_passes")


def source_capabilities(params: MigrationParams, *, multifd: bool) -> dict[str, bool]:
    """Every capability the source sets, each explicitly (lab pitfall P4: stale capabilities survive a failure).

    ``auto-converge`` and ``postcopy-ram`` cannot be switched on once ``migrate`` runs (QEMU refuses capability
    changes while migrating), so they are enabled up front whenever the policy may need them later.
    """
    return {
        "events": True,
        "pause-before-switchover": True,
        "auto-converge": params.auto_converge or params.non_convergence_action.startswith("auto_converge"),
        "postcopy-ram": params.post_copy or "post_copy" in params.non_convergence_action,
        "multifd": multifd,
    }


def source_parameters(params: MigrationParams, *, multifd_channels: int = 0) -> dict[str, object]:
    """The ``migrate-set-parameters`` arguments the source gets on every migration.

    The throttle values are what ``auto_converge`` starts from (it raises them per application). Shared with
    ``benchmarks/live_migration.py``, whose raw QMP baseline must run with exactly these parameters.
    """
    out: dict[str, object] = {
        "downtime-limit": params.downtime_limit_ms,
        "max-bandwidth": bandwidth_bytes_per_s(params.max_bandwidth_mbps),
        "cpu-throttle-initial": 20, "cpu-throttle-increment": 10, "throttle-trigger-threshold": 50,
    }
    if multifd_channels > 0:
        out["multifd-channels"] = multifd_channels
    return out


def incoming_capabilities(*, multifd: bool, postcopy: bool = True) -> dict[str, bool]:
    """The destination's capabilities, set before ``migrate-incoming`` (``late-block-activate``: the destination
    opens its disk only when it starts running, after the storage handover)."""
    return {"events": True, "late-block-activate": True, "postcopy-ram": postcopy, "multifd": multifd}
