"""One live migration where the real parts are real: QEMU on an RBD image with a NIC, Ceph mirroring, FRR, CNF's engine.

Why: the product's promise is "the VM keeps running and keeps its IP while it moves between clouds". This lab
shows it whole on one machine and measures what a user would notice, with instruments that are *not* CNF's own
bookkeeping:

* two Ceph clusters with two-way snapshot rbd-mirror (``lab.ceph``); the guest's disk is the RBD image
  ``vms/<vm>_disk`` opened by QEMU through ``rbd:`` (qemu-block-extra);
* an FRR route server and two cloud routers in their own network namespaces (``lab.frr``); each cloud router
  announces the VM's /32 with *its host* as next-hop, the handoff goes through ``FrrBgpSpeaker``;
* the guest's network (``lab.e2e_net``): a host namespace per cloud on the fabric segment, the guest's virtio-net
  NIC on a tap there (same gateway address and MAC on both hosts), and a probe namespace outside both clouds that
  reaches the VM only through the route server's BGP-learned route;
* one QEMU "host" per cloud (``QemuHypervisor``, TCG), the tiny heartbeat guest of ``lab.guest`` with the VM's IP;
* CNF's ``MigrationEngine`` with the real drivers for storage (``CephRbdMirror``), BGP (``FrrBgpSpeaker``) and
  hypervisor (``QemuHypervisor``); the cloud port (Nova) is ``SimCloud``: the OpenStack lab is not wired in here.

What is measured, by the lab itself (``lab.e2e_probe`` instruments, ``lab.e2e_report`` rules; docs/lab.md):

* guest pause: the gap in the guest's serial heartbeat (both serial logs tailed every 2 ms, host wall clock), and
  QEMU's STOP (source) -> RESUME (destination) event timestamps, and QEMU's own ``downtime``;
* network blackout: the probe pings 10.99.0.5 every 10 ms through the migration; the longest run of unanswered
  requests. Which host the replies came from is read from the taps' packet counters. The route server's kernel
  route for the /32 (``ip monitor route``) gives a secondary, packet-free figure;
* total wall time of the migration; data integrity, judged by the guest itself: every 200 ms it reads back
  (O_DIRECT) the record it wrote last to one sector of its RBD disk, writes the next one and prints ``DISK n ok``
  (``lab.guest`` ``disk_ms``); the first record after the move must continue the last one before it (its read at
  the destination returned the source's last write), no line may say BAD, and the guest must go on writing. The
  lab also reads that sector at the serving site through librbd (``check_site_record``);
  guest health: the heartbeat counter continues and no kernel error appears on either console.

A migration can be made to fail right before the point of no return (``fail_before_promote``): the destination
QEMU is killed while the guest waits in ``pre-switchover`` with the source already demoted; the engine must hand
everything back (VM running, image primary and /32 announced at the source only).

CLI: ``python -m lab.e2e up`` (prints each part's bring-up time; state in ``<root>/e2e.json``, root remembered in
``/run/cnf-lab/e2e-current``), ``python -m lab.e2e migrate [--to a|b] [--fail-before-promote]`` (one migration,
prints the timeline and the figures as text and one JSON line), ``python -m lab.e2e status``,
``python -m lab.e2e down`` (ends every process it started by PID, removes its namespaces).
``migrate --through-agents [--fail-before-promote]``: the same migration through two ``cnf-agent`` processes and
the REST API (``lab.e2e_agents``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
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
    StepStatus,
    VmRef,
)
from cnf.network.bgp import FrrBgpSpeaker
from cnf.openstack.sim import SimCloud
from cnf.ports import ClusterDrivers, DriverDirectory, StaticDirectory
from cnf.sim.fabric import SimFabric
from cnf.storage.ceph import CephRbdMirror, CephSiteConfig
from lab.ceph import POOL, SYSTEM_PYTHON, CephMirrorLab
from lab.controller_ns import remove_controllers
from lab.e2e_net import GATEWAY_IP, VM_IP, GuestNetwork
from lab.e2e_probe import PingProbe, RouteWatch, SerialTail, kernel_errors
from lab.e2e_report import figures, print_report, replies_from, summary
from lab.e2e_watch import MigrationWatch
from lab.frr import FrrLab, LabRouter, lab_prerequisites_missing
from lab.guest import DISK_RECORD_OFFSET, build_guest, parse_disk_record
from lab.qemu import heartbeats, wait_heartbeats

STATE_DIR = Path("/run/cnf-lab")
CURRENT = STATE_DIR / "e2e-current"
CLUSTERS = ("a", "b")
HOST_ADDRESSES = {"a": "10.255.0.21", "b": "10.255.0.22"}  # the hosts on the fabric segment (BGP next-hops)
VM_ID = "e2e-vm1"
PREFIX = f"{VM_IP}/32"
IMAGE = f"{VM_ID}_disk"  # SimFabric names a VM's image "<vm>_disk"
IMAGE_MB = 64
RAM_MB = 128
HB_MS = 100
#: the guest reads back its last disk record and writes the next one every DISK_MS ms (``lab.guest`` ``disk_ms``)
DISK_MS = 200
#: how long a migration waits for the destination's mirror copy to catch up before it starts (a killed QEMU's
#: librbd watch holds the replay up to ~30 s)
MIRROR_SETTLE_S = 90.0
#: the step right before which ``fail_before_promote`` kills the destination QEMU (the point of no return)
PONR_STEP = "cutover.promote_destination"

__all__ = ["CLUSTERS", "E2EError", "E2ELab", "print_report", "state_of_world", "summary"]


class E2EError(RuntimeError):
    """A part of the lab failed; the message names the part and why."""


def _say(msg: str) -> None:
    print(msg, flush=True)


# --- the lab -------------------------------------------------------------------------------------------------


@dataclass
class E2ELab:
    """Everything ``up`` started, serialisable so ``migrate`` and ``down`` can run in other processes."""

    root: Path
    ceph_root: Path = Path()
    ceph_shared: bool = False  # the Ceph pair belongs to someone else (tests: lab.ceph's shared lab): never stop it
    frr_token: str = ""
    net_token: str = ""
    kernel: str = ""
    initrd: str = ""
    append: str = ""
    where: str = "a"
    runs: int = 0
    bringup_s: dict[str, float] = field(default_factory=dict)
    #: the running federation (``lab.e2e_federation``): OpenStack record used, whether ``up`` started it, tasks
    federation: dict[str, Any] = field(default_factory=dict)

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

    @property
    def net(self) -> GuestNetwork:
        frr = self.frr
        routers = {cid: (r.namespace, r.address) for cid, r in zip(CLUSTERS, frr.cloud_routers, strict=True)}
        return GuestNetwork(token=self.net_token, rs_namespace=frr.route_server.namespace, routers=routers,
                            hosts=dict(HOST_ADDRESSES))

    def router(self, cid: str) -> LabRouter:
        return self.frr.cloud_routers[CLUSTERS.index(cid)]

    def next_hop(self, cid: str) -> str:
        """What cloud ``cid``'s router announces as the VM's next-hop: its host, where the VM's tap is."""
        return HOST_ADDRESSES[cid]

    def site(self, cid: str) -> Any:
        return self.ceph.sites[CLUSTERS.index(cid)]

    def hypervisor(self, cid: str) -> QemuHypervisor:
        machine = QemuMachine(kernel=self.kernel, initrd=self.initrd, append=self.append,
                              disk_template=f"rbd:{POOL}/{{image}}:conf={self.site(cid).conf}:id=admin",
                              extra_args=self.net.qemu_args(cid))
        return QemuHypervisor(cid, self.root / "qemu" / cid, machine, command_timeout=10.0)

    def storage(self, cid: str) -> CephRbdMirror:
        return CephRbdMirror(cid, CephSiteConfig(**self.site(cid).driver_config()), promote_timeout_s=5.0)

    def speaker(self, cid: str) -> FrrBgpSpeaker:
        r = self.router(cid)
        return FrrBgpSpeaker(cid, r.as_number, self.next_hop(cid), pathspace=r.pathspace,
                             observer_pathspace=self.frr.route_server.pathspace, command_timeout=5.0)

    def probe(self, name: str) -> PingProbe:
        return PingProbe(self.net.probe_namespace, VM_IP, self.root / f"probe-{name}.log")

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

            def net() -> None:
                self.net_token = secrets.token_hex(3)
                self.save()
                self.net.up()

            def guest() -> None:
                g = build_guest()
                self.kernel, self.initrd = str(g.kernel), str(g.initrd)
                self.append = g.append(hb_ms=HB_MS, vm_ip=VM_IP, gateway=GATEWAY_IP, disk_ms=DISK_MS)

            if ceph is None:
                self._part("ceph: two sites + two-way rbd-mirror", ceph_up)
            else:
                self.ceph_root, self.ceph_shared = ceph.root, True
                self.save()
                _say(f"[up] ceph: reusing the running pair at {ceph.root}")
            self._part("frr: route server + 2 cloud routers", frr)
            self._part("net: host namespaces a/b + probe namespace on the route server's side", net)
            self._part("guest: kernel + busybox initramfs (virtio-blk, virtio-net)", guest)
            self._part(f"rbd image {POOL}/{IMAGE} at site a, mirroring on", self._image)
            self._part(f"qemu: boot {VM_ID} on host a from rbd:{POOL}/{IMAGE}, NIC on host a's tap",
                       lambda: asyncio.run(self._boot()))
            self._part(f"bgp: cloud a announces {PREFIX} via host a", lambda: asyncio.run(self._announce()))
            self._part(f"probe: {VM_IP} answers pings through the route server", self._first_pings)
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
            await wait_heartbeats(hv.serial_path(VM_ID), count=3, within_s=120.0)
            serial = hv.serial_path(VM_ID).read_text(errors="replace")
            if "CNFGUEST net " + VM_IP not in serial:
                raise E2EError(f"the guest did not configure its NIC: {serial[-400:]!r}")
        finally:
            await hv.close()
        self.where = "a"

    async def _announce(self) -> None:
        await self.speaker("a").announce(PREFIX)
        deadline = time.monotonic() + 30
        watch = RouteWatch(self.frr.route_server.namespace, PREFIX)
        while watch.current() != self.next_hop("a"):
            if time.monotonic() > deadline:
                raise E2EError("the route server did not learn the /32 from cloud a within 30 s")
            await asyncio.sleep(0.1)

    def _first_pings(self) -> None:
        probe = self.probe("up")
        probe.start()
        try:
            if not probe.wait_answered(10, after=0.0, within_s=30.0):
                sends, replies = probe.log()
                raise E2EError(f"the probe got {len(replies)}/{len(sends)} replies from {VM_IP} in 30 s")
        finally:
            probe.stop()

    def down(self) -> None:
        """End everything this lab started (QEMU, namespaces, FRR, Ceph: by PID / own names), remove its dir."""
        t0 = time.monotonic()

        async def qemu() -> None:
            for cid in CLUSTERS:
                d = self.root / "qemu" / cid
                if d.exists():
                    hv = QemuHypervisor(cid, d, QemuMachine())
                    await hv.destroy_all()
        with contextlib.suppress(Exception):
            asyncio.run(qemu())
        if self.net_token:  # a crashed agents run's controller namespaces, their processes and relays
            with contextlib.suppress(Exception):
                remove_controllers(self.net_token, self.root)
        if self.net_token and self.frr_token:
            with contextlib.suppress(Exception):
                self.net.down()
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

    async def migrate(self, dest: str | None = None, *, direct: bool = False, downtime_limit_ms: int | None = None,
                      fail_before_promote: bool = False) -> dict[str, Any]:
        """One live migration of the guest to the other cloud through ``MigrationEngine``; returns the figures.

        ``direct``: the benchmark's baseline - the same drivers called in the recipe's order without the engine
        (no preflight, no check-before-do, no polling countdowns), measured with the same instruments.
        ``downtime_limit_ms``: QEMU's ``downtime-limit`` (default: ``MigrationOptions``' 300 ms).
        ``fail_before_promote``: kill the destination QEMU right before the point of no return (the source is
        demoted, the guest waits in ``pre-switchover``); the engine must compensate (state ``failed``).
        """
        if direct and fail_before_promote:
            raise E2EError("failure injection needs the engine (not --direct)")
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
        net = self.net
        try:
            d = await hosts[src].domain(VM_ID)
            if d is None or d.state != "running":
                raise E2EError(f"{VM_ID} does not run on host {src} ({d})")
            for s in storages.values():
                await s.start()
            # Start from a settled mirror, as an operator would: after a failed cutover whose destination QEMU was
            # killed, that QEMU's librbd watch lingers ~30 s and holds up the destination's replay, so the next
            # migration's preflight refuses it (storage.mirror_lag just over its 30 s limit; seen in CI when the
            # agents' failure run came right before this one)
            settle_s = await _mirror_settled(storages[dst], within=MIRROR_SETTLE_S)
            self.runs += 1
            srv = fabric.cluster(src).servers[VM_ID]
            vm = VmRef(id=VM_ID, name=VM_ID, ip=VM_IP, image=IMAGE, flavor=srv.flavor, vcpus=srv.vcpus,
                       ram_mb=srv.ram_mb, host=srv.host, status="ACTIVE")
            options = MigrationOptions()
            if downtime_limit_ms is not None:
                options.downtime_limit_ms = downtime_limit_ms
            rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=src, dest_cluster_id=dst,
                                    dest_next_hop=self.next_hop(dst), options=options)
            before_errors = kernel_errors(hosts[src].serial_path(VM_ID))
            watch = MigrationWatch(probe=self.probe(f"run{self.runs}"),
                                   serials={cid: hosts[cid].serial_path(VM_ID) for cid in CLUSTERS},
                                   route_namespace=self.frr.route_server.namespace, prefix=PREFIX, net=net,
                                   clusters=CLUSTERS, src=src, dst=dst,
                                   next_hops={cid: self.next_hop(cid) for cid in CLUSTERS}, hb_ms=HB_MS,
                                   disk_ms=DISK_MS)
            events: list[MigrationEvent] = []
            async with watch:
                watch.started()
                if direct:
                    rec = await asyncio.wait_for(_direct(engine.directory, rec, events), 300.0)
                else:
                    rec = await _drive(engine, rec, events, deadline_s=300.0,
                                       kill_destination_before=PONR_STEP if fail_before_promote else None)
                serving = dst if rec.state == MigrationState.COMPLETED else src
                await watch.finished(serving)
            ob = watch.observation()
            fig = figures(rec, events, ob)
            if before_errors:  # the guest's kernel complained before this migration started
                fig["guest_kernel_errors"] = [f"before: {e}" for e in before_errors] + fig["guest_kernel_errors"]
            fig["mode"] = "direct" if direct else "engine"
            fig["downtime_limit_ms"] = options.downtime_limit_ms
            fig["failure_injected"] = fail_before_promote
            fig["mirror_settle_s"] = settle_s
            if rec.state == MigrationState.COMPLETED:
                self.where = dst
            await asyncio.to_thread(check_site_record, self, fig["integrity"])
            self.save()
            return fig
        finally:
            for s in storages.values():
                await _close_storage(s)
            for h in hosts.values():
                await h.close()

