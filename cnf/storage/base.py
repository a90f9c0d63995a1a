"""The StorageDriver port: one cloud's side of a mirrored RBD image.

Contract for every implementation (sim and Ceph):
- Methods are ``async``; every backend call has a timeout (a crashed OSD otherwise
  hangs a client forever) and raises ``DriverUnavailable`` when it expires.
- Idempotent: enabling mirroring twice, demoting a non-primary, promoting a primary
  succeed without a second effect.
- Never two primaries: ``promote`` refuses (``IllegalTransition``) while the peer
  image is still primary, and waits (retryable ``DriverError``) while the peer's
  demotion has not arrived. ``force`` is never used on the orderly path.
- ``SplitBrain`` is reported, not repaired; the recovery is an operator's resync.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class MirrorStatus:
    """One side's view of one image."""

    image: str
    exists: bool
    mirroring: bool  # snapshot-mode mirroring enabled
    primary: bool
    last_snapshot_id: int  # newest mirror snapshot present on this side (0 = none)
    in_sync: bool  # non-primary: has the primary's newest mirror snapshot; primary: True
    lag_s: float  # age of the newest data not yet copied here (0 when in sync)
    split_brain: bool = False


@runtime_checkable
class StorageDriver(Protocol):
    cluster_id: str

    async def status(self, image: str) -> MirrorStatus:
        ...

    async def enable_mirroring(self, image: str) -> bool:
        """Enable snapshot-mode mirroring; returns True if this call enabled it (False if it was on)."""

    async def disable_mirroring(self, image: str) -> None:
        """Undo of ``enable_mirroring`` (only called when this migration enabled it)."""

    async def create_mirror_snapshot(self, image: str) -> int:
        """Take a mirror snapshot on the primary; returns its id."""

    async def demote(self, image: str) -> None:
        """Make this side non-primary (takes the demotion snapshot); idempotent."""

    async def promote(self, image: str) -> None:
        """Make this side primary once the peer's demotion has arrived; idempotent."""

    async def peer_reachable(self) -> bool:
        ...
