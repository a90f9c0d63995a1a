"""A fake ``CnfClient`` (real API shapes, recorded calls) and a cliff-style fake app for command tests."""

from __future__ import annotations

import argparse
import copy
import io
from types import SimpleNamespace
from typing import Any

from cnf.osc.client import NotFound

C1, C2, C3 = ("11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222",
              "33333333-3333-4333-8333-333333333333")
CLUSTERS = [
    {"id": C1, "name": "openstack-1", "grpc_addr": "127.0.0.1:50051", "auth_url": "sim://openstack-1",
     "region": "RegionOne", "bgp_as": 65001, "status": "active", "vm_count": 4},
    {"id": C2, "name": "openstack-2", "grpc_addr": "127.0.0.1:50052", "auth_url": "sim://openstack-2",
     "region": "RegionOne", "bgp_as": 65002, "status": "active", "vm_count": 4},
    {"id": C3, "name": "openstack-3", "grpc_addr": "127.0.0.1:50053", "auth_url": "sim://openstack-3",
     "region": "RegionOne", "bgp_as": 65003, "status": "active", "vm_count": 4},
]
VM = {"id": "00000001-0000-4000-8000-000000000001", "name": "vm-1-1", "cluster_id": C1, "host": "compute-2.os1",
      "status": "ACTIVE", "flavor": "m1.small", "vcpus": 1, "ram_mb": 2048, "ip": "10.99.1.11",
      "image": "00000001-0000-4000-8000-000000000001_disk", "project_id": "demo", "tags": [], "cpu_pct": 18.9,
      "migration_id": None}
METRICS = {"cluster_id": C1, "name": "openstack-1", "vcpus": 64, "vcpus_used": 8, "free_vcpus": 56,
           "ram_mb": 131072, "ram_mb_used": 16384, "free_ram_mb": 114688, "vm_count": 4, "cpu_pct": 13.52,
           "mem_pct": 12.5, "hosts": [{"name": "compute-1.os1", "vcpus": 32, "vcpus_used": 6, "ram_mb": 65536,
                                       "ram_mb_used": 12288, "cpu_pct": 15.5}]}
PHASES = ["PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP"]


def migration(state: str = "running", phase: str = "DISK", step: str = "disk.sync", done: int = 1,
              percent: float | None = None, error: dict[str, Any] | None = None, mid: str = "m-1") -> dict[str, Any]:
    phases = [{"phase": p, "status": "done" if i < done else ("running" if i == done else "pending"),
               "duration_ms": 1000.0 * (i + 1) if i < done else None} for i, p in enumerate(PHASES)]
    if state == "failed":
        phases[done]["status"] = "failed"
    progress = None if percent is None else {"status": "active", "percent": percent, "transferred_bytes": 2**30,
                                             "remaining_bytes": 2**29, "total_bytes": 2**31, "passes": 0,
                                             "dirty_rate_bps": 1, "expected_downtime_ms": 20.0, "eta_s": 3.2}
    return {"id": mid, "kind": "live", "vm_id": VM["id"], "vm_name": "vm-1-1", "source_cluster_id": C1,
            "dest_cluster_id": C2, "dest_host": "compute-1.os2", "dest_next_hop": "", "state": state,
            "phase": phase, "step": step, "point_of_no_return_passed": False, "abort_requested": False,
            "created_at": 1796039774.5, "updated_at": 1796039775.5, "finished_at": None, "duration_s": 1.0,
            "downtime": {"guest_pause_ms": None, "qemu_downtime_ms": None, "network_blackout_ms": None},
            "progress": progress, "mirror_lag_s": None, "convergence_actions": [], "phases": phases, "steps": [],
            "error": error, "options": {}, "preflight": None, "epoch": 1}


PREFLIGHT = {"dry_run": True, "kind": "live", "vm_id": VM["id"], "source_cluster_id": C1, "dest_cluster_id": C2,
             "passed": False, "checks": [
                 {"name": "source.server", "passed": True, "reason": "status ACTIVE", "severity": "error"},
                 {"name": "storage.mirror_lag", "passed": False, "reason": "lag 40 s", "severity": "warning"},
                 {"name": "destination.host", "passed": False, "reason": "host nope not found", "severity": "error"}]}


