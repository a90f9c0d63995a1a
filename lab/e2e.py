"""One live migration where the real parts are real: QEMU on an RBD image, Ceph mirroring, FRR, CNF's engine.

Why: the product's promise is "the VM keeps running and keeps its IP while it moves between clouds". This lab
shows it whole on one machine and measures what a user would notice, with instruments that are *not* CNF's own
bookkeeping:

* two Ceph clusters with two-way snapshot rbd-mirror (``lab.ceph``); the guest's disk is the RBD image
  ``vms/<vm>_disk`` opened by QEMU through ``rbd:`` (qemu-block-extra);
* an FRR route server and two cloud routers in their own network namespaces (``lab.frr``); cloud ``a`` announces
  the VM's /32 with its router as next-hop, the handoff goes through ``FrrBgpSpeaker``;
* one QEMU "host" per cloud (``lab.qemu`` style ``QemuHypervisor``, TCG), the tiny heartbeat guest of ``lab.guest``;
* CNF's ``MigrationEngine`` with the real drivers for storage (``CephRbdMirror``), BGP (``FrrBgpSpeaker``) and
  hypervisor (``QemuHypervisor``); the cloud port (Nova) is ``SimCloud``: the OpenStack lab is not wired in here.

What is measured, by the lab itself:

* guest pause: the gap in the guest's serial heartbeat (both serial logs tailed every 2 ms, host wall clock), and
  QEMU's STOP (source) -> RESUME (destination) event timestamps, and QEMU's own ``downtime``;
* network blackout: the guest has no NIC in this slice, so "reachable" is approximated by the route server's
  kernel route for the /32 (BGP-installed, watched with ``ip monitor route`` in the RS namespace): the longest
  interval during which it does not lead to the cloud whose QEMU is running the guest (missing, wrong cloud, or
  the guest paused) - see docs/lab.md;
* total wall time of the migration; data integrity: a 4 KiB block written through the *source* QEMU's block layer
  (HMP ``qemu-io``) before the migration is read back through librbd from the destination site's image and
  through the destination QEMU (``qemu-io read -P``).

CLI: ``python -m lab.e2e up`` (prints each part's bring-up time; state in ``<root>/e2e.json``, root remembered in
``/run/cnf-lab/e2e-current``), ``python -m lab.e2e migrate [--to a|b]`` (one migration, prints the timeline and
the figures as text and one JSON line), ``python -m lab.e2e down`` (ends every process it started by PID).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnf.clock import SystemClock
from cnf.hypervisor.base import MigrationParams
from cnf.hypervisor.qemu import QemuHypervisor, QemuMachine
from cnf.migration.engine import MigrationEngine
from cnf.migration.model import (
    MigrationEvent,
    MigrationKind,
    MigrationOptions,
    MigrationRecord,
    MigrationState,
    VmRef,
)
from cnf.network.bgp import FrrBgpSpeaker
from cnf.openstack.sim import SimCloud
from cnf.ports import ClusterDrivers, DriverDirectory, StaticDirectory
from cnf.sim.fabric import SimFabric
from cnf.storage.ceph import CephRbdMirror, CephSiteConfig
from lab.ceph import POOL, SYSTEM_PYTHON, CephMirrorLab
from lab.frr import FrrLab, LabRouter, lab_prerequisites_missing
from lab.guest import build_guest

STATE_DIR = Path("/run/cnf-lab")
CURRENT = STATE_DIR / "e2e-current"
CLUSTERS = ("a", "b")
VM_ID = "e2e-vm1"
VM_IP = "10.99.0.5"
PREFIX = f"{VM_IP}/32"
IMAGE = f"{VM_ID}_disk"  # SimFabric names a VM's image "<vm>_disk"
IMAGE_MB = 64
RAM_MB = 128
HB_MS = 100
HB_RE = re.compile(rb"^HB (\d+)\s*$")


class E2EError(RuntimeError):
    """A part of the lab failed; the message names the part and why."""


def _say(msg: str) -> None:
    print(msg, flush=True)


# --- instruments ---------------------------------------------------------------------------------------------


class SerialTail(threading.Thread):
    """Timestamps (host wall clock) every ``HB n`` line appended to a serial log, surviving file re-creation.

    Lines already in the file when the tail starts are skipped (only what happens during the migration counts).
    """

    def __init__(self, path: Path, period_s: float = 0.002) -> None:
        super().__init__(daemon=True)
        self.path = path
        self.period_s = period_s
        self.beats: list[tuple[float, int]] = []
        self._stop_flag = threading.Event()
        try:
            st = path.stat()
            self._ino, self._off = st.st_ino, st.st_size
        except OSError:
            self._ino, self._off = 0, 0
        self._partial = b""

    def run(self) -> None:
        while not self._stop_flag.is_set():
            self._poll()
            time.sleep(self.period_s)
        self._poll()

    def _poll(self) -> None:
        try:
            st = self.path.stat()
        except OSError:
            return
        if st.st_ino != self._ino or st.st_size < self._off:  # a new QEMU created the file again
            self._ino, self._off, self._partial = st.st_ino, 0, b""
        if st.st_size == self._off:
            return
        now = time.time()
        with self.path.open("rb") as f:
            f.seek(self._off)
            data = f.read()
        self._off += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            m = HB_RE.match(line.strip())
            if m:
                self.beats.append((now, int(m.group(1))))

    def stop(self) -> None:
        self._stop_flag.set()
        self.join(5)


class RouteWatch(threading.Thread):
    """The route server's forwarding route for the /32, as the kernel in its namespace has it, with change times.

    Why the kernel FIB and not ``vtysh``: it is what forwards a probe's packets, and ``ip monitor route`` reports
    every change as it happens (a ``vtysh`` poll costs 50-150 ms on a loaded 2-core machine). The first state is
    read once with ``ip route show``; ``changes`` holds ``(wall time, next-hop or None)``.
    """

    VIA_RE = re.compile(r"\bvia (\S+)")

    def __init__(self, rs: LabRouter, prefix: str) -> None:
        super().__init__(daemon=True)
        self.namespace = rs.namespace
        self.address = prefix.split("/")[0]
        self.changes: list[tuple[float, str | None]] = []
        self._proc: subprocess.Popen[str] | None = None
        self._ready = threading.Event()

    def current(self) -> str | None:
        p = subprocess.run(["ip", "-n", self.namespace, "route", "show", f"{self.address}/32"], capture_output=True,
                           text=True, timeout=10, check=False)
        m = self.VIA_RE.search(p.stdout)
        return m.group(1) if m else None

    def start(self) -> None:
        self._proc = subprocess.Popen(["ip", "-n", self.namespace, "monitor", "route"], stdout=subprocess.PIPE,
                                      stderr=subprocess.DEVNULL, text=True, bufsize=1)
        self.changes.append((time.time(), self.current()))
        super().start()

    def run(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            now = time.time()
            words = line.split()
            if not words:
                continue
            deleted = words[0] == "Deleted"
            dest = words[1] if deleted and len(words) > 1 else words[0]
            if dest not in (self.address, f"{self.address}/32"):
                continue
            m = self.VIA_RE.search(line)
            nh = None if deleted or not m else m.group(1)
            if deleted and self.changes and m and self.changes[-1][1] != m.group(1):
                continue  # the old path of a replaced route going away: the new one is already recorded
            if not self.changes or self.changes[-1][1] != nh:
                self.changes.append((now, nh))

    def stop(self) -> None:
        if self._proc is not None:
            self._proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(5)
        self.join(5)


def blackout_ms(changes: list[tuple[float, str | None]], start: float, end: float, src_nh: str, dst_nh: str,
                stop_at: float | None, resume_at: float | None) -> float:
    """Longest interval in [start, end] in which the RS's best path does not lead to a running guest.

    The guest runs at the source before ``stop_at`` (source STOP) and at the destination from ``resume_at``
    (destination RESUME); in between it runs nowhere.
    """
    stop_at = stop_at if stop_at is not None else end
    resume_at = resume_at if resume_at is not None else end
    marks = sorted({start, end, stop_at, resume_at, *(t for t, _ in changes if start < t < end)})

    def nh_at(t: float) -> str | None:
        cur: str | None = None
        for ct, nh in changes:
            if ct <= t:
                cur = nh
        return cur

    def served(t: float) -> bool:
        nh = nh_at(t)
        return (t < stop_at and nh == src_nh) or (t >= resume_at and nh == dst_nh)

    longest, run_start = 0.0, None
    for i in range(len(marks) - 1):
        mid = (marks[i] + marks[i + 1]) / 2
        if not served(mid):
            run_start = marks[i] if run_start is None else run_start
            longest = max(longest, marks[i + 1] - run_start)
        else:
            run_start = None
    return round(longest * 1000.0, 1)


# --- the lab -------------------------------------------------------------------------------------------------


@dataclass
class E2ELab:
    """Everything ``up`` started, serialisable so ``migrate`` and ``down`` can run in other processes."""

    root: Path
    ceph_root: Path = Path()
    ceph_shared: bool = False  # the Ceph pair belongs to someone else (tests: lab.ceph's shared lab): never stop it
    frr_token: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    where: str = "a"
    runs: int = 0
    bringup_s: dict[str, float] = field(default_factory=dict)

    # --- persistence ---------------------------------------------------------------------------------------

    @classmethod
    def new(cls) -> E2ELab:
        root = Path(f"/tmp/cnf-lab-e2e-{secrets.token_hex(3)}")
        root.mkdir(parents=True)
        return cls(root=root, ceph_root=root / "ceph")

    def save(self) -> None:
        d = asdict(self) | {"root": str(self.root), "ceph_root": str(self.ceph_root)}
        (self.root / "e2e.json").write_text(json.dumps(d, indent=1))

    @classmethod
    def load(cls, root: Path) -> E2ELab:
        d = json.loads((root / "e2e.json").read_text())
        return cls(**(d | {"root": Path(d["root"]), "ceph_root": Path(d["ceph_root"])}))

    # --- parts -----------------------------------------------------------------------------------------------

    @property
    def ceph(self) -> CephMirrorLab:
        return CephMirrorLab.load(self.ceph_root)

    @property
    def frr(self) -> FrrLab:
        return FrrLab(clouds=2, spares=0, token=self.frr_token)

    def router(self, cid: str) -> LabRouter:
        return self.frr.cloud_routers[CLUSTERS.index(cid)]

    def next_hop(self, cid: str) -> str:
        return self.router(cid).address

    def site(self, cid: str) -> Any:
        return self.ceph.sites[CLUSTERS.index(cid)]

    def hypervisor(self, cid: str) -> QemuHypervisor:
        machine = QemuMachine(kernel=self.kernel, initrd=self.initrd, append=self.append,
                              disk_template=f"rbd:{POOL}/{{image}}:conf={self.site(cid).conf}:id=admin")
        return QemuHypervisor(cid, self.root / "qemu" / cid, machine, command_timeout=10.0)

    def storage(self, cid: str) -> CephRbdMirror:
        return CephRbdMirror(cid, CephSiteConfig(**self.site(cid).driver_config()), promote_timeout_s=5.0)

    def speaker(self, cid: str) -> FrrBgpSpeaker:
        r = self.router(cid)
        return FrrBgpSpeaker(cid, r.as_number, r.address, pathspace=r.pathspace,
                             observer_pathspace=self.frr.route_server.pathspace, command_timeout=5.0)

    # --- lifecycle -------------------------------------------------------------------------------------------

    def _part(self, name: str, fn: Callable[[], Any]) -> Any:
        _say(f"[up] {name} ...")
        t0 = time.monotonic()
        try:
            out = fn()
        except BaseException as exc:
            _say(f"[up] {name} FAILED after {time.monotonic() - t0:.1f} s: {type(exc).__name__}: {exc}")
            raise E2EError(f"{name} did not come up: {exc}") from exc
        self.bringup_s[name] = round(time.monotonic() - t0, 2)
        _say(f"[up] {name} ok in {self.bringup_s[name]:.1f} s")
        self.save()
        return out

    def up(self, *, remember: bool = False, ceph: CephMirrorLab | None = None) -> None:
        """Bring up every part (on failure, tear down what was started and raise ``E2EError``).

        ``remember``: record the root in ``/run/cnf-lab/e2e-current`` for the CLI's ``migrate``/``down`` (tests and
        benchmarks keep their lab to themselves). ``ceph``: reuse a running Ceph pair (the test session's shared
        ``lab.ceph`` lab) instead of starting one; ``down`` then only removes this lab's image from it.
        """
        if remember:
            STATE_DIR.mkdir(parents=True, exist_ok=True)
            CURRENT.write_text(str(self.root))
        self.save()
        try:
            why = lab_prerequisites_missing()
            if why:
                raise E2EError(f"FRR lab prerequisites: {why}")

            def ceph_up() -> None:
                lab = CephMirrorLab.create(self.ceph_root)
                try:
                    lab.up()
                finally:
                    lab.save()

            def frr() -> None:
                lab = FrrLab(clouds=2, spares=0)
                self.frr_token = lab.token
                self.save()
                lab.up()

            def guest() -> None:
                g = build_guest()
                self.kernel, self.initrd, self.append = str(g.kernel), str(g.initrd), g.append(hb_ms=HB_MS)

            if ceph is None:
                self._part("ceph: two sites + two-way rbd-mirror", ceph_up)
            else:
                self.ceph_root, self.ceph_shared = ceph.root, True
                self.save()
                _say(f"[up] ceph: reusing the running pair at {ceph.root}")
            self._part("frr: route server + 2 cloud routers", frr)
            self._part("guest: kernel + busybox initramfs", guest)
            self._part(f"rbd image {POOL}/{IMAGE} at site a, mirroring on", self._image)
            self._part(f"qemu: boot {VM_ID} on host a from rbd:{POOL}/{IMAGE}", lambda: asyncio.run(self._boot()))
            self._part(f"bgp: cloud a announces {PREFIX}", lambda: asyncio.run(self._announce()))
        except BaseException:
            _say("[up] tearing down what was started")
            self.down()
            raise

    def _image(self) -> None:
        a = self.site("a")
        a.create_image(IMAGE, IMAGE_MB)
        a.rbd("mirror", "image", "enable", f"{POOL}/{IMAGE}", "snapshot")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:  # the non-primary copy must exist before a destination QEMU opens it
            p = self.site("b").rbd("info", f"{POOL}/{IMAGE}", check=False, timeout=15)
            if p.returncode == 0:
                return
            time.sleep(0.3)
        raise E2EError("the image did not appear at site b within 120 s")

    def _remove_image(self) -> None:
        """Take this lab's image out of a shared Ceph pair: mirroring off at the primary, then both copies."""
        for cid in CLUSTERS:
            site = self.site(cid)
            info = site.rbd("info", f"{POOL}/{IMAGE}", "--format", "json", check=False, timeout=15)
            if info.returncode == 0 and json.loads(info.stdout).get("mirroring", {}).get("primary"):
                site.rbd("mirror", "image", "disable", f"{POOL}/{IMAGE}", "--force", check=False, timeout=30)
        for cid in CLUSTERS:
            self.site(cid).remove_image(IMAGE)

    async def _boot(self) -> None:
        hv = self.hypervisor("a")
        try:
            await hv.boot(VM_ID, RAM_MB, IMAGE, append=self.append)
            await _wait_beats(hv.serial_path(VM_ID), 3, 120.0)
        finally:
            await hv.close()
        self.where = "a"

    async def _announce(self) -> None:
        await self.speaker("a").announce(PREFIX)
        deadline = time.monotonic() + 30
        watch = RouteWatch(self.frr.route_server, PREFIX)
        while watch.current() != self.next_hop("a"):
            if time.monotonic() > deadline:
                raise E2EError("the route server did not learn the /32 from cloud a within 30 s")
            await asyncio.sleep(0.1)

    def down(self) -> None:
        """End everything this lab started (QEMU, FRR, Ceph: by recorded PID / own namespaces), remove its dir."""
        t0 = time.monotonic()

        async def qemu() -> None:
            for cid in CLUSTERS:
                d = self.root / "qemu" / cid
                if d.exists():
                    hv = QemuHypervisor(cid, d, QemuMachine())
                    await hv.destroy_all()
        with contextlib.suppress(Exception):
            asyncio.run(qemu())
        if self.frr_token:
            with contextlib.suppress(Exception):
                self.frr.down()
        if self.ceph_shared:
            with contextlib.suppress(Exception):
                self._remove_image()
        elif (self.ceph_root / "lab.json").exists():
            with contextlib.suppress(Exception):
                self.ceph.down()
        shutil.rmtree(self.root, ignore_errors=True)
        if CURRENT.exists() and CURRENT.read_text().strip() == str(self.root):
            CURRENT.unlink()
        _say(f"[down] {self.root} removed in {time.monotonic() - t0:.1f} s")

    # --- one migration ---------------------------------------------------------------------------------------

    def directory(self, fabric: SimFabric, hosts: dict[str, QemuHypervisor],
                  storages: dict[str, CephRbdMirror]) -> StaticDirectory:
        return StaticDirectory({cid: ClusterDrivers(cluster_id=cid, cloud=SimCloud(fabric, cid),
                                                    storage=storages[cid], bgp=self.speaker(cid),
                                                    hypervisor=hosts[cid]) for cid in CLUSTERS})

    async def migrate(self, dest: str | None = None, *, direct: bool = False,
                      downtime_limit_ms: int | None = None) -> dict[str, Any]:
        """One live migration of the guest to the other cloud through ``MigrationEngine``; returns the figures.

        ``direct``: the benchmark's baseline - the same drivers called in the recipe's order without the engine
        (no preflight, no check-before-do, no polling countdowns), measured with the same instruments.
        ``downtime_limit_ms``: QEMU's ``downtime-limit`` (default: ``MigrationOptions``' 300 ms).
        """
        src = self.where
        dst = dest or next(c for c in CLUSTERS if c != src)
        if dst == src or dst not in CLUSTERS:
            raise E2EError(f"cannot migrate from {src} to {dst}")
        clock = SystemClock()
        fabric = SimFabric(clock=clock)
        for cid in CLUSTERS:
            fabric.add_cluster(cid, name=f"lab-{cid}", as_number=self.router(cid).as_number,
                               next_hop=self.next_hop(cid))
            fabric.add_host(cid, f"qemu-{cid}")
            fabric.cluster(cid).flavors[f"lab.{RAM_MB}"] = (1, RAM_MB)
        fabric.add_vm(src, VM_ID, name=VM_ID, host=f"qemu-{src}", flavor=f"lab.{RAM_MB}", ip=VM_IP,
                      image_size_mb=IMAGE_MB)
        hosts = {cid: self.hypervisor(cid) for cid in CLUSTERS}
        storages = {cid: self.storage(cid) for cid in CLUSTERS}
        engine = MigrationEngine(self.directory(fabric, hosts, storages), clock)
        try:
            d = await hosts[src].domain(VM_ID)
            if d is None or d.state != "running":
                raise E2EError(f"{VM_ID} does not run on host {src} ({d})")
            for s in storages.values():
                await s.start()
            # integrity: a block written through the source QEMU's own block layer before the migration
            self.runs += 1
            offset, pattern = (1 + self.runs % 200) * 65536, (0x11 * self.runs) % 255 + 1
            await _hmp(hosts[src], f'qemu-io disk0 "write -P {pattern:#x} {offset} 4096"')
            srv = fabric.cluster(src).servers[VM_ID]
            vm = VmRef(id=VM_ID, name=VM_ID, ip=VM_IP, image=IMAGE, flavor=srv.flavor, vcpus=srv.vcpus,
                       ram_mb=srv.ram_mb, host=srv.host, status="ACTIVE")
            options = MigrationOptions()
            if downtime_limit_ms is not None:
                options.downtime_limit_ms = downtime_limit_ms
            rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=src, dest_cluster_id=dst,
                                    dest_next_hop=self.next_hop(dst), options=options)
            tails = {cid: SerialTail(hosts[cid].serial_path(VM_ID)) for cid in CLUSTERS}
            route = RouteWatch(self.frr.route_server, PREFIX)
            watchers: list[SerialTail | RouteWatch] = [*tails.values(), route]
            for t in watchers:
                t.start()
            t0 = time.time()
            events: list[MigrationEvent] = []
            try:
                if direct:
                    rec = await asyncio.wait_for(_direct(engine.directory, rec, events), 300.0)
                else:
                    rec = await _drive(engine, rec, events, deadline_s=300.0)
                t_end = time.time()
                with contextlib.suppress(Exception):
                    await _wait_beats_after(tails[dst], 3, 10.0)
            finally:
                for t in watchers:
                    t.stop()
            figures = self._figures(rec, events, tails[src], tails[dst], route, t0, t_end, src, dst)
            figures["mode"] = "direct" if direct else "engine"
            figures["downtime_limit_ms"] = options.downtime_limit_ms
            if rec.state == MigrationState.COMPLETED:
                self.where = dst
                figures["integrity"] = await self._integrity(hosts[dst], dst, offset, pattern)
            self.save()
            return figures
        finally:
            for s in storages.values():
                await _close_storage(s)
            for h in hosts.values():
                await h.close()

    async def _integrity(self, hv: QemuHypervisor, cid: str, offset: int, pattern: int) -> dict[str, Any]:
        data = await asyncio.to_thread(_rbd_read, self.site(cid), IMAGE, offset, 4096)
        via_librbd = data == bytes([pattern]) * 4096
        # HMP qemu-io prints on QEMU's stdout (the driver's qemu.log), not on the monitor
        qlog = hv.serial_path(VM_ID).with_name("qemu.log")
        before = qlog.stat().st_size if qlog.exists() else 0
        await _hmp(hv, f'qemu-io disk0 "read -P {pattern:#x} {offset} 4096"')
        out = ""
        for _ in range(50):
            out = qlog.read_bytes()[before:].decode(errors="replace") if qlog.exists() else ""
            if "bytes at offset" in out or "verification failed" in out:
                break
            await asyncio.sleep(0.02)
        via_qemu = f"read 4096/4096 bytes at offset {offset}" in out and "verification failed" not in out
        return {"offset": offset, "pattern": pattern, "dest_site_librbd_ok": via_librbd, "dest_qemu_read_ok": via_qemu,
                "ok": via_librbd and via_qemu}

    def _figures(self, rec: MigrationRecord, events: list[MigrationEvent], src_tail: SerialTail,
                 dst_tail: SerialTail, route: RouteWatch, t0: float, t_end: float, src: str,
                 dst: str) -> dict[str, Any]:
        ctx = rec.context
        last_src = max((b for b in src_tail.beats), default=None)
        first_dst = min((b for b in dst_tail.beats), default=None)
        hb_gap = (round((first_dst[0] - last_src[0]) * 1000.0 - HB_MS, 1)
                  if last_src and first_dst else None)
        stop_at, resume_at = ctx.get("e2e_src_stopped_at"), ctx.get("e2e_dst_resumed_at")
        pause = round((resume_at - stop_at) * 1000.0, 1) if stop_at and resume_at else None
        out: dict[str, Any] = {
            "from": src, "to": dst, "state": str(rec.state), "error": rec.error,
            "total_s": round(t_end - t0, 2),
            "guest_pause_ms_heartbeat": hb_gap,
            "guest_pause_ms_stop_resume": pause,
            "qemu_downtime_ms": ctx.get("qemu_downtime_ms"),
            "network_blackout_ms": blackout_ms(route.changes, t0, t_end + 0.5, self.next_hop(src),
                                               self.next_hop(dst), stop_at, resume_at),
            "loadavg_1m": round(os.getloadavg()[0], 2),
            "cnf_network_blackout_ms": ctx.get("network_blackout_ms"),
            "heartbeat": {"last_source": last_src[1] if last_src else None,
                          "first_destination": first_dst[1] if first_dst else None,
                          "continues": bool(last_src and first_dst and first_dst[1] == last_src[1] + 1),
                          "destination_beats": len(dst_tail.beats)},
        }
        timeline = [{"t_ms": round((e.ts - t0) * 1000.0, 1), "kind": e.kind, "step": e.step, "message": e.message}
                    for e in events if e.kind in ("step_done", "step_failed", "retry", "compensating",
                                                  "completed", "failed", "needs_operator")]
        marks = [("source STOP", stop_at), ("destination RESUME", resume_at),
                 ("last source heartbeat", last_src[0] if last_src else None),
                 ("first destination heartbeat", first_dst[0] if first_dst else None)]
        marks += [(f"route server route -> {nh or 'none'}", t) for t, nh in route.changes]
        marks += [(f"QEMU {side}: {name}", t) for side, name, t in ctx.get("e2e_qmp_events", [])]
        timeline += [{"t_ms": round((t - t0) * 1000.0, 1), "kind": "lab", "step": "", "message": m}
                     for m, t in marks if t is not None]
        out["timeline"] = sorted(timeline, key=lambda e: float(e["t_ms"]))
        out["steps_ms"] = {s.name: s.duration_ms for s in rec.steps}
        return out


