"""The migrations as data: one table of steps per kind.

Each ``Step`` has ``do`` (act), ``check`` (is the effect already in the world?),
``undo`` (compensate) and says whether it is the point of no return. The engine
(``cnf.migration.engine``) runs ``check`` before ``do``, so a redelivered step is
a no-op, and polls ``check`` after ``do`` until it holds or the step's deadline
passes. Every ``do`` and ``undo`` is idempotent; the drivers' contracts promise
the same for each call they make.

Point of no return: the promote at the destination (DESIGN.md section 4). Before
it, a failure compensates completed steps in reverse; after it, the engine rolls
forward (retry, then ``needs_operator``).

Order inside the live CUTOVER follows the measured recipe: QEMU holds the guest
in ``pre-switchover`` (source vCPUs stopped) while the source is demoted and the
destination promoted as soon as the demotion snapshot arrived; then
``migrate-continue`` resumes the guest at the destination.

BGP in a live migration: the destination announces the /32 *before* pre-copy
(``bgp.announce_destination`` runs ahead of its phase; the phases shown stay the
seed's logical order). Both clouds then originate it, and the fabric keeps the
source's older path as best, so traffic still reaches the running source. After
the resume only the source's withdraw is left, which moves the /32 at once: the
e2e lab measured announce and withdraw at 0.4-0.8 s each, so doing both after the
resume doubled the network blackout. Before the point of no return the early
announce is undone with a withdraw at the destination.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from cnf.errors import DriverError, IllegalTransition, NotConverging
from cnf.hypervisor.base import Domain, MigrationParams, guest_pause_ms
from cnf.migration.model import MigrationKind, MigrationOptions, MigrationRecord, Phase
from cnf.migration.preflight import run_preflight
from cnf.openstack.base import ServerSpec
from cnf.ports import ClusterDrivers


@dataclass
class StepContext:
    """What a step sees: the record (read/write ``context``), both clouds' drivers and the clock."""

    record: MigrationRecord
    src: ClusterDrivers
    dst: ClusterDrivers
    now: Callable[[], float]
    notes: list[tuple[str, dict[str, Any]]]

    @property
    def vm_id(self) -> str:
        return self.record.vm.id

    @property
    def image(self) -> str:
        return self.record.vm.image

    @property
    def prefix(self) -> str:
        return self.record.vm.prefix

    @property
    def ctx(self) -> dict[str, Any]:
        return self.record.context

    def note(self, message: str, **data: Any) -> None:
        """Record a decision and its reason in the event log (e.g. why auto-converge was applied)."""
        self.notes.append((message, data))


StepFn = Callable[[StepContext], Awaitable[None]]
CheckFn = Callable[[StepContext], Awaitable[bool]]


@dataclass(frozen=True)
class Step:
    name: str
    phase: Phase
    do: StepFn
    check: CheckFn
    undo: StepFn | None = None
    irreversible: bool = False  # the point of no return: once done, never compensated
    timeout_s: float = 120.0  # how long ``check`` may take to hold after ``do``
    poll_s: float = 0.5  # countdown between two checks
    on_wait: StepFn | None = None  # called at each unsuccessful poll (may act, idempotently)
    poll_fn: Callable[[StepContext], float] | None = None  # adaptive countdown (overrides poll_s)
    max_attempts: int = 3  # ``do`` retries on retryable errors before giving up


async def _never(_: StepContext) -> bool:
    return False


async def _nothing(_: StepContext) -> None:
    return None


# --- PREFLIGHT ------------------------------------------------------------------------------------


async def preflight_do(sc: StepContext) -> None:
    report = await run_preflight(sc.record, sc.src, sc.dst)
    sc.ctx["preflight"] = [c.to_dict() for c in report]
    from cnf.errors import PreflightFailed

    if any(not c.passed and c.severity == "error" for c in report):
        raise PreflightFailed(report)
    sc.ctx["preflight_passed"] = True


async def preflight_check(sc: StepContext) -> bool:
    return bool(sc.ctx.get("preflight_passed"))


# --- DISK -----------------------------------------------------------------------------------------


async def enable_mirroring_do(sc: StepContext) -> None:
    enabled = await sc.src.storage.enable_mirroring(sc.image)
    sc.ctx.setdefault("mirroring_enabled_by_us", enabled)


