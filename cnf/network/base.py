"""The BgpDriver port: one cloud's BGP speaker, announcing VM /32s.

Contract for every implementation (sim and FRR):
- ``announce`` and ``withdraw`` are idempotent (announce twice = one route; withdraw
  an absent prefix = no-op).
- Inputs (prefix, next-hop) are validated before anything runs; bad input raises
  ``InvalidInput`` naming the field.
- State is read from the speaker's own tables, never inferred from exit codes.
- A speaker that is down raises ``DriverUnavailable`` within the call's timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class BgpPeer:
    address: str
    remote_as: int
    established: bool
    prefixes_received: int
    state: str = ""


@dataclass(frozen=True)
class BgpPath:
    """The best path for a prefix as seen from one router of the fabric."""

    prefix: str
    next_hop: str
    origin_as: int  # the AS that originated the route (the owning cloud)


@runtime_checkable
class BgpDriver(Protocol):
    cluster_id: str
    as_number: int
    default_next_hop: str

    async def announce(self, prefix: str, next_hop: str | None = None) -> None:
        ...

    async def withdraw(self, prefix: str) -> None:
        ...

    async def announced(self, prefix: str) -> bool:
        """True if this speaker originates ``prefix``."""

    async def fabric_best_path(self, prefix: str) -> BgpPath | None:
        """The best path the rest of the fabric (route server / peers) has for ``prefix``."""

    async def peers(self) -> list[BgpPeer]:
        ...
