"""Policy-driven VM placement: evaluate rules over a snapshot and a clock time, return a :class:`Plan`.

Pure: data in, decisions out; no I/O, no wall clock (``now`` is a parameter). The master's loop feeds it the
agents' metrics and executes ``plan.auto_moves()``; ``POST /v1/policies/{name}/evaluate`` shows the plan.

How a move is decided (details and the no-oscillation argument in ``docs/scheduler.md``):

1. Rules run by ``priority`` (highest first), then name. They share one *projected* state: every accepted move
   is applied to private copies of the cluster/host figures, so later decisions see its effect, the trigger is
   re-checked after each move (a cluster that cooled below the threshold stops shedding VMs), and caps count
   moves already in this plan.
2. A rule fires for its *subject* (the finest level its trigger reads: cluster, host or VM), now and — with
   ``for D`` — at every sample of the last D seconds (history); otherwise the subject is ``pending``.
3. Candidates are the VMs of firing subjects. Sources are walked hottest first; VMs largest contribution to
   the objective first, then smaller RAM (cheaper to copy), then id. Each VM reached is checked for excluded
   tags/projects, status, in-flight migration and cooldown (each refusal recorded as a skip); a capped
   source's remaining candidates, and VMs too large to gain the margin anywhere, are summarised per source.
4. For each VM, every target cluster is scored; it is eligible if it is under its cap, has the free vCPUs/RAM
   and a host that fits, and the VM's objective improves by at least ``margin_pct``: ``load(source, before) -
   load(target, after) >= margin_pct`` (and > 0). The best score wins; ties go to the lower cluster id.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Sequence
from types import SimpleNamespace
from typing import Any

import structlog

from cnf.scheduler import plan as P
from cnf.scheduler.model import ClusterState, HostState, Snapshot, VmState
from cnf.scheduler.rules import Rule

log = structlog.get_logger(__name__)

DEFAULT_DETAIL_LIMIT = 1000
_ROUND = 6  # scores are compared after rounding, so float noise never decides a tie


class _RuleRun:
    """Per-rule compiled pieces, so the hot loops do no lookups."""

    def __init__(self, rule: Rule) -> None:
        self.rule = rule
        self.fires_now = rule.trigger.compile()
        self.gate = rule.trigger.cluster_gate()
        self.subject = rule.trigger.subject
        self.duration = rule.trigger.duration_s
        self.load = _load_key(rule.objective)
        self.size = _size_fn(rule.objective)
        self.capacity = _capacity_fn(rule.objective)
        self.reads_host = any(m.level == "host" for m in rule.trigger.metrics)
        self.vm_pred = rule.trigger.vm_residual()  # with ``gate``: the whole trigger, one argument, faster


class _Evaluation:
    """One evaluation: the projected state, the counters of the caps and the plan being built."""

    def __init__(self, snapshot: Snapshot, now: float, detail_limit: int) -> None:
        self.snap = snapshot
        self.now = now
        self.detail_limit = detail_limit
        self.plan = P.Plan(evaluated_at=now)
        self.clusters: dict[str, ClusterState] = {
            cid: ClusterState(c.id, c.vcpus_total, c.ram_mb_total, c.vcpus_used, c.ram_mb_used, c.cpu_pct,
                              c.mem_pct, c.vm_count, c.pcpus, c.hosts)
            for cid, c in snapshot.clusters.items()}
        self.hosts: dict[str, HostState] = {
            hid: HostState(h.id, h.cluster_id, h.vcpus_total, h.ram_mb_total, h.vcpus_used, h.ram_mb_used,
                           h.cpu_pct, h.mem_pct, h.vm_count, h.pcpus, h.enabled)
            for hid, h in snapshot.hosts.items()}
        self.cluster_ids = sorted(self.clusters)
        self.hosts_of: dict[str, list[HostState]] = {cid: [] for cid in self.clusters}
        for h in sorted(self.hosts.values(), key=lambda h: h.id):
            if h.cluster_id in self.hosts_of:
                self.hosts_of[h.cluster_id].append(h)
        vms_of: dict[str, list[VmState]] = {cid: [] for cid in self.clusters}
        for v in snapshot.vms:
            lst = vms_of.get(v.cluster_id)
            if lst is not None:
                lst.append(v)
        self.vms_of = vms_of
        self._ordered: dict[tuple[str, str], list[_Walk]] = {}
        self.moved_from: dict[str, list[VmState]] = {cid: [] for cid in self.clusters}
        self.busy: dict[str, int] = dict.fromkeys(self.clusters, 0)
        self.busy_total = 0
        self.in_flight_vms: set[str] = set()
        for m in snapshot.in_flight:
            self.in_flight_vms.add(m.vm_id)
            self.busy_total += 1
            for cid in {m.source_cluster, m.dest_cluster}:
                if cid in self.busy:
                    self.busy[cid] += 1
        self.moved: set[str] = set()
        self._held_cache: dict[tuple[str, str], float] = {}

    # --- bookkeeping ---------------------------------------------------------------------------------------------

    def skip(self, rule: Rule, kind: str, sid: str, reason: str, detail: str, count: int = 1) -> None:
        counts = self.plan.skipped_counts
        counts[reason] = counts.get(reason, 0) + count
        if len(self.plan.skipped) < self.detail_limit:
            self.plan.skipped.append(P.Skip(rule.name, kind, sid, reason, detail, count))
        else:
            self.plan.truncated += 1

    def pending(self, rule: Rule, kind: str, sid: str, held_s: float) -> None:
        if len(self.plan.pending) < self.detail_limit:
            self.plan.pending.append(P.Pending(rule.name, kind, sid, round(held_s, 3), rule.trigger.duration_s or 0))
        else:
            self.plan.truncated += 1

    def ordered(self, cid: str, objective: str) -> list[_Walk]:
        """The cluster's VMs in walk order for ``objective`` (sorted once per evaluation, shared by rules)."""
        key = (cid, objective)
        out = self._ordered.get(key)
        if out is None:
            out = _walk_order(self.vms_of[cid], objective)
            self._ordered[key] = out
        return out

    # --- durations -----------------------------------------------------------------------------------------------

    def held_for(self, run: _RuleRun, c: ClusterState, h: HostState | None, v: VmState | None) -> float:
        """How long (s, capped at the rule's duration) the trigger has held without a break, ending now.

        The current snapshot is known to satisfy it (checked by the caller); history gives the earlier values as
        step functions. A metric with no sample at or before the window start makes the stretch start at its
        first sample: a trigger never counts as held for longer than the data proves. Cached per subject.
        """
        rule = run.rule
        ids = {"cluster": c.id, "host": h.id if h is not None else "", "vm": v.id if v is not None else ""}
        key = (rule.name, ids[run.subject])
        cached = self._held_cache.get(key)
        if cached is not None:
            return cached
        duration = run.duration or 0.0
        start = self.now - duration
        hist = self.snap.history
        points: set[float] = {start}
        earliest = start
        for m in rule.trigger.metrics:
            series = hist.series(m.level, ids[m.level], m.name)
            if series is None or not series[0] or series[0][0] > self.now:
                self._held_cache[key] = 0.0
                return 0.0
            times = series[0]
            earliest = max(earliest, times[0])
            points.update(t for t in times if start < t < self.now)
        ordered = sorted(p for p in points if p >= earliest)
        held_since = self.now
        for t in reversed(ordered):
            views = [SimpleNamespace() for _ in range(3)]
            ok = True
            for m in rule.trigger.metrics:
                value = hist.value_at(m.level, ids[m.level], m.name, t)
                if value is None:
                    ok = False
                    break
                setattr(views[_LEVEL_INDEX[m.level]], m.name, value)
            if not ok or not run.fires_now(*views):
                break
            held_since = t
        result = min(duration, self.now - held_since)
        self._held_cache[key] = result
        return result

    def fires(self, run: _RuleRun, c: ClusterState, h: HostState | None, v: VmState | None,
              record_pending: bool) -> bool:
        """The trigger holds now on the (projected) state and, with ``for D``, has held for D."""
        try:
            if not run.fires_now(c, h, v):
                return False
        except AttributeError:  # a host-level trigger for a VM whose host is unknown
            return False
        if run.duration is None:
            return True
        held = self.held_for(run, c, h, v)
        if held + 1e-9 >= run.duration:
            return True
        if record_pending:
            subj: Any = {"cluster": c, "host": h, "vm": v}[run.subject]
            self.pending(run.rule, run.subject, subj.id, held)
        return False

    # --- candidates ----------------------------------------------------------------------------------------------

    def source_clusters(self, run: _RuleRun) -> list[ClusterState]:
        rule = run.rule
        out = []
        for cid in rule.scope.clusters or self.cluster_ids:
            c = self.clusters.get(cid)
            if c is None:
                self.skip(rule, "cluster", cid, P.UNKNOWN_CLUSTER, "scope names a cluster the snapshot lacks")
            else:
                out.append(c)
        return sorted(out, key=lambda c: (-round(run.load(c), _ROUND), c.id))

    def firing_vms(self, run: _RuleRun, c: ClusterState) -> list[_Walk]:
        """VMs of ``c`` the rule fires for, in walk order (largest contribution to the objective first), as
        ``(-size, tie, id, vm)`` rows: sorted rows let the walk bisect by size and locate a VM by its key."""
        rule = run.rule
        if run.subject == "cluster":
            if not self.fires(run, c, None, None, True):
                return []
            rows = self.ordered(c.id, rule.objective)
            if rule.scope.projects:
                rows = [r for r in rows if r[3].project_id in rule.scope.projects]
            return rows
        if run.gate is not None and not run.gate(c, None, None):
            return []
        if run.subject == "host":
            hot = {h.id for h in self.hosts_of[c.id] if self.fires(run, c, h, None, True)}
            if not hot:
                return []
            vms = [v for v in self.vms_of[c.id] if v.host_id in hot]
        else:
            vms = [v for _h, v in self.firing_pairs(run, c)]
        if rule.scope.projects:
            vms = [v for v in vms if v.project_id in rule.scope.projects]
        return _walk_order(vms, rule.objective)

    def firing_pairs(self, run: _RuleRun, c: ClusterState) -> list[tuple[HostState | None, VmState]]:
        """(host, VM) of ``c`` a VM-level trigger fires for. The hot loop of VM triggers: the compiled closure
        runs first on every VM, the duration check (history) only on the few that pass."""
        hosts = self.hosts
        f = run.fires_now
        now: list[tuple[HostState | None, VmState]]
        pred = run.vm_pred
        if pred is not None and (run.gate is None or run.gate(c, None, None)):
            now = [(None, v) for v in self.vms_of[c.id] if pred(v)]
        elif pred is not None:
            now = []
        elif run.reads_host:
            now = [(h, v) for h, v in ((hosts.get(v.host_id), v) for v in self.vms_of[c.id]) if h is not None
                   and f(c, h, v)]
        else:
            now = [(None, v) for v in self.vms_of[c.id] if f(c, None, v)]
        if run.duration is None:
            return now
        return [(h, v) for h, v in now if self.fires(run, c, h if h is not None else hosts.get(v.host_id), v, True)]

    def eligible(self, rule: Rule, v: VmState) -> bool:
        """Exclusions, status, in-flight and cooldown; each refusal is recorded as a skip."""
        if rule.exclude_tags and not v.tags.isdisjoint(rule.exclude_tags):
            tags = sorted(v.tags.intersection(rule.exclude_tags))
            self.skip(rule, "vm", v.id, P.EXCLUDED_TAG, f"tagged {', '.join(tags)}")
            return False
        if v.project_id in rule.exclude_projects:
            self.skip(rule, "vm", v.id, P.EXCLUDED_PROJECT, f"project {v.project_id} is excluded")
            return False
        allowed = ("ACTIVE",) if rule.action == "live_migrate" else ("ACTIVE", "SHUTOFF")
        if v.status.upper() not in allowed:
            self.skip(rule, "vm", v.id, P.STATUS, f"status {v.status}; {rule.action} needs {' or '.join(allowed)}")
            return False
        if v.id in self.in_flight_vms:
            self.skip(rule, "vm", v.id, P.IN_FLIGHT, "a migration of this VM is already running")
            return False
        last = self.snap.last_moves.get(v.id)
        if last is not None and self.now - last.t < rule.cooldown_s:
            left = rule.cooldown_s - (self.now - last.t)
            self.skip(rule, "vm", v.id, P.COOLDOWN,
                      f"moved {self.now - last.t:.0f}s ago; cooldown {rule.cooldown_s:.0f}s ({left:.0f}s left)")
            return False
        return True

    # --- targets -------------------------------------------------------------------------------------------------

    def target_ids(self, rule: Rule) -> Sequence[str]:
        assert rule.target is not None
        return rule.target.clusters if rule.target.kind == "clusters" else self.cluster_ids

    def score_targets(self, run: _RuleRun, v: VmState, src: ClusterState, targets: Sequence[str],
                      ) -> tuple[list[tuple[str, str, float | None, float | None, float | None]],
                                 tuple[ClusterState, HostState | None] | None]:
        """Score every target for ``v``: rows (cluster, reason, score, load after, improvement) and the chosen
        (cluster, host) or None. Cheap tuples: the plan only keeps them for moves."""
        rule = run.rule
        src_before = run.load(src)
        by_free_ram = rule.target is not None and rule.target.kind == "most_free_ram"
        x = run.size(v)
        rows: list[tuple[str, str, float | None, float | None, float | None]] = []
        ranked: list[tuple[tuple[float, str], ClusterState, float, float, float]] = []
        for tid in targets:
            if tid == src.id:
                continue
            t = self.clusters.get(tid)
            if t is None:
                rows.append((tid, P.UNKNOWN_CLUSTER, None, None, None))
                continue
            cap = run.capacity(t)
            after = run.load(t) + (100.0 * x / cap if cap else math.inf)
            improvement = round(src_before - after, _ROUND)
            score = t.free_ram_mb - v.ram_mb if by_free_ram else after
            if self.busy[tid] >= rule.caps.per_cluster:
                rows.append((tid, P.CAPPED, score, after, improvement))
            elif t.free_vcpus < v.vcpus or t.free_ram_mb < v.ram_mb:
                rows.append((tid, P.NO_CAPACITY, score, after, improvement))
            elif improvement <= 0 or improvement < rule.margin_pct:
                rows.append((tid, P.NO_IMPROVEMENT, score, after, improvement))
            else:
                rank = (-round(score, _ROUND), tid) if by_free_ram else (round(score, _ROUND), tid)
                ranked.append((rank, t, score, after, improvement))
        ranked.sort(key=lambda r: r[0])
        chosen: tuple[ClusterState, HostState | None] | None = None
        for _rank, t, score, after, improvement in ranked:
            if chosen is not None:
                rows.append((t.id, "eligible", score, after, improvement))
                continue
            host = self.fit_host(run, v, t)
            if host is False:
                rows.append((t.id, "no_host", score, after, improvement))
                continue
            chosen = (t, host if isinstance(host, HostState) else None)
            rows.append((t.id, "chosen", score, after, improvement))
        return rows, chosen

    def fit_host(self, run: _RuleRun, v: VmState, t: ClusterState) -> HostState | bool | None:
        """The enabled host with room for ``v`` and the lowest projected load (ties: id); None if the cluster
        reports no hosts (its cloud places the VM); False if it has hosts but none fits."""
        hosts = self.hosts_of.get(t.id) or []
        if not hosts:
            return None
        x = run.size(v)
        best: HostState | None = None
        best_key: tuple[float, str] = (math.inf, "")
        for h in hosts:
            if not h.enabled or h.free_vcpus < v.vcpus or h.free_ram_mb < v.ram_mb:
                continue
            cap = run.capacity(h)
            k = (round(run.load(h) + (100.0 * x / cap if cap else math.inf), _ROUND), h.id)
            if k < best_key:
                best, best_key = h, k
        return best if best is not None else False

    def size_bound(self, run: _RuleRun, src: ClusterState, open_targets: Sequence[ClusterState]) -> float:
        """The largest VM size (cores or MB) that can still gain the margin on some open target.

        A VM of size x gains ``load(src) - load(t) - 100*x/capacity(t)`` on t, so it can pass the margin only if
        ``x <= (load(src) - load(t) - margin) * capacity(t) / 100`` for some t. Moves only lower the source and
        raise targets, so the bound never grows during a walk: VMs above it are skipped in one step.
        """
        margin = run.rule.margin_pct
        bound = -math.inf
        src_load = run.load(src)
        for t in open_targets:
            gap = src_load - run.load(t) - margin
            bound = max(bound, gap * run.capacity(t) / 100.0 + 1e-6)
        return bound

    # --- projection ----------------------------------------------------------------------------------------------

    def apply(self, v: VmState, src: ClusterState, dst: ClusterState, dst_host: HostState | None,
              ) -> tuple[P.SideEffect, P.SideEffect]:
        src_host = self.hosts.get(v.host_id) if v.host_id else None
        before_src, before_dst = _figures(src), _figures(dst)
        for obj, sign in ((src, -1), (src_host, -1), (dst, 1), (dst_host, 1)):
            if obj is None:
                continue
            obj.vcpus_used += sign * v.vcpus
            obj.ram_mb_used += sign * v.ram_mb
            obj.vm_count += sign
            if obj.cpu_capacity:
                obj.cpu_pct += sign * 100.0 * v.cpu_load / obj.cpu_capacity
            if obj.ram_mb_total:
                obj.mem_pct += sign * 100.0 * v.ram_mb / obj.ram_mb_total
        self.moved.add(v.id)
        self.moved_from[src.id].append(v)
        self.busy[src.id] += 1
        self.busy[dst.id] += 1
        self.busy_total += 1
        after_src, after_dst = _figures(src), _figures(dst)
        return (_effect(src.id, v.host_id, before_src, after_src),
                _effect(dst.id, dst_host.id if dst_host else "", before_dst, after_dst))

    # --- rules ---------------------------------------------------------------------------------------------------

    def run_notify(self, run: _RuleRun) -> None:
        rule = run.rule
        for c in sorted(self.clusters.values(), key=lambda c: c.id):
            if rule.scope.clusters and c.id not in rule.scope.clusters:
                continue
            if run.subject == "cluster":
                items: Iterable[tuple[HostState | None, VmState | None]] = [(None, None)]
            elif run.gate is not None and not run.gate(c, None, None):
                continue
            elif run.subject == "host":
                items = [(h, None) for h in self.hosts_of[c.id]]
            else:
                items = sorted(((h, v) for h, v in self.firing_pairs(run, c)
                                if (not rule.scope.projects or v.project_id in rule.scope.projects)
                                and v.project_id not in rule.exclude_projects
                                and v.tags.isdisjoint(rule.exclude_tags)),
                               key=lambda hv: hv[1].id if hv[1] is not None else "")
            for h, v in items:
                if run.subject != "vm" and not self.fires(run, c, h, v, True):
                    continue
                subj: Any = {"cluster": c, "host": h, "vm": v}[run.subject]
                values = _values(rule, c, h, v)
                shown = ", ".join(f"{k}={val:g}" for k, val in values.items())
                held = f" for {rule.trigger.duration_s:g}s" if rule.trigger.duration_s else ""
                self.plan.notifications.append(P.Notification(
                    rule.name, run.subject, subj.id, c.id, rule.trigger.text, values,
                    f"{rule.name}: '{rule.trigger.text}' holds{held} on {run.subject} {subj.id} ({shown})"))

    def run_moves(self, run: _RuleRun) -> None:
        rule = run.rule
        targets = self.target_ids(rule)
        for src in self.source_clusters(run):
            firing = self.firing_vms(run, src)
            if firing:
                self.walk(run, src, firing, targets)

    def walk(self, run: _RuleRun, src: ClusterState, firing: list[_Walk], targets: Sequence[str]) -> None:
        """Walk the source's firing VMs in order until the trigger stops, a cap is reached or nothing can gain.

        Only VMs the walk reaches are examined one by one (exclusions, cooldown, targets); the rest of a capped
        source and the VMs too large to gain the margin anywhere are each summarised in one skip entry.
        """
        rule = run.rule
        caps = rule.caps
        too_large = 0
        moved_here = False
        i, n = 0, len(firing)
        hosts = self.hosts

        def still_firing(lo: int, hi: int) -> int:
            """How many of ``firing[lo:hi]`` are still candidates (not moved, trigger still true)."""
            if not moved_here or run.subject == "cluster":  # a cluster trigger is re-checked by the loop
                # O(moved): locate each VM already moved from here by its sort key instead of scanning
                gone = 0
                for m in self.moved_from[src.id]:
                    row = _walk_row(m, rule.objective)
                    p = bisect.bisect_left(firing, row[:3])
                    gone += lo <= p < hi and firing[p][3] is m
                return hi - lo - gone
            moved = self.moved
            rows = firing[lo:hi]
            if run.subject == "host":
                hot: dict[str, bool] = {}
                for r in rows:
                    hid = r[3].host_id
                    if hid not in hot:
                        hot[hid] = self.fires(run, src, hosts.get(hid), None, False)
                return sum(1 for r in rows if r[3].id not in moved and hot[r[3].host_id])
            return sum(1 for r in rows
                       if r[3].id not in moved and self.fires(run, src, hosts.get(r[3].host_id), r[3], False))

        while i < n:
            if moved_here and run.subject == "cluster" and not self.fires(run, src, None, None, False):
                break  # the source cooled down: nothing more to do here
            if self.busy[src.id] >= caps.per_cluster or self.busy_total >= caps.per_federation:
                which = (f"per-cluster cap {caps.per_cluster}" if self.busy[src.id] >= caps.per_cluster
                         else f"federation cap {caps.per_federation}")
                rest = still_firing(i, n)
                if rest:
                    self.skip(rule, "cluster", src.id, P.CAPPED, f"{which} reached; {rest} candidate(s) wait", rest)
                break
            known = [self.clusters[t] for t in targets if t != src.id and t in self.clusters]
            open_targets = [t for t in known if self.busy[t.id] < caps.per_cluster]
            if not open_targets:
                rest = still_firing(i, n)
                if rest and known:
                    self.skip(rule, "cluster", src.id, P.CAPPED,
                              f"every target is at its per-cluster cap; {rest} candidate(s) wait", rest)
                elif rest:
                    self.skip(rule, "cluster", src.id, P.NO_TARGET,
                              f"no known target other than {src.id}; {rest} candidate(s)", rest)
                break
            bound = self.size_bound(run, src, open_targets)
            j = bisect.bisect_left(firing, (-bound,), lo=i)
            if j > i:
                too_large += still_firing(i, j)
                i = j
                continue
            v = firing[i][3]
            i += 1
            if v.id in self.moved:
                continue
            if moved_here and run.subject != "cluster" and not self.fires(run, src, hosts.get(v.host_id), v, False):
                continue
            if not self.eligible(rule, v):
                continue
            if self.consider(run, v, src, targets):
                moved_here = True
        if too_large:
            unit = "cores" if rule.objective == "cpu" else "MB"
            self.skip(rule, "cluster", src.id, P.NO_IMPROVEMENT,
                      f"{too_large} candidate(s) too large ({unit}) to gain the margin {rule.margin_pct:g} pp "
                      f"on any target", too_large)

    def consider(self, run: _RuleRun, v: VmState, src: ClusterState, targets: Sequence[str]) -> bool:
        rule = run.rule
        host = self.hosts.get(v.host_id) if v.host_id else None
        values = _values(rule, src, host, v)
        rows, chosen = self.score_targets(run, v, src, targets)
        if chosen is None:
            reasons = {r[1] for r in rows}
            if not rows:
                reason, detail = P.NO_TARGET, "no target cluster other than the source"
            elif reasons == {P.CAPPED}:
                reason, detail = P.CAPPED, "every target is at its per-cluster cap"
            elif P.NO_IMPROVEMENT in reasons:
                best = max((r[4] for r in rows if r[4] is not None), default=0.0)
                reason, detail = P.NO_IMPROVEMENT, (f"best improvement {best:.2f} pp is below the margin "
                                                    f"{rule.margin_pct:g} pp")
            else:
                reason, detail = P.NO_CAPACITY, "no target has the free vCPUs/RAM and a host that fits"
            self.skip(rule, "vm", v.id, reason, detail)
            return False
        dst, dst_host = chosen
        scores = sorted((P.TargetScore(cid, reason in ("chosen", "eligible"), reason, _r3(score), _r3(after), _r3(imp))
                         for cid, reason, score, after, imp in rows),
                        key=lambda s: (s.reason != "chosen", not s.eligible, s.cluster))
        top = scores[0]
        src_eff, dst_eff = self.apply(v, src, dst, dst_host)
        shown = ", ".join(f"{k}={val:g}" for k, val in values.items())
        held = f" held {rule.trigger.duration_s:g}s" if rule.trigger.duration_s else ""
        assert rule.target is not None
        src_before = (src_eff.cpu_pct if rule.objective == "cpu" else src_eff.mem_pct)[0]
        why = (f"{rule.name}: '{rule.trigger.text}'{held} ({shown}); {dst.id} is the best {rule.target.kind} "
               f"target; improvement = {src.id} {rule.objective} before {src_before:.1f}% - {dst.id} "
               f"{rule.objective} after {top.load_after:.1f}% = {top.improvement:.1f} pp "
               f">= margin {rule.margin_pct:g}")
        self.plan.moves.append(P.Move(
            rule=rule.name, action=rule.action, mode=rule.mode, priority=rule.priority, vm_id=v.id,
            project_id=v.project_id, source_cluster=src.id, source_host=v.host_id, target_cluster=dst.id,
            target_host=dst_host.id if dst_host else "", trigger=rule.trigger.text, trigger_values=values,
            objective=rule.objective, improvement=next(r[4] for r in rows if r[1] == "chosen") or 0.0,
            candidates=tuple(scores),
            source_effect=src_eff, target_effect=dst_eff, why=why))
        return True


