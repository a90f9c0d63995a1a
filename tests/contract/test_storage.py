"""The StorageDriver contract, run against the sim (``SimRbdMirror``) and real Ceph (``CephRbdMirror``).

Each test drives two sides (``src`` starts primary, ``dst`` is the peer) through a ``Backend`` that knows how to
create an image, make a guest write at the current primary, read a checksum of one side, let time pass, and hold
back replication to ``dst`` (sim: the clock does not move; Ceph: dst's rbd-mirror is SIGSTOPped).
The Ceph backend needs the real lab (marked ``lab``; two clusters started once per session by ``lab.ceph``).
"""

from __future__ import annotations

import asyncio
import itertools
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from cnf.clock import ManualClock
from cnf.errors import DriverError, IllegalTransition, NotFound, SplitBrain
from cnf.storage.base import MirrorStatus, StorageDriver

try:
    import lab.ceph as lab_ceph
except ImportError:  # pytest run from elsewhere: the repo root holds the ``lab`` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    import lab.ceph as lab_ceph


class Backend(Protocol):
    name: str
    src: Any
    dst: Any

    async def new_image(self) -> str: ...
    async def write(self, side: Any, image: str, n: int) -> None: ...
    async def content(self, side: Any, image: str) -> str: ...
    async def settle(self) -> None: ...
    def hold_replication(self) -> None: ...
    def release_replication(self) -> None: ...


# --- sim -------------------------------------------------------------------------------------------------------


class SimBackend:
    name = "sim"

    def __init__(self) -> None:
        from cnf.sim.fabric import SimFabric
        from cnf.storage.sim import SimRbdMirror

        self.clock = ManualClock()
        self.fabric = SimFabric(clock=self.clock)
        self.fabric.add_cluster("a", name="site-a", as_number=65001, next_hop="127.0.0.1")
        self.fabric.add_cluster("b", name="site-b", as_number=65002, next_hop="127.0.0.2")
        self.src = SimRbdMirror(self.fabric, "a")
        self.dst = SimRbdMirror(self.fabric, "b")
        self.held = False
        self._n = itertools.count()

    async def new_image(self) -> str:
        name = f"img{next(self._n)}"
        self.fabric.create_image("a", name, size_mb=64)
        return name

    async def write(self, side: Any, image: str, n: int) -> None:
        img = self.fabric.images[image]
        s = img.sides[side.cluster_id]
        assert s.primary, "tests write only at the primary"
        s.data_version += 1
        img.written_mb_since_snapshot += 4

    async def content(self, side: Any, image: str) -> str:
        return str(self.fabric.images[image].sides[side.cluster_id].data_version)

    async def settle(self) -> None:
        if not self.held:
            self.clock.advance(0.05)
        await asyncio.sleep(0)

    def hold_replication(self) -> None:
        self.held = True

    def release_replication(self) -> None:
        self.held = False


# --- ceph ------------------------------------------------------------------------------------------------------


class CephBackend:
    name = "ceph"

    def __init__(self, lab: Any) -> None:
        from cnf.storage.ceph import CephRbdMirror, CephSiteConfig

        self.lab = lab
        self.src = CephRbdMirror("a", CephSiteConfig(**lab.a.driver_config()), promote_timeout_s=5.0)
        self.dst = CephRbdMirror("b", CephSiteConfig(**lab.b.driver_config()), promote_timeout_s=5.0)
        self.images: list[str] = []
        self.held = False

    def site(self, side: Any) -> Any:
        return self.lab.a if side is self.src else self.lab.b

    async def new_image(self) -> str:
        name = f"ct-{uuid.uuid4().hex[:8]}"
        await asyncio.to_thread(self.lab.a.create_image, name, 32)
        await asyncio.to_thread(self.lab.a.write, name, 0, b"boot" * 4096)
        self.images.append(name)
        return name

    async def write(self, side: Any, image: str, n: int) -> None:
        data = (f"write {n} at {side.cluster_id} ".encode() * 512)[: 1 << 16]
        await asyncio.to_thread(self.site(side).write, image, (n % 64) * (1 << 16) + (4 << 20), data)

    async def content(self, side: Any, image: str) -> str:
        return await asyncio.to_thread(self.site(side).export_sha256, image)

    async def settle(self) -> None:
        await asyncio.sleep(0.05)

    def hold_replication(self) -> None:
        self.held = True
        self.lab.b.stop_mirror_daemon()

    def release_replication(self) -> None:
        if self.held:
            self.lab.b.start_mirror_daemon()
            self.held = False

    async def cleanup(self) -> None:
        self.release_replication()
        for drv in (self.src, self.dst):
            try:
                await drv.release()
            except Exception:  # best effort: the lab is torn down at session end anyway
                pass
        for image in self.images:
            for drv in (self.src, self.dst):
                try:
                    st = await drv.status(image)
                    if st.primary and st.mirroring:
                        await drv.disable_mirroring(image)
                        await asyncio.to_thread(self.site(drv).remove_image, image)
                except Exception:
                    pass
        await self.src.close()
        await self.dst.close()


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[Any]:
    lab = lab_ceph.acquire_shared_lab()
    yield lab
    lab_ceph.release_shared_lab()


