"""Three agents as processes: any-node API, migrations executed by the owning agents, failover, fencing."""

from __future__ import annotations

import signal
import time
from typing import Any

import httpx
import pytest
from federation_harness import Federation, register_all

pytestmark = [pytest.mark.functional, pytest.mark.timeout(300)]


def migrate(fed: Federation, via_url: str, verb: str, vm: dict[str, Any], dest: str) -> str:
    r = httpx.post(f"{via_url}/v1/vms/{vm['id']}/{verb}", json={"dest_cluster_id": dest}, timeout=30)
    assert r.status_code == 202, r.text
    return str(r.headers["location"])


def wait_state(fed: Federation, location: str, states: tuple[str, ...], timeout_s: float = 90) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        for a in fed.agents:
            if not a.alive():
                continue
            try:
                r = httpx.get(f"{a.url}{location}", timeout=5)
            except httpx.HTTPError:
                continue
            if r.status_code == 200 and r.json()["state"] in states:
                return dict(r.json())
        return None

    return dict(fed.wait(done, timeout_s, f"{location} in {states}"))


def peer_calls(agent: Any, caller: str) -> list[str]:
    return [e["operation"] for e in agent.log_events() if e.get("event") == "peer_call" and e.get("caller") == caller]


def test_every_endpoint_through_a_worker_and_migrations_run_by_owning_agents(federation: Federation) -> None:
    fed = federation
    master = fed.master_agent()
    workers = [a for a in fed.agents if a is not master]
    worker = workers[0]
    register_all(fed, via=worker)

    # reads and errors through the worker are the master's answers, marked with Via
    r = httpx.get(f"{worker.url}/v1/clusters", timeout=10)
    assert r.status_code == 200 and len(r.json()["clusters"]) == 3
    assert f"cnf-{worker.cluster_id}" in r.headers["via"]
    bad = httpx.post(f"{worker.url}/v1/vms/ghost/live-migrate", json={"dest_cluster_id": "x"}, timeout=10)
    assert bad.status_code == 404 and bad.headers["content-type"].startswith("application/problem+json")
    invalid = httpx.post(f"{worker.url}/v1/vms/ghost/live-migrate", json={}, timeout=10)
    assert invalid.status_code == 422 and invalid.json()["field"] == "dest_cluster_id"
    assert httpx.get(f"{worker.url}/v1/master", timeout=5).json()["cluster_id"] == master.cluster_id

    # a live and a cold migration between the two workers' clouds, requested through the other worker
    src, dst = workers[0], workers[1]
    vms = httpx.get(f"{master.url}/v1/vms", params={"cluster_id": src.cluster_id}, timeout=10).json()["vms"]
    live = migrate(fed, workers[1].url, "live-migrate", vms[0], dst.cluster_id)
    assert live.startswith("/v1/migrations/")
    m = wait_state(fed, live, ("completed", "failed", "needs_operator"))
    assert m["state"] == "completed", m["error"]
    cold = migrate(fed, workers[0].url, "migrate", vms[1], dst.cluster_id)
    m2 = wait_state(fed, cold, ("completed", "failed", "needs_operator"))
    assert m2["state"] == "completed", m2["error"]

    # every cloud-local step ran in the owning agent, called by the master with its epoch
    src_ops, dst_ops = peer_calls(src, master.cluster_id), peer_calls(dst, master.cluster_id)
    assert {"storage.demote", "hypervisor.start_migration", "bgp.withdraw", "cloud.retire_server",
            "cloud.stop_server"} <= set(src_ops), src_ops
    assert {"storage.promote", "hypervisor.prepare_incoming", "bgp.announce", "cloud.create_receiver",
            "cloud.activate_receiver", "cloud.boot_receiver"} <= set(dst_ops), dst_ops
    moved = httpx.get(f"{worker.url}/v1/vms/{vms[0]['id']}", timeout=10).json()
    assert moved["cluster_id"] == dst.cluster_id


