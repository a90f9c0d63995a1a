"""``MigrationWatch``: the lab's instruments around one migration, however it is driven (in-process engine,
the direct baseline, or cnf-agents over REST).

Why one place: the figures are only comparable between modes if every mode starts, waits for and stops the same
instruments the same way — the probe must see the VM before the move, its replies must resume steadily (20 in a
row) before it stops, the serving guest must beat 3 more times (and write 2 more disk records), and the
tap counters are read at the end and after.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from lab.e2e_net import GuestNetwork
from lab.e2e_probe import PingProbe, RouteWatch, SerialTail
from lab.e2e_report import Observation
from lab.qemu import wait_heartbeats


class MigrationWatch:
    """``async with MigrationWatch(...) as w: w.started(); <migrate>; await w.finished(serving)`` then
    ``w.observation()``. Leaving the block (normally or not) stops every instrument it started."""

    def __init__(self, *, probe: PingProbe, serials: Mapping[str, Path], route_namespace: str, prefix: str,
                 net: GuestNetwork, clusters: Sequence[str], src: str, dst: str, next_hops: Mapping[str, str],
                 hb_ms: int, disk_ms: int = 0) -> None:
        self.probe, self.serials, self.net, self.clusters = probe, dict(serials), net, tuple(clusters)
        self.src, self.dst, self.next_hops, self.hb_ms = src, dst, dict(next_hops), hb_ms
        self.disk_ms = disk_ms
        self.tails = {cid: SerialTail(serials[cid]) for cid in self.clusters}
        self.route = RouteWatch(route_namespace, prefix)
        self._started: list[SerialTail | RouteWatch] = []
        self.t_probe_start = self.t_probe_stop = self.t0 = self.t_end = 0.0
        self.taps_at_end: dict[str, dict[str, int] | None] = {}
        self.taps_after: dict[str, dict[str, int] | None] = {}

    async def __aenter__(self) -> MigrationWatch:
        self.t_probe_start = time.time()
        self.probe.start()
        try:
            watchers: list[SerialTail | RouteWatch] = [*self.tails.values(), self.route]
            for w in watchers:
                w.start()
                self._started.append(w)
            # the probe must see the VM before the move: else a blackout would mean nothing
            await asyncio.to_thread(self.probe.wait_answered, 10, after=0.0, within_s=10.0)
        except BaseException:
            self._stop()
            raise
        return self

    def started(self) -> None:
        """The migration is being requested now."""
        self.t0 = time.time()

    async def finished(self, serving: str) -> None:
        """The migration reached a terminal state; ``serving``: the cloud whose guest should now answer."""
        self.t_end = time.time()
        self.taps_at_end = {cid: self.net.tap_packets(cid) for cid in self.clusters}
        # the replies must resume (and be seen steadily) before the probe stops: 20 in a row = 200 ms
        await asyncio.to_thread(self.probe.wait_answered, 20, after=self.t_end, within_s=15.0, consecutive=True)
        tail = self.tails[serving]
        last = tail.beats[-1][1] if tail.beats else -1
        with contextlib.suppress(TimeoutError):  # a guest that does not beat shows in the figures
            await wait_heartbeats(self.serials[serving], above=last, count=3, within_s=10.0)
        if self.disk_ms > 0:  # the guest must be seen writing its disk after the end: 2 records
            deadline = time.monotonic() + 10.0
            while sum(1 for t, _, _ in tail.disk if t > self.t_end) < 2 and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.05)  # the tail is a thread: polling its list is the simple way
        self.taps_after = {cid: self.net.tap_packets(cid) for cid in self.clusters}

    async def __aexit__(self, _t: type[BaseException] | None, _e: BaseException | None,
                        _tb: TracebackType | None) -> None:
        self._stop()

    def _stop(self) -> None:
        for w in self._started:
            w.stop()
        self._started = []
        self.probe.stop()
        self.t_probe_stop = time.time()

    def observation(self) -> Observation:
        sends, replies = self.probe.log()
        return Observation(src=self.src, dst=self.dst, t0=self.t0, t_end=self.t_end,
                           t_probe_start=self.t_probe_start, t_probe_stop=self.t_probe_stop, sends=sends,
                           replies=replies, src_tail=self.tails[self.src], dst_tail=self.tails[self.dst],
                           route=self.route, src_next_hop=self.next_hops[self.src],
                           dst_next_hop=self.next_hops[self.dst], taps_at_end=self.taps_at_end,
                           taps_after=self.taps_after, hb_ms=self.hb_ms)
