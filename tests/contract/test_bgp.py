"""The BgpDriver contract, run against every backend: ``sim`` (SimBgpSpeaker) and ``frr`` (FrrBgpSpeaker).

``frr`` is a real eBGP route server + three clouds, each FRR in its own network namespace (``lab.frr``, started
by this suite, shared with tests/lab/frr); it needs root and is marked ``lab``. A sim that passes this suite is an
honest stand-in for FRR for what the migration engine relies on:

- announce / withdraw, idempotent both ways (announce twice = one route, withdraw of an absent prefix = no-op);
- the requested next-hop is what *another* cloud sees (``fabric_best_path``), and a new next-hop replaces it;
- handoff order (destination announces, then the source withdraws) never leaves the fabric without a path;
- a stopped backend raises ``DriverUnavailable`` within the call's timeout, never hangs;
- malicious or malformed input is refused with ``InvalidInput`` naming the field, before the backend is touched
  (proved by calling a speaker whose backend is down: touching it would raise ``DriverUnavailable`` instead).

What is *not* part of the contract: which origin wins while two clouds announce (FRR: the older path; the sim:
the lowest AS), so the handoff test accepts either origin during the overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import sys
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from cnf.errors import DriverUnavailable, InvalidInput
from cnf.network.base import BgpDriver, BgpPath
from cnf.network.bgp import FrrBgpSpeaker, wait_for_fabric_path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the top-level ``lab`` package is not installed, only ``cnf`` is
    sys.path.insert(0, str(ROOT))

from lab.frr import FrrLab  # noqa: E402

pytestmark = pytest.mark.timeout(60)

BAD_PREFIXES = [
    "10.99.0.5/32\nrouter bgp 1",
    "10.99.0.5/32\n",
    "10.99.0.5/32;reboot",
    "10.99.0.5/32 && id",
    "$(reboot)",
    "`id`",
    "10.99.0.5/32 route-map EVIL",
    "10.99.0.5/32|cat",
    "10.99.0.5/24",
    "10.99.0.0/16",
    "10.99.0.5",
    "010.99.0.5/32",
    " 10.99.0.5/32",
    "10.99.0.5/32\x00",
    "",
    "::1/128",
]
# "" is left out on purpose: the sim reads it as "no next-hop given" (use the default); FrrBgpSpeaker refuses it
BAD_NEXT_HOPS = ["10.0.0.1\n", "10.0.0.1;reboot", "10.0.0.1 route-map X", "$(id)", "10.0.0.256", "fe80::1",
                 "10.0.0.1 "]

_prefix_numbers = itertools.count(1)


@dataclass
class Backend:
    """Three clouds of one fabric, plus a way to get a speaker whose backend is down."""

    name: str
    a: BgpDriver
    b: BgpDriver
    c: BgpDriver
    alt_next_hop: dict[str, str]  # per cluster_id: a second next-hop the fabric can carry
    down_speaker: Callable[[], contextlib.AbstractAsyncContextManager[BgpDriver]]
    within: float  # how long a fabric change may take to be seen by every cloud


# --- backends ----------------------------------------------------------------------------------


def _sim_backend() -> Backend:
    from cnf.network.sim import SimBgpSpeaker
    from cnf.sim.fabric import SimFabric

    fabric = SimFabric()
    for i, cid in enumerate(("a", "b", "c"), start=1):
        fabric.add_cluster(cid, name=f"cloud-{cid}", as_number=65000 + i, next_hop=f"10.255.0.{i}")
    fabric.add_cluster("d", name="cloud-d", as_number=65101, next_hop="10.254.1.1")

    @contextlib.asynccontextmanager
    async def down_speaker() -> AsyncIterator[BgpDriver]:
        fabric.faults.down.add(("d", "bgp"))
        try:
            yield SimBgpSpeaker(fabric, "d")
        finally:
            fabric.faults.down.discard(("d", "bgp"))

    a, b, c = (SimBgpSpeaker(fabric, cid) for cid in ("a", "b", "c"))
    return Backend("sim", a, b, c, {"a": "10.255.0.11", "b": "10.255.0.12", "c": "10.255.0.13"}, down_speaker, 1.0)


def _frr_backend(lab: FrrLab) -> Backend:
    speakers = {
        cid: FrrBgpSpeaker(cid, r.as_number, r.address, pathspace=r.pathspace, command_timeout=5.0)
        for cid, r in zip(("a", "b", "c"), lab.cloud_routers, strict=False)
    }
    spare = lab.router("s1")

    @contextlib.asynccontextmanager
    async def down_speaker() -> AsyncIterator[BgpDriver]:
        await asyncio.to_thread(lab.stop_router, "s1")  # a real FRR, really stopped
        try:
            yield FrrBgpSpeaker("d", spare.as_number, spare.address, pathspace=spare.pathspace, command_timeout=3.0)
        finally:
            await asyncio.to_thread(lab.start_router, "s1")

    alt = {cid: r.vm_next_hop for cid, r in zip(("a", "b", "c"), lab.cloud_routers, strict=False)}
    return Backend("frr", speakers["a"], speakers["b"], speakers["c"], alt, down_speaker, 10.0)


@pytest.fixture(params=["sim", pytest.param("frr", marks=pytest.mark.lab)])
def bgp(request: pytest.FixtureRequest) -> Backend:
    if request.param == "sim":
        return _sim_backend()
    return _frr_backend(request.getfixturevalue("frr_lab"))


@pytest.fixture
async def prefix(bgp: Backend) -> AsyncIterator[str]:
    """A /32 used by this test only; withdrawn everywhere afterwards so the shared lab stays clean."""
    n = next(_prefix_numbers)
    p = f"10.99.{n // 250}.{n % 250 + 1}/32"
    yield p
    for speaker in (bgp.a, bgp.b, bgp.c):
        with contextlib.suppress(Exception):
            await speaker.withdraw(p)


async def wait_fabric_empty(observer: BgpDriver, prefix: str, within: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while (path := await observer.fabric_best_path(prefix)) is not None:
        assert loop.time() < deadline, f"{prefix} still in the fabric after {within}s: {path}"
        await asyncio.sleep(0.02)


# --- the contract ------------------------------------------------------------------------------


async def test_announce_is_seen_by_another_cloud(bgp: Backend, prefix: str) -> None:
    assert not await bgp.a.announced(prefix)
    await bgp.a.announce(prefix)
    assert await bgp.a.announced(prefix)
    assert not await bgp.b.announced(prefix)
    path = await wait_for_fabric_path(bgp.c, prefix, origin_as=bgp.a.as_number, within=bgp.within)
    assert path == BgpPath(prefix=prefix, next_hop=bgp.a.default_next_hop, origin_as=bgp.a.as_number)


async def test_withdraw_removes_the_route_from_the_fabric(bgp: Backend, prefix: str) -> None:
    await bgp.a.announce(prefix)
    await wait_for_fabric_path(bgp.c, prefix, origin_as=bgp.a.as_number, within=bgp.within)
    await bgp.a.withdraw(prefix)
    assert not await bgp.a.announced(prefix)
    await wait_fabric_empty(bgp.c, prefix, bgp.within)
    await wait_fabric_empty(bgp.a, prefix, bgp.within)


async def test_announce_twice_is_one_route(bgp: Backend, prefix: str) -> None:
    await bgp.b.announce(prefix)
    await bgp.b.announce(prefix)
    assert await bgp.b.announced(prefix)
    await wait_for_fabric_path(bgp.c, prefix, origin_as=bgp.b.as_number, within=bgp.within)
    await bgp.b.withdraw(prefix)  # one withdraw removes it: there was only one route
    assert not await bgp.b.announced(prefix)
    await wait_fabric_empty(bgp.c, prefix, bgp.within)


async def test_withdraw_of_an_absent_prefix_is_a_no_op(bgp: Backend, prefix: str) -> None:
    await bgp.a.withdraw(prefix)
    await bgp.a.withdraw(prefix)
    assert not await bgp.a.announced(prefix)
    assert await bgp.c.fabric_best_path(prefix) is None


async def test_requested_next_hop_is_what_another_cloud_sees(bgp: Backend, prefix: str) -> None:
    nh = bgp.alt_next_hop["b"]
    assert nh != bgp.b.default_next_hop
    await bgp.b.announce(prefix, next_hop=nh)
    path = await wait_for_fabric_path(bgp.c, prefix, next_hop=nh, within=bgp.within)
    assert path.origin_as == bgp.b.as_number
    # a new next-hop replaces the old one (no second route, no withdraw needed)
    await bgp.b.announce(prefix)
    await wait_for_fabric_path(bgp.c, prefix, next_hop=bgp.b.default_next_hop, within=bgp.within)
    await bgp.b.withdraw(prefix)
    await wait_fabric_empty(bgp.c, prefix, bgp.within)


async def test_handoff_destination_first_never_leaves_the_fabric_without_a_path(bgp: Backend, prefix: str) -> None:
    src, dst, other = bgp.a, bgp.b, bgp.c
    await src.announce(prefix)
    await wait_for_fabric_path(other, prefix, origin_as=src.as_number, within=bgp.within)

    seen: list[BgpPath | None] = []
    done, observed = asyncio.Event(), asyncio.Event()

    async def watch() -> None:  # what a third cloud sees, as often as it can be asked
        while not done.is_set():
            seen.append(await other.fabric_best_path(prefix))
            observed.set()
            await asyncio.sleep(0.001)

    async def observed_once_more() -> None:  # let the watcher see each stage (the sim never blocks on I/O)
        observed.clear()
        await observed.wait()

    watcher = asyncio.create_task(watch())
    try:
        await observed_once_more()
        await dst.announce(prefix, next_hop=bgp.alt_next_hop["b"])
        await observed_once_more()
        assert await src.announced(prefix) and await dst.announced(prefix)
        await src.withdraw(prefix)
        await observed_once_more()
        final = await wait_for_fabric_path(other, prefix, origin_as=dst.as_number, within=bgp.within)
    finally:
        done.set()
        await watcher
    assert final.next_hop == bgp.alt_next_hop["b"]
    assert len(seen) >= 3, "the watcher did not observe every stage"
    assert None not in seen, f"a moment without any path: {seen}"
    assert {p.origin_as for p in seen if p} <= {src.as_number, dst.as_number}
    # the source itself now reaches the VM through the destination
    await wait_for_fabric_path(src, prefix, origin_as=dst.as_number, within=bgp.within)
    assert not await src.announced(prefix)


async def test_peers_report_an_established_ebgp_session(bgp: Backend) -> None:
    peers = await bgp.a.peers()
    assert peers, "no BGP peer configured"
    up = [p for p in peers if p.established]
    assert up and all(p.state == "Established" for p in up)
    assert all(p.remote_as != bgp.a.as_number for p in up)


async def test_stopped_backend_raises_driver_unavailable_not_a_hang(bgp: Backend) -> None:
    calls: list[Callable[[BgpDriver], Any]] = [
        lambda s: s.announce("10.99.250.1/32"),
        lambda s: s.withdraw("10.99.250.1/32"),
        lambda s: s.announced("10.99.250.1/32"),
        lambda s: s.fabric_best_path("10.99.250.1/32"),
        lambda s: s.peers(),
    ]
    async with bgp.down_speaker() as speaker:
        for call in calls:
            with pytest.raises(DriverUnavailable):
                await asyncio.wait_for(call(speaker), timeout=15)


async def test_malicious_input_is_refused_before_the_backend_is_touched(bgp: Backend) -> None:
    async with bgp.down_speaker() as speaker:  # touching the backend would raise DriverUnavailable
        for bad in BAD_PREFIXES:
            for call in (speaker.announce, speaker.withdraw, speaker.announced, speaker.fabric_best_path):
                with pytest.raises(InvalidInput) as err:
                    await call(bad)
                assert err.value.field == "prefix", (bad, call)
        for bad in BAD_NEXT_HOPS:
            with pytest.raises(InvalidInput) as err:
                await speaker.announce("10.99.250.2/32", next_hop=bad)
            assert err.value.field == "next_hop", bad
