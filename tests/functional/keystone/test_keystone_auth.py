"""A real Keystone 30 issues the tokens: the agent accepts an admin token, refuses a reader's mutation (403)
and a bad token (401); the ``openstack`` CLI finds CNF through the catalog and works end to end."""

from __future__ import annotations

import concurrent.futures
import json
import subprocess
from typing import Any

import httpx
import pytest
from osc_cli_harness import OPENSTACK, Cli, ThreadedAgent, cli_env

pytestmark = [pytest.mark.lab, pytest.mark.timeout(900)]

RULE = {"trigger": "cpu_pct>80", "action": "live_migrate", "target": "least_loaded"}


def test_tokens_from_keystone(keystone: Any, ks_agent: ThreadedAgent, validator: Any) -> None:
    admin = {"X-Auth-Token": keystone.token("admin")}
    reader = {"X-Auth-Token": keystone.token("cnf-reader")}
    with httpx.Client(base_url=ks_agent.url, timeout=60) as api:
        r = api.get("/v1/vms", headers=admin)
        assert r.status_code == 200 and len(r.json()["vms"]) == 12
        calls = validator.keystone_calls
        assert api.get("/v1/clusters", headers=admin).status_code == 200
        assert validator.keystone_calls == calls  # the validation was cached
        assert api.put("/v1/policies/from-admin", json={"rule": RULE}, headers=admin).status_code == 200

        assert api.get("/v1/policies", headers=reader).status_code == 200
        denied = api.put("/v1/policies/from-reader", json={"rule": RULE}, headers=reader)
        assert denied.status_code == 403 and denied.json()["code"] == "forbidden"
        denied = api.post("/v1/vms/vm-1-1/live-migrate", json={"dest_cluster_id": "openstack-2"}, headers=reader)
        assert denied.status_code == 403

        for headers in ({}, {"X-Auth-Token": "gAAAAABnot-a-real-fernet-token"}, {"X-Auth-Token": "notused"}):
            r = api.get("/v1/vms", headers=headers)
            assert r.status_code == 401, r.text
            assert r.json()["code"] == "unauthorized"
            assert r.headers["www-authenticate"] == f'Keystone uri="{keystone.auth_url}"'
        assert api.get("/healthz").status_code == 200


def _openstack(env: dict[str, str], *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([OPENSTACK, *argv], capture_output=True, text=True, timeout=180, env=env,
                          stdin=subprocess.DEVNULL)


def test_cli_through_the_catalog(keystone: Any, ks_agent: ThreadedAgent) -> None:
    admin_env = {**cli_env(), **keystone.os_env("admin")}
    svc = _openstack(admin_env, "service", "create", "--name", "cnf", "--description",
                     "Cluster Nova Federation", "cnf", "-f", "json")
    assert svc.returncode == 0, svc.stderr
    ep = _openstack(admin_env, "endpoint", "create", "--region", "RegionOne", "cnf", "public", ks_agent.url,
                    "-f", "json")
    assert ep.returncode == 0, ep.stderr

    admin = Cli([], admin_env)
    table, clusters, policy, master = admin.many(
        ("vm", "list"), ("cluster", "list", "-f", "json"),
        ("policy", "set", "cli-admin", "--rule", json.dumps(RULE), "-f", "json"), ("master", "show", "-f", "json"))
    assert table.stdout.startswith("+") and "vm-1-1" in table.stdout
    assert len(json.loads(clusters.stdout)) == 3
    assert json.loads(policy.stdout)["name"] == "cli-admin"
    assert json.loads(master.stdout)["name"] == "openstack-1"

    reader = Cli([], {**cli_env(), **keystone.os_env("cnf-reader")})
    wrong = Cli([], {**cli_env(), **keystone.os_env("admin"), "OS_PASSWORD": "wrong"})
    with concurrent.futures.ThreadPoolExecutor(3) as pool:
        listed_f = pool.submit(reader.run, "policy", "list", "-f", "json")
        refused_f = pool.submit(reader.run, "policy", "delete", "cli-admin", check=False)
        bad_f = pool.submit(wrong.run, "vm", "list", check=False)
    assert any(p["Name"] == "cli-admin" for p in json.loads(listed_f.result().stdout))
    refused = refused_f.result()
    lines = [ln for ln in refused.stderr.splitlines() if ln.strip()]
    assert refused.returncode != 0 and len(lines) == 1 and "403" in lines[0] and "admin role" in lines[0], \
        refused.stderr
    bad = bad_f.result()
    assert bad.returncode != 0 and "401" in bad.stderr
