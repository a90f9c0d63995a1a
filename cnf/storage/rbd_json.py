"""Pure parsing and decisions for RBD snapshot mirroring (no I/O; unit-tested on the lab's captured outputs).

Why separate: every rule that keeps CNF from corrupting a disk lives here and can be tested without Ceph —
which side may be promoted, what "in sync" means, how old the un-copied data is. Inputs come either from the
``rbd`` CLI (``rbd info`` / ``rbd snap ls --all`` with ``--format json``, captured in ``tests/data/ceph``) or from
the librbd worker (``cnf/storage/rbd_worker.py``); both are normalised to :class:`ImageView` first.

Source of truth (lab/ceph P5/P6): the role comes from ``info.mirroring.primary``; sync state from the mirror
snapshots (``snap ls --all``). ``mirror image status`` is stale for up to 30 s and is used only for its
``split-brain`` verdict, which rbd-mirror writes when it finds the histories diverged.
"""

from __future__ import annotations

import calendar
import enum
import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

OWN_STATES = frozenset({"primary", "demoted", "primary-demoted"})  # snapshots created by this image itself
COPY_STATES = frozenset({"non-primary", "non-primary-demoted", "demoted-copy"})

# rc of the rbd CLI is an errno (lab/ceph §6)
EBUSY, EINVAL, EROFS, ENOENT, ETIMEDOUT, ESHUTDOWN, ENOTCONN = 16, 22, 30, 2, 110, 108, 107


@dataclass(frozen=True)
class MirrorSnap:
    """One mirror snapshot. ``primary_snap_id`` is None for snapshots created here (primary or demoted);
    for copies it is the id of the snapshot at the primary site it was copied from."""

    id: int
    state: str  # primary | primary-demoted | non-primary | non-primary-demoted
    complete: bool
    primary_snap_id: int | None = None
    timestamp: float = 0.0  # seconds since the epoch (Ceph's resolution: 1 s)

    @property
    def own(self) -> bool:
        return self.primary_snap_id is None

    @property
    def demoted(self) -> bool:
        return self.state in ("primary-demoted", "non-primary-demoted")


@dataclass(frozen=True)
class ImageView:
    """One site's view of one image, from ``rbd info`` + ``rbd snap ls --all`` (or librbd equivalents)."""

    exists: bool
    mirroring: bool = False
    mode: str | None = None  # "snapshot" | "journal" | None
    primary: bool = False
    global_id: str = ""
    size: int = 0
    snaps: tuple[MirrorSnap, ...] = field(default_factory=tuple)
    description: str = ""  # mirror image status description, only read for "split-brain"

    @property
    def newest(self) -> MirrorSnap | None:
        return self.snaps[-1] if self.snaps else None

    @property
    def newest_own(self) -> MirrorSnap | None:
        own = [s for s in self.snaps if s.own]
        return own[-1] if own else None

    @property
    def newest_complete_copy(self) -> MirrorSnap | None:
        copies = [s for s in self.snaps if not s.own and s.complete]
        return copies[-1] if copies else None

    @property
    def reports_split_brain(self) -> bool:
        return "split-brain" in self.description


MISSING = ImageView(exists=False)


# --- CLI JSON ------------------------------------------------------------------------------------------------


def _cli_state(ns: Mapping[str, Any]) -> str:
    state = str(ns.get("state", ""))
    if "primary_snap_id" in ns:  # a copy: CLI says "non-primary" or "demoted" (the copied demotion snapshot)
        return "non-primary-demoted" if state == "demoted" else "non-primary"
    return "primary-demoted" if state == "demoted" else "primary"


def parse_cli_timestamp(text: str) -> float:
    """``"Wed Nov 25 14:17:24 2026"`` (UTC on the lab hosts) -> epoch seconds; 0.0 when unparseable."""
    try:
        return float(calendar.timegm(time.strptime(text.strip(), "%a %b %d %H:%M:%S %Y")))
    except (ValueError, AttributeError):
        return 0.0


def parse_snap_ls(text: str | Sequence[Mapping[str, Any]]) -> tuple[MirrorSnap, ...]:
    """Mirror snapshots from ``rbd snap ls --all --format json`` (trash and user snapshots ignored), oldest first."""
    data = json.loads(text) if isinstance(text, str) else text
    if not isinstance(data, list):
        raise ValueError("snap ls output is not a JSON list")
    out = []
    for s in data:
        ns = s.get("namespace") or {}
        if ns.get("type") != "mirror":
            continue
        psid = ns.get("primary_snap_id")
        out.append(MirrorSnap(id=int(s["id"]), state=_cli_state(ns), complete=bool(ns.get("complete")),
                              primary_snap_id=int(psid) if psid is not None else None,
                              timestamp=parse_cli_timestamp(str(s.get("timestamp", "")))))
    return tuple(sorted(out, key=lambda x: x.id))