_LEVEL_INDEX = {"cluster": 0, "host": 1, "vm": 2}


def _r3(x: float | None) -> float | None:
    """Plan figures are shown to 3 decimals: float noise from summation order never shows (or differs)."""
    return None if x is None else round(x, 3)


def _load_key(objective: str) -> Callable[[Any], float]:
    return (lambda x: x.cpu_pct) if objective == "cpu" else (lambda x: x.mem_pct)


def _size_fn(objective: str) -> Callable[[VmState], float]:
    """What a VM weighs in the objective: cores it keeps busy (cpu) or its RAM in MB (mem)."""
    return (lambda v: v.cpu_load) if objective == "cpu" else (lambda v: float(v.ram_mb))


def _capacity_fn(objective: str) -> Callable[[Any], float]:
    """The denominator of a cluster's/host's objective load: pCPUs (cpu) or total RAM (mem)."""
    return (lambda x: x.cpu_capacity) if objective == "cpu" else (lambda x: x.ram_mb_total)


_Walk = tuple[float, float, str, VmState]


def _walk_row(v: VmState, objective: str) -> _Walk:
    """A VM's place in the walk: ``(-size, tie-break, id, vm)`` — cpu: cores busy, then smaller RAM first;
    mem: RAM, then more cores busy first; then id. Ids are unique, so the VM itself is never compared."""
    if objective == "cpu":
        return (-(v.vcpus * v.cpu_pct / 100.0), v.ram_mb, v.id, v)
    return (-float(v.ram_mb), -(v.vcpus * v.cpu_pct / 100.0), v.id, v)


