"""Two QEMU "hosts" on one machine for live-migration tests: one ``QemuHypervisor`` per cloud, TCG, loopback.

Why: the QEMU driver must be proven against real QEMU processes. Each "host" is a ``QemuHypervisor`` with its
own runtime directory (``<root>/<cluster_id>/``); both listen on 127.0.0.1 and the destination picks its port
itself (QEMU listens on port 0), so concurrent runs never collide. No network namespace is needed for QEMU.
TCG only: /dev/kvm on these machines is PVM and hangs stock kernels (lab/qemu REPORT Q1).

Every QEMU is started by the driver and ended by its recorded PID (``QemuLab.down``); the root directory name
carries a random token. ``python -m lab.qemu up`` boots one guest on host ``a`` and prints a JSON description
(also written to ``<root>/lab.json``); ``python -m lab.qemu down <root>`` ends every QEMU under it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import secrets
import shutil
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from cnf.clock import Clock, SystemClock
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
from cnf.network.sim import SimBgpSpeaker
from cnf.openstack.sim import SimCloud
from cnf.ports import ClusterDrivers, StaticDirectory
from cnf.sim.fabric import SimFabric
from cnf.storage.sim import SimRbdMirror
from lab.guest import GuestImage, build_guest
from lab.shared import SharedLab

STATE_ROOT = Path("/tmp")
HB_RE = re.compile(rb"^HB (\d+)\s*$", re.MULTILINE)


def heartbeats(serial: Path) -> list[int]:
    """Every heartbeat counter printed so far on a serial log (empty if the file does not exist)."""
    try:
        data = serial.read_bytes()
    except OSError:
        return []
    return [int(m.group(1)) for m in HB_RE.finditer(data)]


def _tail(serial: Path) -> bytes:
    try:
        return serial.read_bytes()[-300:]
    except OSError:
        return b"(no serial log)"


async def wait_heartbeats(serial: Path, *, above: int = -1, count: int = 1, within_s: float = 60.0) -> list[int]:
    """Wait until ``count`` heartbeats greater than ``above`` appeared on ``serial``; returns them all."""
    deadline = time.monotonic() + within_s
    while True:
        hbs = [n for n in heartbeats(serial) if n > above]
        if len(hbs) >= count:
            return hbs
        if time.monotonic() > deadline:
            raise TimeoutError(f"{serial}: {len(hbs)}/{count} heartbeats above {above} in {within_s}s; "
                               f"tail={_tail(serial)!r}")
        await asyncio.sleep(0.1)


@dataclass
class QemuLab:
    """Two clusters' hypervisors (``a`` and ``b``) sharing one guest build."""

    root: Path
    guest: GuestImage
    hosts: dict[str, QemuHypervisor] = field(default_factory=dict)

    @classmethod
    def create(cls, *, clusters: tuple[str, ...] = ("a", "b"), root: Path | None = None,
               command_timeout: float = 10.0) -> QemuLab:
        guest = build_guest()
        root = root or STATE_ROOT / f"cnf-lab-qemu-{secrets.token_hex(4)}"
        root.mkdir(parents=True, exist_ok=True)
        machine = QemuMachine(kernel=str(guest.kernel), initrd=str(guest.initrd), append=guest.append(),
                              disk_template="")  # diskless guest: the disk handover is played by the sim storage
        lab = cls(root=root, guest=guest)
        for cid in clusters:
            lab.hosts[cid] = QemuHypervisor(cid, root / cid, machine, command_timeout=command_timeout)
        return lab

    def host(self, cluster_id: str) -> QemuHypervisor:
        return self.hosts[cluster_id]

    async def boot(self, cluster_id: str, vm_id: str, *, ram_mb: int = 256, dirty_mb: int = 0,
                   hb_ms: int = 100, wait: bool = True, fill_mb: int = 0) -> Path:
        """Boot the lab guest on ``cluster_id``; with ``wait`` returns once it printed 3 heartbeats.

        ``fill_mb``: the guest first writes that many MiB of random data (lab/guest.py), ~30 s per GiB under TCG.
        """
        hv = self.hosts[cluster_id]
        await hv.boot(vm_id, ram_mb, append=self.guest.append(hb_ms=hb_ms, dirty_mb=dirty_mb, fill_mb=fill_mb))
        serial = hv.serial_path(vm_id)
        if wait:
            await wait_heartbeats(serial, count=3, within_s=90.0 + fill_mb / 8.0)
        return serial

    def fresh_hosts(self) -> dict[str, QemuHypervisor]:
        """New driver instances over the same runtime directories (per event loop; they find running domains)."""
        return {cid: QemuHypervisor(cid, hv.runtime_dir, hv.machine, command_timeout=hv.command_timeout)
                for cid, hv in self.hosts.items()}

    async def down(self) -> None:
        for hv in self.hosts.values():
            await hv.destroy_all()
            await hv.close()
        shutil.rmtree(self.root, ignore_errors=True)


