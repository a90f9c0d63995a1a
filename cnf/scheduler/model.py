"""What the scheduler sees: a snapshot of the federation's clusters, hosts and VMs, plus recent history.

Pure data. The master builds a :class:`Snapshot` from what the agents report (the sim clouds' drifting load
today, the real cloud driver's numbers later); tests and the benchmark build one from a dict
(:func:`snapshot_from_dict`, the YAML scenario format) or with :func:`derive_usage`.

Units and meanings (the trigger language reads these attribute names directly):

- ``cpu_pct`` of a cluster/host: measured CPU use as a percentage of ``pcpus`` (physical threads; defaults to
  ``vcpus_total``). Of a VM: percentage of its own vCPUs in use, so its load in cores is ``vcpus*cpu_pct/100``.
- ``mem_pct`` of a cluster/host: ``ram_mb_used / ram_mb_total`` (allocation: a KVM guest keeps its RAM);
  of a VM: the guest's own memory use.
- ``vcpus_total``/``ram_mb_total``: schedulable capacity (after allocation ratios); ``free_vcpus`` and
  ``free_ram_mb`` are what is left and bound what can be placed there.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cnf.errors import InvalidInput


@dataclass(slots=True)
class ClusterState:
    """One federated cloud. Mutable on purpose: the scheduler works on a private copy it projects moves onto."""

    id: str
    vcpus_total: float
    ram_mb_total: float
    vcpus_used: float = 0.0
    ram_mb_used: float = 0.0
    cpu_pct: float = 0.0
    mem_pct: float = 0.0
    vm_count: int = 0
    pcpus: float = 0.0  # 0 = same as vcpus_total
    hosts: tuple[str, ...] = ()

    @property
    def free_vcpus(self) -> float:
        return self.vcpus_total - self.vcpus_used

    @property
    def free_ram_mb(self) -> float:
        return self.ram_mb_total - self.ram_mb_used

    @property
    def cpu_capacity(self) -> float:
        return self.pcpus or self.vcpus_total


@dataclass(slots=True)
class HostState:
    """One compute host inside a cluster; same metrics as a cluster. ``enabled=False`` hosts receive nothing."""

    id: str
    cluster_id: str
    vcpus_total: float
    ram_mb_total: float
    vcpus_used: float = 0.0
    ram_mb_used: float = 0.0
    cpu_pct: float = 0.0
    mem_pct: float = 0.0
    vm_count: int = 0
    pcpus: float = 0.0
    enabled: bool = True

    @property
    def free_vcpus(self) -> float:
        return self.vcpus_total - self.vcpus_used

    @property
    def free_ram_mb(self) -> float:
        return self.ram_mb_total - self.ram_mb_used

    @property
    def cpu_capacity(self) -> float:
        return self.pcpus or self.vcpus_total


@dataclass(frozen=True, slots=True)
class VmState:
    id: str
    cluster_id: str
    host_id: str  # "" when the cloud did not say
    project_id: str
    vcpus: int
    ram_mb: int
    cpu_pct: float = 0.0
    mem_pct: float = 0.0
    status: str = "ACTIVE"
    tags: frozenset[str] = frozenset()

    @property
    def cpu_load(self) -> float:
        """Cores this VM keeps busy."""
        return self.vcpus * self.cpu_pct / 100.0


@dataclass(frozen=True, slots=True)
class MigrationInFlight:
    """A migration the engine is running now; it counts against the caps of both clusters."""

    vm_id: str
    source_cluster: str
    dest_cluster: str


@dataclass(frozen=True, slots=True)
class LastMove:
    """When a VM last moved (any cause: policy or operator); the cooldown starts here."""

    vm_id: str
    t: float
    source_cluster: str = ""
    dest_cluster: str = ""


class MetricHistory:
    """Recent samples per (level, entity id, metric): a step function, value at t = latest sample at or before t.

    Why per metric: agents report cluster/host/VM metrics at their own pace; a trigger's duration needs each
    metric it reads to be known over the whole window.
    """

    def __init__(self) -> None:
        self._series: dict[tuple[str, str, str], tuple[list[float], list[float]]] = {}

    def add(self, t: float, level: str, entity_id: str, metrics: Mapping[str, float]) -> None:
        for name, value in metrics.items():
            times, values = self._series.setdefault((level, entity_id, name), ([], []))
            i = bisect.bisect_right(times, t)
            if i and times[i - 1] == t:
                values[i - 1] = float(value)
            else:
                times.insert(i, t)
                values.insert(i, float(value))

    def series(self, level: str, entity_id: str, name: str) -> tuple[list[float], list[float]] | None:
        return self._series.get((level, entity_id, name))

    def value_at(self, level: str, entity_id: str, name: str, t: float) -> float | None:
        s = self._series.get((level, entity_id, name))
        if s is None:
            return None
        i = bisect.bisect_right(s[0], t)
        return s[1][i - 1] if i else None

    def __len__(self) -> int:
        return sum(len(t) for t, _ in self._series.values())

    def record(self, t: float, clusters: Iterable[ClusterState] = (), hosts: Iterable[HostState] = (),
               vms: Iterable[VmState] = ()) -> None:
        """Append the trigger metrics of a snapshot taken at ``t`` (what the master's loop does each round).

        VM samples are optional: only ``vm.* ... for D`` triggers need them, and they cost one entry per VM.
        """
        for c in clusters:
            self.add(t, "cluster", c.id, {"cpu_pct": c.cpu_pct, "mem_pct": c.mem_pct, "free_vcpus": c.free_vcpus,
                                          "free_ram_mb": c.free_ram_mb, "vm_count": c.vm_count})
        for h in hosts:
            self.add(t, "host", h.id, {"cpu_pct": h.cpu_pct, "mem_pct": h.mem_pct, "free_vcpus": h.free_vcpus,
                                       "free_ram_mb": h.free_ram_mb, "vm_count": h.vm_count})
        for v in vms:
            self.add(t, "vm", v.id, {"cpu_pct": v.cpu_pct, "mem_pct": v.mem_pct, "vcpus": v.vcpus,
                                     "ram_mb": v.ram_mb})

    def prune(self, before: float) -> None:
        """Forget samples older than ``before``, keeping the last one at or before it (it still defines the value
        at ``before``, so a trigger's window that starts there stays provable)."""
        for key in list(self._series):
            times, values = self._series[key]
            i = bisect.bisect_right(times, before) - 1
            if i > 0:
                del times[:i]
                del values[:i]


@dataclass
class Snapshot:
    clusters: dict[str, ClusterState]
    hosts: dict[str, HostState]
    vms: Sequence[VmState]
    in_flight: Sequence[MigrationInFlight] = ()
    last_moves: Mapping[str, LastMove] = field(default_factory=dict)
    history: MetricHistory = field(default_factory=MetricHistory)


def derive_usage(clusters: Iterable[ClusterState], hosts: Iterable[HostState], vms: Sequence[VmState],
                 ) -> tuple[dict[str, ClusterState], dict[str, HostState]]:
    """Fill used capacity, ``vm_count``, ``cpu_pct`` and ``mem_pct`` of hosts and clusters from their VMs.

    Cluster capacity is the sum of its hosts when it has any. Used by the scenario loader, the benchmark and any
    caller whose cloud reports only inventory (no measured host load).
    """
    cmap = {c.id: ClusterState(c.id, c.vcpus_total, c.ram_mb_total, pcpus=c.pcpus) for c in clusters}
    hmap: dict[str, HostState] = {}
    members: dict[str, list[str]] = {cid: [] for cid in cmap}
    for h in hosts:
        if h.cluster_id not in cmap:
            raise InvalidInput(f"host {h.id!r} names unknown cluster {h.cluster_id!r}", field=f"hosts.{h.id}")
        hmap[h.id] = HostState(h.id, h.cluster_id, h.vcpus_total, h.ram_mb_total, pcpus=h.pcpus, enabled=h.enabled)
        members[h.cluster_id].append(h.id)
    for cid, hids in members.items():
        cl = cmap[cid]
        if hids:
            cl.hosts = tuple(sorted(hids))
            cl.vcpus_total = sum(hmap[h].vcpus_total for h in hids)
            cl.ram_mb_total = sum(hmap[h].ram_mb_total for h in hids)
            cl.pcpus = sum(hmap[h].cpu_capacity for h in hids)
    # loads are summed with math.fsum (exactly rounded): the result does not depend on the order the cloud
    # listed its VMs in, so neither does the plan
    cpu_load_c: dict[str, list[float]] = {cid: [] for cid in cmap}
    cpu_load_h: dict[str, list[float]] = {hid: [] for hid in hmap}
    for v in vms:
        vc = cmap.get(v.cluster_id)
        if vc is None:
            raise InvalidInput(f"VM {v.id!r} names unknown cluster {v.cluster_id!r}", field=f"vms.{v.id}")
        vc.vcpus_used += v.vcpus
        vc.ram_mb_used += v.ram_mb
        vc.vm_count += 1
        load = v.vcpus * v.cpu_pct / 100.0
        cpu_load_c[v.cluster_id].append(load)
        if v.host_id:
            vh = hmap.get(v.host_id)
            if vh is None or vh.cluster_id != v.cluster_id:
                raise InvalidInput(f"VM {v.id!r} names unknown host {v.host_id!r} in {v.cluster_id!r}",
                                   field=f"vms.{v.id}")
            vh.vcpus_used += v.vcpus
            vh.ram_mb_used += v.ram_mb
            vh.vm_count += 1
            cpu_load_h[v.host_id].append(load)
    for cid, c in cmap.items():
        c.cpu_pct = 100.0 * math.fsum(cpu_load_c[cid]) / c.cpu_capacity if c.cpu_capacity else 0.0
        c.mem_pct = 100.0 * c.ram_mb_used / c.ram_mb_total if c.ram_mb_total else 0.0
    for hid, h in hmap.items():
        h.cpu_pct = 100.0 * math.fsum(cpu_load_h[hid]) / h.cpu_capacity if h.cpu_capacity else 0.0
        h.mem_pct = 100.0 * h.ram_mb_used / h.ram_mb_total if h.ram_mb_total else 0.0
    return cmap, hmap


# --- dict form (scenario files, POST .../evaluate with an inline snapshot) ---------------------------------------


def _req(d: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in d:
        raise InvalidInput(f"missing {key!r}", field=f"{where}.{key}")
    return d[key]


def _num(d: Mapping[str, Any], key: str, where: str, default: float | None = None) -> float:
    value = d.get(key, default) if default is not None else _req(d, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInput(f"expected a number, got {value!r}", field=f"{where}.{key}")
    return float(value)


def snapshot_from_dict(data: Mapping[str, Any]) -> Snapshot:
    """Build a snapshot from the scenario format (see ``tests/unit/scheduler/scenarios/README.md``).

    ``clusters: [{id, hosts: [{id, vcpus_total, ram_mb_total, pcpus?, enabled?}]}]`` (or cluster-level
    ``vcpus_total``/``ram_mb_total`` without hosts), ``vms: [{id, host | cluster, project, vcpus, ram_mb,
    cpu_pct, mem_pct, status?, tags?}]``, ``in_flight: [{vm, source, dest}]``, ``last_moves: {vm: t}`` or
    ``{vm: {t, source, dest}}``, ``history: [{t, cluster|host|vm: id, <metric>: value, ...}]``.
    Usage (used capacity, cpu_pct, mem_pct) is derived from the VMs.
    """
    clusters: list[ClusterState] = []
    hosts: list[HostState] = []
    host_cluster: dict[str, str] = {}
    for i, c in enumerate(data.get("clusters") or []):
        where = f"clusters[{i}]"
        cid = str(_req(c, "id", where))
        chosts = c.get("hosts") or []
        if not chosts:
            clusters.append(ClusterState(cid, _num(c, "vcpus_total", where), _num(c, "ram_mb_total", where),
                                         pcpus=_num(c, "pcpus", where, 0.0)))
            continue
        clusters.append(ClusterState(cid, 0.0, 0.0))
        for j, h in enumerate(chosts):
            hw = f"{where}.hosts[{j}]"
            hid = str(_req(h, "id", hw))
            hosts.append(HostState(hid, cid, _num(h, "vcpus_total", hw), _num(h, "ram_mb_total", hw),
                                   pcpus=_num(h, "pcpus", hw, 0.0), enabled=bool(h.get("enabled", True))))
            host_cluster[hid] = cid
    vms: list[VmState] = []
    for i, v in enumerate(data.get("vms") or []):
        where = f"vms[{i}]"
        host = str(v.get("host") or "")
        cluster = str(v.get("cluster") or host_cluster.get(host, ""))
        if not cluster:
            raise InvalidInput("a VM needs a 'host' or a 'cluster'", field=f"{where}.host")
        vms.append(VmState(str(_req(v, "id", where)), cluster, host, str(v.get("project", "default")),
                           int(_num(v, "vcpus", where)), int(_num(v, "ram_mb", where)),
                           _num(v, "cpu_pct", where, 0.0), _num(v, "mem_pct", where, 0.0),
                           str(v.get("status", "ACTIVE")), frozenset(v.get("tags") or ())))
    cmap, hmap = derive_usage(clusters, hosts, vms)
    in_flight = [MigrationInFlight(str(m["vm"]), str(m["source"]), str(m["dest"]))
                 for m in data.get("in_flight") or []]
    last_moves: dict[str, LastMove] = {}
    for vm_id, lm in (data.get("last_moves") or {}).items():
        if isinstance(lm, Mapping):
            last_moves[str(vm_id)] = LastMove(str(vm_id), float(lm["t"]), str(lm.get("source", "")),
                                              str(lm.get("dest", "")))
        else:
            last_moves[str(vm_id)] = LastMove(str(vm_id), float(lm))
    history = MetricHistory()
    for i, s in enumerate(data.get("history") or []):
        where = f"history[{i}]"
        levels = [lv for lv in ("cluster", "host", "vm") if lv in s]
        if len(levels) != 1:
            raise InvalidInput("a sample names exactly one of cluster, host, vm", field=where)
        metrics = {k: float(val) for k, val in s.items() if k not in ("t", levels[0])}
        history.add(_num(s, "t", where), levels[0], str(s[levels[0]]), metrics)
    return Snapshot(cmap, hmap, vms, in_flight, last_moves, history)
