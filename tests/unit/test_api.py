"""REST API v1 against the embedded default: every endpoint, validation naming the field, 404/409, idempotency."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest

from cnf.sim.demo import DEMO_CLUSTERS

C1, C2, C3 = (c[0] for c in DEMO_CLUSTERS)
PROBLEM = "application/problem+json"


async def wait_terminal(api: httpx.AsyncClient, location: str, timeout_s: float = 30) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        m = (await api.get(location)).json()
        if m["state"] in ("completed", "failed", "aborted", "needs_operator"):
            return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"{location} not terminal after {timeout_s} s: {m['state']} {m['step']}")


async def first_vm(api: httpx.AsyncClient, cluster: str = C1, n: int = 0) -> dict[str, Any]:
    vms = (await api.get("/v1/vms", params={"cluster_id": cluster})).json()["vms"]
    return [v for v in vms if "cnf:pinned" not in v["tags"]][n]


def assert_problem(r: httpx.Response, status: int, field: str | None = None) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["status"] == status and body["code"] and body["detail"]
    if field is not None:
        assert body["field"] == field, body
    return body


async def test_clusters_list_show_metrics(api: httpx.AsyncClient) -> None:
    clusters = (await api.get("/v1/clusters")).json()["clusters"]
    assert [c["name"] for c in clusters] == ["openstack-1", "openstack-2", "openstack-3"]
    assert all(c["vm_count"] == 4 for c in clusters)
    show = (await api.get(f"/v1/clusters/{C2}")).json()
    assert show["name"] == "openstack-2" and show["bgp_sessions_up"] == 1
    by_name = (await api.get("/v1/clusters/openstack-2")).json()
    assert by_name["id"] == C2
    m = (await api.get(f"/v1/clusters/{C1}/metrics")).json()
    assert m["vm_count"] == 4 and m["free_vcpus"] == m["vcpus"] - m["vcpus_used"] and len(m["hosts"]) == 2
    assert_problem(await api.get("/v1/clusters/nope"), 404)
    assert_problem(await api.get("/v1/clusters/nope/metrics"), 404)


async def test_register_cluster_validates_and_adds_a_sim_cloud(api: httpx.AsyncClient) -> None:
    body = {"name": "openstack-4", "auth_url": "sim://openstack-4", "grpc_addr": "os4-ctrl:50051", "bgp_as": 65004}
    r = await api.post("/v1/clusters", json=body)
    assert r.status_code == 201, r.text
    assert r.headers["location"] == f"/v1/clusters/{r.json()['id']}"
    assert "credentials" not in r.json()
    assert_problem(await api.post("/v1/clusters", json=body), 409, "name")
    assert_problem(await api.post("/v1/clusters", json={**body, "name": "x", "bgp_as": 0}), 422, "bgp_as")
    assert_problem(await api.post("/v1/clusters", json={**body, "name": "y", "grpc_addr": "nohost"}), 422,
                   "grpc_addr")
    assert_problem(await api.post("/v1/clusters", json={**body, "name": "z", "auth_url": "ftp://x"}), 422, "auth_url")
    assert_problem(await api.post("/v1/clusters", json={**body, "name": "bad name"}), 422, "name")
    assert_problem(await api.post("/v1/clusters", json={**body, "name": "w", "colour": 1}), 422, "colour")
    names = [c["name"] for c in (await api.get("/v1/clusters")).json()["clusters"]]
    assert "openstack-4" in names


async def test_vms_list_filters_and_show(api: httpx.AsyncClient) -> None:
    all_vms = (await api.get("/v1/vms")).json()["vms"]
    assert len(all_vms) == 12
    c1 = (await api.get("/v1/vms", params={"cluster_id": "openstack-1"})).json()["vms"]
    assert len(c1) == 4 and {v["cluster_id"] for v in c1} == {C1}
    active = (await api.get("/v1/vms", params={"status": "active"})).json()["vms"]
    assert active and all(v["status"] == "ACTIVE" for v in active)
    assert_problem(await api.get("/v1/vms", params={"status": "SLEEPING"}), 422, "status")
    vm = c1[0]
    assert (await api.get(f"/v1/vms/{vm['id']}")).json()["ip"] == vm["ip"]
    assert (await api.get(f"/v1/vms/{vm['name']}")).json()["id"] == vm["id"]
    assert_problem(await api.get("/v1/vms/unknown-vm"), 404)


@pytest.mark.parametrize("verb,phases", [("live-migrate", 6), ("migrate", 5)])
async def test_migrate_end_to_end(api: httpx.AsyncClient, verb: str, phases: int) -> None:
    vm = await first_vm(api)
    r = await api.post(f"/v1/vms/{vm['id']}/{verb}", json={"dest_cluster_id": "openstack-2",
                                                          "dest_next_hop": "192.0.2.77"})
    assert r.status_code == 202, r.text
    loc = r.headers["location"]
    assert loc == f"/v1/migrations/{r.json()['id']}"
    m = await wait_terminal(api, loc)
    assert m["state"] == "completed", m["error"]
    assert len(m["phases"]) == phases and all(p["status"] == "done" for p in m["phases"])
    assert m["events"][0]["kind"] == "requested" and m["events"][-1]["kind"] == "completed"
    assert all(s["duration_ms"] is not None for s in m["steps"])
    moved = (await api.get(f"/v1/vms/{vm['id']}")).json()
    assert moved["cluster_id"] == C2 and moved["migration_id"] is None
    listed = (await api.get("/v1/migrations", params={"vm_id": vm["id"]})).json()["migrations"]
    assert [x["id"] for x in listed] == [m["id"]]
    assert (await api.get("/v1/migrations", params={"state": "completed"})).json()["migrations"]
    if verb == "live-migrate":
        assert m["downtime"]["qemu_downtime_ms"] > 0


async def test_migrate_validation_names_the_field(api: httpx.AsyncClient) -> None:
    vm = await first_vm(api)
    url = f"/v1/vms/{vm['id']}/live-migrate"
    assert_problem(await api.post(url, json={}), 422, "dest_cluster_id")
    assert_problem(await api.post(url, json={"dest_cluster_id": C2, "dest_next_hop": "10.0.0.300"}), 422,
                   "dest_next_hop")
    assert_problem(await api.post(url, json={"dest_cluster_id": C2, "options": {"downtime_limit_ms": 1}}), 422,
                   "options.downtime_limit_ms")
    assert_problem(await api.post(url, json={"dest_cluster_id": C2, "surprise": True}), 422, "surprise")
    assert_problem(await api.post(url, content=b"{not json", headers={"content-type": "application/json"}), 422)
    assert_problem(await api.post(url, json={"dest_cluster_id": C1}), 422, "dest_cluster_id")
    assert_problem(await api.post(url, json={"dest_cluster_id": "nowhere"}), 404)
    assert_problem(await api.post("/v1/vms/ghost/live-migrate", json={"dest_cluster_id": C2}), 404)
    assert_problem(await api.post("/v1/migrations/ghost/abort"), 404)
    assert_problem(await api.get("/v1/migrations/ghost"), 404)
    assert_problem(await api.get("/v1/migrations", params={"state": "weird"}), 422, "state")
    assert_problem(await api.delete("/v1/clusters"), 405)
    assert_problem(await api.get("/v1/nothing-here"), 404)


async def test_dry_run_returns_every_check_and_changes_nothing(api: httpx.AsyncClient) -> None:
    vm = await first_vm(api)
    r = await api.post(f"/v1/vms/{vm['id']}/live-migrate", json={"dest_cluster_id": C3, "dry_run": True})
    assert r.status_code == 200
    report = r.json()
    assert report["passed"] is True and report["dry_run"] is True
    names = {c["name"] for c in report["checks"]}
    assert {"source.server", "destination.capacity", "storage.mirror_lag", "bgp.sessions", "cpu.compatible"} <= names
    assert (await api.get("/v1/migrations")).json()["migrations"] == []
    bad = await api.post(f"/v1/vms/{vm['id']}/live-migrate", json={"dest_cluster_id": C3, "dry_run": True,
                                                                  "dest_host": "no-such-host"})
    failed = [c for c in bad.json()["checks"] if not c["passed"]]
    assert bad.json()["passed"] is False and failed[0]["name"] == "destination.host"


async def test_second_migration_of_a_moving_vm_is_409(api: httpx.AsyncClient) -> None:
    vm = await first_vm(api)
    r1 = await api.post(f"/v1/vms/{vm['id']}/live-migrate", json={"dest_cluster_id": C2})
    r2 = await api.post(f"/v1/vms/{vm['id']}/migrate", json={"dest_cluster_id": C3})
    body = assert_problem(r2, 409)
    assert body["migration_id"] == r1.json()["id"]
    await wait_terminal(api, r1.headers["location"])


async def test_idempotency_key_replays_the_first_response(api: httpx.AsyncClient) -> None:
    vm = await first_vm(api)
    h = {"Idempotency-Key": "op-123"}
    r1 = await api.post(f"/v1/vms/{vm['id']}/migrate", json={"dest_cluster_id": C3}, headers=h)
    r2 = await api.post(f"/v1/vms/{vm['id']}/migrate", json={"dest_cluster_id": C3}, headers=h)
    assert r1.status_code == r2.status_code == 202
    assert r2.json()["id"] == r1.json()["id"] and r2.headers["location"] == r1.headers["location"]
    assert r2.headers.get("idempotent-replayed") == "true"
    assert len((await api.get("/v1/migrations")).json()["migrations"]) == 1
    assert_problem(await api.post(f"/v1/vms/{vm['id']}/migrate", json={"dest_cluster_id": C2}, headers=h), 409,
                   "Idempotency-Key")
    await wait_terminal(api, r1.headers["location"])


async def test_abort_before_point_of_no_return(api: httpx.AsyncClient, embedded_agent: Any) -> None:
    vm = await first_vm(api)
    fabric = embedded_agent.fabric
    fabric.replication_mbps = 1.0  # the initial sync now takes long: plenty of time to abort in DISK
    r = await api.post(f"/v1/vms/{vm['id']}/live-migrate", json={"dest_cluster_id": C2})
    a = await api.post(f"{r.headers['location']}/abort")
    assert a.status_code == 202 and a.json()["abort_requested"] is True
    m = await wait_terminal(api, r.headers["location"])
    assert m["state"] == "aborted"
    assert (await api.get(f"/v1/vms/{vm['id']}")).json()["cluster_id"] == C1
    assert_problem(await api.post(f"{r.headers['location']}/abort"), 409)


async def test_master_show_and_elect(api: httpx.AsyncClient) -> None:
    m = (await api.get("/v1/master")).json()
    assert m["cluster_id"] == C1 and m["epoch"] == 1 and m["name"] == "openstack-1" and "since" in m
    assert (await api.post("/v1/master/elect", json={"cluster_id": C1})).status_code == 202
    assert_problem(await api.post("/v1/master/elect", json={"cluster_id": C2}), 404)
    assert_problem(await api.post("/v1/master/elect", json={}), 422, "cluster_id")


async def test_policies_crud_and_validation(api: httpx.AsyncClient) -> None:
    rule = {"trigger": "cpu_pct>80", "action": "live_migrate", "target": "least_loaded"}
    r = await api.put("/v1/policies/rebalance-cpu", json={"rule": rule})
    assert r.status_code == 200, r.text
    assert (await api.get("/v1/policies")).json()["policies"][0]["name"] == "rebalance-cpu"
    assert (await api.get("/v1/policies/rebalance-cpu")).json()["rule"]["action"] == "live_migrate"
    bad = assert_problem(await api.put("/v1/policies/p2", json={"rule": {**rule, "trigger": "cpu_pct >> 80"}}), 422)
    assert bad["field"].startswith("rule.trigger")
    assert_problem(await api.put("/v1/policies/p3", json={"rule": {**rule, "action": "teleport"}}), 422, "rule.action")
    assert_problem(await api.put("/v1/policies/p4", json={}), 422, "rule")
    assert (await api.delete("/v1/policies/rebalance-cpu")).status_code == 204
    assert_problem(await api.delete("/v1/policies/rebalance-cpu"), 404)
    assert_problem(await api.get("/v1/policies/rebalance-cpu"), 404)


async def test_openapi_is_served(api: httpx.AsyncClient) -> None:
    spec = (await api.get("/v1/openapi.json")).json()
    paths = set(spec["paths"])
    for p in ("/v1/clusters", "/v1/clusters/{cluster_id}", "/v1/clusters/{cluster_id}/metrics", "/v1/vms",
              "/v1/vms/{vm_id}", "/v1/vms/{vm_id}/migrate", "/v1/vms/{vm_id}/live-migrate", "/v1/migrations",
              "/v1/migrations/{migration_id}", "/v1/migrations/{migration_id}/abort", "/v1/master",
              "/v1/master/elect", "/v1/policies", "/v1/policies/{name}"):
        assert p in paths, p


async def test_metrics_are_served_and_count_the_migration(api: httpx.AsyncClient) -> None:
    from prometheus_client.parser import text_string_to_metric_families

    vm = await first_vm(api)
    r = await api.post(f"/v1/vms/{vm['id']}/live-migrate", json={"dest_cluster_id": C2})
    await wait_terminal(api, r.headers["location"])
    text = (await api.get("/metrics")).text
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("cnf_migrations_completed_total", (("kind", "live"),))] == 1
    assert samples[("cnf_agent_is_master", ())] == 1
    assert any(name == "cnf_migration_guest_pause_seconds_count" and v == 1 for (name, _), v in samples.items())


async def test_policy_evaluate_plan_and_approve_moves_a_vm(api: httpx.AsyncClient) -> None:
    rule = {"trigger": "cluster.cpu_pct > 60", "action": "live_migrate", "target": "least_loaded", "mode": "plan",
            "caps": {"per_cluster": 1, "per_federation": 1}}
    assert (await api.put("/v1/policies/hot", json={"rule": rule})).status_code == 200
    calm = (await api.post("/v1/policies/hot/evaluate")).json()
    assert calm["moves"] == []  # nothing is hot yet
    load = await api.post("/v1/sim/clusters/openstack-1/load", json={"cpu_pct_bias": 60})
    assert load.status_code == 200 and load.json()["cpu_pct"] > 60
    plan = (await api.post("/v1/policies/hot/evaluate")).json()
    assert len(plan["moves"]) == 1
    move = plan["moves"][0]
    assert move["source_cluster"] == C1 and move["target_cluster"] in (C2, C3) and "cluster.cpu_pct" in move["why"]
    assert (await api.get("/v1/migrations")).json()["migrations"] == []  # evaluate is a dry run
    approved = (await api.post("/v1/policies/hot/approve")).json()["migrations"]
    assert [m["vm_id"] for m in approved] == [move["vm_id"]]
    m = await wait_terminal(api, f"/v1/migrations/{approved[0]['migration_id']}")
    assert m["state"] == "completed"
    assert_problem(await api.post("/v1/policies/hot/approve"), 404)  # the plan was consumed
    assert_problem(await api.post("/v1/policies/ghost/evaluate"), 404)
    assert_problem(await api.post("/v1/sim/clusters/openstack-1/load", json={"cpu_pct_bias": 500}), 422,
                   "cpu_pct_bias")
