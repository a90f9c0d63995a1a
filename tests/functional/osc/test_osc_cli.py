"""``openstack cnf …`` end to end: the real ``openstack`` executable against a running embedded agent.

Every command in table and json form; every error case prints ONE line on stderr and exits non-zero.
"""

from __future__ import annotations

import json
import subprocess

import httpx
import pytest
from osc_cli_harness import OPENSTACK, Cli, ThreadedAgent, cli_env, free_port, wait_state

pytestmark = [pytest.mark.functional, pytest.mark.timeout(600)]


def one_error_line(proc: subprocess.CompletedProcess[str], *needles: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def table_has(proc: subprocess.CompletedProcess[str], *cells: str) -> None:
    assert proc.stdout.startswith("+"), proc.stdout
    for c in cells:
        assert c in proc.stdout, (c, proc.stdout)


def test_plugin_is_loaded_with_every_command() -> None:
    out = subprocess.run([OPENSTACK, "help", "cnf"], capture_output=True, text=True, timeout=180,
                         env=cli_env()).stdout
    for cmd in ("cnf cluster list", "cnf cluster register", "cnf vm live-migrate", "cnf migration abort",
                "cnf master elect", "cnf policy set", "cnf policy evaluate"):
        assert cmd in out, out


def test_cluster_list_show_metrics(cli: Cli) -> None:
    lst, lst_j, names, show, show_j, met, met_j, missing = cli.many(
        ("cluster", "list"), ("cluster", "list", "-f", "json"), ("cluster", "list", "-c", "Name", "-f", "value"),
        ("cluster", "show", "openstack-2"), ("cluster", "show", "openstack-2", "-f", "json"),
        ("cluster", "metrics", "openstack-1"), ("cluster", "metrics", "openstack-1", "-f", "json"),
        ("cluster", "show", "nowhere"), check=False)
    table_has(lst, "openstack-1", "openstack-2", "openstack-3")
    clusters = json.loads(lst_j.stdout)
    assert [c["Name"] for c in clusters] == ["openstack-1", "openstack-2", "openstack-3"]
    assert all(c["VMs"] == 4 for c in clusters)
    assert names.stdout.split() == ["openstack-1", "openstack-2", "openstack-3"]
    table_has(show, "openstack-2", "bgp_sessions_up")
    s = json.loads(show_j.stdout)
    assert s["name"] == "openstack-2" and s["bgp_sessions_up"] == 1 and isinstance(s["bgp_peers"], list)
    table_has(met, "compute-1.os1", "free_vcpus")
    m = json.loads(met_j.stdout)
    assert m["free_vcpus"] == m["vcpus"] - m["vcpus_used"] and len(m["hosts"]) == 2
    one_error_line(missing, "nowhere", "404")


def test_cluster_register(cli: Cli) -> None:
    reg_j, reg, bad = cli.many(
        ("cluster", "register", "openstack-4", "--auth-url", "sim://openstack-4", "--grpc-addr", "127.0.0.1:50054",
         "--bgp-as", "65004", "--region", "RegionTwo", "-f", "json"),
        ("cluster", "register", "openstack-5", "--auth-url", "sim://openstack-5", "--grpc-addr", "127.0.0.1:50055",
         "--bgp-as", "65005", "--username", "cnf", "--password", "pw", "--project-name", "service"),
        ("cluster", "register", "openstack-6", "--auth-url", "sim://x", "--grpc-addr", "nohost", "--bgp-as", "65006"),
        check=False)
    r = json.loads(reg_j.stdout)
    assert r["name"] == "openstack-4" and r["region"] == "RegionTwo" and "credentials" not in r
    table_has(reg, "openstack-5")
    one_error_line(bad, "grpc_addr")
    names, dup = cli.many(("cluster", "list", "-f", "value", "-c", "Name"),
                          ("cluster", "register", "openstack-4", "--auth-url", "sim://openstack-4", "--grpc-addr",
                           "127.0.0.1:50054", "--bgp-as", "65004"), check=False)
    assert {"openstack-4", "openstack-5"} <= set(names.stdout.split())
    one_error_line(dup, "409")


def test_vm_list_and_status(cli: Cli) -> None:
    lst, lst_j, c1_j, st, st_j, ghost, sleeping = cli.many(
        ("vm", "list"), ("vm", "list", "-f", "json"), ("vm", "list", "--cluster", "openstack-1", "--long", "-f",
                                                        "json"),
        ("vm", "status", "vm-2-1"), ("vm", "status", "vm-2-1", "-f", "json"), ("vm", "status", "ghost-vm"),
        ("vm", "list", "--status", "SLEEPING"), check=False)
    table_has(lst, "vm-1-1", "vm-3-4", "openstack-2")
    vms = json.loads(lst_j.stdout)
    assert len(vms) >= 12 and {"ID", "Name", "Cluster", "Host", "Status", "IP"} <= set(vms[0])
    c1 = json.loads(c1_j.stdout)
    assert c1 and {v["Cluster"] for v in c1} == {"openstack-1"} and "vCPUs" in c1[0]
    table_has(st, "vm-2-1", "openstack-2")
    s = json.loads(st_j.stdout)
    assert s["name"] == "vm-2-1" and s["cluster"] == "openstack-2" and s["status"] == "ACTIVE"
    one_error_line(ghost, "ghost-vm", "not found")
    one_error_line(sleeping, "status")


def test_dry_run_prints_every_check(cli: Cli) -> None:
    ok, bad, cold_j = cli.many(
        ("vm", "live-migrate", "vm-3-2", "--to", "openstack-1", "--dry-run"),
        ("vm", "live-migrate", "vm-3-2", "--to", "openstack-1", "--dry-run", "--dest-host", "no-such-host",
         "-f", "json"),
        ("vm", "migrate", "vm-3-2", "--to", "openstack-1", "--dry-run", "-f", "json"), check=False)
    assert ok.returncode == 0, ok.stderr
    table_has(ok, "source.server", "bgp.sessions", "cpu.compatible", "pass")
    checks = json.loads(bad.stdout)
    assert {c["Check"] for c in checks} >= {"source.server", "destination.host", "storage.mirror_lag"}
    assert next(c for c in checks if c["Check"] == "destination.host")["Result"] == "FAIL"
    one_error_line(bad, "preflight failed", "destination.host")
    assert cold_j.returncode == 0 and all(c["Result"] == "pass" for c in json.loads(cold_j.stdout))


def test_live_migrate_wait_table(cli: Cli) -> None:
    proc = cli.run("vm", "live-migrate", "vm-1-1", "--to", "openstack-2", "--dest-next-hop", "192.0.2.77", "--wait")
    table_has(proc, "completed", "openstack-2", "192.0.2.77")
    # not a tty: one plain line per phase, in order, then the outcome
    phases = [ln.split()[0] for ln in proc.stderr.splitlines() if ln and ln.split()[0].isupper()]
    assert phases == ["PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP", "CLEANUP"], proc.stderr
    assert "memory" in proc.stderr and "completed" in proc.stderr.splitlines()[-1]
    assert cli.json("vm", "status", "vm-1-1")["cluster"] == "openstack-2"


def test_cold_migrate_wait_json(cli: Cli) -> None:
    m = cli.json("vm", "migrate", "vm-1-2", "--to", "openstack-3", "--wait")
    assert m["state"] == "completed" and m["kind"] == "cold" and m["dest_cluster"] == "openstack-3"
    assert [p["phase"] for p in m["phases"]] == ["PREFLIGHT", "DISK", "CUTOVER", "BGP", "CLEANUP"]
    assert isinstance(m["created_at"], float)  # json keeps the machine form


def test_migration_list_show(cli: Cli) -> None:
    mid = cli.json("vm", "migrate", "vm-2-2", "--to", "openstack-1", "--wait")["id"]
    lst, lst_j, show, long_j, missing, weird = cli.many(
        ("migration", "list"), ("migration", "list", "--state", "completed", "-f", "json"), ("migration", "show", mid),
        ("migration", "show", mid, "--long", "-f", "json"), ("migration", "show", "no-such-migration"),
        ("migration", "list", "--state", "weird"), check=False)
    table_has(lst, mid, "vm-2-2")
    listed = json.loads(lst_j.stdout)
    assert mid in [m["ID"] for m in listed] and all(m["State"] == "completed" for m in listed)
    table_has(show, mid, "openstack-2", "openstack-1")
    long = json.loads(long_j.stdout)
    assert long["id"] == mid and long["steps"] and long["events"][0]["kind"] == "requested"
    one_error_line(missing, "404")
    # a usage mistake is argparse's usual answer: the usage, then one error line; exit status 2
    assert weird.returncode == 2 and "invalid choice: 'weird'" in weird.stderr.splitlines()[-1]


def test_abort_with_wait(cli: Cli, agent: ThreadedAgent, api: httpx.Client) -> None:
    fabric = agent.agent.fabric
    fabric.replication_mbps = 0.2  # the initial disk sync now takes minutes: time to abort in DISK
    try:
        started = cli.json("vm", "live-migrate", "vm-3-3", "--to", "openstack-2")
        assert started["state"] in ("pending", "running") and started["kind"] == "live"
        aborted = cli.json("migration", "abort", started["id"], "--wait")
        assert aborted["state"] == "aborted" and aborted["abort_requested"] is True
        one_error_line(cli.run("migration", "abort", started["id"], check=False), "409")
        second = cli.run("vm", "migrate", "vm-3-4", "--to", "openstack-1")
        table_has(second, "cold", "vm-3-4")
        second_id = next(ln.split("|")[2].strip() for ln in second.stdout.splitlines() if ln.startswith("| id "))
        table_has(cli.run("migration", "abort", second_id), second_id)
        wait_state(api, second_id, ("aborted",))
    finally:
        fabric.replication_mbps = 400.0
    assert cli.json("vm", "status", "vm-3-3")["cluster"] == "openstack-3"


def test_master_show_and_elect(cli: Cli) -> None:
    show, show_j, elect, elect_j, unknown = cli.many(
        ("master", "show"), ("master", "show", "-f", "json"), ("master", "elect", "openstack-1"),
        ("master", "elect", "openstack-1", "-f", "json"), ("master", "elect", "openstack-9"), check=False)
    table_has(show, "openstack-1", "epoch")
    m = json.loads(show_j.stdout)
    assert m["name"] == "openstack-1" and m["epoch"] >= 1 and m["is_this_agent"] is True
    assert json.loads(elect_j.stdout)["requested"] == m["cluster_id"]
    table_has(elect, "requested")
    one_error_line(unknown, "404")


RULE = '{"trigger":"cpu_pct>80","action":"live_migrate","target":"least_loaded"}'


def test_policy_commands(cli: Cli, api: httpx.Client) -> None:
    table_has(cli.run("policy", "set", "rebalance-cpu", "--rule", RULE), "rebalance-cpu")
    p2 = cli.json("policy", "set", "notify-mem", "--disable", "--rule",
                  '{"trigger":"mem_pct>90","action":"notify"}')
    assert p2["enabled"] is False and p2["rule"]["action"] == "notify"
    lst, lst_j, show, show_j, bad_json, bad_action, typo, ev, ev_j, ev_missing = cli.many(
        ("policy", "list"), ("policy", "list", "-f", "json"), ("policy", "show", "rebalance-cpu"),
        ("policy", "show", "rebalance-cpu", "-f", "json"),
        ("policy", "set", "p", "--rule", '{"trigger": "cpu_pct>80",'),
        ("policy", "set", "p", "--rule", RULE.replace("live_migrate", "teleport")),
        ("policy", "set", "p", "--rule", '{"trigger":"cpu_pct>80","acton":"notify"}'),
        ("policy", "evaluate", "rebalance-cpu"), ("policy", "evaluate", "rebalance-cpu", "-f", "json"),
        ("policy", "evaluate", "no-such-policy"), check=False)
    table_has(lst, "rebalance-cpu", "notify-mem", "live_migrate")
    assert {p["Name"] for p in json.loads(lst_j.stdout)} >= {"rebalance-cpu", "notify-mem"}
    table_has(show, "rebalance-cpu")
    assert json.loads(show_j.stdout)["rule"]["target"] == "least_loaded"
    one_error_line(bad_json, "--rule is not valid JSON")
    one_error_line(bad_action, "rule.action")
    one_error_line(typo, "rule.acton", "did you mean")
    if "/v1/policies/{name}/evaluate" in api.get("/v1/openapi.json").json()["paths"]:
        assert ev.returncode == 0 and ev.stdout.startswith("+") and "plan" in ev.stdout, ev.stderr
        plan = json.loads(ev_j.stdout)
        assert plan["policy"] == "rebalance-cpu" and isinstance(plan["moves"], list)
        # nothing is loaded above 80 %: the plan is empty, approving it starts nothing
        assert cli.json("policy", "approve", "rebalance-cpu") == []
        one_error_line(cli.run("policy", "approve", "rebalance-cpu", check=False), "evaluate it first", "404")
    else:  # the agent predates the endpoint: still one readable line, non-zero exit
        one_error_line(ev, "404")
    one_error_line(ev_missing, "404")
    assert cli.run("policy", "delete", "rebalance-cpu", "notify-mem").returncode == 0
    one_error_line(cli.run("policy", "delete", "rebalance-cpu", check=False), "rebalance-cpu", "404")
    one_error_line(cli.run("policy", "show", "rebalance-cpu", check=False), "404")


def test_agent_down_is_one_line() -> None:
    down = Cli(["--os-auth-type", "none", "--os-endpoint", f"http://127.0.0.1:{free_port()}"], cli_env())
    lst, show = down.many(("vm", "list"), ("master", "show", "-f", "json"), check=False)
    one_error_line(lst, "cannot reach the CNF API")
    one_error_line(show, "cnf-agent running")
