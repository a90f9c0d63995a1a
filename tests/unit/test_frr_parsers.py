"""FRR JSON parsers on real FRR 8.4.4 captures, input validation, and FrrBgpSpeaker's error mapping.

Captures (tests/data/frr/): ``r1..r3``/``rs`` from the etcd-frr lab report (10.99.0.5/32 announced by r1, and by
r1 + r2 mid-handoff: "two_origins"); ``c1``/``c3`` captured from ``lab.frr`` (own route with ``set ip next-hop``,
the third-party next-hop as another cloud sees it, a path in the ``removed`` state right after ``no network``,
a route-server summary with one peer down, a path queued for best-path right after ``network``
(``processScheduled``), the table view right after ``no network``).

The error-mapping tests run ``FrrBgpSpeaker`` against small stand-in ``vtysh`` scripts (no FRR needed) that record
their argv, so they also prove that bad input never reaches vtysh and that arguments are passed as a list.
"""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any

import pytest

from cnf.errors import ConfigError, DriverError, DriverUnavailable, InvalidInput
from cnf.network import frr_json
from cnf.network.base import BgpDriver, BgpPath, BgpPeer
from cnf.network.bgp import (
    FrrBgpSpeaker,
    announce_commands,
    peer_health,
    route_map_name,
    validate_as_number,
    validate_next_hop,
    validate_pathspace,
    validate_prefix,
    withdraw_commands,
)

DATA = Path(__file__).resolve().parents[1] / "data" / "frr"
P = "10.99.0.5/32"


def fixture(name: str) -> dict[str, Any]:
    return frr_json.load((DATA / name).read_text())


def fabric(name: str, local_as: int, self_nh: str = "10.255.0.9", prefix: str = P) -> BgpPath | None:
    return frr_json.fabric_path(prefix, fixture(name), local_as=local_as, self_next_hop=self_nh)


# --- prefix view -------------------------------------------------------------------------------


def test_absent_prefix_is_empty_json_and_no_path() -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.r3.absent.json")
    assert view == {}
    assert frr_json.prefix_paths(view) == []
    assert frr_json.local_path(view) is None
    assert frr_json.fabric_path(P, view, local_as=65003, self_next_hop="10.255.0.3") is None
    assert frr_json.best_path(P, view, local_as=65003, self_next_hop="10.255.0.3") is None


def test_text_output_is_not_json() -> None:
    with pytest.raises(frr_json.FrrOutputError):
        frr_json.load((DATA / "show_bgp_ipv4_unicast_prefix.r3.absent.txt").read_text())
    with pytest.raises(frr_json.FrrOutputError):
        frr_json.load("[1, 2]")


def test_own_route_on_the_originator() -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.r1.two_origins.json")
    own = frr_json.local_path(view)
    assert own is not None
    assert (own.local, own.best, own.valid, own.as_path, own.next_hop) == (True, True, True, (), "0.0.0.0")
    assert frr_json.advertised_to(view) == ["10.255.0.254"]
    # the route server never sends r1 its own prefix back: the fabric's path, seen from r1, is r1's own route;
    # FRR's "0.0.0.0" (myself) is reported as the speaker's own next-hop
    assert fabric("show_bgp_ipv4_unicast_prefix.r1.two_origins.json", 65001, "10.255.0.1") == BgpPath(
        P, "10.255.0.1", 65001)


def test_own_route_that_was_not_advertised_is_not_in_the_fabric() -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.r1.two_origins.json")
    del view["advertisedTo"]  # e.g. the session to the route server is down
    assert frr_json.local_path(view) is not None
    assert frr_json.fabric_path(P, view, local_as=65001, self_next_hop="10.255.0.1") is None


def test_destination_mid_handoff_sees_the_fabric_still_on_the_source() -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.r2.two_origins.json")
    paths = frr_json.prefix_paths(view)
    assert len(paths) == 2
    own = frr_json.local_path(view)
    assert own is not None and own.best  # weight 32768 makes r2 prefer its own route...
    assert frr_json.best_path(P, view, local_as=65002, self_next_hop="10.255.0.2") == BgpPath(P, "10.255.0.2", 65002)
    # ...but the route server still gives everyone r1's older path
    assert fabric("show_bgp_ipv4_unicast_prefix.r2.two_origins.json", 65002) == BgpPath(P, "10.255.0.1", 65001)


@pytest.mark.parametrize("name", ["show_bgp_ipv4_unicast_prefix.r3.two_origins.json",
                                  "show_bgp_ipv4_unicast_prefix.r3.one_origin.json",
                                  "show_bgp_ipv4_unicast_prefix.rs.two_origins.json",
                                  "show_bgp_ipv4_unicast_prefix.rs.one_origin.json"])
