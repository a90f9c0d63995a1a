"""FrrBgpSpeaker against the real FRR fabric, for what the contract suite does not cover.

Facts proven here (each one is written down in docs/bgp.md): a frozen bgpd gives ``DriverUnavailable`` within the
command timeout; a wrong AS is a ``ConfigError``; the route server holds both origins mid-handoff and keeps the older
one; eBGP replaces a next-hop that is not on the peering segment (so the step ``check`` must read the fabric);
announcements live in FRR's running config only (gone after an FRR restart); concurrent writers to one FRR succeed,
over either transport, and ``originated()`` read right after their withdraws no longer lists the prefixes (FRR
keeps a withdrawn path ~50 ms flagged "removed": withdraw must wait it out); announce returns only once the route
is advertised; every lab session runs with MRAI 0.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from cnf.errors import ConfigError, DriverUnavailable, StepTimeout
from cnf.network.base import BgpPath
from cnf.network.bgp import FrrBgpSpeaker, peer_health, wait_for_fabric_path
from lab.frr import FrrLab

pytestmark = [pytest.mark.lab, pytest.mark.timeout(60)]


def speaker(lab: FrrLab, name: str, **kw: object) -> FrrBgpSpeaker:
    r = lab.router(name)
    return FrrBgpSpeaker(name, r.as_number, r.address, pathspace=r.pathspace, **kw)  # type: ignore[arg-type]


async def test_frozen_bgpd_is_driver_unavailable_not_a_hang(frr_lab: FrrLab) -> None:
    pid = frr_lab.daemon_pid("s1", "bgpd")
    assert pid is not None
    sp = speaker(frr_lab, "s1", command_timeout=1.0)
    loop = asyncio.get_running_loop()
    os.kill(pid, signal.SIGSTOP)
    try:
        started = loop.time()
        with pytest.raises(DriverUnavailable):
            await sp.peers()
        with pytest.raises(DriverUnavailable):
            await sp.announce("10.98.200.1/32")
        elapsed = loop.time() - started
    finally:
        os.kill(pid, signal.SIGCONT)
    assert elapsed < 10, "each call must end at its command timeout"  # bound, not a speed claim
    assert len(await sp.peers()) == 1  # the thawed daemon answers again


async def test_as_number_differing_from_running_router_bgp_is_a_config_error(frr_lab: FrrLab) -> None:
    s1 = frr_lab.router("s1")
    sp = FrrBgpSpeaker("s1", s1.as_number + 1, s1.address, pathspace=s1.pathspace)
    assert await sp.running_as() == s1.as_number
    with pytest.raises(ConfigError) as err:
        await sp.announce("10.98.200.2/32")
    assert err.value.key == "bgp.as_number"


async def test_route_server_observer_sees_the_older_origin_until_the_source_withdraws(frr_lab: FrrLab,
                                                                                      prefix: str) -> None:
    rs = frr_lab.route_server
    c1, c2 = speaker(frr_lab, "c1"), speaker(frr_lab, "c2")
    observer = speaker(frr_lab, "c3", observer_pathspace=rs.pathspace)
    try:
        await c1.announce(prefix)
        await wait_for_fabric_path(observer, prefix, origin_as=65001, within=10)
        await c2.announce(prefix)
        # wait until the route server really holds both paths, then check which one it uses
        rs_speaker = FrrBgpSpeaker("rs", rs.as_number, rs.address, pathspace=rs.pathspace)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        while len(await _rs_paths(frr_lab, prefix)) < 2:
            assert loop.time() < deadline, "route server never received the second origin"
            await asyncio.sleep(0.02)
        assert await observer.fabric_best_path(prefix) == BgpPath(prefix, "10.255.0.1", 65001)
        await c1.withdraw(prefix)
        assert await wait_for_fabric_path(observer, prefix, origin_as=65002, within=10) == BgpPath(
            prefix, "10.255.0.2", 65002)
        peers = await rs_speaker.peers()
        assert [(p.address, p.remote_as, p.established) for p in peers] == [
            ("10.255.0.1", 65001, True), ("10.255.0.2", 65002, True), ("10.255.0.3", 65003, True)]
    finally:
        await c1.withdraw(prefix)
        await c2.withdraw(prefix)


async def _rs_paths(lab: FrrLab, prefix: str) -> list[object]:
    view = await asyncio.to_thread(lab.vtysh_json, "rs", f"show bgp ipv4 unicast {prefix} json")
    paths = view.get("paths")
    return list(paths) if isinstance(paths, list) else []


async def test_next_hop_off_the_peering_segment_is_replaced_by_ebgp(frr_lab: FrrLab, prefix: str) -> None:
    c1, c3 = speaker(frr_lab, "c1"), speaker(frr_lab, "c3")
    try:
        await c1.announce(prefix, next_hop="192.0.2.1")
        assert await c1.announced(prefix)
        seen = await wait_for_fabric_path(c3, prefix, origin_as=65001, within=10)
        assert seen.next_hop == "10.255.0.1"  # FRR advertised its own address, not 192.0.2.1
        with pytest.raises(StepTimeout):
            await wait_for_fabric_path(c3, prefix, next_hop="192.0.2.1", within=1.0)
    finally:
        await c1.withdraw(prefix)


async def test_announcements_live_in_the_running_config_only(frr_lab: FrrLab, prefix: str) -> None:
    s1 = speaker(frr_lab, "s1")
    await s1.announce(prefix)
    assert prefix in await s1.originated()
    await asyncio.to_thread(frr_lab.stop_router, "s1")
    await asyncio.to_thread(frr_lab.start_router, "s1")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while True:  # bgpd takes a moment to load frr.conf after the restart
        try:
            if await s1.running_as() == frr_lab.router("s1").as_number:
                break
        except DriverUnavailable:
            pass
        assert loop.time() < deadline, "restarted FRR never came back"
        await asyncio.sleep(0.1)
    assert prefix not in await s1.originated()  # the reconciler must announce again after an FRR restart


@pytest.mark.parametrize("transports", [("socket", "socket"), ("vtysh", "vtysh"), ("socket", "vtysh")])
async def test_concurrent_writers_to_one_frr_all_succeed(frr_lab: FrrLab, prefix: str,
                                                         transports: tuple[str, str]) -> None:
    base = prefix.rsplit(".", 1)[0].replace("10.98.", "10.97.")
    last = int(prefix.rsplit(".", 1)[1].split("/")[0])
    prefixes = [f"{base}.{last}/32", f"{base}.{(last + 125) % 250 + 1}/32"]  # unique per test, like ``prefix``
    # two clients, like an agent and an operator
    writers = [speaker(frr_lab, "c2", transport=transports[0]), speaker(frr_lab, "c2", transport=transports[1])]
    try:
        await asyncio.gather(*(writers[i % 2].announce(p) for i, p in enumerate(prefixes)))
        assert set(prefixes) <= set(await writers[0].originated())
        await asyncio.gather(*(writers[i % 2].withdraw(p) for i, p in enumerate(prefixes)))
        # read at once: withdraw returned only after FRR dropped the path (it keeps it ~50 ms flagged "removed")
        assert not set(prefixes) & set(await writers[0].originated())
        assert not set(prefixes) & set(await writers[1].originated())
    finally:
        for p in prefixes:
            await writers[0].withdraw(p)
        for w in writers:
            await w.close()


@pytest.mark.parametrize("transport", ["socket", "vtysh"])
async def test_withdraw_returns_once_frr_no_longer_originates_or_advertises(frr_lab: FrrLab, prefix: str,
                                                                            transport: str) -> None:
    c1 = speaker(frr_lab, "c1", transport=transport)
    try:
        for _ in range(3):
            await c1.announce(prefix)
            view = await asyncio.to_thread(frr_lab.vtysh_json, "c1", f"show bgp ipv4 unicast {prefix} json")
            assert "10.255.0.254" in view.get("advertisedTo", {}), "announce returned before FRR advertised"
            await c1.withdraw(prefix)
            assert prefix not in await c1.originated()
            assert await c1.announced(prefix) is False
    finally:
        await c1.withdraw(prefix)
        await c1.close()


async def test_from_settings_reads_router_id_and_checks_the_as(frr_lab: FrrLab) -> None:
    c1 = frr_lab.router("c1")
    sp = await FrrBgpSpeaker.from_settings("c1", as_number=c1.as_number, pathspace=c1.pathspace)
    assert sp.default_next_hop == c1.address  # router-id = peering address in the lab
    sp2 = await FrrBgpSpeaker.from_settings("c1", as_number=c1.as_number, next_hop=c1.vm_next_hop,
                                            pathspace=c1.pathspace)
    assert sp2.default_next_hop == c1.vm_next_hop
    with pytest.raises(ConfigError) as err:
        await FrrBgpSpeaker.from_settings("c1", as_number=64999, pathspace=c1.pathspace)
    assert err.value.key == "bgp.as_number"
    with pytest.raises(DriverUnavailable):
        await FrrBgpSpeaker.from_settings("x", as_number=65001, pathspace=f"{c1.pathspace}-absent")


async def test_session_down_is_reported_for_preflight(frr_lab: FrrLab) -> None:
    peers = await speaker(frr_lab, "s1").peers()  # its one neighbour never answers
    assert len(peers) == 1
    assert peers[0].remote_as == 65000 and not peers[0].established and peers[0].state != "Established"
    assert peer_health(peers)["healthy"] is False
    up = await speaker(frr_lab, "c1").peers()
    assert [(p.address, p.established) for p in up] == [("10.255.0.254", True)]


async def test_every_lab_session_sends_updates_without_an_advertisement_interval(frr_lab: FrrLab) -> None:
    # docs/bgp.md "FRR settings": MRAI 0 on both ends of every session (what production must set too)
    for name in ("rs", "c1", "c2", "c3"):
        neighbors = await asyncio.to_thread(frr_lab.vtysh_json, name, "show bgp neighbor json")
        assert neighbors, f"{name}: no neighbours"
        for address, info in neighbors.items():
            assert isinstance(info, dict) and info.get("minBtwnAdvertisementRunsTimerMsecs") == 0, (name, address)