#: the idle heartbeat guest shared by the contract suite and tests/lab/qemu (one boot per session)
SHARED_IDLE_VM = "idle-guest"


class QemuLabSession:
    """One ``QemuLab`` shared by every test module of a pytest session (the contract suite and tests/lab/qemu).

    Guests are booted lazily and migrate between the clouds; ``where`` remembers the cloud each one runs in.
    Driver objects are per event loop (``lab.fresh_hosts()``): QEMU processes outlive them.
    """

    def __init__(self) -> None:
        self.lab = QemuLab.create()
        self.where: dict[str, str] = {}

    async def ensure_guest(self, hosts: dict[str, QemuHypervisor], vm_id: str, *, ram_mb: int = 128,
                           dirty_mb: int = 0) -> str:
        """The cloud where ``vm_id`` runs; boots it on the first cloud (3 heartbeats) when it runs nowhere."""
        for cid in [self.where.get(vm_id, ""), *hosts]:
            if cid in hosts:
                d = await hosts[cid].domain(vm_id)
                if d is not None and d.state == "running":
                    self.where[vm_id] = cid
                    return cid
        for hv in hosts.values():  # leftovers of an earlier failure: paused/dead domains of this VM
            d = await hv.domain(vm_id)
            if d is not None:
                await hv.destroy_incoming(vm_id) if d.state in ("incoming", "shutoff") else await hv.destroy_source(
                    vm_id)
        cid = next(iter(hosts))
        await hosts[cid].boot(vm_id, ram_mb, append=self.lab.guest.append(dirty_mb=dirty_mb))
        await wait_heartbeats(hosts[cid].serial_path(vm_id), count=3, within_s=90.0)
        self.where[vm_id] = cid
        return cid

    def close(self) -> None:
        with ThreadPoolExecutor(max_workers=1) as pool:  # callers may run inside an event loop
            pool.submit(asyncio.run, self.lab.down()).result()


#: The session-wide lab (created on first use); pair every ``acquire_shared_lab`` with ``release_shared_lab``:
#: the last release ends every QEMU (by PID) and removes the lab directory.
_SHARED: SharedLab[QemuLabSession] = SharedLab(QemuLabSession, lambda session: session.close())
acquire_shared_lab = _SHARED.acquire
release_shared_lab = _SHARED.release


@dataclass
class EngineRun:
    """One migration driven by CNF's engine to a terminal state: the record, its event log, wall time."""

    record: MigrationRecord
    events: list[MigrationEvent]
    wall_s: float

    def decisions(self) -> list[str]:
        return [e.message for e in self.events if e.kind == "decision"]


