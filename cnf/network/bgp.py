"""``FrrBgpSpeaker``: the BgpDriver port over a local FRR, driven through bgpd's vtysh interface.

Why vtysh's interface and not a config file: the seed says "BGP via FRR vtysh", vtysh is FRR's supported control
surface, and a ``network`` statement changes one route without reloading anything. Two transports carry the same
vtysh commands (decision and measurements in docs/bgp.md):
- ``transport="socket"`` (default): one persistent session on bgpd's vtysh socket (``cnf.network.frr_vty``), the
  protocol the ``vtysh`` binary itself speaks; ~0.2 ms a command. Needed for a fast handoff: ``announce`` polls
  FRR's table until the route has left, and a ``vtysh`` process per poll costs 25 ms idle, 0.1-0.35 s under load.
- ``transport="vtysh"``: one ``vtysh [-N pathspace] -c ...`` process per batch (argv list, never a shell). Same
  commands and checks, slower; for hosts where only the vtysh binary may be used.

How a VM's /32 is originated:
- ``network <p>/32 route-map CNF-NH-<a-b-c-d>`` under ``router bgp <as>`` / ``address-family ipv4 unicast``; the
  route-map (one per next-hop, shared by every prefix using it) holds ``set ip next-hop <nh>``. Switching a prefix
  to another route-map applies at once, whereas editing a route-map in place waits for FRR's route-map delay timer
  (5 s), so a next-hop change never edits a route-map that is in use.
- FRR must run with ``no bgp network import-check`` (else a /32 absent from the RIB is silently not advertised)
  and ``no bgp ebgp-requires-policy`` (else eBGP exchanges nothing); the cloud exports only its own routes.
- eBGP keeps a third-party next-hop only if it is on the peering segment; otherwise FRR advertises its own
  address. ``fabric_best_path`` shows what the fabric really uses, so a step ``check`` catches that.

Contracts (on top of the port's):
- Every input is validated before anything is sent: a prefix must be a canonical IPv4 ``a.b.c.d/32``, a next-hop
  a canonical unicast IPv4 address (``InvalidInput`` naming the field); AS number, pathspace and default
  next-hop are checked when the speaker is built (``ConfigError`` naming the key).
- FRR not running, a hung daemon, a missing socket or vtysh raise ``DriverUnavailable`` within
  ``command_timeout``; FRR refusing a command raises ``DriverError`` with its message; a ``router bgp`` AS that
  differs from ``as_number`` raises ``ConfigError``.
- ``announce``/``withdraw`` are idempotent at FRR's level (the same ``network`` statement twice changes nothing
  the fabric sees; ``no network`` of an absent prefix is accepted) and read FRR's table back right after the
  change, then poll it (every ``poll_interval``) until the change has been *processed* - FRR runs best-path 50 ms
  after a change (``processScheduled``) and only then tells its peers - else ``DriverError`` after
  ``verify_timeout``. ``announce`` returns once FRR has advertised the route to every Established peer
  (``advertisedTo``), so a source told to withdraw afterwards cannot overtake the destination's announcement at
  the route server; ``withdraw`` returns once our path is gone from FRR's table (not merely flagged ``removed``),
  i.e. the withdrawal has been sent and ``originated()`` no longer lists the prefix.
- Changes are made to the running config only; after an FRR restart they are gone and the agent's reconciler must
  announce again (``originated()`` lists what FRR currently originates).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import shutil
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import structlog

from cnf.clock import Clock, SystemClock
from cnf.errors import ConfigError, DriverError, DriverUnavailable, InvalidInput, StepTimeout
from cnf.network import frr_json, frr_vty
from cnf.network.base import BgpDriver, BgpPath, BgpPeer

log = structlog.get_logger(__name__)

PORT = "bgp"
FRR_RUN_DIR = "/var/run/frr"  # Debian/Ubuntu packages; vtysh sockets are <run_dir>/[<pathspace>/]<daemon>.vty
ROUTE_MAP_PREFIX = "CNF-NH-"
_PATHSPACE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,47}$")
_UNAVAILABLE_MARKERS = ("failed to connect to any daemons", "is not running", "Can't open configuration file")
_LOCKED_MARKERS = ("locked by other client", "locked by another client")
_AS_MISMATCH_RE = re.compile(r"BGP is already running; AS is (\d+)")
# ASNs that can never name a cloud: 0 (reserved), 23456 (AS_TRANS), 4294967295 (reserved)
_RESERVED_AS = {0, 23456, 4294967295}


# --- validation (pure; runs before any process is started) -----------------------------------


def validate_prefix(prefix: object) -> str:
    """A canonical IPv4 host route ``a.b.c.d/32``, else ``InvalidInput(field="prefix")``.

    Strict on purpose: the string goes into a vtysh argument, so anything that is not exactly what
    ``ipaddress`` prints back (spaces, newlines, leading zeros, metacharacters) is refused.
    """
    if not isinstance(prefix, str):
        raise InvalidInput(f"prefix must be a string, got {type(prefix).__name__}", field="prefix")
    try:
        net = ipaddress.IPv4Network(prefix, strict=True)
    except ValueError:
        raise InvalidInput(f"not an IPv4 prefix: {prefix!r}", field="prefix") from None
    if net.prefixlen != 32 or str(net) != prefix:
        raise InvalidInput(f"only canonical /32 host routes are announced, got {prefix!r}", field="prefix")
    return prefix


def validate_next_hop(next_hop: object, *, field: str = "next_hop") -> str:
    """A canonical unicast IPv4 address a router can forward to, else ``InvalidInput(field=...)``."""
    if not isinstance(next_hop, str):
        raise InvalidInput(f"{field} must be a string, got {type(next_hop).__name__}", field=field)
    try:
        addr = ipaddress.IPv4Address(next_hop)
    except ValueError:
        raise InvalidInput(f"not an IPv4 address: {next_hop!r}", field=field) from None
    if str(addr) != next_hop:
        raise InvalidInput(f"not a canonical IPv4 address: {next_hop!r}", field=field)
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr == ipaddress.IPv4Address(
            "255.255.255.255") or addr.is_reserved:
        raise InvalidInput(f"{next_hop} cannot be a next-hop (unspecified/loopback/multicast/reserved)",
                           field=field)
    return next_hop


def validate_as_number(as_number: object, *, key: str = "bgp.as_number") -> int:
    if isinstance(as_number, bool) or not isinstance(as_number, int):
        raise ConfigError(f"AS number must be an integer, got {as_number!r}", key=key)
    if not 1 <= as_number <= 4294967294 or as_number in _RESERVED_AS:
        raise ConfigError(f"AS number {as_number} is out of range or reserved", key=key)
    return as_number


def validate_pathspace(pathspace: object, *, key: str = "bgp.pathspace") -> str:
    """FRR pathspace (``vtysh -N``): a short name that becomes a directory under /etc/frr and /var/run/frr."""
    if not isinstance(pathspace, str) or not _PATHSPACE_RE.match(pathspace):
        raise ConfigError(f"invalid FRR pathspace {pathspace!r} (letters, digits, '_.-', max 48)", key=key)
    return pathspace


def route_map_name(next_hop: str) -> str:
    """The route-map that sets ``next_hop``; dots become dashes so the name is a plain FRR WORD."""
    return ROUTE_MAP_PREFIX + next_hop.replace(".", "-")


def announce_commands(as_number: int, prefix: str, next_hop: str) -> list[str]:
    """vtysh ``-c`` commands that originate ``prefix`` with ``next_hop`` (inputs must be validated)."""
    rm = route_map_name(next_hop)
    return ["configure terminal", f"route-map {rm} permit 10", f"set ip next-hop {next_hop}", "exit",
            f"router bgp {as_number}", "address-family ipv4 unicast", f"network {prefix} route-map {rm}"]


def withdraw_commands(as_number: int, prefix: str) -> list[str]:
    return ["configure terminal", f"router bgp {as_number}", "address-family ipv4 unicast", f"no network {prefix}"]


# --- the driver -------------------------------------------------------------------------------


class FrrBgpSpeaker:
    """One cloud's BGP speaker: the FRR instance on this controller (``[-N pathspace]``).

    Built from config: ``cluster_id``, ``as_number`` (must equal the running ``router bgp``), ``default_next_hop``
    (used when a caller gives none; the seed's ``dest_next_hop`` overrides it), ``pathspace`` (FRR ``-N``; None =
    the default instance) and ``observer_pathspace``: an FRR instance whose table ``fabric_best_path`` reads
    instead of our own (a route server or a peer cloud co-located with the agent, as in the lab). Without an
    observer our own table is read with the rule in ``frr_json.fabric_path`` (see docs/bgp.md for production).
    ``await_advertised``: ``announce`` returns once FRR has sent the route to "all" Established peers (default),
    "any" one of them, or "none" (local table only) - use "any" when some sessions filter VM routes on purpose.
    ``transport``: "socket" (bgpd's vtysh socket under ``run_dir``, default) or "vtysh" (the ``vtysh`` binary).
    """

    def __init__(self, cluster_id: str, as_number: int, default_next_hop: str, *, pathspace: str | None = None,
                 observer_pathspace: str | None = None, transport: str = "socket", run_dir: str = FRR_RUN_DIR,
                 vtysh: str = "vtysh", command_timeout: float = 5.0, verify_timeout: float = 2.0,
                 poll_interval: float | None = None, await_advertised: str = "all",
                 clock: Clock | None = None) -> None:
        self.cluster_id = cluster_id
        self.as_number = validate_as_number(as_number)
        try:
            self.default_next_hop = validate_next_hop(default_next_hop, field="bgp.default_next_hop")
        except InvalidInput as exc:
            raise ConfigError(exc.message, key="bgp.default_next_hop") from None
        self.pathspace = validate_pathspace(pathspace) if pathspace is not None else None
        self.observer_pathspace = (validate_pathspace(observer_pathspace, key="bgp.observer_pathspace")
                                   if observer_pathspace is not None else None)
        if await_advertised not in ("all", "any", "none"):
            raise ConfigError("await_advertised must be 'all', 'any' or 'none'", key="bgp.await_advertised")
        self.await_advertised = await_advertised
        if transport not in ("socket", "vtysh"):
            raise ConfigError("transport must be 'socket' or 'vtysh'", key="bgp.transport")
        self.transport = transport
        if command_timeout <= 0 or verify_timeout < 0 or (poll_interval is not None and poll_interval <= 0):
            raise ConfigError("timeouts must be positive", key="bgp.command_timeout")
        self.run_dir = run_dir
        self.vtysh = vtysh
        self.command_timeout = command_timeout
        self.verify_timeout = verify_timeout
        # a poll costs ~0.2 ms on the socket but a whole process with vtysh: poll the socket often
        self.poll_interval = poll_interval or (0.005 if transport == "socket" else 0.01)
        self.clock: Clock = clock or SystemClock()
        self._write_lock = asyncio.Lock()
        self._sessions: dict[str | None, frr_vty.FrrVtySession] = {}
        self._observer_as: int | None = None
        self._log = log.bind(cluster_id=cluster_id, pathspace=pathspace or "default")

    @classmethod
    async def from_settings(cls, cluster_id: str, *, as_number: int, next_hop: str = "", pathspace: str = "",
                            observer_pathspace: str = "", **kwargs: Any) -> FrrBgpSpeaker:
        """Build from ``cnf.yaml``'s ``bgp`` section, where ``""`` means "not set".

        Reads FRR once: the running ``router bgp`` AS must equal ``as_number`` (else ``ConfigError``), and an empty
        ``next_hop`` becomes FRR's router-id (the address peers reach this cloud at). FRR unreachable ->
        ``DriverUnavailable``: the agent should start anyway and report the port down, not crash.
        """
        sp = cls(cluster_id, as_number, next_hop or "192.0.2.1", pathspace=pathspace or None,
                 observer_pathspace=observer_pathspace or None, **kwargs)
        table = await sp._show_json(sp.pathspace, "show bgp ipv4 unicast json", "from_settings")
        running = frr_json.table_local_as(table)
        if running is None:
            raise ConfigError(f"FRR ({pathspace or 'default'}) has no 'router bgp'", key="bgp.as_number")
        if running != as_number:
            raise ConfigError(f"FRR runs router bgp {running}, configured as_number is {as_number}",
                              key="bgp.as_number")
        if not next_hop:
            router_id = str(table.get("routerId", ""))
            try:
                sp.default_next_hop = validate_next_hop(router_id, field="bgp.next_hop")
            except InvalidInput:
                raise ConfigError(f"bgp.next_hop is empty and FRR's router-id {router_id!r} is not usable",
                                  key="bgp.next_hop") from None
        return sp

    def __repr__(self) -> str:
        return (f"FrrBgpSpeaker({self.cluster_id!r}, as={self.as_number}, pathspace={self.pathspace!r}, "
                f"transport={self.transport!r})")

    async def close(self) -> None:
        """Close the vtysh socket sessions (the next call opens new ones). Not needed with ``transport="vtysh"``."""
        sessions, self._sessions = list(self._sessions.values()), {}
        for session in sessions:
            if session.loop is asyncio.get_running_loop():
                await session.close()

    # --- the port ---------------------------------------------------------------------------

    async def announce(self, prefix: str, next_hop: str | None = None) -> None:
        """Originate ``prefix`` with ``next_hop`` (default: ours). Idempotent; a new next-hop replaces the old."""
        validate_prefix(prefix)
        nh = validate_next_hop(next_hop) if next_hop is not None else self.default_next_hop
        async with self._write_lock:
            # No read before: re-issuing the same ``network`` statement is a no-op for the fabric (measured: the
            # route server's copy keeps its version/epoch), and skipping the read saves a round trip.
            view, summary = await self._configure(announce_commands(self.as_number, prefix, nh), prefix, "announce",
                                                  with_summary=True)
            established = {p.address for p in frr_json.summary_peers(summary or {}) if p.established}

            def done(v: dict[str, Any]) -> bool:
                # Done = in our table with the right next-hop, processed, AND handed to the Established peers: only
                # then may the source withdraw (else the route server could see the withdraw first: no path).
                own = frr_json.local_path(v)
                if own is None or not own.valid or own.next_hop != nh or frr_json.process_pending(v):
                    return False
                sent = set(frr_json.advertised_to(v))
                if self.await_advertised == "all":
                    return established <= sent
                if self.await_advertised == "any" and established:
                    return bool(established & sent)
                return True

            await self._verify(prefix, "announce", view, done)
        self._log.info("bgp.announced", prefix=prefix, next_hop=nh)

    async def withdraw(self, prefix: str) -> None:
        """Stop originating ``prefix``; returns once FRR has processed it (and told its peers). Absent = no-op."""
        validate_prefix(prefix)
        async with self._write_lock:
            view, _ = await self._configure(withdraw_commands(self.as_number, prefix), prefix, "withdraw",
                                            ok_markers=("Can't find static route specified",))
            # "gone" = no path of ours, not even one flagged "removed": that flag means FRR has not yet run
            # best-path, so the withdrawal has not been sent and the table view still lists the prefix
            await self._verify(prefix, "withdraw", view,
                               lambda v: frr_json.local_path(v, include_removed=True) is None)
        self._log.info("bgp.withdrawn", prefix=prefix)

    async def announced(self, prefix: str) -> bool:
        validate_prefix(prefix)
        view = await self._prefix_view(self.pathspace, prefix, "announced")
        return frr_json.local_path(view) is not None

    async def fabric_best_path(self, prefix: str) -> BgpPath | None:
        """The path the fabric uses for ``prefix`` (rule: ``frr_json.fabric_path``), from the observer if set."""
        validate_prefix(prefix)
        if self.observer_pathspace is None:
            view = await self._prefix_view(self.pathspace, prefix, "fabric_best_path")
            return frr_json.fabric_path(prefix, view, local_as=self.as_number, self_next_hop=self.default_next_hop)
        view = await self._prefix_view(self.observer_pathspace, prefix, "fabric_best_path")
        local_as = 0
        if any(p.local for p in frr_json.prefix_paths(view)):
            local_as = await self._observer_local_as()
        return frr_json.fabric_path(prefix, view, local_as=local_as, self_next_hop=frr_json.SELF_NEXT_HOP)

    async def peers(self) -> list[BgpPeer]:
        """Session health (state, prefixes received) from ``show bgp summary json``."""
        summary = await self._show_json(self.pathspace, "show bgp summary json", "peers")
        return frr_json.summary_peers(summary)

    # --- extras used by the agent (not in the port) -----------------------------------------

    async def originated(self) -> list[str]:
        """Every prefix FRR currently originates (the reconciler compares it with the DB after a restart)."""
        table = await self._show_json(self.pathspace, "show bgp ipv4 unicast json", "originated")
        return frr_json.originated_prefixes(table)

    async def running_as(self) -> int | None:
        """The AS of FRR's running ``router bgp`` (PREFLIGHT compares it with ``as_number``)."""
        table = await self._show_json(self.pathspace, "show bgp ipv4 unicast json", "running_as")
        return frr_json.table_local_as(table)

    # --- transport --------------------------------------------------------------------------

    async def _exec(self, pathspace: str | None, commands: Sequence[str], operation: str) -> tuple[int, str]:
        """Run a batch of vtysh commands on ``pathspace``'s bgpd; (rc, output). Unreachable -> DriverUnavailable.

        rc 0 = every command succeeded. With the socket a batch stops at the first failing command (its status is
        rc); with vtysh, rc is the process's exit code.
        """
        if self.transport == "vtysh":
            return await self._vtysh(pathspace, commands, operation)
        session = self._sessions.get(pathspace)
        if session is None or session.loop is not asyncio.get_running_loop():
            session = frr_vty.FrrVtySession(frr_vty.socket_path(self.run_dir, pathspace), self.command_timeout)
            self._sessions[pathspace] = session
        try:
            return await session.run(commands)
        except frr_vty.VtyUnreachable as exc:
            self._log.warning("bgp.vty.unreachable", operation=operation, error=str(exc))
            raise DriverUnavailable(f"FRR's bgpd is not reachable: {exc}", port=PORT, operation=operation,
                                    cluster_id=self.cluster_id, pathspace=pathspace or "default") from None

    def _argv(self, pathspace: str | None, commands: Sequence[str]) -> list[str]:
        exe = shutil.which(self.vtysh) or self.vtysh
        argv = [exe]
        if pathspace is not None:
            argv += ["-N", pathspace]
        for c in commands:
            argv += ["-c", c]
        return argv

    async def _vtysh(self, pathspace: str | None, commands: Sequence[str], operation: str) -> tuple[int, str]:
        """Run vtysh once; returns (rc, stdout+stderr). Unreachable FRR / timeout -> DriverUnavailable."""
        argv = self._argv(pathspace, commands)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise DriverUnavailable(f"cannot run {self.vtysh}: {exc}", port=PORT, operation=operation,
                                    cluster_id=self.cluster_id) from exc
        try:
            out, err = await asyncio.wait_for(proc.communicate(), timeout=self.command_timeout)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(proc.wait(), timeout=2.0)
            self._log.warning("bgp.vtysh.timeout", operation=operation, timeout_s=self.command_timeout)
            raise DriverUnavailable(f"FRR did not answer within {self.command_timeout}s", port=PORT,
                                    operation=operation, cluster_id=self.cluster_id) from None
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        text = (out.decode(errors="replace") + err.decode(errors="replace")).strip()
        rc = proc.returncode if proc.returncode is not None else -1
        if rc != 0 and any(m in text for m in _UNAVAILABLE_MARKERS):
            raise DriverUnavailable(f"FRR is not running: {text[:300]}", port=PORT, operation=operation,
                                    cluster_id=self.cluster_id, pathspace=pathspace or "default")
        return rc, text

    async def _show_json(self, pathspace: str | None, command: str, operation: str) -> dict[str, Any]:
        rc, text = await self._exec(pathspace, [command], operation)
        if rc != 0:
            raise DriverError(f"{command!r} failed rc={rc}: {text[:300]}", port=PORT, operation=operation,
                              cluster_id=self.cluster_id)
        try:
            return frr_json.load_trailing_object(text)
        except frr_json.FrrOutputError as exc:
            raise DriverError(f"unexpected FRR output for {command!r}: {exc}", port=PORT, operation=operation,
                              cluster_id=self.cluster_id) from exc

    async def _prefix_view(self, pathspace: str | None, prefix: str, operation: str) -> dict[str, Any]:
        return await self._show_json(pathspace, f"show bgp ipv4 unicast {prefix} json", operation)

    async def _configure(self, commands: Sequence[str], prefix: str, operation: str, *,
                         ok_markers: Sequence[str] = (), with_summary: bool = False,
                         ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """Apply config commands and read the prefix (and the summary) back in the same batch.

        Returns (prefix view, summary); the view is None when the commands stopped early on an accepted message
        (``ok_markers``, e.g. withdrawing an absent prefix) and must be read again. Retries while another client
        holds FRR's configuration lock, until ``command_timeout``.
        """
        shows = [f"show bgp ipv4 unicast {prefix} json"] + (["show bgp summary json"] if with_summary else [])
        deadline = self.clock.now() + self.command_timeout
        while True:
            rc, text = await self._exec(self.pathspace, [*commands, "end", *shows], operation)
            if rc == 0:
                try:
                    objs = frr_json.load_objects(text)
                except frr_json.FrrOutputError as exc:
                    raise DriverError(f"unexpected FRR output after {operation}: {exc}", port=PORT,
                                      operation=operation, cluster_id=self.cluster_id) from exc
                if len(objs) != len(shows):
                    raise DriverError(f"expected {len(shows)} JSON objects after {operation}, got {len(objs)}",
                                      port=PORT, operation=operation, cluster_id=self.cluster_id)
                return objs[0], (objs[1] if with_summary else None)
            if any(m in text for m in ok_markers):
                return None, None
            mismatch = _AS_MISMATCH_RE.search(text)
            if mismatch:
                raise ConfigError(f"FRR runs router bgp {mismatch.group(1)}, configured as_number is "
                                  f"{self.as_number}", key="bgp.as_number")
            if any(m in text for m in _LOCKED_MARKERS) and self.clock.now() < deadline:
                await self.clock.sleep(0.05)
                continue
            raise DriverError(f"FRR refused {operation}: {text[:300]}", port=PORT, operation=operation,
                              cluster_id=self.cluster_id, rc=rc)

    async def _verify(self, prefix: str, operation: str, first: dict[str, Any] | None,
                      done: Callable[[dict[str, Any]], bool]) -> None:
        """Until ``done(prefix view)`` holds, re-read our table; ``DriverError`` after ``verify_timeout``."""
        deadline = self.clock.now() + self.verify_timeout
        view = first
        while True:
            if view is not None and done(view):
                return
            if self.clock.now() >= deadline:
                raise DriverError(f"{operation} of {prefix} not visible in FRR's table after {self.verify_timeout}s",
                                  port=PORT, operation=operation, cluster_id=self.cluster_id)
            if view is not None:
                await self.clock.sleep(self.poll_interval)
            view = await self._prefix_view(self.pathspace, prefix, operation)

    async def _observer_local_as(self) -> int:
        if self._observer_as is None:
            table = await self._show_json(self.observer_pathspace, "show bgp ipv4 unicast json", "fabric_best_path")
            self._observer_as = frr_json.table_local_as(table) or 0
        return self._observer_as


# --- checks shared by every BgpDriver ----------------------------------------------------------


async def wait_for_fabric_path(driver: BgpDriver, prefix: str, *, next_hop: str | None = None,
                               origin_as: int | None = None, within: float = 5.0, interval: float = 0.02,
                               clock: Clock | None = None) -> BgpPath:
    """Poll ``driver.fabric_best_path`` until it matches (``next_hop`` and/or ``origin_as``), within ``within`` seconds.

    This is the ``check`` of the BGP migration steps: it confirms what the rest of the fabric sees, not what a
    command returned. Both None = any path. Raises ``StepTimeout`` with the last path seen.
    """
    clk = clock or SystemClock()
    deadline = clk.now() + within
    last: BgpPath | None = None
    while True:
        last = await driver.fabric_best_path(prefix)
        if last is not None and (next_hop is None or last.next_hop == next_hop) and (
                origin_as is None or last.origin_as == origin_as):
            return last
        if clk.now() >= deadline:
            raise StepTimeout(f"fabric best path for {prefix} is {last} after {within}s, want next_hop={next_hop} "
                              f"origin_as={origin_as}", prefix=prefix, operation="fabric_best_path")
        await clk.sleep(interval)


def peer_health(peers: Sequence[BgpPeer]) -> Mapping[str, Any]:
    """A PREFLIGHT/``cluster show`` summary: healthy when at least one session is Established."""
    established = [p for p in peers if p.established]
    return {"healthy": bool(established), "established": len(established), "total": len(peers),
            "peers": [{"address": p.address, "remote_as": p.remote_as, "state": p.state,
                       "prefixes_received": p.prefixes_received} for p in peers]}
