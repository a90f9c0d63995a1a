"""``SimBgpSpeaker``: the BgpDriver port over the simulated world.

The fabric's "route server" view is computed from what every cluster originates:
every cloud is one AS hop from the route server, so between two origins the oldest
announcement wins (FRR prefers the older of two equal eBGP paths), ties broken by
the lowest AS number — which is why the destination can announce early and the
/32 only moves when the source withdraws.
"""

from __future__ import annotations

import ipaddress

from cnf.errors import InvalidInput
from cnf.network.base import BgpPath, BgpPeer
from cnf.sim.fabric import SimFabric

PORT = "bgp"


def validate_prefix(prefix: str) -> str:
    """Accept only a host route ``a.b.c.d/32`` (what CNF moves); refuse anything else before acting."""
    try:
        net = ipaddress.IPv4Network(prefix, strict=True)
    except (ValueError, TypeError):
        raise InvalidInput(f"not an IPv4 prefix: {prefix!r}", field="prefix") from None
    if net.prefixlen != 32 or str(net) != prefix:
        raise InvalidInput(f"only /32 host routes are announced, got {prefix!r}", field="prefix")
    return prefix


def validate_next_hop(next_hop: str) -> str:
    try:
        addr = ipaddress.IPv4Address(next_hop)
    except (ValueError, TypeError):
        raise InvalidInput(f"not an IPv4 address: {next_hop!r}", field="next_hop") from None
    if str(addr) != next_hop:
        raise InvalidInput(f"not a canonical IPv4 address: {next_hop!r}", field="next_hop")
    return next_hop


class SimBgpSpeaker:
    def __init__(self, fabric: SimFabric, cluster_id: str) -> None:
        self.fabric = fabric
        self.cluster_id = cluster_id
        c = fabric.cluster(cluster_id)
        self.as_number = c.as_number
        self.default_next_hop = c.next_hop

    async def announce(self, prefix: str, next_hop: str | None = None) -> None:
        validate_prefix(prefix)
        nh = validate_next_hop(next_hop if next_hop is not None else self.default_next_hop)
        await self.fabric.enter(self.cluster_id, PORT, "announce")
        routes = self.fabric.cluster(self.cluster_id).routes
        if routes.get(prefix) == nh:
            return
        if prefix not in routes:
            self.fabric.cluster(self.cluster_id).route_since[prefix] = self.fabric.clock.now()
        routes[prefix] = nh
        self.fabric.effect(self.cluster_id, PORT, "announce", prefix)

    async def withdraw(self, prefix: str) -> None:
        validate_prefix(prefix)
        await self.fabric.enter(self.cluster_id, PORT, "withdraw")
        routes = self.fabric.cluster(self.cluster_id).routes
        if prefix not in routes:
            return
        del routes[prefix]
        self.fabric.cluster(self.cluster_id).route_since.pop(prefix, None)
        self.fabric.effect(self.cluster_id, PORT, "withdraw", prefix)

    async def announced(self, prefix: str) -> bool:
        validate_prefix(prefix)
        await self.fabric.enter(self.cluster_id, PORT, "announced")
        return prefix in self.fabric.cluster(self.cluster_id).routes

    async def fabric_best_path(self, prefix: str) -> BgpPath | None:
        validate_prefix(prefix)
        await self.fabric.enter(self.cluster_id, PORT, "fabric_best_path")
        origins = [c for c in self.fabric.clusters.values() if prefix in c.routes]
        if not origins:
            return None
        best = min(origins, key=lambda c: (c.route_since.get(prefix, 0.0), c.as_number))
        return BgpPath(prefix=prefix, next_hop=best.routes[prefix], origin_as=best.as_number)

    async def peers(self) -> list[BgpPeer]:
        await self.fabric.enter(self.cluster_id, PORT, "peers")
        received = sum(len(c.routes) for c in self.fabric.clusters.values() if c.cluster_id != self.cluster_id)
        return [BgpPeer(address="192.0.2.254", remote_as=65000, established=True, prefixes_received=received,
                        state="Established")]