class CnfOnQemu:
    """CNF's migration engine over sim clouds (Nova, Ceph, BGP simulated) whose hypervisors are real QEMU hosts.

    Why: it drives the real switchover (pre-switchover window, storage handover steps, ``migrate-continue``)
    through the same engine and step table as production, with only the hypervisor real. Used by the lab tests
    and ``benchmarks/live_migration.py``.
    """

    def __init__(self, hosts: dict[str, QemuHypervisor], clock: Clock | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.hosts = hosts
        self.fabric = SimFabric(clock=self.clock)
        for n, cid in enumerate(hosts, start=1):
            self.fabric.add_cluster(cid, name=f"lab-{cid}", as_number=65000 + n, next_hop=f"192.0.2.{n}")
            self.fabric.add_host(cid, f"qemu-{cid}")
        self.directory = StaticDirectory({
            cid: ClusterDrivers(cluster_id=cid, cloud=SimCloud(self.fabric, cid),
                                storage=SimRbdMirror(self.fabric, cid), bgp=SimBgpSpeaker(self.fabric, cid),
                                hypervisor=hv)
            for cid, hv in hosts.items()})
        self.engine = MigrationEngine(self.directory, self.clock)

    def register_vm(self, cluster_id: str, vm_id: str, ram_mb: int, ip: str) -> None:
        """Tell the sim cloud about a guest already booted on ``cluster_id`` (flavor sized to its RAM)."""
        flavor = f"lab.{ram_mb}"
        for c in self.fabric.clusters.values():
            c.flavors[flavor] = (1, ram_mb)
        self.fabric.add_vm(cluster_id, vm_id, name=vm_id, host=f"qemu-{cluster_id}", flavor=flavor, ip=ip,
                           image_size_mb=64)

    def vm_ref(self, cluster_id: str, vm_id: str) -> VmRef:
        s = self.fabric.cluster(cluster_id).servers[vm_id]
        return VmRef(id=s.id, name=s.name, ip=s.ip, image=s.image, flavor=s.flavor, vcpus=s.vcpus,
                     ram_mb=s.ram_mb, host=s.host, project_id=s.project_id, status=s.status)

    async def migrate(self, vm_id: str, source: str, dest: str, options: MigrationOptions | None = None,
                      *, deadline_s: float = 120.0,
                      when: dict[str, Callable[[MigrationRecord], object]] | None = None) -> EngineRun:
        """Run one live migration to a terminal state (the in-process runner's loop, without a database).

        ``when`` maps a step name to a hook called once, right after that step's ``do`` was issued (e.g. to
        request an abort or kill the destination QEMU at a chosen point); a hook may be a coroutine function.
        """
        hooks = dict(when or {})
        rec = self.engine.new_record(kind=MigrationKind.LIVE, vm=self.vm_ref(source, vm_id),
                                     source_cluster_id=source, dest_cluster_id=dest, options=options)
        events: list[MigrationEvent] = []
        t0 = time.monotonic()
        while True:
            adv = await self.engine.advance(rec)
            rec = adv.record
            events.extend(adv.events)
            running = (rec.state == MigrationState.RUNNING and rec.cursor < len(rec.steps)
                       and rec.steps[rec.cursor].status == StepStatus.RUNNING)
            hook = hooks.pop(rec.current_step, None) if running else None
            if hook is not None:
                result = hook(rec)
                if asyncio.iscoroutine(result):
                    await result
            if adv.delay_s is None:
                return EngineRun(record=rec, events=events, wall_s=time.monotonic() - t0)
            if time.monotonic() - t0 > deadline_s:
                raise TimeoutError(f"migration of {vm_id} not terminal after {deadline_s}s: {rec.current_step}")
            await self.clock.sleep(adv.delay_s)


async def _up(args: argparse.Namespace) -> int:
    lab = QemuLab.create()
    serial = await lab.boot("a", args.vm, ram_mb=args.ram_mb, dirty_mb=args.dirty_mb, fill_mb=args.fill_mb)
    desc = {"root": str(lab.root), "kernel": str(lab.guest.kernel), "initrd": str(lab.guest.initrd),
            "vm": args.vm, "cluster": "a", "serial": str(serial), "pid": lab.host("a").pid(args.vm)}
    (lab.root / "lab.json").write_text(json.dumps(desc))
    await lab.host("a").close()
    print(json.dumps(desc))
    return 0


async def _down(args: argparse.Namespace) -> int:
    root = Path(args.root)
    if not root.name.startswith("cnf-lab-qemu-"):
        print(f"refusing: {root} was not made by lab.qemu", file=sys.stderr)
        return 2
    machine = QemuMachine()
    for sub in sorted(p for p in root.glob("*/") if p.is_dir()):  # noqa: ASYNC240 - a CLI, nothing else runs
        hv = QemuHypervisor(sub.name, sub, machine)
        await hv.destroy_all()
    shutil.rmtree(root, ignore_errors=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.qemu")
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the guest and boot it on host a")
    up.add_argument("--vm", default="vm1")
    up.add_argument("--ram-mb", type=int, default=256)
    up.add_argument("--dirty-mb", type=int, default=0)
    up.add_argument("--fill-mb", type=int, default=0, help="MiB of random data the guest writes once at boot")
    down = sub.add_parser("down", help="end every QEMU under ROOT (by PID) and remove ROOT")
    down.add_argument("root")
    args = parser.parse_args(argv)
    return asyncio.run(_up(args) if args.cmd == "up" else _down(args))


if __name__ == "__main__":
    sys.exit(main())
