"""``SimRbdMirror``: the StorageDriver port over the simulated world.

Keeps Ceph's rules that matter for correctness (see ``docs/storage.md`` and the
lab's pitfalls): promote is refused while the peer is primary and retried while
its demotion snapshot is in flight; mirror lag follows delta size / bandwidth.
"""

from __future__ import annotations

from cnf.errors import DriverError, IllegalTransition, NotFound, SplitBrain
from cnf.sim.fabric import SimFabric, SimImage, SimImageSide
from cnf.storage.base import MirrorStatus

PORT = "storage"


class SimRbdMirror:
    def __init__(self, fabric: SimFabric, cluster_id: str) -> None:
        self.fabric = fabric
        self.cluster_id = cluster_id

    def _img(self, image: str) -> SimImage:
        img = self.fabric.images.get(image)
        if img is None:
            raise NotFound(f"image {image} not found", image=image, cluster_id=self.cluster_id)
        return img

    def _side(self, image: str) -> SimImageSide:
        img = self._img(image)
        side = img.sides.get(self.cluster_id)
        if side is None:
            raise NotFound(f"image {image} has no copy in {self.cluster_id}", image=image)
        return side

    def _peers(self, img: SimImage) -> list[tuple[str, SimImageSide]]:
        return [(cid, s) for cid, s in img.sides.items() if cid != self.cluster_id]

    async def status(self, image: str) -> MirrorStatus:
        await self.fabric.enter(self.cluster_id, PORT, "status")
        img = self.fabric.images.get(image)
        side = img.sides.get(self.cluster_id) if img else None
        if img is None or side is None:
            return MirrorStatus(image=image, exists=False, mirroring=False, primary=False, last_snapshot_id=0,
                                in_sync=False, lag_s=0.0)
        self.fabric.replicate(image)
        primaries = [cid for cid, s in img.sides.items() if s.primary]
        last = max(side.snapshots, default=0)
        if side.primary:
            in_sync, lag = True, 0.0
        else:
            pending = [s for s in img.snapshots.values() if s.id not in side.snapshots and s.origin != self.cluster_id]
            in_sync = not pending and bool(side.snapshots)
            now = self.fabric.clock.now()
            lag = max((now - min(p.created for p in pending)) if pending else 0.0, 0.0)
            if not side.snapshots and not pending:
                lag = float("inf") if side.mirroring else 0.0
        return MirrorStatus(image=image, exists=True, mirroring=side.mirroring, primary=side.primary,
                            last_snapshot_id=last, in_sync=in_sync, lag_s=lag, split_brain=len(primaries) > 1)

    async def enable_mirroring(self, image: str) -> bool:
        await self.fabric.enter(self.cluster_id, PORT, "enable_mirroring")
        img = self._img(image)
        side = self._side(image)
        if side.mirroring:
            return False
        side.mirroring = True
        for cid in self.fabric.clusters:
            if cid != self.cluster_id and cid not in img.sides:
                img.sides[cid] = SimImageSide(exists=True, mirroring=True, primary=False, data_version=0)
        if side.primary:
            self.fabric.take_snapshot(image, self.cluster_id, demotion=False)
        self.fabric.effect(self.cluster_id, PORT, "enable", image)
        return True

    async def disable_mirroring(self, image: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "disable_mirroring")
        img = self._img(image)
        side = self._side(image)
        if not side.mirroring:
            return
        if not side.primary:
            raise IllegalTransition("mirroring is disabled from the primary side", image=image)
        side.mirroring = False
        for cid, peer in self._peers(img):
            if not peer.primary:
                del img.sides[cid]
        self.fabric.effect(self.cluster_id, PORT, "disable", image)

    async def create_mirror_snapshot(self, image: str) -> int:
        await self.fabric.enter(self.cluster_id, PORT, "create_mirror_snapshot")
        side = self._side(image)
        if not side.primary:
            raise IllegalTransition("mirror snapshots are taken on the primary", image=image)
        if not side.mirroring:
            raise DriverError("mirroring is not enabled on this image", image=image)
        return self.fabric.take_snapshot(image, self.cluster_id, demotion=False).id

    async def demote(self, image: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "demote")
        side = self._side(image)
        if not side.primary:
            return
        self.fabric.take_snapshot(image, self.cluster_id, demotion=True)
        side.primary = False
        self.fabric.effect(self.cluster_id, PORT, "demote", image)

    async def promote(self, image: str) -> None:
        await self.fabric.enter(self.cluster_id, PORT, "promote")
        img = self._img(image)
        side = self._side(image)
        self.fabric.replicate(image)
        others_primary = [cid for cid, s in self._peers(img) if s.primary]
        if side.primary:
            if others_primary:
                raise SplitBrain("both sides are primary; resync the side that must lose its writes",
                                 image=image, primaries=[self.cluster_id, *others_primary])
            return
        if others_primary:
            raise IllegalTransition("peer is still primary: demote it first (no --force on the orderly path)",
                                    image=image, primary=others_primary[0])
        demotions = [s for s in img.snapshots.values() if s.demotion]
        latest = max(demotions, key=lambda s: s.id, default=None)
        # Our own latest demotion can be taken back (nobody promoted since); a peer's must have arrived.
        if latest is None or (latest.origin != self.cluster_id and latest.id not in side.snapshots):
            raise DriverError("the peer's demotion has not arrived yet (Read-only file system); retry",
                              image=image, retry_after_s=0.02)
        side.primary = True
        self.fabric.effect(self.cluster_id, PORT, "promote", image)

    async def peer_reachable(self) -> bool:
        await self.fabric.enter(self.cluster_id, PORT, "peer_reachable")
        return all((cid, PORT) not in self.fabric.faults.down for cid in self.fabric.clusters)