def test_third_cloud_and_route_server_use_the_source(name: str) -> None:
    assert fabric(name, 65003) == BgpPath(P, "10.255.0.1", 65001)
    assert frr_json.local_path(fixture(name)) is None


def test_route_server_holds_both_origins_and_prefers_the_older() -> None:
    paths = frr_json.prefix_paths(fixture("show_bgp_ipv4_unicast_prefix.rs.two_origins.json"))
    assert sorted(p.as_path for p in paths) == [(65001,), (65002,)]
    assert [p.as_path for p in paths if p.best] == [(65001,)]


def test_own_route_with_set_next_hop_and_third_party_next_hop_elsewhere() -> None:
    p = "10.99.1.4/32"
    own = frr_json.local_path(fixture("show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json"))
    assert own is not None and own.next_hop == "10.255.0.11"
    assert fabric("show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json", 65001, prefix=p) == BgpPath(
        p, "10.255.0.11", 65001)
    assert fabric("show_bgp_ipv4_unicast_prefix.c3.third_party_next_hop.json", 65003, prefix=p) == BgpPath(
        p, "10.255.0.11", 65001)


def test_path_being_removed_is_ignored() -> None:
    raw = fixture("show_bgp_ipv4_unicast_prefix.c1.removed.json")
    assert raw["paths"][0]["removed"] is True  # the real capture really has the flag
    assert frr_json.prefix_paths(raw) == []
    assert frr_json.local_path(raw) is None


def test_path_being_removed_still_counts_until_frr_has_processed_it() -> None:
    # right after ``no network`` FRR keeps the path, flagged, until best-path runs 50 ms later: not yet sent
    raw = fixture("show_bgp_ipv4_unicast_prefix.c1.removed.json")
    own = frr_json.local_path(raw, include_removed=True)
    assert own is not None and own.local
    assert frr_json.process_pending(raw)
    assert frr_json.local_path({}, include_removed=True) is None
    # the table view lists it too, flagged "removed": it is not originated any more
    table = fixture("show_bgp_ipv4_unicast.c1.removed.json")
    assert list(table["routes"]) == ["10.99.1.4/32"] and table["routes"]["10.99.1.4/32"][0]["removed"] is True
    assert frr_json.originated_prefixes(table) == []


def test_announcement_queued_for_best_path_is_not_yet_advertised() -> None:
    queued = fixture("show_bgp_ipv4_unicast_prefix.c1.process_scheduled.json")  # right after ``network``
    own = frr_json.local_path(queued)
    assert own is not None and own.valid and own.next_hop == "10.255.0.11"
    assert frr_json.process_pending(queued) and frr_json.advertised_to(queued) == []
    done = fixture("show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json")  # after FRR's best-path run
    assert not frr_json.process_pending(done) and frr_json.advertised_to(done) == ["10.255.0.254"]
    assert not frr_json.process_pending({})


def test_replacement_path_awaiting_next_hop_resolution_is_still_the_fabric_path() -> None:
    # captured on cloud c during a handoff: the route server replaced a's path by b's, whose next-hop zebra had not
    # resolved yet (valid false, processScheduled); c still forwards by its previous decision, so this is no gap
    view = fixture("show_bgp_ipv4_unicast_prefix.c3.nexthop_pending.json")
    [raw] = view["paths"]
    assert raw["valid"] is False and raw["processScheduled"] is True
    got = frr_json.fabric_path("10.99.0.2/32", view, local_as=65003, self_next_hop="10.255.0.3")
    assert got == BgpPath("10.99.0.2/32", "10.255.0.12", 65002)
    # once FRR has judged it (no longer scheduled), an invalid path is no path
    raw.pop("processScheduled")
    assert frr_json.fabric_path("10.99.0.2/32", view, local_as=65003, self_next_hop="10.255.0.3") is None


def test_learned_paths_hidden_by_our_own_route_pick_the_oldest() -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.rs.two_origins.json")
    for p in view["paths"]:
        p.pop("bestpath", None)
    view["paths"].append({"aspath": {"segments": []}, "valid": True, "sourced": True, "local": True,
                          "bestpath": {"overall": True}, "nexthops": [{"ip": "0.0.0.0"}],
                          "peer": {"peerId": "0.0.0.0"}, "lastUpdate": {"epoch": 1}})
    view["advertisedTo"] = {"10.255.0.1": {}}
    epochs = {tuple(p["aspath"]["segments"][0]["list"]): p["lastUpdate"]["epoch"] for p in view["paths"][:2]}
    oldest = min(epochs, key=lambda k: epochs[k])
    got = frr_json.fabric_path(P, view, local_as=65000, self_next_hop="10.255.0.254")
    assert got is not None and got.origin_as == oldest[-1]


