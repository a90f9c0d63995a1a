"""The simulated outside world shared by the ``sim`` drivers of every cluster.

Why one shared object: the interesting behaviour of a federation lives *between*
clouds — an RBD image mirrored from A to B, memory pages travelling from A's QEMU
to B's, a /32 announced by B and withdrawn by A. Each sim driver is a view of one
cluster onto this world, exactly as a real driver is a view onto real Ceph, FRR,
QEMU or Nova. Everything runs on an injectable clock so tests are deterministic.

The physics kept honest on purpose:
- mirror lag shrinks as time passes (delta size / replication bandwidth);
- promote is refused until the peer's demotion snapshot has arrived;
- pre-copy passes follow RAM size, dirty rate and bandwidth, so a guest that
  dirties memory faster than the link can carry does not converge;
- a guest paused in ``pre-switchover`` does not write; the pause is measured.

Fault injection (``FaultPlan``): fail or hang the Nth call of any driver method,
or mark a whole port of a cluster down. Effect counters record each *state
change* so tests can assert every side effect happened exactly once.

Shared across processes (``state_file``): agents, Celery workers and the test
itself each open the same world. Every driver call takes an ``flock`` on the
file, loads the world, acts, and saves it before the caller can observe the
result (the save runs at the next event-loop iteration or the next call,
whichever comes first). With a state file, use a clock every process shares
(``SystemClock``: CLOCK_MONOTONIC is system-wide).

File format: a random 16-byte token, then the world pickled (a private file of this
sim, 0600, never read from an untrusted place). Each save writes a new token; a
process whose own token is still at the head skips the load (the in-process runner
never reloads). Pickle, not JSON: 0.7 ms per transaction for a 200-VM world
instead of 18 ms, which is what bounded the orchestration benchmark.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import pickle
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from cnf.clock import Clock, SystemClock
from cnf.errors import DriverError, DriverUnavailable, NotFound

# --- fault injection --------------------------------------------------------------------------


@dataclass
class FaultRule:
    """Fail (``kind="fail"``) or hang (``kind="hang"``) calls of ``port.method`` on ``cluster_id``.

    ``nth`` counts calls of that method on that cluster from 1; ``times`` says how many
    consecutive calls from the nth on are affected (``-1`` = every call from then on).
    ``cluster_id=None`` or ``method="*"`` match any; ``port="*"`` counts every driver call of the
    whole fabric (``nth`` = the nth call of anything), which lets tests fail every step boundary.
    """

    port: str
    method: str
    nth: int = 1
    kind: str = "fail"
    times: int = 1
    cluster_id: str | None = None
    message: str = "injected fault"

    def matches(self, cluster_id: str, port: str, method: str, count: int, total: int = 0) -> bool:
        if self.port == "*":
            return total >= self.nth and (self.times < 0 or total < self.nth + self.times)
        if self.port != port or self.method not in ("*", method):
            return False
        if self.cluster_id is not None and self.cluster_id != cluster_id:
            return False
        if count < self.nth:
            return False
        return self.times < 0 or count < self.nth + self.times


@dataclass
class FaultPlan:
    rules: list[FaultRule] = field(default_factory=list)
    down: set[tuple[str, str]] = field(default_factory=set)  # (cluster_id, port)

    def add(self, rule: FaultRule) -> FaultRule:
        self.rules.append(rule)
        return rule

    def clear(self) -> None:
        self.rules.clear()
        self.down.clear()


# --- world state ------------------------------------------------------------------------------


@dataclass
class SimHost:
    name: str
    vcpus: int
    ram_mb: int
    cpu_model: str = "qemu64"
    base_cpu_pct: float = 10.0


@dataclass
class SimServer:
    """A Nova server record in one cloud."""

    id: str
    name: str
    status: str
    host: str
    flavor: str
    vcpus: int
    ram_mb: int
    ip: str
    image: str
    project_id: str = "demo"
    tags: tuple[str, ...] = ()
    cpu_pct: float = 20.0
    mem_pct: float = 40.0
    metadata: dict[str, str] = field(default_factory=dict)
    receiver_for: str = ""  # migration id when this record is a live/cold migration receiver


@dataclass
class SimDomain:
    """A QEMU domain on one cloud's host."""

    vm_id: str
    state: str  # running, paused, incoming, shutoff, migrated
    ram_mb: int
    host: str = ""
    dirty_rate_mbps: float = 20.0  # MiB/s of memory the guest dirties while running
    image: str = ""