async def enable_mirroring_check(sc: StepContext) -> bool:
    st = await sc.src.storage.status(sc.image)
    return st.mirroring


async def enable_mirroring_undo(sc: StepContext) -> None:
    if sc.ctx.get("mirroring_enabled_by_us"):
        st = await sc.src.storage.status(sc.image)
        if st.mirroring and st.primary:
            await sc.src.storage.disable_mirroring(sc.image)


async def sync_do(sc: StepContext) -> None:
    """Take a fresh mirror snapshot so the delta left for the cutover is small."""
    sc.ctx["sync_snapshot_id"] = await sc.src.storage.create_mirror_snapshot(sc.image)


async def sync_check(sc: StepContext) -> bool:
    st = await sc.dst.storage.status(sc.image)
    limit = sc.record.options.mirror_lag_limit_s
    wanted = int(sc.ctx.get("sync_snapshot_id", 0))
    ok = st.exists and st.last_snapshot_id >= wanted and st.lag_s <= limit and st.in_sync
    sc.ctx["mirror_lag_s"] = 0.0 if ok else (st.lag_s if st.lag_s != float("inf") else -1.0)
    return bool(wanted) and ok


async def stop_source_do(sc: StepContext) -> None:
    await sc.src.cloud.stop_server(sc.vm_id)


async def stop_source_check(sc: StepContext) -> bool:
    srv = await sc.src.cloud.get_server(sc.vm_id)
    return srv is not None and srv.status == "SHUTOFF"


async def stop_source_undo(sc: StepContext) -> None:
    if sc.record.vm.status == "ACTIVE":
        await sc.src.cloud.start_server(sc.vm_id)


#: states of a destination domain that can still receive the guest
_LIVE_DEST_STATES = ("incoming", "paused", "running")


def _refuse_dead_destination(sc: StepContext, d: Domain | None, consequence: str) -> None:
    """``IllegalTransition`` when the destination domain can no longer receive the guest (gone, crashed)."""
    if d is None or d.state not in _LIVE_DEST_STATES:
        raise IllegalTransition(f"destination domain of {sc.vm_id} is {d.state if d else 'gone'}: {consequence}",
                                vm_id=sc.vm_id)


async def demote_do(sc: StepContext) -> None:
    await sc.src.storage.demote(sc.image)


async def demote_check(sc: StepContext) -> bool:
    return not (await sc.src.storage.status(sc.image)).primary


async def demote_undo(sc: StepContext) -> None:
    """Take our demotion back: legal because the destination has not been promoted (before the PONR)."""
    dst = await sc.dst.storage.status(sc.image)
    if dst.primary:
        raise DriverError("destination is primary: refusing to promote the source back", image=sc.image)
    await sc.src.storage.promote(sc.image)


async def demotion_arrived_check(sc: StepContext) -> bool:
    """The demotion snapshot reached the destination (or it is already primary: a re-run after the promote).

    Live: the source guest is paused meanwhile, so a destination QEMU that died is noticed here, not at the
    promote: the e2e lab killed it during the demote and the demotion then took ~29 s to arrive (likely the dead QEMU's
    librbd watch lingers ~30 s), with the guest paused all along. The domain is asked in parallel with the status,
    so a live destination costs no extra round trip.
    """
    if sc.record.kind != MigrationKind.LIVE:
        st = await sc.dst.storage.status(sc.image)
        return (st.in_sync and not st.primary) or st.primary
    st, d = await asyncio.gather(sc.dst.storage.status(sc.image), sc.dst.hypervisor.domain(sc.vm_id))
    if st.primary:
        return True
    _refuse_dead_destination(sc, d, "the source takes everything back")
    return st.in_sync


async def promote_do(sc: StepContext) -> None:
    if sc.record.kind == MigrationKind.LIVE:
        # The point of no return: never promote for a destination QEMU that is gone (it died in the pause);
        # before the promote the source can still take everything back.
        _refuse_dead_destination(sc, await sc.dst.hypervisor.domain(sc.vm_id), "not promoting")
    await sc.dst.storage.promote(sc.image)


async def promote_check(sc: StepContext) -> bool:
    return (await sc.dst.storage.status(sc.image)).primary


# --- MEMORY ---------------------------------------------------------------------------------------