def test_master_killed_mid_migration_new_master_finishes_it(federation: Federation) -> None:
    fed = federation
    master = fed.master_agent()
    register_all(fed, via=master)
    others = [a for a in fed.agents if a is not master]
    src, dst = others
    vms = httpx.get(f"{master.url}/v1/vms", params={"cluster_id": src.cluster_id}, timeout=10).json()["vms"]
    with_slow_sync = fed.state_file  # the sim world is shared: slow the disk sync so the kill lands mid-way
    from cnf.clock import SystemClock
    from cnf.sim.fabric import SimFabric

    loc = migrate(fed, master.url, "live-migrate", vms[0], dst.cluster_id)
    wait_state(fed, loc, ("running",), 30)
    old_epoch = fed.master()["epoch"]  # type: ignore[index]
    t0 = time.monotonic()
    master.kill()
    new = fed.wait(lambda: (m := fed.master()) and m["cluster_id"] != master.cluster_id and m, 30, "a new master")
    failover_s = time.monotonic() - t0
    assert new["epoch"] > old_epoch
    m = wait_state(fed, loc, ("completed", "failed", "needs_operator"), 120)
    assert m["state"] == "completed", m["error"]
    assert m["epoch"] >= new["epoch"]
    world = SimFabric(SystemClock(), state_file=str(with_slow_sync))
    with world.transaction() as w:
        assert w.running_clusters(vms[0]["id"]) == [dst.cluster_id]
        assert w.primary_clusters(vms[0]["image"]) == [dst.cluster_id]
        repeated = {k: v for k, v in w.effects.items() if v > 1}
        assert not repeated, repeated
    # the new master serves writes
    r = httpx.put(f"{fed.by_id(new['cluster_id']).url}/v1/policies/after-failover",
                  json={"rule": {"trigger": "cpu_pct>90", "action": "notify", "target": "least_loaded"}}, timeout=10)
    assert r.status_code == 200, r.text
    assert failover_s < 30


def test_paused_master_is_fenced_and_steps_down(federation: Federation) -> None:
    fed = federation
    master = fed.master_agent()
    register_all(fed, via=master)
    master.signal(signal.SIGSTOP)
    try:
        new = fed.wait(lambda: (m := fed.master()) and m["cluster_id"] != master.cluster_id and m, 30,
                       "a new master while the old one is paused")
    finally:
        master.signal(signal.SIGCONT)
    # the old master wakes up: it must not act as master any more
    fed.wait(lambda: httpx.get(f"{master.url}/healthz", timeout=3).json()["is_master"] is False, 30,
             "the old master to step down")
    r = httpx.put(f"{master.url}/v1/policies/from-old-master",
                  json={"rule": {"trigger": "cpu_pct>90", "action": "notify", "target": "least_loaded"}}, timeout=15)
    assert r.status_code == 200  # proxied to the new master, not written by the old one
    events = master.log_events()
    assert any(e.get("event") == "decision" and "master" in str(e.get("decision", "")) for e in events)
    assert fed.master()["epoch"] == new["epoch"]  # type: ignore[index]


def test_cloud_registered_while_its_agent_is_down_becomes_active_when_it_answers(federation: Federation) -> None:
    fed = federation
    master = fed.master_agent()
    late = next(a for a in fed.agents if a is not master)
    late.kill()
    body = {"id": late.cluster_id, "name": late.name, "auth_url": f"sim://{late.name}",
            "grpc_addr": f"127.0.0.1:{late.grpc_port}", "bgp_as": late.as_number}
    r = httpx.post(f"{master.url}/v1/clusters", json=body, timeout=60)
    assert r.status_code == 201 and r.json()["status"] == "unreachable", r.text
    late.start()
    fed.wait(lambda: httpx.get(f"{master.url}/v1/clusters/{late.cluster_id}", timeout=5).json()["status"] == "active",
             60, "the late cloud to become active once its agent answers")
    register_all(fed, via=master)
    src = next(a for a in fed.agents if a is not late)
    vm = httpx.get(f"{master.url}/v1/vms", params={"cluster_id": src.cluster_id}, timeout=10).json()["vms"][0]
    m = wait_state(fed, migrate(fed, master.url, "live-migrate", vm, late.cluster_id),
                   ("completed", "failed", "needs_operator"))
    assert m["state"] == "completed", m["error"]