def test_load_trailing_object_skips_notes_before_the_json() -> None:
    text = "% Can't open configuration file /etc/frr/x/vtysh.conf due to 'No such file or directory'.\n" + (
        DATA / "show_bgp_ipv4_unicast_prefix.r3.one_origin.json").read_text()
    assert frr_json.load_trailing_object(text)["prefix"] == P


# --- summary and table -------------------------------------------------------------------------


def test_route_server_summary_has_three_established_clients() -> None:
    peers = frr_json.summary_peers(fixture("show_bgp_summary.rs.json"))
    assert [(p.address, p.remote_as, p.established) for p in peers] == [
        ("10.255.0.1", 65001, True), ("10.255.0.2", 65002, True), ("10.255.0.3", 65003, True)]
    assert frr_json.summary_local_as(fixture("show_bgp_summary.rs.json")) == 65000


def test_cloud_summary_has_the_route_server() -> None:
    summary = fixture("show_bgp_summary.r1.json")
    assert frr_json.summary_peers(summary) == [BgpPeer("10.255.0.254", 65000, True, 0, "Established")]
    assert frr_json.summary_local_as(summary) == 65001


def test_summary_with_a_peer_down() -> None:
    peers = frr_json.summary_peers(fixture("show_bgp_summary.rs.one_peer_down.json"))
    assert [(p.address, p.state, p.established) for p in peers] == [
        ("10.255.0.1", "Established", True), ("10.255.0.2", "Active", False)]
    health = peer_health(peers)
    assert health["healthy"] is True and health["established"] == 1 and health["total"] == 2
    assert peer_health([])["healthy"] is False


def test_summary_without_router_bgp_is_empty() -> None:
    assert frr_json.summary_peers({}) == []
    assert frr_json.summary_local_as({}) is None


def test_originated_prefixes_from_the_table_view() -> None:
    assert frr_json.table_local_as(fixture("show_bgp_ipv4_unicast.r1.json")) == 65001
    assert frr_json.table_local_as({}) is None
    assert frr_json.originated_prefixes(fixture("show_bgp_ipv4_unicast.r1.json")) == [P]
    assert frr_json.originated_prefixes(fixture("show_bgp_ipv4_unicast.r2.json")) == [P]
    assert frr_json.originated_prefixes(fixture("show_bgp_ipv4_unicast.r3.json")) == []
    assert frr_json.originated_prefixes(fixture("show_bgp_ipv4_unicast.rs.json")) == []
    assert frr_json.originated_prefixes(fixture("show_bgp_ipv4_unicast.c1.own_set_next_hop.json")) == [
        "10.99.1.4/32"]


# --- validation --------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["10.99.0.5/32\n", "10.99.0.5/32;id", "10.99.0.5", "10.99.0.5/31", "010.99.0.5/32",
                                 "10.99.0.5/32 route-map X", "", "a.b.c.d/32", "::1/128", None, 5])