@pytest.fixture(params=["sim", pytest.param("ceph", marks=pytest.mark.lab)])
async def backend(request: pytest.FixtureRequest) -> AsyncIterator[Backend]:
    if request.param == "sim":
        yield SimBackend()
        return
    b = CephBackend(request.getfixturevalue("ceph_lab"))
    try:
        yield b
    finally:
        await b.cleanup()


# --- helpers ---------------------------------------------------------------------------------------------------


async def wait_status(b: Backend, side: Any, image: str, pred: Any, tries: int = 1200) -> MirrorStatus:
    """Poll ``side.status`` until ``pred`` holds (deadline = ``tries`` settles: 60 s real / 60 s sim)."""
    st = None
    for _ in range(tries):
        st = await side.status(image)
        if pred(st):
            return st
        await b.settle()
    raise AssertionError(f"condition never held; last status {st}")


async def synced(b: Backend, image: str, src: Any, dst: Any) -> int:
    """Take a mirror snapshot at ``src`` and wait until ``dst`` holds it; returns its id."""
    sid = await src.create_mirror_snapshot(image)
    await wait_status(b, dst, image, lambda s: s.exists and s.in_sync and s.last_snapshot_id >= sid)
    return int(sid)


async def promote_retrying(b: Backend, side: Any, image: str, tries: int = 400) -> int:
    """Promote, retrying while the driver says the demotion is still in flight (retryable DriverError)."""
    for attempt in range(tries):
        try:
            await side.promote(image)
            return attempt
        except (IllegalTransition, SplitBrain):
            raise
        except DriverError as e:
            assert e.retryable, e
            await b.settle()
    raise AssertionError("promote never succeeded")


async def mirrored(b: Backend) -> str:
    image = await b.new_image()
    assert await b.src.enable_mirroring(image) is True
    await wait_status(b, b.dst, image, lambda s: s.exists and s.in_sync)
    return image


# --- the contract ----------------------------------------------------------------------------------------------

pytestmark = pytest.mark.timeout(180)


async def test_both_implement_the_port(backend: Backend) -> None:
    assert isinstance(backend.src, StorageDriver)
    assert isinstance(backend.dst, StorageDriver)
    assert await backend.src.peer_reachable() is True


async def test_missing_image(backend: Backend) -> None:
    st = await backend.src.status("no-such-image")
    assert st.exists is False and st.mirroring is False
    with pytest.raises(NotFound):
        await backend.src.enable_mirroring("no-such-image")


async def test_enable_is_idempotent_and_syncs(backend: Backend) -> None:
    image = await backend.new_image()
    assert (await backend.src.status(image)).primary is True
    assert await backend.src.enable_mirroring(image) is True
    assert await backend.src.enable_mirroring(image) is False
    dst = await wait_status(backend, backend.dst, image, lambda s: s.exists and s.in_sync)
    assert dst.mirroring and not dst.primary and dst.lag_s == 0.0 and not dst.split_brain
    src = await backend.src.status(image)
    assert src.primary and src.mirroring and src.in_sync and not src.split_brain
    assert await backend.content(backend.dst, image) == await backend.content(backend.src, image)


async def test_snapshot_sync_and_lag(backend: Backend) -> None:
    image = await mirrored(backend)
    sid = await synced(backend, image, backend.src, backend.dst)
    assert (await backend.dst.status(image)).last_snapshot_id == sid
    backend.hold_replication()
    try:
        await backend.write(backend.src, image, 1)
        sid2 = await backend.src.create_mirror_snapshot(image)
        assert sid2 > sid
        if backend.name == "sim":
            backend.clock.advance(0.01)  # type: ignore[attr-defined]
        # the new snapshot cannot arrive: dst is behind and its lag grows (Ceph timestamps have 1 s resolution)
        behind = await wait_status(backend, backend.dst, image, lambda s: not s.in_sync and s.lag_s > 0, tries=100)
        assert behind.last_snapshot_id == sid
    finally:
        backend.release_replication()
    st = await wait_status(backend, backend.dst, image, lambda s: s.in_sync)
    assert st.last_snapshot_id == sid2 and st.lag_s == 0.0


