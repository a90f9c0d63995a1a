"""``make demo``: start an embedded-default agent and move two VMs through the REST API.

What it shows, in order: the federation (three sim clouds), a live migration and
a cold migration printed phase by phase as they happen (with durations), the
final placement, and the same commands to run by hand with ``openstack cnf``.
Exit code 0 only if both migrations complete and the VMs are where they should be.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False


def wait_healthy(client: httpx.Client, proc: subprocess.Popen[bytes], log_path: str, deadline_s: float = 60) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            sys.exit(f"demo: the agent exited with code {proc.returncode}; its log: {log_path}")
        try:
            if client.get("/healthz").status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    sys.exit(f"demo: the agent did not become healthy in {deadline_s:.0f} s; its log: {log_path}")


def cluster_names(client: httpx.Client) -> dict[str, str]:
    return {c["id"]: c["name"] for c in client.get("/v1/clusters").json()["clusters"]}


def follow(client: httpx.Client, location: str, names: dict[str, str], timeout_s: float = 120) -> dict[str, Any]:
    """Poll the migration and print each phase once, when it finishes (the seed's phase list)."""
    printed: set[str] = set()
    end = time.monotonic() + timeout_s
    m: dict[str, Any] = {}
    while time.monotonic() < end:
        m = client.get(location).json()
        for ph in m["phases"]:
            if ph["phase"] in printed or ph["status"] not in ("done", "failed", "undone"):
                continue
            printed.add(ph["phase"])
            dur = f"{ph['duration_ms'] / 1000:.2f} s" if ph["duration_ms"] is not None else "-"
            extra = ""
            if ph["phase"] == "MEMORY" and m.get("progress"):
                p = m["progress"]
                extra = f"  ({p['passes']} passes, {p['transferred_bytes'] // 2**20} MiB copied)"
            if ph["phase"] == "CUTOVER" and m["downtime"]["guest_pause_ms"] is not None:
                extra = f"  (guest paused {m['downtime']['guest_pause_ms']:.0f} ms)"
            print(f"    {ph['phase']:<10} {ph['status']:<7} {dur:>8}{extra}", flush=True)
        if m["state"] in ("completed", "failed", "aborted", "needs_operator"):
            return m
        time.sleep(0.1)
    sys.exit(f"demo: migration {location} did not finish in {timeout_s:.0f} s (state {m.get('state')})")


def migrate(client: httpx.Client, kind: str, vm: dict[str, Any], dest: str, names: dict[str, str]) -> dict[str, Any]:
    verb = "live-migrate" if kind == "live" else "migrate"
    print(f"\n==> {kind} migration of {vm['name']} ({vm['ip']}) from {names[vm['cluster_id']]} to {names[dest]}")
    dry = client.post(f"/v1/vms/{vm['id']}/{verb}", json={"dest_cluster_id": dest, "dry_run": True}).json()
    failed = [c for c in dry["checks"] if not c["passed"]]
    print(f"    preflight (dry run): {len(dry['checks'])} checks, {len(failed)} failed")
    r = client.post(f"/v1/vms/{vm['id']}/{verb}", json={"dest_cluster_id": dest},
                    headers={"Idempotency-Key": f"demo-{kind}-{vm['id']}"})
    if r.status_code != 202:
        sys.exit(f"demo: {verb} refused: {r.status_code} {r.json().get('detail')}")
    m = follow(client, r.headers["Location"], names)
    d = m["downtime"]
    print(f"    => {m['state']} in {m['duration_s']:.2f} s", end="")
    if kind == "live":
        print(f"; guest pause {d['guest_pause_ms']} ms, network blackout {d['network_blackout_ms']} ms", end="")
    print(f"  (migration {m['id']})")
    if m["state"] != "completed":
        sys.exit(f"demo: migration ended {m['state']}: {m.get('error')}")
    return m


def policy_step(client: httpx.Client, names: dict[str, str], hot: str) -> dict[str, Any] | None:
    """Raise load in one sim cloud, let the policy propose a move, approve it, and follow the migration."""

    def named(text: str) -> str:
        for cid, name in names.items():
            text = text.replace(cid, name)
        return text

    rule = {"trigger": "cluster.cpu_pct > 60", "action": "live_migrate", "target": "least_loaded", "mode": "plan",
            "caps": {"per_cluster": 1, "per_federation": 1}}
    r = client.put("/v1/policies/rebalance-cpu", json={"rule": rule})
    if r.status_code != 200:
        sys.exit(f"demo: policy set refused: {r.status_code} {r.json().get('detail')}")
    print(f"\n==> policy rebalance-cpu: {json.dumps(rule)}")
    load = client.post(f"/v1/sim/clusters/{hot}/load", json={"cpu_pct_bias": 60}).json()
    print(f"    load raised in {names[hot]} (sim): cluster CPU now {load['cpu_pct']:.0f}%")
    plan = client.post("/v1/policies/rebalance-cpu/evaluate").json()
    if not plan["moves"]:
        sys.exit(f"demo: the policy proposed nothing:\n{named(plan['text'])}")
    print("    plan (openstack cnf policy evaluate rebalance-cpu):")
    for line in named(plan["text"]).splitlines():
        print(f"      {line}")
    approved = client.post("/v1/policies/rebalance-cpu/approve").json()["migrations"]
    mig = approved[0]
    print(f"    approved: live-migrating {mig['vm_id']} to {names[mig['target_cluster']]}")
    m = follow(client, f"/v1/migrations/{mig['migration_id']}", names)
    print(f"    => {m['state']} in {m['duration_s']:.2f} s; guest pause {m['downtime']['guest_pause_ms']} ms")
    client.post(f"/v1/sim/clusters/{hot}/load", json={"cpu_pct_bias": 0})
    return m if m["state"] == "completed" else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--port", type=int, default=int(os.environ.get("CNF_DEMO_PORT", "8080")))
    args = ap.parse_args()
    port = args.port if port_free(args.port) else free_port()
    if port != args.port:
        print(f"(port {args.port} is busy: using {port})")
    log = tempfile.NamedTemporaryFile(prefix="cnf-demo-agent-", suffix=".log", delete=False)
    env = {**os.environ, "CNF_API_PORT": str(port)}
    print(f"==> starting cnf-agent (embedded default: SQLite, in-process tasks, single-node election, three sim "
          f"clouds) on :{port}; log {log.name}")
    proc = subprocess.Popen([sys.executable, "-m", "cnf.main", "--port", str(port)], stdout=log, stderr=log, env=env)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            wait_healthy(client, proc, log.name)
            names = cluster_names(client)
            print("==> federation:")
            for c in client.get("/v1/clusters").json()["clusters"]:
                print(f"    {c['name']:<12} {c['id']}  AS {c['bgp_as']}  {c['vm_count']} VMs")
            master = client.get("/v1/master").json()
            print(f"    master: {names.get(master['cluster_id'], master['cluster_id'])} (epoch {master['epoch']})")
            ids = list(names)
            vms = client.get("/v1/vms", params={"cluster_id": ids[0], "status": "ACTIVE"}).json()["vms"]
            movable = [v for v in vms if "cnf:pinned" not in v["tags"]]
            live_vm, cold_vm = movable[0], movable[1]
            migrate(client, "live", live_vm, ids[1], names)
            migrate(client, "cold", cold_vm, ids[2], names)
            print("\n==> final placement:")
            ok = True
            for vm, dest in ((live_vm, ids[1]), (cold_vm, ids[2])):
                now = client.get(f"/v1/vms/{vm['id']}").json()
                where = names.get(now["cluster_id"], now["cluster_id"])
                print(f"    {vm['name']:<8} {vm['ip']:<12} now in {where} on {now['host']} ({now['status']})")
                ok = ok and now["cluster_id"] == dest
            moved = policy_step(client, names, ids[0])
            ok = ok and moved is not None
            print("\n==> do it again by hand (python-openstackclient plugin, no Keystone on the embedded default):")
            base = f"openstack --os-auth-type none --os-endpoint http://127.0.0.1:{port}"
            print(f"    {base} cnf vm list")
            print(f"    {base} cnf vm live-migrate {live_vm['name']} --to {names[ids[2]]} --wait")
            print(f"    {base} cnf migration list")
            print("    (with `make demo` the agent stops at the end; run `.venv/bin/cnf-agent` to keep one running)")
            return 0 if ok else 1
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


if __name__ == "__main__":
    sys.exit(main())