def _spec(sc: StepContext) -> ServerSpec:
    vm = sc.record.vm
    return ServerSpec(vm_id=vm.id, name=vm.name, flavor=vm.flavor, vcpus=vm.vcpus, ram_mb=vm.ram_mb, ip=vm.ip,
                      image=vm.image, host=sc.record.dest_host, project_id=vm.project_id, migration_id=sc.record.id)


async def create_receiver_do(sc: StepContext) -> None:
    srv = await sc.dst.cloud.create_receiver(_spec(sc))
    sc.ctx["dest_host"] = srv.host


async def create_receiver_check(sc: StepContext) -> bool:
    srv = await sc.dst.cloud.get_server(sc.vm_id)
    if srv is not None:
        sc.ctx["dest_host"] = srv.host
    return srv is not None


async def create_receiver_undo(sc: StepContext) -> None:
    await sc.dst.cloud.delete_receiver(sc.vm_id)


async def prepare_incoming_do(sc: StepContext) -> None:
    vm = sc.record.vm
    sc.ctx["incoming_uri"] = await sc.dst.hypervisor.prepare_incoming(vm.id, vm.ram_mb, vm.image,
                                                                      str(sc.ctx.get("dest_host", "")))


async def prepare_incoming_check(sc: StepContext) -> bool:
    d = await sc.dst.hypervisor.domain(sc.vm_id)
    return d is not None and d.state == "incoming" and bool(sc.ctx.get("incoming_uri"))


async def prepare_incoming_undo(sc: StepContext) -> None:
    await sc.dst.hypervisor.destroy_incoming(sc.vm_id)


def _params(sc: StepContext) -> MigrationParams:
    return migration_params(sc.record.options)


def migration_params(o: MigrationOptions) -> MigrationParams:
    """The hypervisor's parameters for a migration's options (also the raw QMP baseline's, in the benchmark)."""
    return MigrationParams(downtime_limit_ms=o.downtime_limit_ms, max_bandwidth_mbps=o.max_bandwidth_mbps,
                           auto_converge=o.non_convergence.startswith("auto_converge"),
                           post_copy="post_copy" in o.non_convergence,
                           non_convergence_action=o.non_convergence, max_passes=o.max_passes)


async def precopy_do(sc: StepContext) -> None:
    await sc.src.hypervisor.start_migration(sc.vm_id, str(sc.ctx["incoming_uri"]), _params(sc))
    sc.ctx["precopy_started"] = True


#: how long a pre-copy check may wait for QEMU to announce the switchover point (an event-driven driver answers
#: as soon as the status changes; the engine then notices ``pre-switchover`` within ms, not at its next poll)
PRECOPY_CHECK_WAIT_S = 0.25


async def precopy_check(sc: StepContext) -> bool:
    p = await sc.src.hypervisor.progress(sc.vm_id, wait_s=PRECOPY_CHECK_WAIT_S)
    remaining_s = p.remaining_bytes / max(1.0, sc.record.options.max_bandwidth_mbps * 1024 * 1024 / 8)
    now, last = sc.now(), sc.ctx.get("precopy_sample")
    if last and p.status == "active" and now > float(last[0]) and p.transferred_bytes > int(last[1]):
        # the rate really observed between two checks (TCG, a busy link, zero pages: far off the configured one)
        rate = (p.transferred_bytes - int(last[1])) / (now - float(last[0]))
        remaining_s = p.remaining_bytes / max(1.0, rate)
    else:
        remaining_s = min(remaining_s, 0.08)  # no rate observed yet: look again soon to measure one
    if p.status == "active":  # (a sample taken during ``setup`` would include QEMU's start-up time)
        sc.ctx["precopy_sample"] = [now, p.transferred_bytes]
    sc.ctx["progress"] = {"status": p.status, "percent": round(p.percent, 1), "transferred_bytes": p.transferred_bytes,
                          "remaining_bytes": p.remaining_bytes, "total_bytes": p.total_bytes, "passes": p.passes,
                          "dirty_rate_bps": round(p.dirty_rate_bps), "expected_downtime_ms":
                          round(p.expected_downtime_ms, 1), "eta_s": round(remaining_s, 2)}
    if p.status in ("failed", "cancelled"):
        if not sc.ctx.get("precopy_started"):
            return False  # a previous migration's end state: this one has not started yet
        raise DriverError(f"memory copy {p.status}: {p.error or 'unknown reason'}", port="hypervisor")
    return p.status in ("pre-switchover", "completed")


