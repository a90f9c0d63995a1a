"""Pure parsers for FRR 8.4 ``vtysh ... json`` output (no I/O, so they are tested on real captures).

Why a separate module: ``FrrBgpSpeaker`` must read state from FRR's tables, never from exit codes (an absent
prefix prints ``{}`` with rc 0). The shapes differ between commands and are easy to get subtly wrong, so every rule
lives here next to its reason, and ``tests/unit/test_frr_parsers.py`` runs each one on real FRR 8.4.4 output.

Shapes (FRR 8.4):
- prefix view ``show bgp ipv4 unicast <p> json``: ``{"prefix", "advertisedTo": {peer: ...}, "paths": [...]}``;
  a path has ``aspath.segments[].list``, ``valid``, ``bestpath.overall`` (key absent on non-best paths),
  ``nexthops[].ip``, ``peer.peerId`` and, for a route this router originates, ``sourced``/``local``
  (``aspath.string == "Local"``, ``peer.peerId == "0.0.0.0"``). An absent prefix is ``{}``. Between a change
  and FRR's best-path run (50 ms) paths carry ``processScheduled``, and a withdrawn own path ``removed``.
- table view ``show bgp ipv4 unicast json``: ``{"localAS", "routes": {prefix: [entry, ...]}}``; here the AS path
  is a flat string ``path`` and ``bestpath`` a bool; an own route has ``peerId == "(unspec)"``; an entry being
  withdrawn still appears, with ``removed: true``.
- summary ``show bgp summary json``: ``{"ipv4Unicast": {"as", "peers": {addr: {"remoteAs", "state", "pfxRcd"}}}}``;
  ``{}`` when no ``router bgp`` is configured.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cnf.network.base import BgpPath, BgpPeer

#: FRR writes this next-hop for a route it originates without ``set ip next-hop``: "myself".
SELF_NEXT_HOP = "0.0.0.0"


class FrrOutputError(ValueError):
    """FRR printed something that is not the JSON shape we expect (the driver maps it to DriverError)."""


@dataclass(frozen=True)
class FrrPath:
    """One path of a prefix, as one router holds it."""

    next_hop: str
    as_path: tuple[int, ...]
    local: bool  # originated by this router (``network`` statement / redistribution)
    best: bool
    valid: bool
    peer_id: str
    last_update_epoch: int
    # received, best-path not run yet (``processScheduled``): a replacement path stays ``valid: false`` until
    # zebra has resolved its next-hop, while the router still forwards by its previous decision
    pending: bool = False

    def origin_as(self, local_as: int) -> int:
        """The AS that originated the route: the last AS of the path, or ours for our own route."""
        return self.as_path[-1] if self.as_path else local_as


def load(text: str) -> dict[str, Any]:
    """Parse vtysh's stdout as one JSON object; anything else is an ``FrrOutputError``."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise FrrOutputError(f"not JSON: {text[:200]!r}") from exc
    if not isinstance(data, dict):
        raise FrrOutputError(f"expected a JSON object, got {type(data).__name__}")
    return data


def load_trailing_object(text: str) -> dict[str, Any]:
    """The JSON object vtysh printed, skipping notes before it (config messages, "Can't open ... vtysh.conf").

    The object is the first line that starts with ``{`` through the end of the output.
    """
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("{"):
            return load("\n".join(lines[i:]))
    return load(text)