class FakeCnfClient:
    """Answers like the REST API; ``calls`` records (method, args) for the tests to check."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = []
        self.migrations: list[dict[str, Any]] = []  # successive show_migration answers
        self.preflight = copy.deepcopy(PREFLIGHT)

    def _rec(self, name: str, *args: Any, **kwargs: Any) -> None:
        self.calls.append((name, args, kwargs))

    def list_clusters(self) -> list[dict[str, Any]]:
        self._rec("list_clusters")
        return copy.deepcopy(CLUSTERS)

    def show_cluster(self, cluster: str) -> dict[str, Any]:
        self._rec("show_cluster", cluster)
        if cluster not in ("openstack-1", C1):
            raise NotFound(f"cluster {cluster!r} not found", status=404, code="not_found")
        return {**CLUSTERS[0], "is_master": True, "bgp_peers": [
            {"address": "127.0.0.2", "remote_as": 65002, "established": True, "prefixes_received": 4}],
            "bgp_sessions_up": 1}

    def cluster_metrics(self, cluster: str) -> dict[str, Any]:
        self._rec("cluster_metrics", cluster)
        return copy.deepcopy(METRICS)

    def register_cluster(self, body: dict[str, Any]) -> dict[str, Any]:
        self._rec("register_cluster", body)
        return {"id": "44444444-4444-4444-8444-444444444444", "name": body["name"], "grpc_addr": body["grpc_addr"],
                "auth_url": body["auth_url"], "region": body.get("region", "RegionOne"), "bgp_as": body["bgp_as"],
                "status": "active", "vm_count": 0}

    def list_vms(self, cluster: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        self._rec("list_vms", cluster=cluster, status=status)
        return [copy.deepcopy(VM), {**VM, "id": "x-2", "name": "vm-x", "cluster_id": "unknown-cluster"}]

    def show_vm(self, vm: str) -> dict[str, Any]:
        self._rec("show_vm", vm)
        if vm not in ("vm-1-1", VM["id"]):
            raise NotFound(f"VM {vm} not found", status=404, code="not_found")
        return copy.deepcopy(VM)

    def migrate_vm(self, vm: str, body: dict[str, Any], *, live: bool) -> dict[str, Any]:
        self._rec("migrate_vm", vm, body, live=live)
        if body.get("dry_run"):
            return copy.deepcopy(self.preflight)
        return migration(state="pending", phase="PREFLIGHT", step="", done=0)

    def list_migrations(self, vm: str | None = None, state: str | None = None) -> list[dict[str, Any]]:
        self._rec("list_migrations", vm=vm, state=state)
        return [migration(state="completed", phase="CLEANUP", step="", done=6)]

    def show_migration(self, migration_id: str) -> dict[str, Any]:
        self._rec("show_migration", migration_id)
        if self.migrations:
            return self.migrations.pop(0) if len(self.migrations) > 1 else copy.deepcopy(self.migrations[0])
        return migration(mid=migration_id)

    def abort_migration(self, migration_id: str) -> dict[str, Any]:
        self._rec("abort_migration", migration_id)
        return {**migration(mid=migration_id), "abort_requested": True}

    def show_master(self) -> dict[str, Any]:
        self._rec("show_master")
        return {"cluster_id": C1, "address": "http://127.0.0.1:8080", "epoch": 3, "since": 1796039762.17,
                "lease_ttl_s": 10.0, "is_this_agent": True, "name": "openstack-1"}

    def elect_master(self, cluster: str) -> dict[str, Any]:
        self._rec("elect_master", cluster)
        return {"requested": C2, "at": 1796039800.0}

    def list_policies(self) -> list[dict[str, Any]]:
        self._rec("list_policies")
        return [{"name": "rebalance-cpu", "enabled": True, "created_at": 1.0, "updated_at": 2.0,
                 "rule": {"trigger": "cpu_pct>80", "action": "live_migrate", "target": "least_loaded",
                          "mode": "plan"}}]

    def show_policy(self, name: str) -> dict[str, Any]:
        self._rec("show_policy", name)
        return self.list_policies()[0]

    def set_policy(self, name: str, rule: dict[str, Any], enabled: bool = True) -> dict[str, Any]:
        self._rec("set_policy", name, rule, enabled=enabled)
        return {"name": name, "rule": rule, "enabled": enabled, "created_at": 1.0, "updated_at": 2.0}

    def delete_policy(self, name: str) -> None:
        self._rec("delete_policy", name)
        if name == "missing":
            raise NotFound("policy 'missing' not found", status=404, code="not_found")

    def evaluate_policy(self, name: str) -> dict[str, Any]:
        self._rec("evaluate_policy", name)
        return {"policy": name, "evaluated_at": 1796039800.0, "moves": [
            {"rule": name, "action": "live_migrate", "mode": "plan", "vm_id": VM["id"], "source_cluster": C1,
             "target_cluster": C2, "why": "cpu_pct 91.0 > 80"}], "notifications": [], "skipped": [],
            "skipped_counts": {}, "pending": [], "truncated": 0,
            "text": f"PLAN live_migrate {VM['id']}: {C1} -> {C2}\n     why: cpu_pct 91.0 > 80"}

    def approve_policy(self, name: str, vm_ids: list[str] | None = None) -> list[dict[str, Any]]:
        self._rec("approve_policy", name, vm_ids)
        return [{"migration_id": "m-9", "vm_id": VM["id"], "rule": name, "action": "live_migrate",
                 "source_cluster": C1, "target_cluster": C2, "why": "cpu_pct 91.0 > 80"}]


def make_command(cls: type, client: FakeCnfClient) -> Any:
    """The command on a fake cliff app whose ``client_manager.cnf`` is ``client``."""
    app = SimpleNamespace(client_manager=SimpleNamespace(cnf=client), stdout=io.StringIO(), stderr=io.StringIO(),
                          stdin=io.StringIO(), options=argparse.Namespace(debug=False))
    return cls(app, None)


def parse(cmd: Any, argv: list[str]) -> argparse.Namespace:
    """``check_parser``: argparse errors become ``SystemExit``, which the tests assert on."""
    return cmd.get_parser("openstack cnf test").parse_args(argv)