def _converging(history: list[int], window: int = 3) -> bool:
    """Pre-copy converges while the remaining set keeps shrinking over the last ``window`` passes."""
    if len(history) <= window:
        return True
    recent = history[-(window + 1):]
    return recent[-1] < recent[0] * 0.9


async def precopy_on_wait(sc: StepContext) -> None:
    """Take a fresh mirror snapshot once the first pass ended; apply the non-convergence policy per stall.

    The snapshot keeps the disk delta left for the pause small after a long copy; each escalation of the
    non-convergence policy is one event with its reason (dirty rate against bandwidth).
    """
    p = await sc.src.hypervisor.progress(sc.vm_id)
    if p.status != "active":
        return  # switching over or in post-copy: nothing left to escalate
    if p.history and "final_snapshot_id" not in sc.ctx:  # (``history``: one entry per finished pass)
        # The end of the copy is near (QEMU iterates over what the guest dirtied): take a fresh mirror snapshot
        # now, so the delta the demotion snapshot must still carry inside the pause is only what the guest
        # writes from here on, not everything since disk.sync (which may be minutes old after a long copy).
        sc.ctx["final_snapshot_id"] = await sc.src.storage.create_mirror_snapshot(sc.image)
        sc.note("fresh mirror snapshot before the switchover", snapshot_id=sc.ctx["final_snapshot_id"],
                reason="pre-copy reached its iteration phase: the disk delta left for the pause starts here")
    history = list(p.history)
    applied: list[str] = list(sc.ctx.get("convergence_actions", []))
    if _converging(history[int(sc.ctx.get("convergence_from_pass", 0)):] if applied else history):
        return  # (after an escalation only the passes since it count)
    policy = sc.record.options.non_convergence
    reason = (f"remaining {history[-1] // (1024 * 1024)} MiB after {p.passes} passes does not shrink: the guest "
              f"dirties {p.dirty_rate_bps / 1024 / 1024:.0f} MiB/s against "
              f"{sc.record.options.max_bandwidth_mbps / 8:.0f} MiB/s of bandwidth")
    throttles = applied.count("auto_converge")
    if policy.startswith("auto_converge") and throttles < 4:
        action = "auto_converge"
    elif "post_copy" in policy and "post_copy" not in applied:
        action = "post_copy"
    else:
        sc.note("aborting live migration: pre-copy does not converge", reason=reason, policy=policy)
        raise NotConverging(f"pre-copy does not converge ({reason}); policy {policy} says abort")
    await sc.src.hypervisor.apply_convergence(sc.vm_id, action)
    applied.append(action)
    sc.ctx["convergence_actions"] = applied
    sc.ctx["convergence_from_pass"] = len(history)
    sc.note(f"non-convergence: applied {action}", reason=reason, policy=policy)


def precopy_poll(sc: StepContext) -> float:
    """Poll often only near the end: the switchover window is on the guest's clock, the copy before it is not.

    A quarter of the expected time to the end of the current pass (``eta_s``: remaining bytes at the rate
    observed between the last two checks, or at the configured bandwidth before there are two), between 5 ms
    and 1 s: the number of checks stays logarithmic in the copy time and a rate that speeds up is caught early.
    The floor bounds the detection delay the paused guest pays; a check is one ``query-migrate``. (QEMU's
    ``expected-downtime`` is no help here: it reads as the downtime limit for the whole first pass.)
    """
    p = sc.ctx.get("progress") or {}
    return min(1.0, max(0.005, float(p.get("eta_s", 0.0)) / 4.0))


async def precopy_undo(sc: StepContext) -> None:
    await sc.src.hypervisor.cancel_migration(sc.vm_id)


async def switchover_do(sc: StepContext) -> None:
    await sc.src.hypervisor.continue_switchover(sc.vm_id)


#: a source STOP time (the hypervisor's clock) counts only if it lies this close before the engine's switchover time
#: (the engine's clock): the network blackout starts at the STOP, when the guest stops answering, and ends when
#: the fabric's best path leads to the destination and the guest runs there. Measured in the e2e lab,
#: the blackout counted from the switchover (85 ms) missed the pause (333 ms) the clients saw in full (probe: 512 ms).
_SAME_CLOCK_S = 600.0