def _walk_order(vms: Iterable[VmState], objective: str) -> list[_Walk]:
    """Rows sorted in walk order. Built as plain tuples (no key function): the sort of a 100,000-VM cloud is
    the largest single cost of an evaluation."""
    rows: list[_Walk]
    if objective == "cpu":
        rows = [(-(v.vcpus * v.cpu_pct / 100.0), v.ram_mb, v.id, v) for v in vms]
    else:
        rows = [(-float(v.ram_mb), -(v.vcpus * v.cpu_pct / 100.0), v.id, v) for v in vms]
    rows.sort()
    return rows


def _values(rule: Rule, c: ClusterState, h: HostState | None, v: VmState | None) -> dict[str, float]:
    objs = {"cluster": c, "host": h, "vm": v}
    out: dict[str, float] = {}
    for m in rule.trigger.metrics:
        obj = objs[m.level]
        if obj is not None:
            out[m.key] = round(float(getattr(obj, m.name)), 3)
    return out


def _figures(x: ClusterState) -> tuple[float, float, float, float, int]:
    return (x.cpu_pct, x.mem_pct, x.free_vcpus, x.free_ram_mb, x.vm_count)


def _effect(cid: str, hid: str, before: tuple[float, float, float, float, int],
            after: tuple[float, float, float, float, int]) -> P.SideEffect:
    r = lambda a, b: (round(a, 3), round(b, 3))  # noqa: E731
    return P.SideEffect(cid, hid, r(before[0], after[0]), r(before[1], after[1]), r(before[2], after[2]),
                        r(before[3], after[3]), (before[4], after[4]))


def evaluate(snapshot: Snapshot, rules: Sequence[Rule], now: float, *,
             detail_limit: int = DEFAULT_DETAIL_LIMIT) -> P.Plan:
    """Evaluate ``rules`` over ``snapshot`` at time ``now`` (seconds, same clock as history and last moves).

    Deterministic: the same inputs give the same plan (rule order, source order, VM order and target ties are
    all fixed, see the module docstring). ``detail_limit`` bounds the listed skips/pending (counts stay exact).
    """
    ev = _Evaluation(snapshot, now, detail_limit)
    for rule in sorted(rules, key=lambda r: (-r.priority, r.name)):
        run = _RuleRun(rule)
        first_pending = len(ev.plan.pending)
        if rule.moves:
            ev.run_moves(run)
        else:
            ev.run_notify(run)
        # pending entries in a fixed order (cluster, host or VM id), whatever order the VMs were listed in
        ev.plan.pending[first_pending:] = sorted(ev.plan.pending[first_pending:], key=lambda p: p.subject_id)
    log.debug("scheduler.evaluated", rules=len(rules), vms=len(snapshot.vms), moves=len(ev.plan.moves),
              notifications=len(ev.plan.notifications), skipped=sum(ev.plan.skipped_counts.values()))
    return ev.plan