def test_validate_prefix_refuses(bad: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_prefix(bad)
    assert err.value.field == "prefix"


@pytest.mark.parametrize("bad", ["0.0.0.0", "127.0.0.1", "224.0.0.1", "255.255.255.255", "240.0.0.1", "10.0.0.01",
                                 "10.0.0.1\n", "10.0.0.1;id", "", None])
def test_validate_next_hop_refuses(bad: Any) -> None:
    with pytest.raises(InvalidInput) as err:
        validate_next_hop(bad)
    assert err.value.field == "next_hop"


def test_validators_accept_good_values() -> None:
    assert validate_prefix("10.99.0.5/32") == "10.99.0.5/32"
    assert validate_next_hop("192.0.2.1") == "192.0.2.1"
    assert validate_as_number(4200000000) == 4200000000
    assert validate_pathspace("cnfbgp-abc123-c1") == "cnfbgp-abc123-c1"


@pytest.mark.parametrize("bad", [0, -1, 23456, 4294967295, 2**32, True, "65001"])
def test_validate_as_number_refuses(bad: Any) -> None:
    with pytest.raises(ConfigError) as err:
        validate_as_number(bad)
    assert err.value.key == "bgp.as_number"


@pytest.mark.parametrize("bad", ["", "../etc", "a b", "x;id", "-N", "a" * 49])
def test_validate_pathspace_refuses(bad: str) -> None:
    with pytest.raises(ConfigError):
        validate_pathspace(bad)


def test_constructor_validates_config() -> None:
    with pytest.raises(ConfigError) as err:
        FrrBgpSpeaker("c1", 65001, "not-an-ip")
    assert err.value.key == "bgp.default_next_hop"
    with pytest.raises(ConfigError):
        FrrBgpSpeaker("c1", 0, "10.0.0.1")
    with pytest.raises(ConfigError):
        FrrBgpSpeaker("c1", 65001, "10.0.0.1", pathspace="bad space")
    assert isinstance(FrrBgpSpeaker("c1", 65001, "10.0.0.1"), BgpDriver)


def test_commands_are_exact() -> None:
    assert route_map_name("10.255.0.11") == "CNF-NH-10-255-0-11"
    assert announce_commands(65001, P, "10.255.0.11") == [
        "configure terminal", "route-map CNF-NH-10-255-0-11 permit 10", "set ip next-hop 10.255.0.11", "exit",
        "router bgp 65001", "address-family ipv4 unicast", "network 10.99.0.5/32 route-map CNF-NH-10-255-0-11"]
    assert withdraw_commands(65001, P) == [
        "configure terminal", "router bgp 65001", "address-family ipv4 unicast", "no network 10.99.0.5/32"]


# --- FrrBgpSpeaker against stand-in vtysh scripts -----------------------------------------------


def fake_vtysh(tmp_path: Path, body: str) -> tuple[str, Path]:
    """A vtysh that appends its argv (one arg per line, then '--') to a log, then runs ``body``."""
    log = tmp_path / "argv.log"
    script = tmp_path / "vtysh"
    script.write_text(f'#!/bin/sh\nfor a in "$@"; do printf "%s\\n" "$a" >> {log}; done\necho -- >> {log}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script), log


async def test_bad_input_never_reaches_vtysh(tmp_path: Path) -> None:
    exe, log = fake_vtysh(tmp_path, "echo '{}'")
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", pathspace="lab-c1", transport="vtysh", vtysh=exe)
    for bad in ["10.99.0.5/32\nrouter bgp 1", "10.99.0.5/32; reboot", "$(reboot)"]:
        for call in (sp.announce, sp.withdraw, sp.announced, sp.fabric_best_path):
            with pytest.raises(InvalidInput):
                await call(bad)
    with pytest.raises(InvalidInput):
        await sp.announce(P, next_hop="10.0.0.1\nexit")
    assert not log.exists()
    # the spy works: a good call does run it, with -N and each command as one argv element
    assert await sp.announced(P) is False
    assert log.read_text().splitlines() == ["-N", "lab-c1", "-c", f"show bgp ipv4 unicast {P} json", "--"]


async def test_announce_runs_one_vtysh_session_and_checks_the_result(tmp_path: Path) -> None:
    own = tmp_path / "own.json"
    own.write_text((DATA / "show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json").read_text())
    summary = tmp_path / "summary.json"
    summary.write_text((DATA / "show_bgp_summary.r1.json").read_text())
    # config commands print nothing; then the prefix view, then the summary (as real vtysh does)
    exe, log = fake_vtysh(tmp_path, f'case "$*" in *summary*) cat {own} {summary};; *) cat {own};; esac')
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe)
    await sp.announce("10.99.1.4/32", next_hop="10.255.0.11")
    args = log.read_text().split("\n--\n")[0].splitlines()
    assert args[1::2] == [*announce_commands(65001, "10.99.1.4/32", "10.255.0.11"), "end",
                          "show bgp ipv4 unicast 10.99.1.4/32 json", "show bgp summary json"]
    assert log.read_text().count("--\n") == 1  # done in one session: right next-hop, advertised to the RS
    # FRR shows another next-hop than requested: the announce is not reported as done
    sp.verify_timeout = 0.1
    with pytest.raises(DriverError):
        await sp.announce("10.99.1.4/32", next_hop="10.255.0.12")


async def test_announce_waits_until_advertised_to_every_established_peer(tmp_path: Path) -> None:
    view = fixture("show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json")
    del view["advertisedTo"]  # FRR has the route but has not handed it to the route server yet
    own = tmp_path / "own.json"
    own.write_text(json.dumps(view))
    summary = tmp_path / "summary.json"
    summary.write_text((DATA / "show_bgp_summary.r1.json").read_text())
    exe, log = fake_vtysh(tmp_path, f'case "$*" in *summary*) cat {own} {summary};; *) cat {own};; esac')
    for mode in ("all", "any"):
        sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe, verify_timeout=0.3,
                           await_advertised=mode)
        with pytest.raises(DriverError):
            await sp.announce("10.99.1.4/32", next_hop="10.255.0.11")
    assert log.read_text().count("--\n") >= 4  # it kept re-reading the table
    log.unlink()
    local_only = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe, await_advertised="none")
    await local_only.announce("10.99.1.4/32", next_hop="10.255.0.11")
    assert log.read_text().count("--\n") == 1
    with pytest.raises(ConfigError):
        FrrBgpSpeaker("c1", 65001, "10.255.0.1", await_advertised="some")