async def switchover_check(sc: StepContext) -> bool:
    d = await sc.dst.hypervisor.domain(sc.vm_id)
    if d is None or d.state != "running":
        return False
    p = await sc.src.hypervisor.progress(sc.vm_id)
    if p.downtime_ms is not None:
        sc.ctx["qemu_downtime_ms"] = round(p.downtime_ms, 1)
    pause = guest_pause_ms(p, await sc.dst.hypervisor.progress(sc.vm_id))
    if pause is None:
        pause = p.downtime_ms
    if pause is not None:
        sc.ctx["guest_pause_ms"] = round(pause, 1)
    sc.ctx["switchover_at"] = now = sc.now()
    if p.stopped_at is not None and 0.0 <= now - p.stopped_at <= _SAME_CLOCK_S:
        sc.ctx["source_stopped_at"] = p.stopped_at
    return True


# --- cold CUTOVER --------------------------------------------------------------------------------


async def boot_dest_do(sc: StepContext) -> None:
    await sc.dst.cloud.boot_receiver(sc.vm_id, power_on=sc.record.vm.status == "ACTIVE")


async def boot_dest_check(sc: StepContext) -> bool:
    srv = await sc.dst.cloud.get_server(sc.vm_id)
    wanted = "ACTIVE" if sc.record.vm.status == "ACTIVE" else "SHUTOFF"
    return srv is not None and srv.status == wanted and not srv.metadata.get("cnf:receiver")


# --- BGP ------------------------------------------------------------------------------------------


def _dest_next_hop(sc: StepContext) -> str:
    return sc.record.dest_next_hop or sc.dst.bgp.default_next_hop


async def announce_do(sc: StepContext) -> None:
    await sc.dst.bgp.announce(sc.prefix, _dest_next_hop(sc))


async def announce_check(sc: StepContext) -> bool:
    return await sc.dst.bgp.announced(sc.prefix)


async def announce_undo(sc: StepContext) -> None:
    await sc.dst.bgp.withdraw(sc.prefix)


async def withdraw_do(sc: StepContext) -> None:
    await sc.src.bgp.withdraw(sc.prefix)


async def withdraw_check(sc: StepContext) -> bool:
    """Done when the source no longer originates the /32 and the fabric's best path is the destination."""
    if await sc.src.bgp.announced(sc.prefix):
        return False
    best = await sc.dst.bgp.fabric_best_path(sc.prefix)
    ok = best is not None and best.next_hop == _dest_next_hop(sc)
    if ok and "switchover_at" in sc.ctx and "network_blackout_ms" not in sc.ctx:
        # from the moment the guest stopped answering until it answers again from the destination: the route
        # leads there (now) and the guest runs there (STOP + the recorded pause, which a simulated hypervisor
        # may date after "now")
        stopped = sc.ctx.get("source_stopped_at")
        since = float(sc.ctx["switchover_at"] if stopped is None else stopped)
        resumed = since + float(sc.ctx.get("guest_pause_ms") or 0.0) / 1000.0 if stopped is not None else since
        sc.ctx["network_blackout_ms"] = round((max(sc.now(), resumed) - since) * 1000.0, 1)
    return ok


# --- CLEANUP --------------------------------------------------------------------------------------


async def activate_dest_do(sc: StepContext) -> None:
    await sc.dst.cloud.activate_receiver(sc.vm_id)


async def activate_dest_check(sc: StepContext) -> bool:
    srv = await sc.dst.cloud.get_server(sc.vm_id)
    return srv is not None and srv.status == "ACTIVE" and not srv.metadata.get("cnf:receiver")


async def destroy_source_domain_do(sc: StepContext) -> None:
    await sc.src.hypervisor.destroy_source(sc.vm_id)


async def destroy_source_domain_check(sc: StepContext) -> bool:
    return await sc.src.hypervisor.domain(sc.vm_id) is None


async def retire_source_do(sc: StepContext) -> None:
    await sc.src.cloud.retire_server(sc.vm_id)


async def retire_source_check(sc: StepContext) -> bool:
    return await sc.src.cloud.get_server(sc.vm_id) is None