def load_objects(text: str) -> list[dict[str, Any]]:
    """Every JSON object vtysh printed in one session (several ``show ... json`` commands), in order."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("{")), None)
    if start is None:
        raise FrrOutputError(f"no JSON object in: {text[:200]!r}")
    rest, decoder = "\n".join(lines[start:]), json.JSONDecoder()
    out: list[dict[str, Any]] = []
    pos = 0
    while True:
        while pos < len(rest) and rest[pos].isspace():
            pos += 1
        if pos >= len(rest):
            return out
        try:
            obj, pos = decoder.raw_decode(rest, pos)
        except json.JSONDecodeError as exc:
            raise FrrOutputError(f"not JSON: {rest[pos:pos + 200]!r}") from exc
        if not isinstance(obj, dict):
            raise FrrOutputError(f"expected a JSON object, got {type(obj).__name__}")
        out.append(obj)


def _as_path(path: Mapping[str, Any]) -> tuple[int, ...]:
    asp = path.get("aspath")
    if not isinstance(asp, Mapping):
        return ()
    out: list[int] = []
    for seg in asp.get("segments") or []:
        if isinstance(seg, Mapping):
            # an as-set has no order; its members still name the origin side, keep them in order given
            out.extend(int(a) for a in seg.get("list") or [])
    return tuple(out)


def _obj(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _path(raw: Mapping[str, Any]) -> FrrPath:
    nexthops = raw.get("nexthops") or []
    nh = str(nexthops[0].get("ip", SELF_NEXT_HOP)) if nexthops and isinstance(nexthops[0], Mapping) else SELF_NEXT_HOP
    peer = _obj(raw.get("peer"))
    best = raw.get("bestpath")
    last = _obj(raw.get("lastUpdate"))
    local = bool(raw.get("sourced") or raw.get("local")) or str(peer.get("peerId", "")) == "0.0.0.0"
    return FrrPath(
        next_hop=nh,
        as_path=_as_path(raw),
        local=local,
        best=isinstance(best, Mapping) and bool(best.get("overall")),
        valid=bool(raw.get("valid")),
        peer_id=str(peer.get("peerId", "")),
        last_update_epoch=int(last.get("epoch", 0) or 0),
        pending=bool(raw.get("processScheduled")),
    )


def prefix_paths(view: Mapping[str, Any]) -> list[FrrPath]:
    """Every live path of a prefix view; ``[]`` for the ``{}`` FRR prints for an absent prefix.

    A path marked ``"removed": true`` is one FRR is still deleting (seen right after ``no network``, in the same
    vtysh session): it is already gone for BGP, so it is left out.
    """
    paths = view.get("paths")
    if paths is None:
        return []
    if not isinstance(paths, list):
        raise FrrOutputError("'paths' is not a list")
    return [_path(p) for p in paths if isinstance(p, Mapping) and not p.get("removed")]


def local_path(view: Mapping[str, Any], *, include_removed: bool = False) -> FrrPath | None:
    """The path this router originates for the prefix, if any (valid or not).

    ``include_removed``: also a path flagged ``removed`` - FRR has accepted ``no network`` but not yet run
    best-path (its work queue waits 50 ms), so it has not told its peers and the table view still lists it.
    """
    paths = prefix_paths(view) if not include_removed else [
        _path(p) for p in view.get("paths") or [] if isinstance(p, Mapping)]
    for p in paths:
        if p.local:
            return p
    return None


def process_pending(view: Mapping[str, Any]) -> bool:
    """FRR has queued the prefix for best-path and not run it yet (``processScheduled`` on its paths).

    Until then what the table shows is not what the peers were sent: a change is queued, and FRR's bgpd runs the
    queue 50 ms after the first item (``bgp->process_queue->spec.hold = 50`` in FRR 8.4, not configurable).
    """
    paths = view.get("paths")
    return isinstance(paths, list) and any(isinstance(p, Mapping) and p.get("processScheduled") for p in paths)


def advertised_to(view: Mapping[str, Any]) -> list[str]:
    """Peers the router has sent its best path for this prefix to."""
    adv = view.get("advertisedTo")
    return sorted(adv) if isinstance(adv, Mapping) else []


def _to_bgp_path(prefix: str, p: FrrPath, local_as: int, self_next_hop: str) -> BgpPath:
    nh = self_next_hop if p.next_hop == SELF_NEXT_HOP else p.next_hop
    return BgpPath(prefix=prefix, next_hop=nh, origin_as=p.origin_as(local_as))


def best_path(prefix: str, view: Mapping[str, Any], *, local_as: int, self_next_hop: str) -> BgpPath | None:
    """The router's own overall best path (what it forwards on), or None."""
    for p in prefix_paths(view):
        if p.best and p.valid:
            return _to_bgp_path(prefix, p, local_as, self_next_hop)
    return None