# --- helpers -------------------------------------------------------------------------------------------------


async def _drive(engine: MigrationEngine, rec: MigrationRecord, events: list[MigrationEvent], *,
                 deadline_s: float) -> MigrationRecord:
    """The in-process runner's loop (no database): advance until terminal; keeps QEMU's STOP/RESUME times."""
    t0 = time.monotonic()
    src_hv = engine.directory.drivers(rec.source_cluster_id).hypervisor
    dst_hv = engine.directory.drivers(rec.dest_cluster_id).hypervisor
    while True:
        adv = await engine.advance(rec)
        rec = adv.record
        events.extend(adv.events)
        if rec.current_step == "cutover.switchover" or rec.state.terminal:
            if "e2e_src_stopped_at" not in rec.context:
                with contextlib.suppress(Exception):
                    p = await src_hv.progress(rec.vm.id)
                    if p.stopped_at:
                        rec.context["e2e_src_stopped_at"] = p.stopped_at
            if "e2e_dst_resumed_at" not in rec.context:
                with contextlib.suppress(Exception):
                    q = await dst_hv.progress(rec.vm.id)
                    if q.resumed_at:
                        rec.context["e2e_dst_resumed_at"] = q.resumed_at
        _keep_qmp_events(rec, src_hv, "source")  # after every action: the source's handle goes away at cleanup
        _keep_qmp_events(rec, dst_hv, "destination")
        if adv.delay_s is None:
            return rec
        if time.monotonic() - t0 > deadline_s:
            raise E2EError(f"migration not terminal after {deadline_s:.0f} s: at {rec.current_step}")
        await asyncio.sleep(adv.delay_s)


