"""``CephRbdMirror``: the StorageDriver port over real Ceph RBD snapshot mirroring.

Design (measured facts in ``docs/storage.md``):
- librbd, not the ``rbd`` CLI, on the handover path: a long-lived worker process (``rbd_worker.py``, Debian's
  python3-rbd under ``/usr/bin/python3``) keeps the cluster connection and image handles open, so demote ->
  promote costs ~100 ms on a tuned cluster instead of ~175-200 ms with one CLI process per try. The worker is
  killed on any timeout (a librados call on a dead OSD blocks forever in C; only a process can be abandoned)
  and restarted on the next call, and the caller gets ``DriverUnavailable``.
- Role from ``mirror_image_get_info().primary``, sync from the mirror snapshots (never the stale
  ``mirror image status``, lab/ceph P5/P6); split-brain from both roles or from rbd-mirror's ``split-brain``.
- ``promote`` asks the peer cluster (the pool's mirror peer credentials, as rbd-mirror uses them) before acting:
  it refuses while the peer is primary (``IllegalTransition``), waits while the peer's demotion snapshot is in
  flight and then retries librbd's promote every ~20 ms on EBUSY/EROFS (rbd-mirror still holds the lock, P2),
  raising a retryable ``DriverError`` at its deadline (the retry loop runs inside the worker: one pipe round trip).
  Never ``--force``. Both sides non-primary (a handover interrupted between demote and promote) is resumed by the
  same promote.
- ``prepare_handover`` at the source removes the peer-less mirror snapshots that librbd's demote would otherwise
  remove inside the guest's pause (librbd's own criterion; never the newest).
- Never writes to a non-primary image (P3). Errors of librbd are mapped once, here.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import structlog

from cnf.errors import (
    CheckResult,
    CNFError,
    DriverError,
    DriverUnavailable,
    IllegalTransition,
    InvalidInput,
    NotFound,
    SplitBrain,
)
from cnf.storage.base import MirrorStatus
from cnf.storage.rbd_json import (
    EINVAL,
    ImageView,
    PoolHealth,
    PromoteDecision,
    RbdFailure,
    classify,
    last_snapshot_id,
    parse_pool_status,
    promote_decision,
    sync_state,
    view_from_worker,
)

log = structlog.get_logger(__name__)

PORT = "storage"
WORKER = Path(__file__).with_name("rbd_worker.py")
#: mon settings below which a handover is ~100 ms; at Ceph's default (1.0 s) it is ~5 s (lab/ceph-handover)
TUNING = {"paxos_propose_interval": 0.05, "paxos_min_wait": 0.05}
MON_COMMITS_PER_HANDOVER = 5


@dataclass(frozen=True)
class CephSiteConfig:
    """How to reach one cluster. ``keyring`` may be omitted when ``conf_path`` names it."""

    cluster_name: str
    conf_path: str
    pool: str = "vms"
    client_name: str = "client.admin"
    keyring: str | None = None

    def validate(self) -> None:
        if not self.cluster_name:
            raise InvalidInput("cluster name is empty", field="storage.cluster_name")
        if not Path(self.conf_path).is_file():
            raise InvalidInput(f"ceph conf {self.conf_path} does not exist", field="storage.conf_path")
        if not self.pool:
            raise InvalidInput("pool is empty", field="storage.pool")
        if not self.client_name.startswith("client."):
            raise InvalidInput("client name must look like client.<id>", field="storage.client_name")


def _check_image(image: str) -> str:
    if not image or "/" in image or "@" in image or len(image) > 255 or image.strip() != image:
        raise InvalidInput(f"invalid RBD image name {image!r}", field="image")
    return image


class _Worker:
    """One ``rbd_worker.py`` child: JSON lines in/out, requests multiplexed by id."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self.ids = itertools.count(1)
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            while True:
                line = await self.proc.stdout.readline()
                if not line:
                    break
                with contextlib.suppress(ValueError):
                    msg = json.loads(line)
                    fut = self.pending.pop(int(msg.get("id", -1)), None)
                    if fut is not None and not fut.done():
                        fut.set_result(msg)
        finally:
            for fut in self.pending.values():
                if not fut.done():
                    fut.set_exception(ConnectionError("rbd worker exited"))
            self.pending.clear()

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.done()

    async def call(self, op: str, args: dict[str, Any]) -> dict[str, Any]:
        rid = next(self.ids)
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self.pending[rid] = fut
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps({"id": rid, "op": op, "args": args}) + "\n").encode())
        await self.proc.stdin.drain()
        return await fut

    def kill(self) -> None:
        if self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        self.reader.cancel()


