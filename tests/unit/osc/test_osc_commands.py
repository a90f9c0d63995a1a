"""Every ``openstack cnf`` command: its parser and ``take_action`` against a fake client (cliff style)."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest
from osc_cli_fakes import C2, FakeCnfClient, make_command, migration, parse
from osc_lib import exceptions as osc_exc

from cnf.osc.v1 import clusters, master, migrations, policies, vms
from cnf.osc.v1.common import TimestampColumn

pytestmark = pytest.mark.timeout(30)


def human(values: tuple[Any, ...] | list[Any]) -> list[Any]:
    return [v.human_readable() if hasattr(v, "human_readable") else v for v in values]


def as_dict(result: tuple[tuple[str, ...], tuple[Any, ...]]) -> dict[str, Any]:
    cols, vals = result
    return dict(zip(cols, vals, strict=True))


@pytest.fixture
def client() -> FakeCnfClient:
    return FakeCnfClient()


# --- clusters -------------------------------------------------------------------------------------


def test_cluster_list(client: FakeCnfClient) -> None:
    cmd = make_command(clusters.ListCluster, client)
    cols, data = cmd.take_action(parse(cmd, []))
    assert cols == ("ID", "Name", "Region", "Status", "BGP AS", "gRPC Address", "VMs")
    assert [r[1] for r in data] == ["openstack-1", "openstack-2", "openstack-3"] and data[0][4] == 65001
    cols, _ = cmd.take_action(parse(cmd, ["--long"]))
    assert cols[-1] == "Auth URL"


def test_cluster_show_and_metrics(client: FakeCnfClient) -> None:
    cmd = make_command(clusters.ShowCluster, client)
    cols, vals = cmd.take_action(parse(cmd, ["openstack-1"]))
    assert cols[:4] == ("id", "name", "region", "status")
    d = dict(zip(cols, vals, strict=True))
    assert d["bgp_peers"].human_readable() == "127.0.0.2 AS65002 established, 4 prefixes"
    assert d["bgp_peers"].machine_readable()[0]["remote_as"] == 65002
    with pytest.raises(SystemExit):
        parse(cmd, [])
    cmd = make_command(clusters.ShowClusterMetrics, client)
    d = as_dict(cmd.take_action(parse(cmd, ["openstack-1"])))
    assert d["free_vcpus"] == 56 and "compute-1.os1: vCPU 6/32" in d["hosts"].human_readable()
    assert client.calls[-1] == ("cluster_metrics", ("openstack-1",), {})


def test_cluster_register_builds_the_body(client: FakeCnfClient) -> None:
    cmd = make_command(clusters.RegisterCluster, client)
    args = parse(cmd, ["openstack-4", "--auth-url", "https://ks4:5000/v3", "--grpc-addr", "os4:50051",
                       "--bgp-as", "65004", "--region", "R2", "--username", "cnf", "--password", "pw",
                       "--project-name", "service"])
    d = as_dict(cmd.take_action(args))
    assert d["name"] == "openstack-4"
    body = client.calls[-1][1][0]
    assert body == {"name": "openstack-4", "auth_url": "https://ks4:5000/v3", "grpc_addr": "os4:50051",
                    "bgp_as": 65004, "region": "R2",
                    "credentials": {"username": "cnf", "password": "pw", "project_name": "service"}}
    with pytest.raises(SystemExit):  # --bgp-as is required and an integer
        parse(cmd, ["x", "--auth-url", "sim://x", "--grpc-addr", "h:1", "--bgp-as", "sixty"])
    with pytest.raises(osc_exc.CommandError, match="--username and --password go together"):
        cmd.take_action(parse(cmd, ["x", "--auth-url", "sim://x", "--grpc-addr", "h:1", "--bgp-as", "1",
                                    "--username", "cnf"]))


# --- vms ------------------------------------------------------------------------------------------


def test_vm_list_resolves_cluster_names(client: FakeCnfClient) -> None:
    cmd = make_command(vms.ListVm, client)
    cols, data = cmd.take_action(parse(cmd, ["--cluster", "openstack-1", "--status", "ACTIVE"]))
    assert cols == ("ID", "Name", "Cluster", "Host", "Status", "IP", "Flavor", "Migration")
    assert data[0][2] == "openstack-1" and data[1][2] == "unknown-cluster"
    assert ("list_vms", (), {"cluster": "openstack-1", "status": "ACTIVE"}) in client.calls
    cols, data = cmd.take_action(parse(cmd, ["--long"]))
    assert cols[-5:] == ("vCPUs", "RAM MiB", "CPU %", "Project", "Tags")


def test_vm_status(client: FakeCnfClient) -> None:
    cmd = make_command(vms.ShowVmStatus, client)
    d = as_dict(cmd.take_action(parse(cmd, ["vm-1-1"])))
    assert d["cluster"] == "openstack-1" and d["ip"] == "10.99.1.11"


@pytest.mark.parametrize("cls,live", [(vms.LiveMigrateVm, True), (vms.MigrateVm, False)])
def test_migrate_parser_and_body(client: FakeCnfClient, cls: type, live: bool) -> None:
    cmd = make_command(cls, client)
    argv = ["vm-1-1", "--to", "openstack-2", "--dest-host", "compute-1.os2", "--dest-next-hop", "192.0.2.7",
            "--max-bandwidth", "800"]
    if live:
        argv += ["--downtime-limit", "500", "--non-convergence", "post_copy"]
    cmd.run(parse(cmd, argv))
    _name, args, kwargs = next(c for c in client.calls if c[0] == "migrate_vm")
    options = {"max_bandwidth_mbps": 800} | ({"downtime_limit_ms": 500, "non_convergence": "post_copy"} if live else {})
    assert args == ("vm-1-1", {"dest_cluster_id": "openstack-2", "dest_host": "compute-1.os2",
                               "dest_next_hop": "192.0.2.7", "dry_run": False, "options": options})
    assert kwargs == {"live": live}
    assert "pending" in cmd.app.stdout.getvalue() and "openstack-2" in cmd.app.stdout.getvalue()
    with pytest.raises(SystemExit):
        parse(cmd, ["vm-1-1"])  # --to is required
    if not live:
        with pytest.raises(SystemExit):
            parse(cmd, ["vm-1-1", "--to", "x", "--downtime-limit", "5"])  # live-only option


def test_dry_run_prints_every_check_and_exits_1(client: FakeCnfClient, capsys: pytest.CaptureFixture[str]) -> None:
    cmd = make_command(vms.LiveMigrateVm, client)
    rc = cmd.run(parse(cmd, ["vm-1-1", "--to", "openstack-2", "--dry-run", "-f", "json"]))
    rows = json.loads(cmd.app.stdout.getvalue())
    assert [(r["Check"], r["Result"]) for r in rows] == [("source.server", "pass"), ("storage.mirror_lag", "FAIL"),
                                                         ("destination.host", "FAIL")]
    assert rc == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["preflight failed: destination.host: host nope not found"]  # warnings do not fail it
    client.preflight["checks"] = client.preflight["checks"][:2]
    cmd = make_command(vms.LiveMigrateVm, client)
    assert cmd.run(parse(cmd, ["vm-1-1", "--to", "openstack-2", "--dry-run"])) == 0
    assert "| storage.mirror_lag | FAIL" in cmd.app.stdout.getvalue()
    cmd = make_command(vms.LiveMigrateVm, client)
    cmd.run(parse(cmd, ["vm-1-1", "--to", "openstack-2", "--dry-run", "-f", "value", "-c", "Check"]))
    assert cmd.app.stdout.getvalue().split() == ["source.server", "storage.mirror_lag"]
    with pytest.raises(osc_exc.CommandError, match="cannot be combined"):
        cmd.take_action(parse(cmd, ["vm-1-1", "--to", "x", "--dry-run", "--wait"]))


def test_migrate_wait_success_and_failure(client: FakeCnfClient, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cnf.osc.v1.common.time.sleep", lambda _s: None)
    client.migrations = [migration(done=1), migration(phase="MEMORY", step="memory.precopy", done=2, percent=50.0),
                         migration(state="completed", phase="CLEANUP", step="", done=6, percent=100.0)]
    cmd = make_command(vms.LiveMigrateVm, client)
    assert cmd.run(parse(cmd, ["vm-1-1", "--to", "openstack-2", "--wait", "-f", "json"])) == 0
    assert json.loads(cmd.app.stdout.getvalue())["state"] == "completed"
    err = capsys.readouterr().err
    assert [ln.split()[0] for ln in err.splitlines()][:6] == ["PREFLIGHT", "DISK", "MEMORY", "CUTOVER", "BGP",
                                                             "CLEANUP"]
    client.migrations = [migration(state="failed", phase="DISK", step="disk.sync", done=1,
                                   error={"code": "driver_error", "message": "rbd mirror down", "step": "disk.sync"})]
    cmd = make_command(vms.MigrateVm, client)
    assert cmd.run(parse(cmd, ["vm-1-1", "--to", "openstack-2", "--wait"])) == 1
    assert capsys.readouterr().err.strip().splitlines()[-1] == \
        "migration m-1 failed in DISK disk.sync: rbd mirror down"


# --- migrations -----------------------------------------------------------------------------------


def test_migration_list_show_abort(client: FakeCnfClient, capsys: pytest.CaptureFixture[str],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    cmd = make_command(migrations.ListMigration, client)
    cols, data = cmd.take_action(parse(cmd, ["--state", "completed", "--vm", "v"]))
    assert cols[:4] == ("ID", "VM", "Kind", "State") and data[0][6:8] == ("openstack-1", "openstack-2")
    assert isinstance(data[0][8], TimestampColumn) and data[0][8].human_readable().endswith("Z")
    with pytest.raises(SystemExit):
        parse(cmd, ["--state", "sleeping"])
    cmd = make_command(migrations.ShowMigration, client)
    d = as_dict(cmd.take_action(parse(cmd, ["m-1"])))
    assert d["dest_cluster"] == "openstack-2" and "steps" not in d
    assert d["phases"].human_readable().splitlines()[0].split() == ["PREFLIGHT", "done", "1.00", "s"]
    assert "steps" in as_dict(cmd.take_action(parse(cmd, ["m-1", "--long"])))
    monkeypatch.setattr("cnf.osc.v1.common.time.sleep", lambda _s: None)
    client.migrations = [migration(state="compensating"), migration(state="aborted", done=1)]
    cmd = make_command(migrations.AbortMigration, client)
    assert cmd.run(parse(cmd, ["m-1", "--wait"])) == 0
    client.migrations = [migration(state="completed", phase="CLEANUP", done=6)]
    cmd = make_command(migrations.AbortMigration, client)
    assert cmd.run(parse(cmd, ["m-1", "--wait"])) == 1
    assert "point of no return" in capsys.readouterr().err


# --- master ---------------------------------------------------------------------------------------


def test_master_show_and_elect(client: FakeCnfClient) -> None:
    cmd = make_command(master.ShowMaster, client)
    d = as_dict(cmd.take_action(parse(cmd, [])))
    assert d["name"] == "openstack-1" and d["epoch"] == 3 and d["since"].machine_readable() == 1796039762.17
    cmd = make_command(master.ElectMaster, client)
    d = as_dict(cmd.take_action(parse(cmd, ["openstack-2"])))
    assert d["requested"] == C2 and client.calls[-1] == ("elect_master", ("openstack-2",), {})


# --- policies -------------------------------------------------------------------------------------

RULE = '{"trigger":"cpu_pct>80","action":"live_migrate","target":"least_loaded"}'


def test_policy_set_validates_locally(client: FakeCnfClient) -> None:
    cmd = make_command(policies.SetPolicy, client)
    d = as_dict(cmd.take_action(parse(cmd, ["rebalance", "--rule", RULE, "--disable"])))
    assert d["enabled"] is False and client.calls[-1][1][1]["action"] == "live_migrate"
    bad = {
        '{"trigger": "cpu_pct>80",': "--rule is not valid JSON: Expecting property name enclosed in double quotes",
        '["cpu_pct>80"]': "--rule must be a JSON object",
        RULE.replace("live_migrate", "teleport"): "--rule: rule.action:",
        '{"trigger":"cpu_pct >> 80","action":"notify"}': "--rule: rule.trigger",
        '{"trigger":"cpu_pct>80","action":"live_migrate"}': "--rule: rule.target:",
        '{"trigger":"cpu_pct>80","action":"notify","colour":1}': "--rule: rule.colour: unknown field",
    }
    n = len(client.calls)
    for text, message in bad.items():
        with pytest.raises(osc_exc.CommandError) as e:
            cmd.take_action(parse(cmd, ["p", "--rule", text]))
        assert str(e.value).startswith(message) and "\n" not in str(e.value), str(e.value)
    assert len(client.calls) == n  # nothing was sent
    with pytest.raises(SystemExit):
        parse(cmd, ["p"])  # --rule required
    with pytest.raises(SystemExit):
        parse(cmd, ["p", "--rule", RULE, "--enable", "--disable"])


def test_policy_list_show_delete_evaluate(client: FakeCnfClient) -> None:
    cmd = make_command(policies.ListPolicy, client)
    cols, data = cmd.take_action(parse(cmd, []))
    assert cols == ("Name", "Enabled", "Trigger", "Action", "Target", "Mode", "Updated")
    assert human(data[0])[:6] == ["rebalance-cpu", True, "cpu_pct>80", "live_migrate", "least_loaded", "plan"]
    cmd = make_command(policies.ShowPolicy, client)
    assert as_dict(cmd.take_action(parse(cmd, ["rebalance-cpu"])))["rule"].machine_readable()["mode"] == "plan"
    cmd = make_command(policies.DeletePolicy, client)
    cmd.take_action(parse(cmd, ["a", "b"]))
    assert [c[1] for c in client.calls if c[0] == "delete_policy"] == [("a",), ("b",)]
    with pytest.raises(osc_exc.CommandError, match="1 of 2 policies not deleted: missing: policy 'missing'"):
        cmd.take_action(parse(cmd, ["c", "missing"]))
    cmd = make_command(policies.EvaluatePolicy, client)
    cols, vals = cmd.take_action(parse(cmd, ["rebalance-cpu"]))
    d = dict(zip(cols, vals, strict=True))
    assert cols[:4] == ("policy", "evaluated_at", "plan", "moves") and "text" not in d
    assert d["plan"].startswith("PLAN live_migrate") and d["moves"].machine_readable()[0]["target_cluster"] == C2
    assert d["moves"].human_readable() == f"PLAN live_migrate {d['moves'].machine_readable()[0]['vm_id']}: " \
        f"{d['moves'].machine_readable()[0]['source_cluster']} -> {C2}"
    cmd = make_command(policies.ApprovePolicy, client)
    cols, data = cmd.take_action(parse(cmd, ["rebalance-cpu", "--vm", "a", "--vm", "b"]))
    assert cols[0] == "Migration" and data[0][0] == "m-9"
    assert client.calls[-1] == ("approve_policy", ("rebalance-cpu", ["a", "b"]), {})


def test_show_one_table_output_is_human_json_is_raw(client: FakeCnfClient) -> None:
    cmd = make_command(migrations.ShowMigration, client)
    cmd.run(parse(cmd, ["m-1", "-f", "json"]))
    raw = json.loads(cmd.app.stdout.getvalue())
    assert raw["created_at"] == 1796039774.5 and raw["phases"][0]["phase"] == "PREFLIGHT"
    cmd = make_command(migrations.ShowMigration, client)
    cmd.app.stdout = io.StringIO()
    cmd.run(parse(cmd, ["m-1", "-c", "created_at", "-c", "progress", "-f", "table"]))
    table = cmd.app.stdout.getvalue()
    assert "| created_at | 2026-11-30T11:56:14Z" in table
    cmd = make_command(migrations.ShowMigration, client)
    client.migrations = [migration(percent=50.0)]
    cmd.run(parse(cmd, ["m-1", "-c", "progress", "-f", "table"]))
    assert "50.0% of 2048 MiB copied, 0 passes, ETA 3.2 s, active" in cmd.app.stdout.getvalue()