async def test_snapshot_on_non_primary_refused(backend: Backend) -> None:
    image = await mirrored(backend)
    with pytest.raises(IllegalTransition):
        await backend.dst.create_mirror_snapshot(image)


async def test_promote_while_peer_primary_is_refused(backend: Backend) -> None:
    image = await mirrored(backend)
    with pytest.raises(IllegalTransition) as err:
        await backend.dst.promote(image)
    assert err.value.retryable is False
    assert (await backend.src.status(image)).primary and not (await backend.dst.status(image)).primary


async def test_cutover_and_failback_keep_the_data(backend: Backend) -> None:
    b = backend
    image = await mirrored(b)
    await b.write(b.src, image, 1)
    await synced(b, image, b.src, b.dst)  # the final pre-pause snapshot has arrived ...
    await b.write(b.src, image, 2)  # ... and the guest writes once more before the pause
    before = await b.content(b.src, image)
    await b.src.demote(image)
    await promote_retrying(b, b.dst, image)
    assert await b.content(b.dst, image) == before  # the last write travelled inside the demotion snapshot
    src, dst = await b.src.status(image), await b.dst.status(image)
    assert dst.primary and not src.primary and not src.split_brain and not dst.split_brain
    # P1: the old source must not be promoted back while the new primary is primary
    with pytest.raises(IllegalTransition):
        await b.src.promote(image)
    # failback
    await b.write(b.dst, image, 3)
    await synced(b, image, b.dst, b.src)
    await b.write(b.dst, image, 4)
    before = await b.content(b.dst, image)
    await b.dst.demote(image)
    await promote_retrying(b, b.src, image)
    assert await b.content(b.src, image) == before
    assert (await b.src.status(image)).primary and not (await b.dst.status(image)).primary


async def test_demote_and_promote_are_idempotent(backend: Backend) -> None:
    b = backend
    image = await mirrored(b)
    await b.src.demote(image)
    await b.src.demote(image)  # demote twice: no error, still non-primary
    assert not (await b.src.status(image)).primary
    await promote_retrying(b, b.dst, image)
    await b.dst.promote(image)  # promote an already-primary image: no-op
    assert (await b.dst.status(image)).primary and not (await b.src.status(image)).primary


async def test_promote_waits_for_the_demotion(backend: Backend) -> None:
    b = backend
    image = await mirrored(b)
    await b.write(b.src, image, 5)
    before = await b.content(b.src, image)
    if isinstance(b, CephBackend):
        b.dst.promote_timeout_s = 1.0
    b.hold_replication()
    try:
        await b.src.demote(image)
        with pytest.raises(DriverError) as err:
            await b.dst.promote(image)  # the demotion cannot have arrived: retryable refusal, not a promote
        assert err.value.retryable and not isinstance(err.value, (IllegalTransition, SplitBrain))
        assert not (await b.dst.status(image)).primary
    finally:
        b.release_replication()
    await promote_retrying(b, b.dst, image)
    assert await b.content(b.dst, image) == before


async def test_interrupted_handover_is_resumed(backend: Backend) -> None:
    """Demote done, promote never ran (driver died): both non-primary; a later promote finishes the handover."""
    b = backend
    image = await mirrored(b)
    await b.write(b.src, image, 6)
    before = await b.content(b.src, image)
    await b.src.demote(image)
    assert not (await b.src.status(image)).primary and not (await b.dst.status(image)).primary
    if isinstance(b, CephBackend):  # a fresh driver (new worker process), as after an agent restart
        await b.dst.close()
    await promote_retrying(b, b.dst, image)
    assert (await b.dst.status(image)).primary
    assert await b.content(b.dst, image) == before


async def test_disable_mirroring(backend: Backend) -> None:
    image = await mirrored(backend)
    with pytest.raises(IllegalTransition):
        await backend.dst.disable_mirroring(image)
    await backend.src.disable_mirroring(image)
    await backend.src.disable_mirroring(image)  # idempotent
    st = await backend.src.status(image)
    assert st.exists and not st.mirroring and st.primary