# --- helpers -------------------------------------------------------------------------------------------------


def _last_beat(tail: SerialTail) -> int:
    return tail.beats[-1][1] if tail.beats else -1


async def _drive(engine: MigrationEngine, rec: MigrationRecord, events: list[MigrationEvent], *,
                 deadline_s: float, kill_destination_before: str | None = None) -> MigrationRecord:
    """The in-process runner's loop (no database): advance until terminal; keeps QEMU's STOP/RESUME times.

    ``kill_destination_before``: a step name; when the engine is about to run it (the previous step is done, its
    own ``do`` not issued yet), the destination QEMU is SIGKILLed (the failure-injection run).
    """
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
        if (kill_destination_before and rec.state == MigrationState.RUNNING
                and rec.current_step == kill_destination_before and "e2e_injected_at" not in rec.context
                and rec.steps[rec.cursor].status == StepStatus.PENDING):
            with contextlib.suppress(Exception):
                p = await src_hv.progress(rec.vm.id)
                rec.context["e2e_src_stopped_at"] = p.stopped_at
            assert isinstance(dst_hv, QemuHypervisor)
            dst_hv.kill_incoming(rec.vm.id)
            rec.context["e2e_injected_at"] = time.time()
        _keep_qmp_events(rec, src_hv, "source")  # after every action: the source's handle goes away at cleanup
        _keep_qmp_events(rec, dst_hv, "destination")
        if adv.delay_s is None:
            return rec
        if time.monotonic() - t0 > deadline_s:
            raise E2EError(f"migration not terminal after {deadline_s:.0f} s: at {rec.current_step}")
        await asyncio.sleep(adv.delay_s)