@dataclass
class SimMigration:
    """The memory copy of one live migration, simulated pass by pass."""

    vm_id: str
    source: str
    dest: str
    ram_mb: int
    bandwidth_mbps: float
    dirty_rate_mbps: float
    downtime_limit_ms: float
    max_passes: int
    status: str = "active"
    started: float = 0.0
    pass_started: float = 0.0
    pass_bytes_mb: float = 0.0  # size of the current pass
    passes: int = 0
    transferred_mb: float = 0.0
    throttle: float = 0.0  # auto-converge: fraction of dirty rate removed
    post_copy: bool = False
    paused_at: float | None = None
    resumed_at: float | None = None
    downtime_ms: float | None = None
    error: str = ""
    history: list[int] = field(default_factory=list)


@dataclass
class SimImageSide:
    """One cluster's copy of a mirrored image."""

    exists: bool = True
    mirroring: bool = False
    primary: bool = False
    snapshots: list[int] = field(default_factory=list)  # mirror snapshot ids present on this side
    data_version: int = 0  # the data this side holds (counts guest writes)


@dataclass
class SimSnapshot:
    id: int
    origin: str  # cluster that created it
    created: float
    data_version: int
    demotion: bool
    delta_mb: float


@dataclass
class SimImage:
    name: str
    size_mb: int
    sides: dict[str, SimImageSide] = field(default_factory=dict)
    snapshots: dict[int, SimSnapshot] = field(default_factory=dict)
    written_mb_since_snapshot: float = 0.0


@dataclass
class SimCluster:
    cluster_id: str
    name: str
    as_number: int
    next_hop: str
    hosts: dict[str, SimHost] = field(default_factory=dict)
    servers: dict[str, SimServer] = field(default_factory=dict)
    domains: dict[str, SimDomain] = field(default_factory=dict)
    flavors: dict[str, tuple[int, int]] = field(default_factory=dict)  # name -> (vcpus, ram_mb)
    routes: dict[str, str] = field(default_factory=dict)  # prefix -> next hop, originated here
    route_since: dict[str, float] = field(default_factory=dict)  # prefix -> when announced (oldest path wins)
    load_bias: float = 0.0  # extra CPU % on every host and VM (the demo raises it to make a policy fire)


#: per state file, the instance of this process that holds its lock right now
_TOKEN_BYTES = 16  # head of the state file: who saved it last (see module docstring)
_HOLDERS: dict[str, SimFabric] = {}


