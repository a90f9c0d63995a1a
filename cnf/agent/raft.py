"""Master election: the ``Election`` protocol, a single-node default and the etcd implementation.

Why: exactly one agent of the federation runs the migration engine, the scheduler and the reconciler. We do not
build consensus ourselves: etcd (Raft) is the trusted arbiter and its leases are the liveness signal. This module
only runs the well-known lease + transaction recipe against it and turns the result into two facts the agent needs:
*am I allowed to act right now* (:meth:`Election.is_master`, self-fenced by a local deadline, see
:mod:`cnf.agent.fencing`) and *with which epoch* (:meth:`Election.epoch`, stamped on every write so receivers can
reject an old master).

etcd layout (all values JSON):

- ``/cnf/agents/<cluster_id>`` -- every agent, bound to that agent's lease: liveness for hand-over targets.
- ``/cnf/master`` -- ``{cluster_id, address, since, lease_ttl_s}``, created by the txn "create if
  ``create_revision == 0``" and bound to the winner's lease. Its ``create_revision`` is the epoch.
- ``/cnf/handover`` -- ``{target, from, epoch}``, a pending graceful hand-over, bound to its own short lease
  (the hand-over timeout), so a hand-over that never completes cannot block the election for longer than that.
- ``/cnf/handover/ready`` -- the target's acknowledgement, bound to the same hand-over lease.

One lease per agent (TTL default 5 s, min 2 s, keep-alive every TTL/3) carries both its registration and, while it is
master, the master key; a crash therefore removes both when the lease expires, and a graceful stop revokes it for an
instant failover. See ``docs/election.md`` for the rationale and measured failover times.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol, runtime_checkable

import structlog

from cnf.agent.etcd_gateway import (
    EtcdGateway,
    KeyValue,
    LeaseNotFound,
    WatchCompacted,
    cmp_create_revision,
    cmp_mod_revision,
    op_delete,
    op_put,
    op_range,
    prefix_end,
)
from cnf.agent.fencing import (
    DEFAULT_LEASE_TTL_S,
    NEVER,
    FencingPolicy,
    advance_deadline,
    may_act,
    may_campaign,
    validate_ttl,
)
from cnf.clock import Clock, SystemClock
from cnf.errors import CNFError, Conflict, DriverUnavailable, InvalidInput, NotFound, NotMaster, StepTimeout

log = structlog.get_logger(__name__)

MASTER_KEY = "/cnf/master"
HANDOVER_KEY = "/cnf/handover"
HANDOVER_READY_KEY = "/cnf/handover/ready"
AGENTS_PREFIX = "/cnf/agents/"
# One range covers the hand-over keys and the master key ("/cnf/handover" < "/cnf/handover/ready" < "/cnf/master"):
# one read and one watch give a consistent picture of everything the election decides on.
_STATE_FROM = HANDOVER_KEY
_STATE_END = MASTER_KEY + "\0"
DEFAULT_HANDOVER_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MasterInfo:
    """Who is master, as shown by ``GET /v1/master``. ``since`` is wall time (epoch seconds)."""

    cluster_id: str
    address: str
    epoch: int
    since: float
    lease_ttl_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


ChangeCallback = Callable[[MasterInfo | None], None]


@runtime_checkable
class Election(Protocol):
    """Contract shared by every election implementation.

    - ``is_master()`` turns False as soon as this node may no longer act (local deadline passed, lease lost,
      resigned, stopped), *before* another node can have been elected.
    - ``epoch()`` is this node's epoch while it is master (strictly increasing across terms), else None.
    - ``on_change`` callbacks get the master as this node currently sees it (None: none known / we just fenced
      ourselves); they run in the event loop and must not block.
    - ``hand_over(target)`` returns once this node has resigned in favour of a ready target; it raises NotMaster
      if this node is not master, NotFound if the target is unknown or not alive, StepTimeout if the target did
      not acknowledge in time (this node then stays master).
    """

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def is_master(self) -> bool: ...

    def epoch(self) -> int | None: ...

    async def current_master(self) -> MasterInfo | None: ...

    async def hand_over(self, target_cluster_id: str) -> None: ...

    def on_change(self, callback: ChangeCallback) -> None: ...


def _validate_cluster_id(value: object, field: str = "cluster_id") -> str:
    if not isinstance(value, str) or not value.strip() or "/" in value or len(value) > 128:
        raise InvalidInput(f"{field} must be a non-empty name without '/', got {value!r}", field=field)
    return value


class SingleNodeElection:
    """The embedded default: this node is always master with epoch 1; no I/O.

    ``hand_over`` to itself is a no-op; to anything else it is refused (there is no other agent to elect).
    """

    def __init__(self, cluster_id: str, address: str = "", *, clock: Clock | None = None) -> None:
        self.cluster_id = _validate_cluster_id(cluster_id)
        self.address = address
        self._clock = clock or SystemClock()
        self._since = self._clock.wall()
        self._callbacks: list[ChangeCallback] = []
        self._running = False

    def _info(self) -> MasterInfo:
        return MasterInfo(cluster_id=self.cluster_id, address=self.address, epoch=1, since=self._since,
                          lease_ttl_s=0.0)

    async def start(self) -> None:
        self._since = self._clock.wall()
        self._running = True
        _notify(self._callbacks, self._info())

    async def stop(self) -> None:
        if self._running:
            self._running = False
            _notify(self._callbacks, None)

    def is_master(self) -> bool:
        return True

    def epoch(self) -> int | None:
        return 1

    async def current_master(self) -> MasterInfo | None:
        return self._info()

    async def hand_over(self, target_cluster_id: str) -> None:
        _validate_cluster_id(target_cluster_id)
        if target_cluster_id == self.cluster_id:
            return
        raise NotFound(f"agent {target_cluster_id!r} is unknown: single-node election has no other agent "
                       "(configure raft.etcd_endpoints to federate)", cluster_id=target_cluster_id)

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)


def _notify(callbacks: list[ChangeCallback], info: MasterInfo | None) -> None:
    for cb in list(callbacks):
        try:
            cb(info)
        except Exception:  # a broken observer must not stop the election
            log.exception("election_callback_failed")


def master_info_from_kv(kv: KeyValue) -> MasterInfo:
    """Parse the master key; a foreign/garbled value still yields its epoch (the revision is etcd's, not ours)."""
    try:
        data = json.loads(kv.value)
        if not isinstance(data, dict):
            raise ValueError("not an object")
    except ValueError:
        data = {"cluster_id": kv.value.decode(errors="replace")}
    return MasterInfo(cluster_id=str(data.get("cluster_id", "")), address=str(data.get("address", "")),
                      epoch=kv.create_revision, since=float(data.get("since", 0.0)),
                      lease_ttl_s=float(data.get("lease_ttl_s", 0.0)))


def _json_field(kv: KeyValue | None, name: str) -> str | None:
    if kv is None:
        return None
    try:
        data = json.loads(kv.value)
    except ValueError:
        return None
    value = data.get(name) if isinstance(data, dict) else None
    return None if value is None else str(value)


@dataclass(frozen=True)
class _State:
    """One consistent read of the election keys at ``revision``."""

    revision: int
    master: KeyValue | None
    handover: KeyValue | None
    ready: KeyValue | None

    @property
    def handover_target(self) -> str | None:
        return _json_field(self.handover, "target")

    def ready_for(self, handover: KeyValue | None) -> bool:
        """The acknowledgement belongs to this hand-over (written after it, by its target)."""
        if handover is None or self.ready is None:
            return False
        return (self.ready.mod_revision > handover.mod_revision
                and _json_field(self.ready, "target") == _json_field(handover, "target")
                and _json_field(self.ready, "handover_revision") == str(handover.mod_revision))


class EtcdElection:
    """Election over etcd >= 3.5 (grpc-gateway JSON via :class:`~cnf.agent.etcd_gateway.EtcdGateway`).

    The decision loop is level-triggered: read the election keys, decide (adopt / follow / acknowledge a hand-over /
    campaign / stand back), then wait for the next change (watch from the read revision, at most one TTL, or a local
    poke). A separate task renews the lease every TTL/3 and advances the fencing deadline from each keep-alive's
    *send* time; ``is_master()`` compares that deadline with the clock on every call.
    """

    def __init__(self, *, cluster_id: str, address: str, endpoints: list[str] | str,
                 lease_ttl_s: float = DEFAULT_LEASE_TTL_S, handover_timeout_s: float = DEFAULT_HANDOVER_TIMEOUT_S,
                 clock: Clock | None = None, gateway: EtcdGateway | None = None,
                 request_timeout_s: float | None = None) -> None:
        self.cluster_id = _validate_cluster_id(cluster_id)
        self.address = address
        ttl = validate_ttl(lease_ttl_s, field="lease_ttl_s")
        self.policy = FencingPolicy(ttl_s=ttl)
        self.handover_timeout_s = validate_ttl(handover_timeout_s, field="handover_timeout_s")
        self._clock = clock or SystemClock()
        # Requests must give up well before the lease could run out, so another member can be tried (lab pitfall 5).
        self.request_timeout_s = request_timeout_s or min(2.0, ttl / 2)
        self._keepalive_timeout_s = min(self.request_timeout_s, ttl / 3)
        self._owns_gateway = gateway is None
        self._gw = gateway or EtcdGateway(endpoints, request_timeout_s=self.request_timeout_s)
        self._callbacks: list[ChangeCallback] = []
        self._lease_id: int | None = None
        self._registered = False
        self._last_ok_sent: float | None = None
        self._deadline = NEVER
        self._deadline_high_water = NEVER
        self._epoch: int | None = None
        self._since = 0.0
        self._resigned: set[int] = set()
        self._last_seen: tuple[str, int] | None = None
        self._seen_once = False
        self._stopping = False
        self._poke = asyncio.Event()
        self._lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._keepalive_task: asyncio.Task[None] | None = None
        self._watchdog_task: asyncio.Task[None] | None = None

    # -- Election protocol -------------------------------------------------------------------------
    async def start(self) -> None:
        if self._loop_task is not None:
            return
        self._stopping = False
        self._loop_task = asyncio.create_task(self._run(), name=f"election-{self.cluster_id}")
        self._watchdog_task = asyncio.create_task(self._fence_watchdog(), name=f"fence-{self.cluster_id}")

    async def stop(self) -> None:
        """Resign if master (revoke the lease: key and registration vanish at once, followers take over in ms)."""
        self._stopping = True
        was_master = self._epoch is not None
        self._epoch = None
        self._deadline = NEVER
        for task in (self._watchdog_task, self._loop_task, self._keepalive_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
        self._loop_task = self._keepalive_task = self._watchdog_task = None
        lease, self._lease_id = self._lease_id, None
        if lease is not None:
            try:
                await self._gw.lease_revoke(lease)
            except (DriverUnavailable, Exception) as exc:  # the lease then simply expires
                log.warning("election_revoke_failed", cluster_id=self.cluster_id, error=str(exc))
        if was_master:
            log.info("election_resigned", cluster_id=self.cluster_id)
        self._observe(None, force=was_master)
        if self._owns_gateway:
            await self._gw.close()

    def is_master(self) -> bool:
        return (self._epoch is not None and not self._stopping
                and may_act(self._clock.now(), self._deadline))

    def epoch(self) -> int | None:
        return self._epoch if self.is_master() else None

    @property
    def lease_deadline(self) -> float:
        """Latest local deadline (``Clock.now()`` scale) ever computed for this node; diagnostics and tests."""
        return self._deadline_high_water

    async def current_master(self) -> MasterInfo | None:
        """Read the master key from etcd (linearizable); raises DriverUnavailable if no member answers."""
        kv = await self._gw.get(MASTER_KEY)
        return None if kv is None else master_info_from_kv(kv)

    async def live_agents(self) -> list[str]:
        """Cluster ids of every agent whose lease is alive (registered under ``/cnf/agents/``)."""
        _, kvs = await self._gw.range(AGENTS_PREFIX, prefix_end(AGENTS_PREFIX))
        return [kv.key[len(AGENTS_PREFIX):] for kv in kvs]

    def on_change(self, callback: ChangeCallback) -> None:
        self._callbacks.append(callback)

    async def hand_over(self, target_cluster_id: str) -> None:
        target = _validate_cluster_id(target_cluster_id)
        epoch = self.epoch()
        if epoch is None:
            raise NotMaster(f"{self.cluster_id} is not the master; ask the master to hand over",
                            cluster_id=self.cluster_id)
        if target == self.cluster_id:
            return
        if await self._gw.get(AGENTS_PREFIX + target) is None:
            raise NotFound(f"agent {target!r} is unknown or down (no live registration under {AGENTS_PREFIX})",
                           cluster_id=target)
        # The pending record outlives our own wait by one TTL: it must not expire while we still wait for the ack,
        # and after we resign the target needs a moment to campaign while the others still stand back.
        deadline = self._clock.now() + self.handover_timeout_s
        h_lease, _ = await self._gw.lease_grant(self.handover_timeout_s + self.policy.ttl_s)
        value = json.dumps({"target": target, "from": self.cluster_id, "epoch": epoch})
        r = await self._gw.txn([cmp_create_revision(MASTER_KEY, epoch), cmp_create_revision(HANDOVER_KEY, 0)],
                               [op_put(HANDOVER_KEY, value, h_lease), op_range(HANDOVER_KEY)],
                               [op_range(MASTER_KEY), op_range(HANDOVER_KEY)])
        if not r.succeeded:
            await self._revoke_quietly(h_lease)
            master, pending = r.ranges()
            if not master or master[0].create_revision != epoch:
                raise NotMaster(f"{self.cluster_id} lost mastership before the hand-over started",
                                cluster_id=self.cluster_id)
            raise Conflict(f"a hand-over to {_json_field(pending[0] if pending else None, 'target')!r} is "
                           "already pending", target=target)
        handover = r.ranges()[0][0]
        log.info("election_handover_requested", cluster_id=self.cluster_id, target=target, epoch=epoch,
                 timeout_s=self.handover_timeout_s)
        try:
            await self._await_ready(handover, epoch, deadline)
        except BaseException:
            await self._revoke_quietly(h_lease)  # drops the pending record: everybody may campaign again
            raise
        async with self._lock:
            # Stop acting first, then remove the key: nothing we do can carry this epoch from now on.
            self._resigned.add(epoch)
            self._epoch = None
            self._observe(None, force=True)
            try:
                await self._gw.txn([cmp_create_revision(MASTER_KEY, epoch)], [op_delete(MASTER_KEY)], [])
            except DriverUnavailable as exc:  # the decision loop deletes a resigned key it still finds
                log.warning("election_resign_delete_deferred", cluster_id=self.cluster_id, error=str(exc))
        log.info("election_handed_over", cluster_id=self.cluster_id, target=target, epoch=epoch)
        self._poke.set()

    async def _await_ready(self, handover: KeyValue, epoch: int, deadline: float) -> None:
        target = _json_field(handover, "target")
        while True:
            rev, kvs = await self._gw.range(_STATE_FROM, _STATE_END)
            st = _state_from(rev, kvs)
            if st.handover is None:
                raise StepTimeout(f"the hand-over to {target!r} expired before it was acknowledged; "
                                  f"{self.cluster_id} stays master", target=target)
            if st.handover.mod_revision != handover.mod_revision:
                raise Conflict("the hand-over record was replaced by another one", target=target)
            if st.ready_for(handover):
                return
            if self.epoch() != epoch:
                raise NotMaster(f"{self.cluster_id} lost mastership during the hand-over", cluster_id=self.cluster_id)
            left = deadline - self._clock.now()
            if left <= 0:
                raise StepTimeout(f"agent {target!r} did not acknowledge the hand-over within "
                                  f"{self.handover_timeout_s:g} s; {self.cluster_id} stays master", target=target)
            await self._gw.watch_once(_STATE_FROM, _STATE_END, rev + 1, timeout_s=min(left, self.policy.ttl_s))

    # -- lease ------------------------------------------------------------------------------------
    async def _ensure_lease(self) -> None:
        if self._lease_id is None:
            sent = self._clock.now()
            lease_id, ttl = await self._gw.lease_grant(self.policy.ttl_s)
            self._lease_id, self._registered = lease_id, False
            self._renewed(lease_id, sent, ttl)
            self._keepalive_task = asyncio.create_task(self._keepalive(lease_id), name=f"keepalive-{lease_id:x}")
            log.info("election_lease_granted", cluster_id=self.cluster_id, lease=f"{lease_id:x}", ttl_s=ttl)
        if not self._registered:
            value = json.dumps({"cluster_id": self.cluster_id, "address": self.address, "since": self._clock.wall()})
            await self._gw.put(AGENTS_PREFIX + self.cluster_id, value, lease=self._lease_id)
            self._registered = True

    def _renewed(self, lease_id: int, sent: float, ttl: int) -> None:
        if lease_id != self._lease_id:
            return
        was_fenced = not may_act(self._clock.now(), self._deadline)
        self._last_ok_sent = sent if self._last_ok_sent is None else max(self._last_ok_sent, sent)
        self._deadline = advance_deadline(self._deadline, self.policy.deadline_after(sent, ttl))
        self._deadline_high_water = max(self._deadline_high_water, self._deadline)
        if was_fenced:  # the loop may re-adopt a key it still holds (same epoch)
            self._poke.set()

    def _lease_lost(self, lease_id: int, reason: str) -> None:
        if lease_id != self._lease_id:
            return
        log.warning("election_lease_lost", cluster_id=self.cluster_id, lease=f"{lease_id:x}", reason=reason,
                    was_master=self._epoch is not None)
        self._lease_id, self._registered, self._last_ok_sent = None, False, None
        self._deadline = NEVER
        self._poke.set()

    async def _keepalive(self, lease_id: int) -> None:
        """Renew every TTL/3. While no member answers, retry with back-off but keep the lease: only etcd can say
        it is gone (a new Raft leader even extends every lease), and meanwhile the local deadline fences us."""
        interval = self.policy.keepalive_interval_s
        next_at = self._clock.now() + interval
        retry = 0.05
        while self._lease_id == lease_id:
            await asyncio.sleep(max(0.0, next_at - self._clock.now()))
            sent = self._clock.now()
            try:
                ttl = await self._gw.lease_keepalive(lease_id, timeout_s=self._keepalive_timeout_s)
            except DriverUnavailable as exc:
                log.info("election_keepalive_retry", cluster_id=self.cluster_id, error=str(exc),
                         lease_presumed_expired=self.policy.lease_presumed_expired(sent, self._last_ok_sent))
                next_at = self._clock.now() + retry
                retry = min(retry * 2, interval)
                continue
            if ttl <= 0:
                self._lease_lost(lease_id, "etcd reports the lease expired")
                return
            retry = 0.05
            self._renewed(lease_id, sent, ttl)
            next_at = sent + interval

    async def _fence_watchdog(self) -> None:
        """Tell observers (``on_change(None)``) the moment the local deadline passes, whatever the decision loop is
        blocked on (a hanging request, a back-off). ``is_master()`` itself never waits for this: it reads the clock.
        """
        while True:
            if self._epoch is None or self._deadline == NEVER:
                if self._epoch is not None:
                    self._step_down("lease lost")
                await asyncio.sleep(0.1)
                continue
            left = self._deadline - self._clock.now()
            if left > 0:
                await asyncio.sleep(min(left + 0.001, self.policy.ttl_s))
                continue
            self._step_down("local lease deadline passed")

    async def _revoke_quietly(self, lease_id: int) -> None:
        try:
            await self._gw.lease_revoke(lease_id)
        except Exception as exc:
            log.warning("election_revoke_failed", lease=f"{lease_id:x}", error=str(exc))

    # -- decision loop ----------------------------------------------------------------------------
    async def _run(self) -> None:
        backoff = 0.05
        while not self._stopping:
            try:
                self._poke.clear()
                await self._ensure_lease()
                async with self._lock:
                    rev, kvs = await self._gw.range(_STATE_FROM, _STATE_END)
                    st = _state_from(rev, kvs)
                    wait_s = await self._decide(st)
                if wait_s is not None:
                    await self._wait(st.revision, wait_s)
                backoff = 0.05
            except asyncio.CancelledError:
                raise
            except LeaseNotFound as exc:  # a put/txn bound to our lease: etcd already expired it
                if self._lease_id is not None:
                    self._lease_lost(self._lease_id, f"etcd: {exc}")
            except (CNFError, WatchCompacted) as exc:
                log.info("election_retry", cluster_id=self.cluster_id, error=str(exc), backoff_s=backoff)
                if self._epoch is not None and not self.is_master():
                    self._step_down("fenced while etcd is unreachable")
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 0.5)
            except Exception:
                log.exception("election_loop_error", cluster_id=self.cluster_id)
                await asyncio.sleep(0.5)

    async def _decide(self, st: _State) -> float | None:
        """Act on one consistent state; return how long to wait for the next change (None: loop at once)."""
        ttl = self.policy.ttl_s
        m = st.master
        if m is not None and self._lease_id is not None and m.lease == self._lease_id:
            if m.create_revision in self._resigned:  # we resigned this term; finish removing it
                await self._gw.txn([cmp_create_revision(MASTER_KEY, m.create_revision)], [op_delete(MASTER_KEY)], [])
                return None
            now = self._clock.now()
            if not may_act(now, self._deadline):
                # The key is still ours but our deadline passed: act as non-master until a keep-alive proves
                # the lease alive again (then the same epoch resumes: nobody else can have held the key).
                self._step_down("local lease deadline passed")
                return min(ttl, 0.1)
            if self._epoch != m.create_revision:
                self._epoch = m.create_revision
                self._since = float(_json_field(m, "since") or self._clock.wall())
                log.info("election_master", cluster_id=self.cluster_id, epoch=self._epoch)
            self._observe(master_info_from_kv(m))
            return max(0.01, min(ttl, self._deadline - now + 0.01))
        if self._epoch is not None:
            self._step_down("master key is no longer ours")
        if m is not None:
            self._observe(master_info_from_kv(m))
            if st.handover_target == self.cluster_id and not st.ready_for(st.handover):
                await self._acknowledge_handover(st)
                return None
            return ttl
        self._observe(None)
        if not may_campaign(self.cluster_id, st.handover_target):
            return ttl  # a hand-over to someone else is pending: stand back (bounded by its lease)
        if not may_act(self._clock.now(), self._deadline):
            return 0.1  # our lease may be gone: do not take the key with it; the keep-alive task sorts it out
        await self._campaign(st)
        return None

    async def _campaign(self, st: _State) -> None:
        assert self._lease_id is not None
        h = st.handover
        value = json.dumps({"cluster_id": self.cluster_id, "address": self.address, "since": self._clock.wall(),
                            "lease_ttl_s": self.policy.ttl_s})
        success = [op_put(MASTER_KEY, value, self._lease_id), op_range(MASTER_KEY)]
        if h is not None:  # only reached when the pending hand-over names us: complete it atomically
            success += [op_delete(HANDOVER_READY_KEY), op_delete(HANDOVER_KEY)]
        r = await self._gw.txn([cmp_create_revision(MASTER_KEY, 0),
                                cmp_mod_revision(HANDOVER_KEY, h.mod_revision if h else 0)], success, [])
        if not r.succeeded:
            return
        kv = r.ranges()[0][0]
        self._epoch = kv.create_revision
        self._since = float(_json_field(kv, "since") or self._clock.wall())
        log.info("election_won", cluster_id=self.cluster_id, epoch=self._epoch, handover=h is not None)
        self._observe(master_info_from_kv(kv))

    async def _acknowledge_handover(self, st: _State) -> None:
        h = st.handover
        assert h is not None
        if not may_act(self._clock.now(), self._deadline):
            return  # not ready: our own lease is in doubt
        value = json.dumps({"target": self.cluster_id, "handover_revision": h.mod_revision})
        try:
            r = await self._gw.txn([cmp_mod_revision(HANDOVER_KEY, h.mod_revision)],
                                   [op_put(HANDOVER_READY_KEY, value, h.lease)], [])
        except LeaseNotFound:  # the hand-over's own lease expired meanwhile: nothing to acknowledge
            return
        if r.succeeded:
            log.info("election_handover_ready", cluster_id=self.cluster_id, handover_revision=h.mod_revision)

    def _step_down(self, reason: str) -> None:
        if self._epoch is None:
            return
        log.warning("election_step_down", cluster_id=self.cluster_id, epoch=self._epoch, reason=reason)
        self._epoch = None
        self._observe(None, force=True)

    async def _wait(self, revision: int, timeout_s: float) -> None:
        """Until the election keys change after ``revision``, a local poke, or ``timeout_s``."""
        if self._poke.is_set():
            return
        watch = asyncio.create_task(self._gw.watch_once(_STATE_FROM, _STATE_END, revision + 1, timeout_s))
        poke = asyncio.create_task(self._poke.wait())
        try:
            done, _ = await asyncio.wait({watch, poke}, timeout=timeout_s + 0.5, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (watch, poke):
                if not t.done():
                    t.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await t
        if watch in done:
            watch.result()  # re-raise a broken stream (the gateway already rotated the endpoint)

    def _observe(self, info: MasterInfo | None, *, force: bool = False) -> None:
        key = None if info is None else (info.cluster_id, info.epoch)
        if self._seen_once and key == self._last_seen and not force:
            return
        self._seen_once = True
        self._last_seen = key
        _notify(self._callbacks, info)


def _state_from(revision: int, kvs: list[KeyValue]) -> _State:
    by_key = {kv.key: kv for kv in kvs}
    return _State(revision=revision, master=by_key.get(MASTER_KEY), handover=by_key.get(HANDOVER_KEY),
                  ready=by_key.get(HANDOVER_READY_KEY))


# -- a standalone candidate: diagnostics and the election functional tests -----------------------------------------
async def _candidate(args: argparse.Namespace) -> None:
    election = EtcdElection(cluster_id=args.cluster_id, address=args.address, endpoints=args.endpoints,
                            lease_ttl_s=args.ttl)

    def emit(event: str, **fields: Any) -> None:
        line = {"t": time.time(), "mono": time.monotonic(), "cluster_id": args.cluster_id, "event": event, **fields}
        print(json.dumps(line), flush=True)

    def changed(info: MasterInfo | None) -> None:
        emit("change", master=None if info is None else info.cluster_id,
             epoch=None if info is None else info.epoch, is_master=election.is_master())

    election.on_change(changed)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):  # graceful: resign (revoke the lease) before exiting
        loop.add_signal_handler(sig, stop.set)
    await election.start()
    emit("started")
    try:
        while not stop.is_set():
            if args.status_interval > 0:
                emit("status", is_master=election.is_master(), epoch=election.epoch(),
                     deadline=election.lease_deadline if election.lease_deadline != NEVER else None)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), args.status_interval)
            else:
                await stop.wait()
    finally:
        await election.stop()
        emit("stopped")


def main(argv: list[str] | None = None) -> int:
    """``python -m cnf.agent.raft --cluster-id A --endpoints h:p,h:p --ttl 5``: run one candidate, print JSON lines
    (``change`` on every master change; ``status`` every ``--status-interval`` s with is_master/epoch/deadline)."""
    parser = argparse.ArgumentParser(prog="python -m cnf.agent.raft", description=main.__doc__)
    parser.add_argument("--cluster-id", required=True)
    parser.add_argument("--address", default="")
    parser.add_argument("--endpoints", required=True)
    parser.add_argument("--ttl", type=float, default=DEFAULT_LEASE_TTL_S)
    parser.add_argument("--status-interval", type=float, default=1.0)
    args = parser.parse_args(argv)
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.stderr))
    try:
        asyncio.run(_candidate(args))
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
