"""FrrBgpSpeaker over bgpd's vtysh socket (``transport="socket"``), against a stand-in bgpd (no FRR needed).

The stand-in listens on ``<run_dir>/<pathspace>/bgpd.vty`` and speaks FRR's vtysh protocol (``lib/vty.c``): a
command ends with NUL, the answer is the output followed by ``\\0\\0\\0`` and one status byte. It records every
command, so the tests prove what reaches bgpd: the exact batches, that a batch stops at the first refused command
and returns to ENABLE node, that bad input never arrives, and how an unreachable or silent bgpd is reported.
Real FRR behaviour of the same paths is covered by tests/lab/frr and the contract suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from cnf.errors import ConfigError, DriverError, DriverUnavailable, InvalidInput
from cnf.network import frr_vty
from cnf.network.bgp import FrrBgpSpeaker, announce_commands, withdraw_commands

DATA = Path(__file__).resolve().parents[1] / "data" / "frr"
P = "10.99.1.4/32"

Answer = Callable[[str], tuple[str, int]]  # command -> (output, status)
MakeBgpd = Callable[[Answer], "StandInBgpd"]


class StandInBgpd:
    """A unix-socket server answering like bgpd's vtysh socket; ``answer`` decides output and status."""

    def __init__(self, path: Path, answer: Answer) -> None:
        self.path = path
        self.answer = answer
        self.commands: list[str] = []
        self.connections = 0
        self.silent = False  # read commands, never answer (a frozen bgpd)
        self.close_after: int | None = None  # close each connection after this many answers (a restarted bgpd)
        self._server: asyncio.Server | None = None

    async def start(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._server = await asyncio.start_unix_server(self._serve, path=str(self.path))

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        answered = 0
        try:
            while True:
                raw = await reader.readuntil(b"\x00")
                command = raw[:-1].decode()
                self.commands.append(command)
                if self.silent:
                    continue
                out, status = self.answer(command)
                writer.write(out.encode() + b"\x00\x00\x00" + bytes([status]))
                await writer.drain()
                answered += 1
                if self.close_after is not None and answered >= self.close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


def views(*names_or_objects: str | dict[str, object]) -> Callable[[], str]:
    """Successive answers to ``show bgp ipv4 unicast <p> json`` (the last one repeats)."""
    texts = [(DATA / x).read_text() if isinstance(x, str) else json.dumps(x) for x in names_or_objects]
    state = {"n": 0}

    def nxt() -> str:
        text = texts[min(state["n"], len(texts) - 1)]
        state["n"] += 1
        return text

    return nxt


def bgpd_answer(prefix_view: Callable[[], str], *, refuse: dict[str, tuple[str, int]] | None = None) -> Answer:
    summary = (DATA / "show_bgp_summary.r1.json").read_text()

    def answer(command: str) -> tuple[str, int]:
        if refuse and command in refuse:
            return refuse[command]
        if command == "show bgp summary json":
            return summary, 0
        if command.startswith("show bgp ipv4 unicast ") and command.endswith(" json"):
            return prefix_view(), 0
        return "", 0

    return answer


@pytest.fixture
async def bgpd(tmp_path: Path) -> AsyncIterator[Callable[[Answer], StandInBgpd]]:
    started: list[StandInBgpd] = []

    def make(answer: Answer) -> StandInBgpd:
        server = StandInBgpd(frr_vty.socket_path(tmp_path, "c1"), answer)
        started.append(server)
        return server

    yield make
    for s in started:
        await s.stop()


def speaker(tmp_path: Path, **kw: object) -> FrrBgpSpeaker:
    return FrrBgpSpeaker("c1", 65001, "10.255.0.1", pathspace="c1", run_dir=str(tmp_path), **kw)  # type: ignore[arg-type]


def test_socket_path_follows_frr_layout() -> None:
    assert frr_vty.socket_path("/var/run/frr", None) == Path("/var/run/frr/bgpd.vty")
    assert frr_vty.socket_path("/var/run/frr", "lab-c1") == Path("/var/run/frr/lab-c1/bgpd.vty")


async def test_announce_is_one_batch_then_polls_until_processed_and_advertised(bgpd: MakeBgpd, tmp_path: Path) -> None:
    # FRR's real sequence: queued (processScheduled, not yet advertised), then processed and sent to the RS
    server = bgpd(bgpd_answer(views("show_bgp_ipv4_unicast_prefix.c1.process_scheduled.json",
                                    "show_bgp_ipv4_unicast_prefix.c1.process_scheduled.json",
                                    "show_bgp_ipv4_unicast_prefix.c1.own_set_next_hop.json")))
    await server.start()
    sp = speaker(tmp_path)
    await sp.announce(P, next_hop="10.255.0.11")
    show = f"show bgp ipv4 unicast {P} json"
    assert server.commands == ["enable", *announce_commands(65001, P, "10.255.0.11"), "end", show,
                               "show bgp summary json", show, show]
    assert server.connections == 1
    await sp.peers()  # the session stays open for the next call
    assert server.connections == 1
    await sp.close()


async def test_withdraw_waits_until_the_removed_path_is_gone(bgpd: MakeBgpd, tmp_path: Path) -> None:
    server = bgpd(bgpd_answer(views("show_bgp_ipv4_unicast_prefix.c1.removed.json",
                                    "show_bgp_ipv4_unicast_prefix.c1.removed.json", {})))
    await server.start()
    sp = speaker(tmp_path)
    await sp.withdraw(P)
    show = f"show bgp ipv4 unicast {P} json"
    assert server.commands[1:] == [*withdraw_commands(65001, P), "end", show, show, show]
    # a path that stays "removed" (FRR never processes it) is not reported as withdrawn
    stuck = speaker(tmp_path, verify_timeout=0.1)
    server.answer = bgpd_answer(views("show_bgp_ipv4_unicast_prefix.c1.removed.json"))
    with pytest.raises(DriverError):
        await stuck.withdraw(P)


async def test_batch_stops_at_a_refused_command_and_returns_to_enable_node(bgpd: MakeBgpd, tmp_path: Path) -> None:
    refuse = {"router bgp 65001": ("BGP is already running; AS is 65009\n", 13)}
    server = bgpd(bgpd_answer(views({}), refuse=refuse))
    await server.start()
    sp = speaker(tmp_path)
    with pytest.raises(ConfigError) as err:
        await sp.announce(P)
    assert err.value.key == "bgp.as_number"
    cut = server.commands.index("router bgp 65001")
    assert server.commands[cut + 1:] == ["end"]  # nothing ran in the wrong node; the session is reset
    server.answer = bgpd_answer(views({}), refuse={"address-family ipv4 unicast": ("% [BGP] Unknown command\n", 2)})
    with pytest.raises(DriverError):
        await sp.withdraw(P)
    assert server.commands[-1] == "end"


async def test_withdraw_of_an_absent_prefix_is_accepted(bgpd: MakeBgpd, tmp_path: Path) -> None:
    refuse = {f"no network {P}": ("% Can't find static route specified\n", 13)}
    server = bgpd(bgpd_answer(views({}), refuse=refuse))
    await server.start()
    await speaker(tmp_path).withdraw(P)
    assert server.commands[-2:] == ["end", f"show bgp ipv4 unicast {P} json"]


async def test_bad_input_never_reaches_bgpd(bgpd: MakeBgpd, tmp_path: Path) -> None:
    server = bgpd(bgpd_answer(views({})))
    await server.start()
    sp = speaker(tmp_path)
    for bad in ["10.99.0.5/32\nrouter bgp 1", "10.99.0.5/32\x00", "$(reboot)"]:
        for call in (sp.announce, sp.withdraw, sp.announced, sp.fabric_best_path):
            with pytest.raises(InvalidInput):
                await call(bad)
    assert server.commands == []


async def test_missing_socket_is_driver_unavailable(tmp_path: Path) -> None:
    sp = speaker(tmp_path)
    for call in (lambda: sp.announce(P), lambda: sp.withdraw(P), lambda: sp.announced(P), sp.peers):
        with pytest.raises(DriverUnavailable):
            await call()


@pytest.mark.timeout(20)
async def test_silent_bgpd_is_driver_unavailable_within_the_timeout(bgpd: MakeBgpd, tmp_path: Path) -> None:
    server = bgpd(bgpd_answer(views({})))
    server.silent = True
    await server.start()
    sp = speaker(tmp_path, command_timeout=0.3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(DriverUnavailable) as err:
        await sp.peers()
    assert err.value.retryable
    assert loop.time() - started < 2.0
    server.silent = False  # bgpd answers again: a new session is opened
    assert len(await sp.peers()) == 1
    assert server.connections == 2


async def test_a_session_broken_since_its_last_use_is_reopened_once(bgpd: MakeBgpd, tmp_path: Path) -> None:
    server = bgpd(bgpd_answer(views({})))
    server.close_after = 2  # "enable" + one command, then bgpd "restarts"
    await server.start()
    sp = speaker(tmp_path)
    assert len(await sp.peers()) == 1
    assert len(await sp.peers()) == 1  # the old connection is closed: reconnect and run the batch again
    assert server.connections == 2
    assert server.commands == ["enable", "show bgp summary json", "enable", "show bgp summary json"]


async def test_transport_is_validated() -> None:
    with pytest.raises(ConfigError):
        FrrBgpSpeaker("c1", 65001, "10.255.0.1", transport="telnet")