async def _direct(directory: DriverDirectory, rec: MigrationRecord,
                  events: list[MigrationEvent]) -> MigrationRecord:
    """Baseline: the tuned handover of lab/qemu-rbd through CNF's drivers, one call after the other, no engine.

    Same order as the engine's live table (early announce at the destination, withdraw at the source after the
    resume), without preflight, check-before-do or polling countdowns.
    """
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
    await d.bgp.announce(rec.vm.prefix, rec.dest_next_hop)  # early, as in the engine's table: the older path wins
    mark("direct.announce_destination")
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
    await s.bgp.withdraw(rec.vm.prefix)
    mark("direct.withdraw_source")
    await s.hypervisor.destroy_source(VM_ID)
    mark("direct.cleanup")
    rec.state = MigrationState.COMPLETED
    events.append(MigrationEvent(ts=time.time(), kind="completed", message="direct handover completed"))
    return rec


async def _mirror_settled(st: CephRbdMirror, *, within: float) -> float:
    """Wait until the non-primary copy at ``st``'s site holds the primary's newest mirror snapshot; returns the
    seconds waited. ``E2EError`` after ``within`` seconds, naming the lag."""
    t0 = time.monotonic()
    while True:
        status = await st.status(IMAGE)
        if status.in_sync or status.primary:
            return round(time.monotonic() - t0, 2)
        if time.monotonic() - t0 > within:
            raise E2EError(f"the mirror at the destination is still {status.lag_s:.1f} s behind after {within:g} s")
        await asyncio.sleep(0.2)


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