def parse_info(text: str | Mapping[str, Any], snaps: tuple[MirrorSnap, ...] = ()) -> ImageView:
    """``rbd info --format json`` (+ parsed snapshots) -> :class:`ImageView`."""
    data = json.loads(text) if isinstance(text, str) else text
    m = data.get("mirroring") or {}
    enabled = m.get("state") == "enabled"
    primary = bool(m.get("primary")) if enabled else "non-primary" not in data.get("features", [])
    return ImageView(exists=True, mirroring=enabled, mode=m.get("mode") if enabled else None, primary=primary,
                     global_id=str(m.get("global_id", "")), size=int(data.get("size", 0)), snaps=snaps)


def parse_image_status(text: str | Mapping[str, Any]) -> str:
    """``rbd mirror image status --format json`` -> its description (stale-prone; used for split-brain only)."""
    data = json.loads(text) if isinstance(text, str) else text
    return str(data.get("description", ""))


@dataclass(frozen=True)
class PoolHealth:
    health: str
    daemon_health: str
    image_health: str
    daemons: int

    @property
    def ok(self) -> bool:
        return self.daemon_health == "OK" and self.daemons > 0 and self.image_health in ("OK", "UNKNOWN", "")


def parse_pool_status(text: str | Mapping[str, Any]) -> PoolHealth:
    """``rbd mirror pool status --format json`` (with or without ``--verbose``) -> health summary."""
    data = json.loads(text) if isinstance(text, str) else text
    summary = data.get("summary", {})
    return PoolHealth(health=str(summary.get("health", "UNKNOWN")),
                      daemon_health=str(summary.get("daemon_health", "UNKNOWN")),
                      image_health=str(summary.get("image_health", "UNKNOWN")),
                      daemons=len(data.get("daemons", [])) if "daemons" in data else 1)


# --- worker JSON ---------------------------------------------------------------------------------------------


def view_from_worker(d: Mapping[str, Any]) -> ImageView:
    if not d.get("exists"):
        return MISSING
    snaps = tuple(MirrorSnap(id=int(s["id"]), state=str(s["state"]), complete=bool(s["complete"]),
                             primary_snap_id=None if s.get("primary_snap_id") is None else int(s["primary_snap_id"]),
                             timestamp=float(s.get("timestamp", 0.0)))
                  for s in d.get("snaps", []))
    return ImageView(exists=True, mirroring=bool(d.get("mirroring")), mode=d.get("mode"),
                     primary=bool(d.get("primary")), global_id=str(d.get("global_id", "")),
                     size=int(d.get("size", 0)), snaps=tuple(sorted(snaps, key=lambda x: x.id)),
                     description=str(d.get("description", "") or ""))


# --- errors --------------------------------------------------------------------------------------------------


class RbdFailure(enum.Enum):
    NOT_FOUND = "not_found"
    PEER_PRIMARY_OR_NOT_PROPAGATED = "peer_primary_or_demotion_not_propagated"  # EBUSY on promote
    READ_ONLY = "read_only"  # EROFS: non-primary, or rbd-mirror still holds the lock after the demotion arrived
    NOT_PRIMARY = "not_primary"  # EINVAL on demote / snapshot of a non-primary
    ALREADY_PRIMARY = "already_primary"  # EINVAL on promote
    UNAVAILABLE = "unavailable"
    OTHER = "other"


def classify(errno: int | None, text: str = "") -> RbdFailure:
    """An rbd CLI rc (errno) or librbd errno plus its message/stderr -> what happened.

    stderr alone is never a failure (``update notification timed-out`` appears with rc 0, lab/ceph P4); call this
    only when rc != 0.
    """
    t = text.lower()
    if errno == ENOENT or "no such file" in t or "not found" in t:
        return RbdFailure.NOT_FOUND
    if errno == EBUSY:
        return RbdFailure.PEER_PRIMARY_OR_NOT_PROPAGATED
    if errno == EROFS:
        return RbdFailure.READ_ONLY
    if errno in (ETIMEDOUT, ESHUTDOWN, ENOTCONN, 111, 113) or "timed out" in t or "connection" in t:
        return RbdFailure.UNAVAILABLE
    if errno == EINVAL:
        if "already primary" in t:
            return RbdFailure.ALREADY_PRIMARY
        if "not primary" in t or "non-primary" in t or "without force" in t:
            return RbdFailure.NOT_PRIMARY
    return RbdFailure.OTHER


def cli_outcome(rc: int, stderr: str) -> RbdFailure | None:
    """None when the ``rbd`` command succeeded, whatever it printed on stderr (P4); else what failed."""
    return None if rc == 0 else classify(rc, stderr)


# --- decisions -----------------------------------------------------------------------------------------------