async def _direct(directory: DriverDirectory, rec: MigrationRecord,
                  events: list[MigrationEvent]) -> MigrationRecord:
    """Baseline: the tuned handover of lab/qemu-rbd through CNF's drivers, one call after the other, no engine."""
    s, d = directory.drivers(rec.source_cluster_id), directory.drivers(rec.dest_cluster_id)
    ctx = rec.context

    def mark(step: str) -> None:
        events.append(MigrationEvent(ts=time.time(), kind="step_done", message=f"{step} done", step=step))

    snap = await s.storage.create_mirror_snapshot(IMAGE)
    while True:
        st = await d.storage.status(IMAGE)
        if st.in_sync and st.last_snapshot_id >= snap:
            break
        await asyncio.sleep(0.05)
    mark("direct.sync")
    uri = await d.hypervisor.prepare_incoming(VM_ID, RAM_MB, IMAGE)
    mark("direct.prepare_incoming")
    await s.hypervisor.start_migration(VM_ID, uri, MigrationParams(downtime_limit_ms=rec.options.downtime_limit_ms))
    while (p := await s.hypervisor.progress(VM_ID)).status not in ("pre-switchover", "completed", "failed"):  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if p.status == "failed":
        raise E2EError(f"direct migration failed: {p.error}")
    mark("direct.precopy")
    await s.storage.demote(IMAGE)
    mark("direct.demote")
    await d.storage.promote(IMAGE)
    mark("direct.promote")
    await s.hypervisor.continue_switchover(VM_ID)
    while (dom := await d.hypervisor.domain(VM_ID)) is None or dom.state != "running":  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    mark("direct.switchover")
    p = await s.hypervisor.progress(VM_ID)
    q = await d.hypervisor.progress(VM_ID)
    ctx["qemu_downtime_ms"] = p.downtime_ms
    ctx["e2e_src_stopped_at"], ctx["e2e_dst_resumed_at"] = p.stopped_at, q.resumed_at
    _keep_qmp_events(rec, s.hypervisor, "source")
    _keep_qmp_events(rec, d.hypervisor, "destination")
    await d.bgp.announce(rec.vm.prefix, rec.dest_next_hop)
    await s.bgp.withdraw(rec.vm.prefix)
    mark("direct.bgp_handoff")
    await s.hypervisor.destroy_source(VM_ID)
    mark("direct.cleanup")
    rec.state = MigrationState.COMPLETED
    events.append(MigrationEvent(ts=time.time(), kind="completed", message="direct handover completed"))
    return rec


