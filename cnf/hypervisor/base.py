"""The HypervisorDriver port: QEMU on one cloud's compute hosts.

Live migration is split across two instances of this port: the destination
``prepare_incoming`` returns an endpoint URI, the source ``start_migration``
sends memory to it with ``pause-before-switchover`` so the migration stops in
``pre-switchover`` (source vCPUs stopped) until ``continue_switchover``. That
window is where the engine runs the storage handover (DESIGN.md section 4).

Contract for every implementation (sim and QEMU):
- Idempotent: preparing an already prepared incoming domain returns the same
  endpoint; starting a migration that is already running is a no-op; cancelling
  a finished or absent migration is a no-op.
- ``cancel_migration`` leaves the source domain running.
- Errors: an unreachable hypervisor is ``DriverUnavailable``; a destination
  that died mid-copy shows as ``MigrationProgress.status == "failed"``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class MigrationParams:
    downtime_limit_ms: int = 50
    max_bandwidth_mbps: int = 10_000
    auto_converge: bool = True
    post_copy: bool = False
    non_convergence_action: str = "auto_converge_then_abort"  # or "post_copy", "abort"
    max_passes: int = 30


@dataclass(frozen=True)
class MigrationProgress:
    """QEMU's ``query-migrate`` in CNF's words."""

    status: str  # none, setup, active, pre-switchover, device, completed, failed, cancelled, postcopy-active
    transferred_bytes: int = 0
    remaining_bytes: int = 0
    total_bytes: int = 0
    passes: int = 0
    dirty_rate_bps: float = 0.0
    expected_downtime_ms: float = 0.0
    downtime_ms: float | None = None  # QEMU's own figure, once completed
    error: str = ""
    history: tuple[int, ...] = field(default_factory=tuple)  # remaining bytes at the end of each pass
    # Added for the QEMU driver (all optional): wall-clock seconds (QEMU event timestamps) when this side's
    # vCPUs stopped for the switchover (source STOP) and when they ran again (destination RESUME, or the source
    # resuming after a cancel/failure). Guest-visible pause = dest.resumed_at - source.stopped_at.
    stopped_at: float | None = None
    resumed_at: float | None = None
    throttle_percent: int = 0  # auto-converge CPU throttle currently applied to the guest

    @property
    def percent(self) -> float:
        if self.total_bytes <= 0:
            return 0.0
        return min(100.0, 100.0 * (self.total_bytes - self.remaining_bytes) / self.total_bytes)


def guest_pause_ms(source: MigrationProgress, dest: MigrationProgress | None = None) -> float | None:
    """Guest-visible pause of a completed migration: source STOP to destination RESUME (QEMU's event times).

    Why not QEMU's ``downtime``: QEMU 7.2 reported 0 ms for some migrations whose guest was paused, and the
    figure covers only QEMU's own switchover, not the storage handover done inside ``pre-switchover``.
    """
    resumed = dest.resumed_at if dest is not None and dest.resumed_at is not None else source.resumed_at
    if source.stopped_at is None or resumed is None:
        return None
    return max(0.0, (resumed - source.stopped_at) * 1000.0)


@dataclass(frozen=True)
class Domain:
    vm_id: str
    state: str  # running, paused, incoming, shutoff
    ram_mb: int


@runtime_checkable
class HypervisorDriver(Protocol):
    cluster_id: str

    async def domain(self, vm_id: str) -> Domain | None:
        ...

    async def prepare_incoming(self, vm_id: str, ram_mb: int, image: str, host: str = "") -> str:
        """Start a destination domain waiting for memory; returns the endpoint URI."""

    async def destroy_incoming(self, vm_id: str) -> None:
        """Compensation: remove an incoming domain that never ran; idempotent."""

    async def start_migration(self, vm_id: str, dest_uri: str, params: MigrationParams) -> None:
        ...

    async def progress(self, vm_id: str, wait_s: float = 0.0) -> MigrationProgress:
        """The outgoing migration's progress. ``wait_s`` > 0: a driver that receives migration events may hold
        the answer up to ``wait_s`` until the status leaves setup/active (pre-switchover, completed, failed...),
        so the engine sees the switchover point at once instead of at its next poll; a driver without events
        answers at once. Either way the answer is the status at return time."""
        ...

    async def apply_convergence(self, vm_id: str, action: str) -> None:
        """Apply ``auto_converge`` (throttle the guest) or ``post_copy`` to a running migration."""

    async def continue_switchover(self, vm_id: str) -> None:
        """Leave ``pre-switchover``: the destination resumes the guest."""

    async def cancel_migration(self, vm_id: str) -> None:
        ...

    async def destroy_source(self, vm_id: str) -> None:
        """Cleanup after a completed migration: the source domain goes away; idempotent."""
