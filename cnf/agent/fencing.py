"""Pure fencing decisions for the elected master: when may it still act, and which epoch wins.

Why: an election over leases has one dangerous window. A master that is paused (GC, SIGSTOP, a stalled VM) or cut
off from etcd keeps believing it is master while etcd expires its lease and elects someone else. Two independent
guards close the window, and both are decided here without any I/O so they can be tested exhaustively:

1. **Self-fencing (local deadline).** etcd expires a lease no earlier than ``TTL`` seconds after it *processed* the
   last keep-alive, which is after we *sent* it. So ``send_time + TTL`` (on our monotonic clock) is a point before
   which the lease cannot have expired. We stop acting a safety margin earlier than that, which covers clock-rate
   drift and the time between "checked ``is_master``" and "the side effect landed". The deadline is measured from the
   send time, never from the time the answer arrived: an answer can be delayed arbitrarily.
2. **Epoch fencing.** The epoch is the ``create_revision`` of the master key: etcd's global revision at the moment
   the key was created, so every new term has a strictly higher epoch. Receivers (PostgreSQL, peers) remember the
   highest epoch seen and reject anything lower; the same epoch is the same term and is accepted.

Contract: no I/O, no clock reads: time is always a parameter (``Clock.now()`` values, seconds, monotonic). Settings
and epochs are validated (:class:`~cnf.errors.InvalidInput` naming the field); a stale epoch raises
:class:`~cnf.errors.Fenced` from :func:`check_epoch`.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

from cnf.errors import Fenced, InvalidInput

MIN_LEASE_TTL_S = 2.0
"""etcd clamps lease TTLs to ~1.5 x its election timeout (1 s by default): a 1 s grant comes back as 2 s."""

DEFAULT_LEASE_TTL_S = 5.0
DEFAULT_MARGIN_FRACTION = 0.2
DEFAULT_MIN_MARGIN_S = 0.2
NEVER = -math.inf
"""Deadline value meaning "may not act" (no lease, or the lease is known to be gone)."""


def validate_ttl(ttl_s: object, *, field: str = "lease_ttl_s") -> float:
    """Return ``ttl_s`` as float if it is a finite number >= :data:`MIN_LEASE_TTL_S`; raise InvalidInput otherwise."""
    if isinstance(ttl_s, bool) or not isinstance(ttl_s, int | float):
        raise InvalidInput(f"{field} must be a number of seconds, got {ttl_s!r}", field=field)
    value = float(ttl_s)
    if not math.isfinite(value) or value < MIN_LEASE_TTL_S:
        raise InvalidInput(f"{field} must be >= {MIN_LEASE_TTL_S:g} s (etcd's lease minimum), got {ttl_s!r}",
                           field=field)
    return value


def validate_epoch(epoch: object, *, field: str = "epoch") -> int:
    """An epoch is a positive int (an etcd revision); bools and other types are refused."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        raise InvalidInput(f"{field} must be a positive integer (an etcd revision), got {epoch!r}", field=field)
    return epoch