class SimFabric:
    """The world. Not thread-safe; lives on one event loop like the agent."""

    #: replication bandwidth between clusters (MiB/s) and fixed per-snapshot latency (s)
    replication_mbps: float = 400.0
    replication_latency_s: float = 0.05

    def __init__(self, clock: Clock | None = None, seed: int = 7, state_file: str | None = None) -> None:
        self.clock: Clock = clock or SystemClock()
        self.clusters: dict[str, SimCluster] = {}
        self.images: dict[str, SimImage] = {}
        self.migrations: dict[str, SimMigration] = {}
        self.faults = FaultPlan()
        self.calls: Counter[tuple[str, str, str]] = Counter()
        self.effects: Counter[tuple[str, str, str, str]] = Counter()
        self.total_calls = 0
        self._next_snap = 1
        self._rng = random.Random(seed)
        self._last_write = self.clock.now()
        self.state_file = state_file
        self._lock_fd: int | None = None
        # the token our last save wrote at the head of the file: still there -> our objects are current
        self._saved_token = b""
        if state_file:
            with self.transaction():
                pass  # load an existing world, or create the file for the others

    # --- persistence (shared world across processes) ------------------------------------------

    def _acquire(self) -> None:
        if not self.state_file or self._lock_fd is not None:
            return
        # Another instance of this process may hold the world (its save is scheduled, not done): let it save
        # first, or this blocking flock would wait for a callback that can only run after we return.
        other = _HOLDERS.get(self.state_file)
        if other is not None and other is not self:
            other._commit()
        fd = os.open(self.state_file + ".lock", os.O_CREAT | os.O_RDWR, 0o600)
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._lock_fd = fd
        _HOLDERS[self.state_file] = self
        try:
            with open(self.state_file, "rb") as f:
                token = f.read(_TOKEN_BYTES)
                if len(token) == _TOKEN_BYTES and token != self._saved_token:
                    self._load(pickle.load(f))  # another process changed the world since our last save
        except FileNotFoundError:
            return

    def _commit(self) -> None:
        """Save the world and release the lock (no-op when nothing is held)."""
        if self._lock_fd is None:
            return
        assert self.state_file is not None
        tmp = self.state_file + ".tmp"
        token = os.urandom(_TOKEN_BYTES)
        with os.fdopen(os.open(tmp, os.O_CREAT | os.O_TRUNC | os.O_WRONLY, 0o600), "wb") as f:
            f.write(token)
            pickle.dump(self._dump(), f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.state_file)
        self._saved_token = token
        fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
        os.close(self._lock_fd)
        self._lock_fd = None
        if _HOLDERS.get(self.state_file) is self:
            del _HOLDERS[self.state_file]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[SimFabric]:
        """Load, change and save the shared world atomically (tests inject faults or read effects this way)."""
        self._commit()
        self._acquire()
        try:
            yield self
        finally:
            self._commit()

    def _dump(self) -> dict[str, Any]:
        """The whole world as one picklable dict of its live objects (``_load`` takes it back)."""
        return {"clusters": self.clusters, "images": self.images, "migrations": self.migrations,
                "faults": self.faults, "calls": self.calls, "effects": self.effects,
                "total_calls": self.total_calls, "next_snap": self._next_snap, "last_write": self._last_write}

    def _load(self, d: dict[str, Any]) -> None:
        self.clusters, self.images, self.migrations = d["clusters"], d["images"], d["migrations"]
        self.faults, self.calls, self.effects = d["faults"], d["calls"], d["effects"]
        self.total_calls, self._next_snap, self._last_write = d["total_calls"], d["next_snap"], d["last_write"]

    # --- topology -----------------------------------------------------------------------------

    def add_cluster(self, cluster_id: str, *, name: str, as_number: int, next_hop: str) -> SimCluster:
        c = SimCluster(cluster_id=cluster_id, name=name, as_number=as_number, next_hop=next_hop)
        c.flavors = {"m1.tiny": (1, 512), "m1.small": (1, 2048), "m1.medium": (2, 4096), "m1.large": (4, 8192)}
        self.clusters[cluster_id] = c
        return c

    def add_host(self, cluster_id: str, name: str, *, vcpus: int = 32, ram_mb: int = 131072,
                 cpu_model: str = "qemu64") -> SimHost:
        h = SimHost(name=name, vcpus=vcpus, ram_mb=ram_mb, cpu_model=cpu_model)
        self.cluster(cluster_id).hosts[name] = h
        return h

    def create_image(self, cluster_id: str, image: str, *, size_mb: int = 1024) -> SimImage:
        img = self.images.get(image)
        if img is None:
            img = SimImage(name=image, size_mb=size_mb)
            self.images[image] = img
        img.sides[cluster_id] = SimImageSide(exists=True, primary=True, data_version=1)
        return img

    def add_vm(self, cluster_id: str, vm_id: str, *, name: str, host: str, flavor: str = "m1.small",
               ip: str, status: str = "ACTIVE", project_id: str = "demo", tags: tuple[str, ...] = (),
               cpu_pct: float = 20.0, dirty_rate_mbps: float = 20.0, image_size_mb: int = 1024) -> SimServer:
        c = self.cluster(cluster_id)
        vcpus, ram_mb = c.flavors[flavor]
        image = f"{vm_id}_disk"
        srv = SimServer(id=vm_id, name=name, status=status, host=host, flavor=flavor, vcpus=vcpus, ram_mb=ram_mb,
                        ip=ip, image=image, project_id=project_id, tags=tags, cpu_pct=cpu_pct)
        c.servers[vm_id] = srv
        c.domains[vm_id] = SimDomain(vm_id=vm_id, state="running" if status == "ACTIVE" else "shutoff",
                                     ram_mb=ram_mb, host=host, dirty_rate_mbps=dirty_rate_mbps, image=image)
        self.create_image(cluster_id, image, size_mb=image_size_mb)
        c.routes[f"{ip}/32"] = c.next_hop
        return srv

    def cluster(self, cluster_id: str) -> SimCluster:
        try:
            return self.clusters[cluster_id]
        except KeyError:
            raise NotFound(f"unknown sim cluster {cluster_id}", cluster_id=cluster_id) from None

    # --- calls, faults, effects ---------------------------------------------------------------

    async def enter(self, cluster_id: str, port: str, method: str) -> None:
        """Called first by every sim driver method: counts the call, applies faults, advances the world.

        With a state file the world stays locked until the method body (synchronous after this
        returns) has changed it; the save is scheduled for the next loop iteration.
        """
        self._commit()
        self._acquire()
        self.calls[(cluster_id, port, method)] += 1
        self.total_calls += 1
        count = self.calls[(cluster_id, port, method)]
        fault: FaultRule | None = None
        if (cluster_id, port) in self.faults.down:
            fault = FaultRule(port=port, method=method, kind="unavailable", message=f"{port} of {cluster_id} is down")
        for rule in self.faults.rules:
            if fault is None and rule.matches(cluster_id, port, method, count, self.total_calls):
                fault = rule
        if fault is not None:
            self._commit()  # never hang or fail while holding the shared world
            if fault.kind == "hang":
                await asyncio.Event().wait()  # until the caller's timeout cancels us
            if fault.kind == "unavailable":
                raise DriverUnavailable(fault.message, port=port, operation=method, cluster_id=cluster_id)
            raise DriverError(fault.message, port=port, operation=method, cluster_id=cluster_id)
        self.tick()
        if self._lock_fd is not None:
            asyncio.get_running_loop().call_soon(self._commit)

    def effect(self, cluster_id: str, port: str, action: str, key: str) -> None:
        """Record a state change (not a call): used to prove each side effect happened once."""
        self.effects[(cluster_id, port, action, key)] += 1

    # --- time-driven world ---------------------------------------------------------------------

    def tick(self) -> None:
        """Advance the world to ``clock.now()``: guests write, migrations copy pages."""
        now = self.clock.now()
        elapsed = max(0.0, now - self._last_write)
        self._last_write = now
        if elapsed > 0:
            self._guest_writes(elapsed)
        for mig in self.migrations.values():
            self._advance_migration(mig, now)

    def _guest_writes(self, elapsed: float) -> None:
        for c in self.clusters.values():
            for d in c.domains.values():
                if d.state != "running" or not d.image:
                    continue
                img = self.images.get(d.image)
                side = img.sides.get(c.cluster_id) if img else None
                if img is None or side is None or not side.primary:
                    continue
                side.data_version += 1
                img.written_mb_since_snapshot = min(img.size_mb, img.written_mb_since_snapshot + elapsed * 2.0)

    # --- storage physics -----------------------------------------------------------------------

    def take_snapshot(self, image: str, origin: str, *, demotion: bool) -> SimSnapshot:
        img = self.images[image]
        side = img.sides[origin]
        delta = img.written_mb_since_snapshot if img.snapshots else float(img.size_mb)
        snap = SimSnapshot(id=self._next_snap, origin=origin, created=self.clock.now(),
                           data_version=side.data_version, demotion=demotion, delta_mb=delta)
        self._next_snap += 1
        img.snapshots[snap.id] = snap
        side.snapshots.append(snap.id)
        img.written_mb_since_snapshot = 0.0
        return snap

    def arrival_time(self, snap: SimSnapshot) -> float:
        return snap.created + self.replication_latency_s + snap.delta_mb / self.replication_mbps

    def replicate(self, image: str) -> None:
        """Copy every snapshot that has had time to arrive to the non-primary sides."""
        img = self.images.get(image)
        if img is None:
            return
        now = self.clock.now()
        for cid, side in img.sides.items():
            if side.primary or not side.mirroring:
                continue
            for snap in sorted(img.snapshots.values(), key=lambda s: s.id):
                if snap.origin == cid or snap.id in side.snapshots:
                    continue
                if self.arrival_time(snap) <= now:
                    side.snapshots.append(snap.id)
                    side.data_version = max(side.data_version, snap.data_version)
                else:
                    break  # snapshots arrive in order

    # --- hypervisor physics --------------------------------------------------------------------

    def _advance_migration(self, mig: SimMigration, now: float) -> None:
        """Run whole pre-copy passes up to ``now`` (each pass copies what the previous one let dirty)."""
        bw = max(mig.bandwidth_mbps, 1e-6)
        guard = 0
        while mig.status in ("active", "postcopy-active") and guard < 10_000:
            guard += 1
            pass_end = mig.pass_started + mig.pass_bytes_mb / bw
            if pass_end > now:
                return
            mig.transferred_mb += mig.pass_bytes_mb
            mig.passes += 1
            if mig.status == "postcopy-active":
                self._finish_switchover(mig, pass_end)
                return
            dirty = mig.dirty_rate_mbps * (1.0 - mig.throttle)
            remaining = min(float(mig.ram_mb), dirty * (mig.pass_bytes_mb / bw))
            mig.history.append(int(remaining * 1024 * 1024))
            if remaining / bw * 1000.0 <= mig.downtime_limit_ms:
                mig.status = "pre-switchover"
                mig.pass_bytes_mb = remaining
                mig.paused_at = pass_end
                self.clusters[mig.source].domains[mig.vm_id].state = "paused"
                return
            if mig.passes >= mig.max_passes:
                mig.status = "failed"
                mig.error = f"did not converge in {mig.passes} passes"
                return
            mig.pass_started = pass_end
            mig.pass_bytes_mb = remaining

    def _finish_switchover(self, mig: SimMigration, at: float) -> None:
        src = self.clusters[mig.source].domains.get(mig.vm_id)
        dst = self.clusters[mig.dest].domains.get(mig.vm_id)
        if src is not None:
            src.state = "migrated"
        if dst is not None:
            dst.state = "running"
        mig.status = "completed"
        mig.resumed_at = at
        if mig.paused_at is not None:
            mig.downtime_ms = (at - mig.paused_at) * 1000.0

    def continue_migration(self, mig: SimMigration) -> None:
        now = self.clock.now()
        final = mig.pass_bytes_mb / max(mig.bandwidth_mbps, 1e-6)
        mig.transferred_mb += mig.pass_bytes_mb
        self._finish_switchover(mig, now + final)

    # --- load (for the scheduler and the demo) -------------------------------------------------

    def drift_load(self) -> None:
        """A small bounded random walk of every VM's CPU use: realistic, drifting, deterministic by seed."""
        for c in self.clusters.values():
            for s in c.servers.values():
                if s.status != "ACTIVE":
                    continue
                s.cpu_pct = min(100.0, max(0.0, s.cpu_pct + self._rng.uniform(-3.0, 3.0)))

    def running_clusters(self, vm_id: str) -> list[str]:
        """Clusters where a domain of ``vm_id`` is running: the invariant is 'exactly one'."""
        return [c.cluster_id for c in self.clusters.values()
                if (d := c.domains.get(vm_id)) is not None and d.state == "running"]

    def primary_clusters(self, image: str) -> list[str]:
        img = self.images.get(image)
        return [cid for cid, side in (img.sides.items() if img else []) if side.primary]

    def announcing_clusters(self, prefix: str) -> list[str]:
        return [c.cluster_id for c in self.clusters.values() if prefix in c.routes]

    def snapshot_state(self) -> dict[str, Any]:
        """A compact dump for debugging failed tests."""
        return {
            cid: {
                "servers": {k: v.status for k, v in c.servers.items()},
                "domains": {k: v.state for k, v in c.domains.items()},
                "routes": dict(c.routes),
            }
            for cid, c in self.clusters.items()
        }