def fabric_path(prefix: str, view: Mapping[str, Any], *, local_as: int, self_next_hop: str) -> BgpPath | None:
    """What the rest of the fabric uses for ``prefix``, judged from one router's table.

    A router prefers its own route (weight 32768), so its best path says nothing about the fabric while it
    originates the prefix. The route server (or a reflector) sends each client the fabric's best path, except
    back to its originator. Hence, from this router:
    1. a valid path learned from a peer is the fabric's choice (the best-marked one; if our own route hides it,
       the oldest one, as BGP's "older path" rule would pick);
    2. else our own valid route, if we have advertised it to at least one peer (we are the only origin);
    3. else None: nobody in the fabric has a usable path.
    The same rule applied to a route server's (or an uninvolved cloud's) table gives its plain best path.

    A learned path FRR has not judged yet (``pending``) counts even while ``valid: false``: when the route server
    replaces the source's path by the destination's, the receiver shows only the new path, invalid until zebra has
    resolved its next-hop (a few ms), and meanwhile forwards by its previous decision (best-path has not run, the
    installed route is untouched). Leaving it out reported a moment without any path that no packet saw (CI, the
    handoff contract test, ~1 run in 10; fixture ``show_bgp_ipv4_unicast_prefix.c3.nexthop_pending.json``).
    """
    paths = [p for p in prefix_paths(view) if p.valid or (p.pending and not p.local)]
    learned = [p for p in paths if not p.local]
    if learned:
        chosen = next((p for p in learned if p.best), None)
        if chosen is None:
            chosen = min(learned, key=lambda p: (p.last_update_epoch, p.peer_id))
        return _to_bgp_path(prefix, chosen, local_as, self_next_hop)
    own = next((p for p in paths if p.local), None)
    if own is not None and advertised_to(view):
        return _to_bgp_path(prefix, own, local_as, self_next_hop)
    return None


def summary_af(summary: Mapping[str, Any]) -> Mapping[str, Any]:
    af = summary.get("ipv4Unicast")
    return af if isinstance(af, Mapping) else {}


def summary_local_as(summary: Mapping[str, Any]) -> int | None:
    """The AS of the running ``router bgp`` (None when BGP is not configured)."""
    value = summary_af(summary).get("as")
    return int(value) if value is not None else None


def summary_peers(summary: Mapping[str, Any]) -> list[BgpPeer]:
    """Peer health for PREFLIGHT and ``cluster show``, sorted by address."""
    peers = summary_af(summary).get("peers")
    if peers is None:
        return []
    if not isinstance(peers, Mapping):
        raise FrrOutputError("'peers' is not an object")
    out: list[BgpPeer] = []
    for addr, raw in sorted(peers.items()):
        if not isinstance(raw, Mapping):
            continue
        state = str(raw.get("state", ""))
        out.append(BgpPeer(address=str(addr), remote_as=int(raw.get("remoteAs", 0) or 0),
                           established=state == "Established", prefixes_received=int(raw.get("pfxRcd", 0) or 0),
                           state=state))
    return out


def table_local_as(table: Mapping[str, Any]) -> int | None:
    """``localAS`` of the table view: the running ``router bgp`` AS, also when it has no neighbours (the summary
    is then ``{}``). None when BGP is not configured."""
    value = table.get("localAS")
    return int(value) if value is not None else None


def originated_prefixes(table: Mapping[str, Any]) -> list[str]:
    """Prefixes this router originates, from the table view (for reconcilers and ``cluster show``)."""
    routes = table.get("routes")
    if not isinstance(routes, Mapping):
        return []
    out = []
    for prefix, entries in routes.items():
        for e in entries if isinstance(entries, list) else []:
            # an entry flagged "removed" is one FRR is still deleting after ``no network`` (gone for BGP)
            if (isinstance(e, Mapping) and e.get("peerId") == "(unspec)" and not e.get("path")
                    and not e.get("removed")):
                out.append(str(prefix))
                break
    return sorted(out)