def test_load_objects_reads_several_show_outputs() -> None:
    text = "\n".join((DATA / n).read_text() for n in ("show_bgp_ipv4_unicast_prefix.r3.absent.json",
                                                       "show_bgp_ipv4_unicast.r1.json", "show_bgp_summary.r1.json"))
    objs = frr_json.load_objects("% a note first\n" + text)
    assert [sorted(o)[:1] for o in objs] == [[], ["defaultLocPrf"], ["ipv4Unicast"]]
    with pytest.raises(frr_json.FrrOutputError):
        frr_json.load_objects("% Unknown command")
    with pytest.raises(frr_json.FrrOutputError):
        frr_json.load_objects("{\n bad")


@pytest.mark.parametrize("body", ["echo 'Exiting: failed to connect to any daemons.' >&2; exit 1",
                                  "echo 'bgpd is not running'; exit 1"])
async def test_frr_not_running_is_driver_unavailable(tmp_path: Path, body: str) -> None:
    exe, _ = fake_vtysh(tmp_path, body)
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe)
    for call in (lambda: sp.announce(P), lambda: sp.withdraw(P), lambda: sp.announced(P),
                 lambda: sp.fabric_best_path(P), sp.peers):
        with pytest.raises(DriverUnavailable):
            await call()


@pytest.mark.timeout(20)
async def test_hung_vtysh_is_driver_unavailable_within_the_timeout(tmp_path: Path) -> None:
    exe, _ = fake_vtysh(tmp_path, "exec sleep 30")
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe, command_timeout=0.3)
    with pytest.raises(DriverUnavailable) as err:
        await sp.peers()
    assert err.value.retryable


async def test_missing_vtysh_is_driver_unavailable(tmp_path: Path) -> None:
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=str(tmp_path / "no-such-vtysh"))
    with pytest.raises(DriverUnavailable):
        await sp.peers()


async def test_wrong_as_number_is_a_config_error(tmp_path: Path) -> None:
    exe, _ = fake_vtysh(tmp_path, "echo 'BGP is already running; AS is 65009'; exit 1")
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe)
    with pytest.raises(ConfigError) as err:
        await sp.announce(P)
    assert err.value.key == "bgp.as_number"


async def test_refused_command_and_garbage_output_are_driver_errors(tmp_path: Path) -> None:
    exe, _ = fake_vtysh(tmp_path, "echo '% Unknown command: network'; exit 1")
    with pytest.raises(DriverError):
        await FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe).announce(P)
    (tmp_path / "garbage").mkdir()
    exe2, _ = fake_vtysh(tmp_path / "garbage", "echo 'not json'")
    with pytest.raises(DriverError):
        await FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe2).peers()


async def test_config_lock_held_by_another_client_is_retried(tmp_path: Path) -> None:
    flag = tmp_path / "second"
    body = (f"if [ -e {flag} ]; then echo '{{}}'; else touch {flag}; "
            "echo '% Configuration is locked by other client'; exit 1; fi")
    exe, log = fake_vtysh(tmp_path, body)
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe)
    await sp.withdraw(P)  # first attempt locked, second succeeds and shows the prefix absent
    assert log.read_text().count("--\n") == 2


async def test_peers_and_originated_parse_real_output(tmp_path: Path) -> None:
    summary, table = tmp_path / "s.json", tmp_path / "t.json"
    summary.write_text((DATA / "show_bgp_summary.r1.json").read_text())
    table.write_text((DATA / "show_bgp_ipv4_unicast.r1.json").read_text())
    body = f'case "$*" in *summary*) cat {summary};; *) cat {table};; esac'
    exe, _ = fake_vtysh(tmp_path, body)
    sp = FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="vtysh", vtysh=exe)
    assert await sp.peers() == [BgpPeer("10.255.0.254", 65000, True, 0, "Established")]
    assert await sp.running_as() == 65001
    assert await sp.originated() == [P]


def test_fixtures_are_objects() -> None:
    files = sorted(DATA.glob("*.json"))
    assert len(files) >= 20
    for f in files:
        assert isinstance(json.loads(f.read_text()), dict), f