async def _close_storage(st: CephRbdMirror) -> None:
    """Close the driver's cached librbd handles *before* its worker exits.

    Why: a worker that exits on stdin EOF with handles still open leaves its watch (and, after a promote, the
    exclusive lock) registered until the OSD expires it (~30 s, lab/qemu-rbd P2); QEMU's next write then waits for
    that dead owner (measured here: an HMP write on the new source hung > 10 s when the next migration started
    a few seconds after the previous one).
    """
    with contextlib.suppress(Exception):
        await st.release()
    await st.close()


def _keep_qmp_events(rec: MigrationRecord, hv: Any, side: str) -> None:
    """Copy the domain's QMP events of this migration (STOP, RESUME, MIGRATION status) into the timeline."""
    h = hv._handles.get(rec.vm.id)
    if h is None:
        return
    kept = rec.context.setdefault("e2e_qmp_events", [])
    seen = {(s, n, t) for s, n, t in kept}
    for e in h.since_mark():
        name = e.name + (f" {e.data.get('status')}" if e.name == "MIGRATION" else "")
        if name in ("MIGRATION_PASS",) or (side, name, e.qemu_time) in seen:
            continue
        kept.append((side, name, e.qemu_time))


async def _hmp(hv: QemuHypervisor, command: str) -> str:
    """One HMP command on a domain's QMP monitor (lab-only use of the driver's monitor connection)."""
    h = hv._handle(VM_ID)
    if h is None:
        raise E2EError(f"no domain {VM_ID} on host {hv.cluster_id}")
    return str(await hv._qmp(h, "human-monitor-command", {"command-line": command}))


