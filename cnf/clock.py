"""Clocks injected into the pure core and the sim drivers.

Why: the engine, the election decisions and the sim world must be testable
without waiting for real time. ``SystemClock`` is used in production;
``ManualClock`` lets tests advance time explicitly and deterministically.
"""

from __future__ import annotations

import asyncio
import time
from typing import Protocol


class Clock(Protocol):
    def now(self) -> float:
        """Seconds, monotonic (only differences are meaningful)."""

    def wall(self) -> float:
        """Seconds since the epoch (for timestamps shown to people)."""

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` of this clock's time."""


class SystemClock:
    def now(self) -> float:
        return time.monotonic()

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))


class ManualClock:
    """A clock that only moves when told to; ``sleep`` advances it immediately.

    Contract: ``sleep(s)`` returns at once after adding ``s`` to the time, so code
    that polls with a deadline finishes in zero wall time but sees time pass.
    """

    def __init__(self, start: float = 1_000_000.0) -> None:
        self._t = start

    def now(self) -> float:
        return self._t

    def wall(self) -> float:
        return self._t

    def advance(self, seconds: float) -> None:
        self._t += max(0.0, seconds)

    async def sleep(self, seconds: float) -> None:
        self.advance(seconds)
        await asyncio.sleep(0)


class ScaledClock:
    """Real time, sped up by ``factor``: the demo runs a 30 s migration in ~1 s but stays a real-time system."""

    def __init__(self, factor: float = 1.0) -> None:
        self.factor = factor
        self._t0 = time.monotonic()
        self._origin = 1_000_000.0

    def now(self) -> float:
        return self._origin + (time.monotonic() - self._t0) * self.factor

    def wall(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds) / self.factor)