class CephRbdMirror:
    """One cluster's side of snapshot-mirrored RBD images (pool-level two-way peering configured beforehand).

    ``peer`` is optional: by default the peer cluster is reached with the pool's mirror peer attributes
    (mon_host + key of ``client.rbd-mirror-peer``, the bootstrap credentials). ``promote_timeout_s`` bounds the
    wait for the peer's demotion inside :meth:`promote`; ``op_timeout_s`` bounds every other call.
    """

    def __init__(self, cluster_id: str, site: CephSiteConfig, *, peer: CephSiteConfig | None = None,
                 op_timeout_s: float = 10.0, promote_timeout_s: float = 5.0, promote_retry_s: float = 0.02,
                 prune_before_handover: bool = True, python: str = "/usr/bin/python3") -> None:
        site.validate()
        if peer is not None:
            peer.validate()
        if op_timeout_s <= 0:
            raise InvalidInput("op_timeout_s must be > 0", field="storage.op_timeout_s")
        if promote_timeout_s < 0:
            raise InvalidInput("promote_timeout_s must be >= 0", field="storage.promote_timeout_s")
        self.cluster_id = cluster_id
        self.site = site
        self.peer = peer
        self.op_timeout_s = op_timeout_s
        self.promote_timeout_s = promote_timeout_s
        self.promote_retry_s = promote_retry_s
        self.prune_before_handover = prune_before_handover
        self.python = python
        self._worker: _Worker | None = None
        self._start_lock = asyncio.Lock()
        self.last_promote_tries = 0  # observability: librbd promote attempts of the last promote()

    # --- worker lifecycle --------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Spawn and connect the worker now (otherwise the first call does it): keeps it off the handover path."""
        await self._ensure_worker()

    async def _ensure_worker(self) -> _Worker:
        async with self._start_lock:
            if self._worker is not None and self._worker.alive:
                return self._worker
            if not _exists(self.python):
                raise DriverUnavailable(f"{self.python} not found: install python3-rbd (scripts/deps/apt-ceph.txt)",
                                        port=PORT, operation="start")
            cfg = asdict(self.site) | {"op_timeout_s": self.op_timeout_s}
            if self.peer is not None:
                cfg["peer"] = asdict(self.peer)
            proc = await asyncio.create_subprocess_exec(
                self.python, "-I", "-u", str(WORKER), json.dumps(cfg),
                stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL,
                limit=1 << 24)
            assert proc.stdout is not None
            try:
                first = await asyncio.wait_for(proc.stdout.readline(), self.op_timeout_s + 5)
                hello = json.loads(first) if first else {"ok": False, "message": "worker exited at start"}
            except (TimeoutError, ValueError) as e:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                raise DriverUnavailable(f"ceph cluster {self.site.cluster_name} did not answer: {e!r}",
                                        port=PORT, operation="connect") from None
            if not hello.get("ok"):
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()
                if hello.get("error") == "ModuleNotFoundError":
                    raise DriverUnavailable("python3-rbd/python3-rados missing for " + self.python, port=PORT,
                                            operation="connect")
                raise DriverUnavailable(f"cannot connect to ceph cluster {self.site.cluster_name}: "
                                        f"{hello.get('message')}", port=PORT, operation="connect")
            self._worker = _Worker(proc)
            log.info("ceph_worker_started", cluster_id=self.cluster_id, pid=proc.pid)
            return self._worker

    async def close(self) -> None:
        """Close image handles and stop the worker (by its PID).

        Handles are released explicitly first: a worker that exits with images open left a stale lock owner
        behind in the e2e lab, and the next write through the new primary hung for more than 10 s.
        """
        if self._worker is not None:
            with contextlib.suppress(CNFError):
                await self.release()
        w, self._worker = self._worker, None
        if w is None:
            return
        if w.proc.stdin is not None:
            w.proc.stdin.close()
        try:
            await asyncio.wait_for(w.proc.wait(), 5)
        except TimeoutError:
            w.kill()
            await w.proc.wait()
        w.reader.cancel()

    async def _call(self, op: str, timeout_s: float | None = None, **args: Any) -> Any:
        worker = await self._ensure_worker()
        try:
            reply = await asyncio.wait_for(worker.call(op, args), timeout_s or self.op_timeout_s)
        except TimeoutError:
            log.warning("ceph_call_timeout", cluster_id=self.cluster_id, op=op,
                        timeout_s=timeout_s or self.op_timeout_s)
            worker.kill()
            self._worker = None
            raise DriverUnavailable(f"ceph {op} on {self.site.cluster_name} timed out", port=PORT,
                                    operation=op) from None
        except (ConnectionError, BrokenPipeError) as e:
            self._worker = None
            raise DriverUnavailable(f"ceph worker for {self.site.cluster_name} died: {e}", port=PORT,
                                    operation=op) from None
        if reply.get("ok"):
            return reply.get("result")
        raise _WorkerFailure(op, reply.get("errno"), str(reply.get("error")), str(reply.get("message")))

    def _translate(self, f: _WorkerFailure, image: str | None = None) -> CNFError:
        kind = classify(f.errno, f"{f.error} {f.message}")
        details: dict[str, Any] = {"port": PORT, "operation": f.op, "cluster_id": self.cluster_id,
                                   "errno": f.errno}
        if image:
            details["image"] = image
        if kind is RbdFailure.NOT_FOUND:
            return NotFound(f"{image or f.op}: not found on {self.site.cluster_name}", **details)
        if kind is RbdFailure.UNAVAILABLE:
            return DriverUnavailable(f"ceph {f.op}: {f.message}", **details)
        if kind is RbdFailure.NOT_PRIMARY:
            return IllegalTransition(f"{image}: not primary on {self.site.cluster_name} ({f.message})", **details)
        return DriverError(f"ceph {f.op} failed: {f.error}: {f.message}", **details)

    async def _op(self, op: str, image: str | None = None, timeout_s: float | None = None, **args: Any) -> Any:
        try:
            if image is not None:
                args["image"] = image
            return await self._call(op, timeout_s, **args)
        except _WorkerFailure as f:
            raise self._translate(f, image) from None

    # --- views ---------------------------------------------------------------------------------------------------

    async def view(self, image: str, with_status: bool = False) -> ImageView:
        return view_from_worker(await self._op("view", _check_image(image), with_status=with_status))

    async def peer_view(self, image: str) -> ImageView:
        try:
            return view_from_worker(await self._op("peer_view", _check_image(image)))
        except DriverError as e:
            if isinstance(e, (NotFound, DriverUnavailable)):
                raise
            raise DriverUnavailable(f"peer cluster of {self.site.cluster_name} not reachable: {e.message}",
                                    port=PORT, operation="peer_view") from None

    # --- the port --------------------------------------------------------------------------------------------------

    async def status(self, image: str) -> MirrorStatus:
        """Role from librbd, sync/lag from the mirror snapshots at both sites.

        A non-primary side needs the peer (the primary) to know what it is missing: ``DriverUnavailable`` when
        the peer cannot be reached. A primary side reports ``in_sync`` True; its split-brain check uses the peer
        when reachable.
        """
        local = await self.view(image, with_status=True)
        if not local.exists:
            return MirrorStatus(image=image, exists=False, mirroring=False, primary=False, last_snapshot_id=0,
                                in_sync=False, lag_s=0.0)
        peer: ImageView | None = None
        if local.mirroring:
            try:
                peer = await self.peer_view(image)
            except DriverUnavailable:
                if not local.primary:
                    raise
                log.warning("ceph_peer_unreachable", cluster_id=self.cluster_id, image=image)
        split = (local.primary and peer is not None and peer.exists and peer.primary) or \
            (not local.primary and local.reports_split_brain and not (peer is not None and peer.exists
                                                                      and not peer.primary))
        if local.primary or not local.mirroring:
            in_sync, lag = local.primary, 0.0
        else:
            st = sync_state(local, peer, time.time())
            in_sync, lag = st.in_sync, st.lag_s
        return MirrorStatus(image=image, exists=True, mirroring=local.mirroring, primary=local.primary,
                            last_snapshot_id=last_snapshot_id(local), in_sync=in_sync, lag_s=lag,
                            split_brain=split)

    async def enable_mirroring(self, image: str) -> bool:
        """Snapshot-mode mirroring on (creates the first mirror snapshot; rbd-mirror copies the whole image)."""
        local = await self.view(image)
        if not local.exists:
            raise NotFound(f"image {image} not found on {self.site.cluster_name}", image=image, port=PORT)
        if local.mirroring:
            if local.mode != "snapshot":
                raise IllegalTransition(f"{image} is mirrored in {local.mode} mode; CNF needs snapshot mode",
                                        image=image, port=PORT)
            return False
        if not local.primary:
            raise IllegalTransition(f"{image} is not primary here", image=image, port=PORT)
        enabled = bool(await self._op("enable", image))
        log.info("ceph_mirroring_enabled", cluster_id=self.cluster_id, image=image, changed=enabled)
        return enabled

    async def disable_mirroring(self, image: str) -> None:
        """Undo of enable: only from the primary (rbd-mirror then removes the peer's non-primary copy)."""
        local = await self.view(image)
        if not local.exists or not local.mirroring:
            return
        if not local.primary:
            raise IllegalTransition("mirroring is disabled from the primary side", image=image, port=PORT)
        await self._op("disable", image)
        log.info("ceph_mirroring_disabled", cluster_id=self.cluster_id, image=image)

    async def create_mirror_snapshot(self, image: str) -> int:
        """A mirror snapshot on the primary; returns its id (the id space of this cluster)."""
        local = await self.view(image)
        if not local.exists:
            raise NotFound(f"image {image} not found on {self.site.cluster_name}", image=image, port=PORT)
        if not local.mirroring:
            raise DriverError("mirroring is not enabled on this image", image=image, port=PORT)
        if not local.primary:
            raise IllegalTransition("mirror snapshots are taken on the primary", image=image, port=PORT)
        sid = int(await self._op("snapshot", image))
        log.info("ceph_mirror_snapshot", cluster_id=self.cluster_id, image=image, snap_id=sid)
        return sid

    async def demote(self, image: str) -> None:
        """Non-primary here (librbd takes the demotion snapshot, which carries the last writes); idempotent.

        Works while a paused QEMU holds the image's exclusive lock (librbd's cooperative lock hand-over, answered
        by QEMU's librbd threads; measured in lab/qemu-rbd).
        """
        t0 = time.monotonic()
        try:
            await self._call("demote", None, image=_check_image(image))
        except _WorkerFailure as f:
            if f.errno == EINVAL:  # "image is not primary": already demoted -> done (idempotent)
                local = await self.view(image)
                if local.exists and local.mirroring and not local.primary:
                    return
                if local.exists and not local.mirroring:
                    raise IllegalTransition(f"{image} is not mirrored: demote would not hand it over", image=image,
                                            port=PORT) from None
            raise self._translate(f, image) from None
        log.info("ceph_demoted", cluster_id=self.cluster_id, image=image,
                 ms=round((time.monotonic() - t0) * 1000, 1))

    async def promote(self, image: str) -> None:
        """Primary here once the peer's demotion has arrived; idempotent; never forced.

        Raises ``IllegalTransition`` while the peer is primary (P1: promoting the old source after a cutover),
        ``SplitBrain`` when both are primary, a retryable ``DriverError`` when the peer's demotion has not
        arrived within ``promote_timeout_s``, ``DriverUnavailable`` when the peer cannot be asked.
        """
        _check_image(image)
        t0 = time.monotonic()
        deadline = t0 + self.promote_timeout_s
        self.last_promote_tries = 0
        # the peer is read through a fresh open: a cached handle may not have seen the peer's demote yet
        # (measured: it still said "primary" right after demote returned), and this read decides safety
        local, peer = await asyncio.gather(self.view(image), self.peer_view(image))
        views_ms = round((time.monotonic() - t0) * 1000, 1)  # observability: the safety reads before any attempt
        while True:
            decision = promote_decision(local, peer)
            if decision is PromoteDecision.ALREADY_PRIMARY:
                return
            if decision is PromoteDecision.SPLIT_BRAIN:
                raise SplitBrain(f"{image} is primary on both sites; demote the side whose writes must be lost and "
                                 "run `rbd mirror image resync` there", image=image, port=PORT,
                                 cluster_id=self.cluster_id, recovery="demote + rbd mirror image resync at the loser")
            if decision is PromoteDecision.PEER_PRIMARY:
                raise IllegalTransition(f"{image}: the peer is still primary; demote it first (no --force on the "
                                        "orderly path)", image=image, port=PORT, cluster_id=self.cluster_id)
            if decision is PromoteDecision.NOT_MIRRORED:
                if not local.exists:
                    raise NotFound(f"image {image} not found on {self.site.cluster_name}", image=image, port=PORT)
                raise IllegalTransition(f"{image} is not mirrored here", image=image, port=PORT)
            # Our newest snapshot is a copy of the peer's: librbd itself refuses (EBUSY/EROFS) until the peer's
            # demotion snapshot is here and complete, so try at once instead of polling views (saves a round
            # trip per retry). Only when our newest snapshot is our own does librbd's check fall short (P1).
            newest = local.newest
            guarded = decision is PromoteDecision.WAIT_FOR_DEMOTION and newest is not None and not newest.own
            if decision in (PromoteDecision.PROMOTE, PromoteDecision.ROLLBACK) or guarded:
                # librbd's refusal guards from here on: the worker retries every promote_retry_s until the
                # deadline (no pipe round trip per attempt)
                wait_s = max(0.0, deadline - time.monotonic())
                try:
                    done = await self._call("promote", wait_s + self.op_timeout_s, image=image, wait_s=wait_s,
                                            retry_s=self.promote_retry_s)
                    done = done if isinstance(done, dict) else {}
                    self.last_promote_tries += int(done.get("tries", 1))
                    log.info("ceph_promoted", cluster_id=self.cluster_id, image=image, how=decision.value,
                             tries=self.last_promote_tries, ms=round((time.monotonic() - t0) * 1000, 1),
                             views_ms=views_ms)
                    return
                except _WorkerFailure as f:
                    self.last_promote_tries += 1
                    kind = classify(f.errno, f"{f.error} {f.message}")
                    if kind is RbdFailure.ALREADY_PRIMARY:
                        return
                    if kind not in (RbdFailure.READ_ONLY, RbdFailure.PEER_PRIMARY_OR_NOT_PROPAGATED):
                        raise self._translate(f, image) from None
            if time.monotonic() >= deadline:
                raise DriverError(f"{image}: the peer's demotion has not arrived at {self.site.cluster_name} yet "
                                  "(promote refused: Read-only file system / demotion not propagated); retry",
                                  image=image, port=PORT, operation="promote", cluster_id=self.cluster_id,
                                  retry_after_s=self.promote_retry_s, decision=decision.value)
            await asyncio.sleep(self.promote_retry_s)
            if decision is PromoteDecision.WAIT_FOR_DEMOTION and not guarded:
                local = await self.view(image)

    async def prepare_handover(self, image: str) -> None:
        """Open what demote/promote use (local read-write image handle, peer cluster connection) ahead of the pause.

        Optional: saves ~10-30 ms of opens inside the guest's pause. Call it on both sides shortly before the
        handover (handles idle for 30 s are closed again). Opening a non-primary image read-write is harmless
        as long as nothing is written through it (lab/ceph P3), and nothing is.

        On the primary (source) side, with ``prune_before_handover`` (default on), it also removes the mirror
        snapshots no peer is linked to any more (never the newest): the demote would otherwise remove them
        inside the pause, one monitor commit each (docs/storage.md, "Where the time goes"). This takes the
        image's exclusive lock for a moment, like every mirror snapshot create does.
        """
        done = await self._op("prepare", _check_image(image), prune=self.prune_before_handover)
        pruned = done.get("pruned") if isinstance(done, dict) else None
        if pruned:
            log.info("ceph_pruned_before_handover", cluster_id=self.cluster_id, image=image, snap_ids=pruned)

    async def peer_reachable(self) -> bool:
        try:
            return bool(await self._op("peer_ping"))
        except (DriverError, NotFound):
            return False

    # --- beyond the port -------------------------------------------------------------------------------------------

    async def resync(self, image: str) -> None:
        """Operator recovery after split-brain: on the side that must lose its writes, after demoting it."""
        local = await self.view(image)
        if local.primary:
            raise IllegalTransition("resync runs on the demoted (losing) side", image=image, port=PORT)
        await self._op("resync", image)

    async def checksum(self, image: str, timeout_s: float = 300.0) -> str:
        """SHA-256 of the image's content (read-only open: safe on a non-primary copy)."""
        return str(await self._op("checksum", _check_image(image), timeout_s=timeout_s))

    async def release(self, image: str | None = None) -> None:
        """Close cached image handles (an open handle is a watcher: it blocks ``rbd rm`` of that image)."""
        if image:
            await self._op("release", _check_image(image))
        else:
            await self._op("release")

    async def tuning(self) -> dict[str, float]:
        """Running mon values of the settings the handover time depends on."""
        out = {}
        for key in TUNING:
            with contextlib.suppress(DriverError, ValueError):
                out[key] = float(await self._op("mon_config", key=key))
        return out

    async def preflight(self, image: str, max_lag_s: float) -> Sequence[CheckResult]:
        """PREFLIGHT's storage checks at this (destination) side: peer reachable, mirroring on and healthy,
        lag under ``max_lag_s``; a warning (not an error) when the monitors are not tuned for a short handover."""
        checks: list[CheckResult] = []
        reachable = await self.peer_reachable()
        checks.append(CheckResult("storage.peer_reachable", reachable,
                                  "peer Ceph cluster answers" if reachable else "peer Ceph cluster unreachable"))
        try:
            st = await self.status(image)
        except CNFError as e:
            checks.append(CheckResult("storage.mirroring", False, f"status failed: {e.message}"))
            return checks
        ok = st.exists and st.mirroring and not st.split_brain
        reason = ("snapshot mirroring enabled" if ok else
                  "image missing" if not st.exists else
                  "split-brain: demote the loser and resync it" if st.split_brain else "mirroring not enabled")
        checks.append(CheckResult("storage.mirroring", ok, reason))
        try:
            daemons = await self._op("mirror_daemons")
            healthy = bool(daemons)
            why = f"{len(daemons)} rbd-mirror daemon(s) registered" if healthy else "no rbd-mirror daemon running"
        except CNFError as e:
            healthy, why = False, f"cannot read the service map: {e.message}"
        checks.append(CheckResult("storage.mirror_daemon", healthy, why))
        lag_ok = st.in_sync or st.lag_s <= max_lag_s
        checks.append(CheckResult("storage.lag", lag_ok, f"lag {st.lag_s:.1f} s (limit {max_lag_s:.1f} s)"))
        tuning = await self.tuning()
        slow = {k: v for k, v in tuning.items() if v > TUNING[k]}
        if slow or not tuning:
            cost = MON_COMMITS_PER_HANDOVER * max(slow.values(), default=1.0)
            checks.append(CheckResult("storage.handover_tuning", False,
                                      f"mon {slow or 'settings unreadable'}: the demote->promote handover will take "
                                      f"~{cost:.1f} s of guest pause; set paxos_propose_interval=0.01 and "
                                      "paxos_min_wait=0.001 (docs/storage.md)", severity="warning"))
        else:
            checks.append(CheckResult("storage.handover_tuning", True, f"mon tuned: {tuning}", severity="warning"))
        return checks

    async def pool_health(self, timeout_s: float = 15.0) -> PoolHealth:
        """``rbd mirror pool status`` via the CLI (daemon health lives in the mgr's service map)."""
        argv = ["rbd", "--cluster", self.site.cluster_name, "-c", self.site.conf_path, "--id",
                self.site.client_name.removeprefix("client."), "mirror", "pool", "status", self.site.pool,
                "--format", "json"]
        if self.site.keyring:
            argv[1:1] = ["--keyring", self.site.keyring]
        proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise DriverUnavailable("rbd mirror pool status timed out", port=PORT, operation="pool_status") from None
        if proc.returncode != 0:
            raise self._translate(_WorkerFailure("pool_status", proc.returncode, "rbd", err.decode()[-300:]))
        return parse_pool_status(out.decode())


def _exists(path: str) -> bool:
    return Path(path).exists()


class _WorkerFailure(Exception):
    def __init__(self, op: str, errno: int | None, error: str, message: str) -> None:
        super().__init__(f"{op}: {error}: {message}")
        self.op, self.errno, self.error, self.message = op, errno, error, message