def _rbd_read(site: Any, image: str, offset: int, length: int) -> bytes:
    script = ("import sys, rados, rbd\n"
              "conf, cluster, pool, image, off, n = sys.argv[1:7]\n"
              "with rados.Rados(conffile=conf, clustername=cluster, name='client.admin',"
              " conf={'admin_socket': ''}) as c:\n"
              "    with c.open_ioctx(pool) as io, rbd.Image(io, image, read_only=True) as im:\n"
              "        sys.stdout.buffer.write(im.read(int(off), int(n)))\n")
    p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", script, str(site.conf), site.name, POOL, image, str(offset),
                        str(length)], capture_output=True, timeout=60, check=False)
    if p.returncode != 0:
        raise E2EError(f"rbd read {image}@{site.name}: {p.stderr.decode(errors='replace')[-400:]}")
    return p.stdout


def _beats(serial: Path) -> list[int]:
    try:
        data = serial.read_bytes()
    except OSError:
        return []
    return [int(m.group(1)) for m in re.finditer(rb"^HB (\d+)\s*$", data, re.MULTILINE)]


async def _wait_beats(serial: Path, count: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while len(_beats(serial)) < count:
        if time.monotonic() > deadline:
            tail = _beats(serial)[-3:]
            raise E2EError(f"guest printed no heartbeat within {within_s:.0f} s: {tail!r}")
        await asyncio.sleep(0.1)


async def _wait_beats_after(tail: SerialTail, count: int, within_s: float) -> None:
    deadline = time.monotonic() + within_s
    while len(tail.beats) < count and time.monotonic() < deadline:  # noqa: ASYNC110 - a file has no event
        await asyncio.sleep(0.05)


def state_of_world(lab: E2ELab) -> dict[str, Any]:
    """Where things are, read from the real components (for tests and the CLI): domains, image roles, routes."""

    async def probe() -> dict[str, Any]:
        out: dict[str, Any] = {"running": [], "primary": [], "announcing": []}
        for cid in CLUSTERS:
            hv, st, sp = lab.hypervisor(cid), lab.storage(cid), lab.speaker(cid)
            try:
                d = await hv.domain(VM_ID)
                if d is not None and d.state == "running":
                    out["running"].append(cid)
                if (await st.status(IMAGE)).primary:
                    out["primary"].append(cid)
                if await sp.announced(PREFIX):
                    out["announcing"].append(cid)
            finally:
                await _close_storage(st)
                await hv.close()
        best = await lab.speaker("a").fabric_best_path(PREFIX)
        out["rs_best_next_hop"] = best.next_hop if best else None
        return out

    return asyncio.run(probe())


def print_report(fig: dict[str, Any]) -> None:
    _say(f"\n== live migration {fig['from']} -> {fig['to']}: {fig['state']}" +
         (f" ({fig['error']})" if fig.get("error") else ""))
    for e in fig["timeline"]:
        label = f"{e['step']}: " if e["step"] else ""
        _say(f"  {e['t_ms']:>9.1f} ms  {e['kind']:<11} {label}{e['message']}")
    hb = fig["heartbeat"]
    _say("figures (measured by the lab):")
    _say(f"  guest pause, serial heartbeat gap : {fig['guest_pause_ms_heartbeat']} ms "
         f"(HB {hb['last_source']} on source -> HB {hb['first_destination']} on destination, "
         f"continues={hb['continues']})")
    _say(f"  guest pause, QEMU STOP->RESUME    : {fig['guest_pause_ms_stop_resume']} ms")
    _say(f"  QEMU reported downtime            : {fig['qemu_downtime_ms']} ms")
    _say(f"  network blackout (RS route)       : {fig['network_blackout_ms']} ms "
         "(route server's kernel route for the /32 vs where the guest runs)")
    _say(f"  machine load (1 min average)      : {fig['loadavg_1m']} on {os.cpu_count()} CPUs")
    _say(f"  total                             : {fig['total_s']} s")
    if "integrity" in fig:
        i = fig["integrity"]
        _say(f"  data integrity                    : {'OK' if i['ok'] else 'FAILED'} (block at {i['offset']} "
             f"read back via librbd at the destination site: {i['dest_site_librbd_ok']}, "
             f"via the destination QEMU: {i['dest_qemu_read_ok']})")
    _say("E2E " + json.dumps({k: v for k, v in fig.items() if k != "timeline"}))


def summary(figs: list[dict[str, Any]]) -> dict[str, float | None]:
    def med(key: str) -> float | None:
        vals = [float(f[key]) for f in figs if f.get(key) is not None and f["state"] == "completed"]
        return round(statistics.median(vals), 1) if vals else None

    return {"pause_ms_median": med("guest_pause_ms_heartbeat"), "blackout_ms_median": med("network_blackout_ms"),
            "total_s_median": med("total_s"), "qemu_downtime_ms_median": med("qemu_downtime_ms"),
            "stop_resume_ms_median": med("guest_pause_ms_stop_resume")}


def current_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if not CURRENT.exists():
        raise SystemExit("no e2e lab is up (no /run/cnf-lab/e2e-current); run `python -m lab.e2e up`")
    return Path(CURRENT.read_text().strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.e2e", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="bring up Ceph x2, FRR, the guest on host a (prints each part's time)")
    m = sub.add_parser("migrate", help="live-migrate the guest to the other cloud, print timeline and figures")
    m.add_argument("--to", choices=CLUSTERS)
    m.add_argument("--root")
    m.add_argument("--direct", action="store_true", help="baseline: the drivers in the recipe's order, no engine")
    m.add_argument("--downtime-limit-ms", type=int, help="QEMU downtime-limit (default 300)")
    d = sub.add_parser("down", help="end everything `up` started")
    d.add_argument("--root")
    sub.add_parser("status", help="where the VM runs, which site is primary, who announces the /32")
    args = ap.parse_args(argv)
    if args.cmd == "up":
        if CURRENT.exists() and Path(CURRENT.read_text().strip(), "e2e.json").exists():
            _say(f"a lab is already up at {CURRENT.read_text().strip()}; `python -m lab.e2e down` first")
            return 1
        lab = E2ELab.new()
        t0 = time.monotonic()
        try:
            lab.up(remember=True)
        except E2EError as exc:
            _say(f"[up] FAILED: {exc}")
            return 1
        _say(f"[up] lab up in {time.monotonic() - t0:.1f} s at {lab.root}: {json.dumps(lab.bringup_s)}")
        return 0
    root = current_root(getattr(args, "root", None))
    if args.cmd == "down":
        if (root / "e2e.json").exists():
            E2ELab.load(root).down()
        return 0
    lab = E2ELab.load(root)
    if args.cmd == "status":
        _say(json.dumps(state_of_world(lab)))
        return 0
    fig = asyncio.run(lab.migrate(args.to, direct=args.direct, downtime_limit_ms=args.downtime_limit_ms))
    print_report(fig)
    return 0 if fig["state"] == "completed" else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