# --- the tables -----------------------------------------------------------------------------------

PREFLIGHT = Step("preflight.checks", Phase.PREFLIGHT, preflight_do, preflight_check, max_attempts=3)
ENABLE_MIRRORING = Step("disk.enable_mirroring", Phase.DISK, enable_mirroring_do, enable_mirroring_check,
                        enable_mirroring_undo)
SYNC = Step("disk.sync", Phase.DISK, sync_do, sync_check, timeout_s=1800.0, poll_s=0.5)
ANNOUNCE = Step("bgp.announce_destination", Phase.BGP, announce_do, announce_check, announce_undo, max_attempts=5)
WITHDRAW = Step("bgp.withdraw_source", Phase.BGP, withdraw_do, withdraw_check, timeout_s=30.0, poll_s=0.05,
                max_attempts=5)

LIVE_STEPS: tuple[Step, ...] = (
    PREFLIGHT,
    ENABLE_MIRRORING,
    SYNC,
    Step("memory.create_receiver", Phase.MEMORY, create_receiver_do, create_receiver_check, create_receiver_undo),
    Step("memory.prepare_incoming", Phase.MEMORY, prepare_incoming_do, prepare_incoming_check,
         prepare_incoming_undo),
    ANNOUNCE,  # early, on purpose: the source's older path stays best until it withdraws (see module doc)
    Step("memory.precopy", Phase.MEMORY, precopy_do, precopy_check, precopy_undo, timeout_s=3600.0, poll_s=0.02,
         on_wait=precopy_on_wait, poll_fn=precopy_poll),
    Step("cutover.demote_source", Phase.CUTOVER, demote_do, demote_check, demote_undo, poll_s=0.01),
    # inside the guest's pause: poll every 5 ms (a check is one storage call; the guest waits on every ms here)
    Step("cutover.await_demotion", Phase.CUTOVER, _nothing, demotion_arrived_check, timeout_s=30.0, poll_s=0.005),
    Step("cutover.promote_destination", Phase.CUTOVER, promote_do, promote_check, irreversible=True, poll_s=0.02,
         max_attempts=50),
    Step("cutover.switchover", Phase.CUTOVER, switchover_do, switchover_check, timeout_s=60.0, poll_s=0.005,
         max_attempts=5),
    WITHDRAW,
    Step("cleanup.activate_destination", Phase.CLEANUP, activate_dest_do, activate_dest_check, max_attempts=5),
    Step("cleanup.destroy_source_domain", Phase.CLEANUP, destroy_source_domain_do, destroy_source_domain_check,
         max_attempts=5),
    Step("cleanup.retire_source_record", Phase.CLEANUP, retire_source_do, retire_source_check, max_attempts=5),
)

COLD_STEPS: tuple[Step, ...] = (
    PREFLIGHT,
    ENABLE_MIRRORING,
    SYNC,
    Step("disk.stop_source", Phase.DISK, stop_source_do, stop_source_check, stop_source_undo, timeout_s=300.0),
    Step("disk.demote_source", Phase.DISK, demote_do, demote_check, demote_undo),
    Step("disk.await_demotion", Phase.DISK, _nothing, demotion_arrived_check, timeout_s=300.0, poll_s=0.1),
    Step("disk.promote_destination", Phase.DISK, promote_do, promote_check, irreversible=True, poll_s=0.1,
         max_attempts=20),
    Step("cutover.register_destination", Phase.CUTOVER, create_receiver_do, create_receiver_check,
         max_attempts=5),
    Step("cutover.boot_destination", Phase.CUTOVER, boot_dest_do, boot_dest_check, timeout_s=600.0,
         max_attempts=5),
    ANNOUNCE,
    WITHDRAW,
    Step("cleanup.retire_source_record", Phase.CLEANUP, retire_source_do, retire_source_check, max_attempts=5),
)

STEP_TABLES: dict[MigrationKind, tuple[Step, ...]] = {MigrationKind.LIVE: LIVE_STEPS, MigrationKind.COLD: COLD_STEPS}


def point_of_no_return(kind: MigrationKind) -> int:
    """Index of the irreversible step of ``kind``'s table."""
    return next(i for i, s in enumerate(STEP_TABLES[kind]) if s.irreversible)