def check_site_record(lab: E2ELab, integrity: dict[str, Any]) -> None:
    """Read the guest's record sector at the site where the VM runs (librbd, outside the guest and QEMU).

    Why, next to the guest's own read-backs: they prove what the guest reads through its QEMU; this proves the
    image at the serving site holds it (the guest fsyncs each record through ``cache=none``, so the sector holds
    a record not older than the last ``DISK n`` line the lab saw). Updates ``integrity`` in place (``site_*``,
    ``ok``, ``why``); nothing to do when the guest wrote no records.
    """
    if integrity.get("ok") is None:
        return
    cid, last = integrity["cloud"], integrity.get("last_record")
    try:
        n = parse_disk_record(_rbd_read(lab.site(cid), IMAGE, DISK_RECORD_OFFSET, 512))
    except E2EError as exc:
        n, integrity["site_error"] = None, str(exc)[:300]
    ok = n is not None and last is not None and n >= last
    integrity.update(site_record=n, site_last_seen=last, site_ok=ok)
    if not ok:
        integrity["ok"] = False
        integrity["why"] = "; ".join(x for x in (integrity.get("why"), f"site {cid}'s image holds record {n}, "
                                                 f"older than the guest's last {last} (or none)") if x)


def domain_qemu_pid(domain_dir: Path) -> int | None:
    """The PID of the live QEMU of a domain directory ``QemuHypervisor`` made (its ``pid`` file), else None.

    The PID counts only while its command line names that directory's ``qmp.sock`` (a reused PID does not).
    """
    try:
        pid = int((domain_dir / "pid").read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except (OSError, ValueError, IndexError):
        return None
    return pid if state not in ("Z", "X") and str(domain_dir / "qmp.sock").encode() in cmdline else None


def guest_beating(lab: E2ELab, cid: str, *, within_s: float = 2.0) -> bool:
    """The guest runs on host ``cid``: its QEMU process lives and a new heartbeat appears on its serial console.

    Why next to QMP's run state: while the agents run, their QEMU driver holds each domain's only QMP connection,
    so the lab cannot ask QEMU; a counter advancing on that host's console is the guest's own word.
    """
    domain_dir = lab.root / "qemu" / cid / VM_ID
    if domain_qemu_pid(domain_dir) is None:
        return False
    serial = domain_dir / "serial.log"
    last = max(heartbeats(serial), default=-1)
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if max(heartbeats(serial), default=-1) > last:
            return True
    return False


def state_of_world(lab: E2ELab, *, via_qmp: bool = True) -> dict[str, Any]:
    """Where things are, read from the real components (for tests and the CLI).

    ``running``: clouds whose QEMU runs the guest (QMP's run state; ``via_qmp=False``, while the agents hold the
    QMP connections: ``guest_beating``); ``primary``: sites where the image is primary; ``announcing``:
    cloud routers originating the /32; ``rs_best_next_hop``: the route server's best path; ``host_routes``: hosts
    that route the /32 to a tap (a QEMU with the guest's NIC runs there).
    """

    async def look() -> dict[str, Any]:
        out: dict[str, Any] = {"running": [], "primary": [], "announcing": []}
        for cid in CLUSTERS:
            hv, st, sp = lab.hypervisor(cid), lab.storage(cid), lab.speaker(cid)
            try:
                if via_qmp:
                    d = await hv.domain(VM_ID)
                    running = d is not None and d.state == "running"
                else:
                    running = await asyncio.to_thread(guest_beating, lab, cid)
                if running:
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
        out["host_routes"] = [cid for cid in CLUSTERS if lab.net.host_route(cid)]
        return out

    return asyncio.run(look())


def ping_check(lab: E2ELab, *, count: int = 20, within_s: float = 10.0) -> dict[str, Any]:
    """A short probe run: how many of the first requests were answered and through which host's tap."""
    net = lab.net
    before = {cid: net.tap_packets(cid) for cid in CLUSTERS}
    probe = lab.probe(f"check{time.time_ns()}")
    probe.start()
    try:
        ok = probe.wait_answered(count, after=0.0, within_s=within_s)
    finally:
        probe.stop()
    after = {cid: net.tap_packets(cid) for cid in CLUSTERS}
    sends, replies = probe.log()
    return {"ok": ok, "sent": len(sends), "answered": len(replies), "through": replies_from(before, after)}


def current_root(arg: str | None) -> Path:
    if arg:
        return Path(arg)
    if not CURRENT.exists():
        raise SystemExit("no e2e lab is up (no /run/cnf-lab/e2e-current); run `python -m lab.e2e up`")
    return Path(CURRENT.read_text().strip())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.e2e", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="bring up Ceph x2, FRR, the guest network, the guest on host a, the OpenStack "
                       "clouds and the agents (prints each part's time)")
    u.add_argument("--no-agents", action="store_true", help="only the e2e lab (no clouds, no agents)")
    u.add_argument("--sim-cloud", action="store_true", help="agents on the sim cloud instead of real Nova")
    u.add_argument("--tasks", choices=("celery", "inprocess"), default="celery", help="the agents' task runner")
    u.add_argument("--controllers", choices=("netns", "loopback"), help="agents in controller namespaces or not")
    m = sub.add_parser("migrate", help="live-migrate the guest to the other cloud, print timeline and figures")
    m.add_argument("--to", choices=CLUSTERS)
    m.add_argument("--root")
    m.add_argument("--direct", action="store_true", help="baseline: the drivers in the recipe's order, no engine")
    m.add_argument("--downtime-limit-ms", type=int, help="QEMU downtime-limit (default: MigrationOptions')")
    m.add_argument("--fail-before-promote", action="store_true",
                   help="kill the destination QEMU right before the point of no return (the VM must stay)")
    m.add_argument("--through-agents", action="store_true",
                   help="through the product: two cnf-agent processes (etcd, PostgreSQL, mTLS gRPC), REST API")
    m.add_argument("--openstack", action="store_true",
                   help="with --through-agents: the agents' cloud port is the real Keystone + Nova of the clouds "
                        "`python -m lab.openstack up` started (else the sim cloud)")
    m.add_argument("--tasks", choices=("celery", "inprocess"), default="celery",
                   help="with --through-agents: Celery workers on a private Redis (default) or the agents' runner")
    m.add_argument("--controllers", choices=("netns", "loopback"), default="netns", help="with --through-agents")
    m.add_argument("--via", choices=("osc", "rest"), default=None,
                   help="through agents: `openstack cnf vm live-migrate --wait` (default with a running federation) "
                        "or the lab's REST calls")
    d = sub.add_parser("down", help="end everything `up` started")
    d.add_argument("--root")
    s = sub.add_parser("status", help="where the VM runs, which site is primary, who announces the /32, pings")
    s.add_argument("--root")
    args = ap.parse_args(argv)
    if args.cmd == "up":
        if CURRENT.exists() and Path(CURRENT.read_text().strip(), "e2e.json").exists():
            _say(f"a lab is already up at {CURRENT.read_text().strip()}; `python -m lab.e2e down` first")
            return 1
        from lab.e2e_federation import up_federation

        lab = E2ELab.new()
        t0 = time.monotonic()
        try:
            lab.up(remember=True)
            if not args.no_agents:
                up_federation(lab, openstack=not args.sim_cloud, tasks=args.tasks, controllers=args.controllers)
        except E2EError as exc:
            _say(f"[up] FAILED: {exc}")
            return 1
        _say(f"[up] lab up in {time.monotonic() - t0:.1f} s at {lab.root}: {json.dumps(lab.bringup_s)}")
        return 0
    root = current_root(getattr(args, "root", None))
    from lab import e2e_federation as federation

    if args.cmd == "down":
        if (root / "e2e.json").exists():
            federation.down_federation(E2ELab.load(root))
        return 0
    lab = E2ELab.load(root)
    fed_rec = federation.running_record(root)
    if args.cmd == "status":
        agents = {"agents": federation.federation_status(fed_rec)} if fed_rec else {}
        _say(json.dumps(state_of_world(lab, via_qmp=fed_rec is None) | {"pings": ping_check(lab)} | agents))
        return 0
    if fed_rec is not None:
        return federation.migrate_running(lab, fed_rec, args)
    if (args.openstack or args.tasks != "celery") and not args.through_agents:
        _say("--openstack and --tasks go with --through-agents")
        return 2
    if args.through_agents:
        return federation.migrate_once_through_agents(lab, args)
    fig = asyncio.run(lab.migrate(args.to, direct=args.direct, downtime_limit_ms=args.downtime_limit_ms,
                                  fail_before_promote=args.fail_before_promote))
    print_report(fig, _say)
    wanted = "failed" if args.fail_before_promote else "completed"
    return 0 if fig["state"] == wanted else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
