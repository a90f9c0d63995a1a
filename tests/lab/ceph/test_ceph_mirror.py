"""``CephRbdMirror`` behaviours that only the real thing has: split-brain, timeouts, lock holders, PREFLIGHT.

The portable contract (enable/sync/lag/cutover/failback/idempotency) is ``tests/contract/test_storage.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from cnf.errors import DriverUnavailable, IllegalTransition, SplitBrain
from cnf.storage.ceph import CephRbdMirror, CephSiteConfig

pytestmark = [pytest.mark.lab, pytest.mark.timeout(180)]


class Pair:
    def __init__(self, lab: Any) -> None:
        self.lab = lab
        self.a = CephRbdMirror("a", CephSiteConfig(**lab.a.driver_config()))
        self.b = CephRbdMirror("b", CephSiteConfig(**lab.b.driver_config()))
        self.images: list[str] = []

    async def image(self, size_mb: int = 16) -> str:
        name = f"lt-{uuid.uuid4().hex[:8]}"
        self.images.append(name)
        await asyncio.to_thread(self.lab.a.create_image, name, size_mb)
        await asyncio.to_thread(self.lab.a.write, name, 0, os.urandom(1 << 20))
        assert await self.a.enable_mirroring(name)
        await self.until(self.b, name, lambda s: s.exists and s.in_sync)
        return name

    async def until(self, drv: CephRbdMirror, image: str, pred: Any, seconds: float = 60) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        st = None
        while loop.time() < deadline:
            try:
                st = await drv.status(image)
                if pred(st):
                    return st
            except DriverUnavailable:
                pass
            await asyncio.sleep(0.1)
        raise AssertionError(f"never true; last {st}")

    async def promote(self, drv: CephRbdMirror, image: str) -> None:
        for _ in range(30):
            try:
                await drv.promote(image)
                return
            except (IllegalTransition, SplitBrain):
                raise
            except DriverUnavailable:
                raise
            except Exception:
                await asyncio.sleep(0.1)
        raise AssertionError("promote never succeeded")


@pytest.fixture
async def pair(ceph_lab: Any) -> AsyncIterator[Pair]:
    p = Pair(ceph_lab)
    yield p
    for s in ceph_lab.sites:
        s.start_mirror_daemon()  # in case a test stopped one
    for image in p.images:  # best effort: keep the shared lab small (memstore holds data in RAM)
        for drv, site in ((p.a, ceph_lab.a), (p.b, ceph_lab.b)):
            try:
                await drv.release(image)
                st = await drv.status(image)
                if st.primary and st.mirroring:
                    await drv.disable_mirroring(image)
                    await asyncio.to_thread(site.remove_image, image)
            except Exception:
                pass
    await p.a.close()
    await p.b.close()


async def test_split_brain_is_reported_with_the_recovery(pair: Pair) -> None:
    """Make P1 happen with the CLI (the driver refuses to), see it reported, recover with demote + resync."""
    lab, image = pair.lab, await pair.image()
    lab.a.stop_mirror_daemon()  # nothing from B reaches A: A's newest snapshot stays its own demotion
    try:
        await pair.a.demote(image)
        await pair.promote(pair.b, image)
        with pytest.raises(IllegalTransition):
            await pair.a.promote(image)  # the driver refuses ...
        p = lab.a.rbd("mirror", "image", "promote", f"vms/{image}", check=False)  # ... librbd alone does not
        assert p.returncode == 0, p.stderr
    finally:
        lab.a.start_mirror_daemon()
    sa, sb = await pair.a.status(image), await pair.b.status(image)
    assert sa.primary and sb.primary and sa.split_brain and sb.split_brain
    with pytest.raises(SplitBrain) as err:
        await pair.b.promote(image)
    assert "resync" in err.value.message and err.value.retryable is False
    # recovery: A's writes lose; demote A and resync it from B
    await pair.a.demote(image)
    await pair.a.resync(image)
    await pair.b.create_mirror_snapshot(image)
    st = await pair.until(pair.a, image, lambda s: s.exists and not s.primary and s.in_sync and not s.split_brain)
    assert not st.split_brain
    assert await pair.a.checksum(image) == await pair.b.checksum(image)


async def test_demote_while_another_client_holds_the_exclusive_lock(pair: Pair, tmp_path: Path) -> None:
    """What a paused QEMU looks like to librbd: another client opened the image and wrote (it owns the lock)."""
    lab, image = pair.lab, await pair.image()
    script = tmp_path / "holder.py"
    script.write_text(
        "import sys, time, rados, rbd\n"
        "c = rados.Rados(conffile=sys.argv[1], clustername=sys.argv[2], name='client.admin',"
        " conf={'admin_socket': ''}); c.connect()\n"
        "io = c.open_ioctx('vms'); im = rbd.Image(io, sys.argv[3])\n"
        "im.write(b'held' * 1024, 8 << 20); im.flush()\n"
        "print('owner', im.is_exclusive_lock_owner(), flush=True)\n"
        "sys.stdin.read()\n"  # until the test closes stdin; then leave cleanly (a killed holder stalls replication)
        "im.close(); io.close(); c.shutdown()\n")
    holder = await asyncio.create_subprocess_exec("/usr/bin/python3", "-I", str(script), str(lab.a.conf), lab.a.name,
                                                  image, stdin=asyncio.subprocess.PIPE,
                                                  stdout=asyncio.subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(holder.stdout.readline(), 30)
        assert line.strip() == b"owner True"
        before = await pair.a.checksum(image)
        await pair.a.demote(image)
        await pair.promote(pair.b, image)
        assert await pair.b.checksum(image) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        try:
            await asyncio.wait_for(holder.wait(), 30)
        except TimeoutError:
            os.kill(holder.pid, signal.SIGKILL)
            await holder.wait()


def _mirror_snaps(site: Any, image: str) -> list[dict[str, Any]]:
    out = site.rbd("snap", "ls", "--all", "--format", "json", f"vms/{image}").stdout
    return [s for s in json.loads(out) if s.get("namespace", {}).get("type") == "mirror"]


def _own_peerless(snap: dict[str, Any]) -> bool:
    ns = snap["namespace"]
    return "primary_snap_id" not in ns and not ns.get("mirror_peer_uuids")


async def test_prepare_handover_prunes_only_old_peerless_snapshots(pair: Pair) -> None:
    """rbd-mirror unlinks itself from source snapshots it has synced past but leaves them; the demote would remove
    them inside the pause. ``prepare_handover`` removes them before it: never the newest, never a linked one."""
    lab, image = pair.lab, await pair.image()
    for _ in range(2):  # a few snapshots, so that one the peer has synced past exists
        sid = await pair.a.create_mirror_snapshot(image)
        await pair.until(pair.b, image, lambda s, sid=sid: s.in_sync and s.last_snapshot_id >= sid)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 30
    before = await asyncio.to_thread(_mirror_snaps, lab.a, image)
    while not any(_own_peerless(s) for s in before[:-1]) and loop.time() < deadline:
        await asyncio.sleep(0.1)  # rbd-mirror unlinks right after the sync completes
        before = await asyncio.to_thread(_mirror_snaps, lab.a, image)
    assert any(_own_peerless(s) for s in before[:-1]), before
    await pair.a.prepare_handover(image)
    after = await asyncio.to_thread(_mirror_snaps, lab.a, image)
    assert after[-1]["id"] == before[-1]["id"]  # the newest stays
    assert not any(_own_peerless(s) for s in after[:-1]), after
    kept = {s["id"] for s in before[:-1] if not _own_peerless(s)}
    assert kept <= {s["id"] for s in after}  # linked snapshots and copies untouched
    # and the handover that follows is whole
    before_sum = await pair.a.checksum(image)
    await pair.a.demote(image)
    await pair.promote(pair.b, image)
    assert await pair.b.checksum(image) == before_sum


async def test_call_timeout_kills_the_worker_and_recovers(pair: Pair) -> None:
    image = await pair.image(size_mb=64)
    with pytest.raises(DriverUnavailable):
        await pair.a.checksum(image, timeout_s=0.001)
    assert pair.a._worker is None  # killed, not left blocked
    assert (await pair.a.status(image)).primary  # the next call starts a fresh worker


async def test_stopped_osd_gives_driver_unavailable(pair: Pair) -> None:
    """A hung OSD blocks librados forever without timeouts; the driver answers DriverUnavailable in time."""
    lab, image = pair.lab, await pair.image()
    drv = CephRbdMirror("b", CephSiteConfig(**lab.b.driver_config()), op_timeout_s=2.0)
    await drv.start()
    osd = next(pid for key, pid in lab.b.pids.items() if key.startswith("osd."))
    os.kill(osd, signal.SIGSTOP)
    try:
        with pytest.raises(DriverUnavailable):
            await drv.status(image)
    finally:
        os.kill(osd, signal.SIGCONT)
        await drv.close()
    assert (await pair.b.status(image)).exists


async def test_unreachable_cluster(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    conf = tmp_path / "dead.conf"
    conf.write_text(f"[global]\nmon_host = 127.0.0.1:{port}\nauth_client_required = none\n")
    drv = CephRbdMirror("x", CephSiteConfig(cluster_name="dead", conf_path=str(conf)), op_timeout_s=2.0)
    with pytest.raises(DriverUnavailable):
        await drv.status("img")
    await drv.close()


async def test_preflight_on_the_tuned_lab(pair: Pair) -> None:
    image = await pair.image()
    checks = {c.name: c for c in await pair.b.preflight(image, max_lag_s=30.0)}
    assert all(c.passed for c in checks.values()), checks
    assert set(checks) == {"storage.peer_reachable", "storage.mirroring", "storage.mirror_daemon", "storage.lag",
                           "storage.handover_tuning"}
    health = await pair.b.pool_health()  # image health depends on the other tests sharing the lab
    assert health.daemon_health == "OK" and health.daemons == 1
    assert await pair.a.tuning() == {"paxos_propose_interval": 0.01, "paxos_min_wait": 0.001}