def last_snapshot_id(v: ImageView) -> int:
    """Newest mirror snapshot present here, in the id space of the site that created it (0 = none).

    A primary reports its own newest snapshot; a non-primary the primary's id of its newest *complete* copy, so
    ``create_mirror_snapshot()`` at the source and ``status().last_snapshot_id`` at the destination compare.
    A demoted former primary whose peer has sent nothing yet reports its own demotion snapshot.
    """
    if not v.exists or not v.snaps:
        return 0
    newest = v.newest
    assert newest is not None
    if newest.own:
        return newest.id
    copy = v.newest_complete_copy
    if copy is None:
        own = v.newest_own
        return own.id if own else 0
    return int(copy.primary_snap_id or 0)


@dataclass(frozen=True)
class SyncState:
    in_sync: bool
    lag_s: float
    pending: tuple[int, ...] = ()  # primary snapshot ids not yet complete here


def sync_state(local: ImageView, primary: ImageView | None, now_wall: float) -> SyncState:
    """How far ``local`` (a non-primary copy) is behind ``primary``.

    In sync = local holds a complete copy of the primary's newest own mirror snapshot. Lag = age of the oldest
    primary snapshot not yet complete here (0 when in sync; ``inf`` when mirroring is on and nothing ever arrived).
    """
    if local.primary:
        return SyncState(True, 0.0)
    if primary is None or not primary.exists:
        return SyncState(False, float("inf") if local.mirroring else 0.0)
    want = primary.newest_own
    copied = {s.primary_snap_id for s in local.snaps if not s.own and s.complete}
    if want is None:
        return SyncState(False, float("inf") if local.mirroring else 0.0)
    if want.id in copied:
        return SyncState(True, 0.0)
    have = max((x for x in copied if x is not None), default=0)
    pending = tuple(s.id for s in primary.snaps if s.own and s.id > have)
    oldest = min((s.timestamp for s in primary.snaps if s.own and s.id > have), default=want.timestamp)
    lag = max(0.0, now_wall - oldest) if oldest > 0 else float("inf")
    return SyncState(False, lag, pending)


class PromoteDecision(enum.Enum):
    ALREADY_PRIMARY = "already_primary"  # idempotent success
    SPLIT_BRAIN = "split_brain"  # both primary: report, an operator resyncs the loser
    PEER_PRIMARY = "peer_primary"  # refuse: demote the peer first (never --force on the orderly path)
    NOT_MIRRORED = "not_mirrored"
    WAIT_FOR_DEMOTION = "wait_for_demotion"  # the peer's demotion snapshot has not arrived (complete) here yet
    PROMOTE = "promote"  # forward: we hold the peer's newest snapshot (its demotion) completely
    ROLLBACK = "rollback"  # we demoted last and the peer never became primary since: taking it back is safe


def promote_decision(local: ImageView, peer: ImageView) -> PromoteDecision:
    """May this side become primary now? Guards against lab/ceph P1.

    librbd alone is not enough: right after a cutover, promoting the *old* source succeeds without ``--force``
    when its newest snapshot is its own demotion snapshot (it has received nothing from the new primary yet),
    which makes two primaries. So the peer's own view decides:
    - peer primary -> refuse (or split-brain if we are primary too);
    - the peer's newest snapshot is its own (it was primary and demoted) -> we must hold a complete copy of it;
    - the peer's newest snapshot is a copy of ours (it never became primary since) -> rolling back is safe.
    """
    if not local.exists or not local.mirroring:
        return PromoteDecision.NOT_MIRRORED
    if local.primary:
        return PromoteDecision.SPLIT_BRAIN if (peer.exists and peer.primary) else PromoteDecision.ALREADY_PRIMARY
    if not peer.exists:
        # the peer image is gone (disabled there / never created): nothing to be primary against, but nothing
        # proves our copy is current either -> only the rollback case (our own snapshot is newest) is safe
        newest = local.newest
        return PromoteDecision.ROLLBACK if newest is not None and newest.own else PromoteDecision.WAIT_FOR_DEMOTION
    if peer.primary:
        return PromoteDecision.PEER_PRIMARY
    peer_newest = peer.newest
    if peer_newest is None:
        return PromoteDecision.WAIT_FOR_DEMOTION
    if peer_newest.own:
        for s in local.snaps:
            if not s.own and s.complete and s.primary_snap_id == peer_newest.id:
                return PromoteDecision.PROMOTE
        return PromoteDecision.WAIT_FOR_DEMOTION
    local_own = local.newest_own
    newest = local.newest
    if newest is not None and newest.own and local_own is not None and \
            (peer_newest.primary_snap_id or 0) <= local_own.id:
        return PromoteDecision.ROLLBACK
    return PromoteDecision.WAIT_FOR_DEMOTION