@dataclass(frozen=True)
class FencingPolicy:
    """How much earlier than the earliest possible lease expiry the master stops acting.

    ``margin = max(min_margin_s, margin_fraction * ttl_s)``. It must leave room for keep-alives: with one keep-alive
    every ``ttl/3`` the deadline is refreshed long before it is reached as long as ``margin < ttl/2``.
    """

    ttl_s: float = DEFAULT_LEASE_TTL_S
    margin_fraction: float = DEFAULT_MARGIN_FRACTION
    min_margin_s: float = DEFAULT_MIN_MARGIN_S

    def __post_init__(self) -> None:
        validate_ttl(self.ttl_s)
        if not (0.0 <= self.margin_fraction < 0.5):
            raise InvalidInput(f"margin_fraction must be in [0, 0.5), got {self.margin_fraction!r}",
                               field="margin_fraction")
        if not (0.0 <= self.min_margin_s < self.ttl_s / 2):
            raise InvalidInput(f"min_margin_s must be in [0, ttl/2), got {self.min_margin_s!r}",
                               field="min_margin_s")

    @property
    def margin_s(self) -> float:
        return max(self.min_margin_s, self.margin_fraction * self.ttl_s)

    @property
    def keepalive_interval_s(self) -> float:
        """Keep-alive period: a third of the TTL, so two consecutive keep-alives may fail without losing the lease."""
        return self.ttl_s / 3.0

    def deadline_after(self, sent_at: float, granted_ttl_s: float | None = None) -> float:
        """Local deadline after a successful grant/keep-alive *sent* at ``sent_at`` that etcd answered with
        ``granted_ttl_s`` (defaults to the configured TTL). A lost lease (TTL <= 0) gives :data:`NEVER`."""
        ttl = self.ttl_s if granted_ttl_s is None else granted_ttl_s
        if ttl <= 0:
            return NEVER
        # etcd may answer with a shorter TTL than we asked for (clamping); never trust more than was configured.
        ttl = min(ttl, self.ttl_s)
        return sent_at + ttl - self.margin_s

    def lease_presumed_expired(self, now: float, last_ok_sent_at: float | None) -> bool:
        """True once etcd may have expired the lease: no successful keep-alive sent within the last TTL.

        Diagnostic only: the election keeps renewing such a lease anyway, because only etcd can say it is gone
        (a new Raft leader extends every lease); the local deadline already fences the node.
        """
        return last_ok_sent_at is None or now >= last_ok_sent_at + self.ttl_s


def advance_deadline(current: float, candidate: float) -> float:
    """Deadlines only move forward: a late answer to an older keep-alive must not shorten the window, nor may
    it extend it beyond what its own send time allows (it cannot, since ``candidate`` comes from that send time)."""
    return max(current, candidate)


def may_act(now: float, deadline: float) -> bool:
    """May a master whose local deadline is ``deadline`` still act at ``now``? Strict: at the deadline, no."""
    return now < deadline


def remaining_s(now: float, deadline: float) -> float:
    """Seconds of mastership left (0 when fenced); useful for bounding an action's own timeout."""
    if deadline == NEVER:
        return 0.0
    return max(0.0, deadline - now)


class EpochVerdict(enum.Enum):
    """Outcome of comparing an incoming epoch with the highest one a receiver has recorded."""

    FIRST = "first"  # nothing recorded yet: accept and record
    SAME = "same"  # the current term: accept
    NEWER = "newer"  # a new term: accept and record (older masters are fenced from now on)
    STALE = "stale"  # an older term: reject


def compare_epoch(incoming: int, highest_seen: int | None) -> EpochVerdict:
    """Classify ``incoming`` against the receiver's ``highest_seen`` (None = nothing recorded)."""
    validate_epoch(incoming, field="epoch")
    if highest_seen is None:
        return EpochVerdict.FIRST
    validate_epoch(highest_seen, field="highest_seen")
    if incoming == highest_seen:
        return EpochVerdict.SAME
    return EpochVerdict.NEWER if incoming > highest_seen else EpochVerdict.STALE


def accepts_epoch(incoming: int, highest_seen: int | None) -> bool:
    return compare_epoch(incoming, highest_seen) is not EpochVerdict.STALE


def check_epoch(incoming: int, highest_seen: int | None) -> int:
    """Return the new highest epoch to record, or raise :class:`~cnf.errors.Fenced` for a stale one."""
    verdict = compare_epoch(incoming, highest_seen)
    if verdict is EpochVerdict.STALE:
        raise Fenced(f"epoch {incoming} is older than the highest recorded epoch {highest_seen}: a newer master "
                     "exists", epoch=incoming, highest_seen=highest_seen)
    return incoming if highest_seen is None else max(incoming, highest_seen)


def may_campaign(self_id: str, handover_target: str | None) -> bool:
    """While a hand-over to another agent is pending, everybody else stands back (the pending record is bounded
    by its own etcd lease, so standing back cannot last longer than the hand-over timeout)."""
    return handover_target is None or handover_target == self_id
