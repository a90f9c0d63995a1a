"""The deployment artifacts pass the strongest check their own tooling offers without a Docker engine or Kubernetes.

Tools (installed on first use by ``deploy/tools/install-validators.sh``, cached in ~/.cache/cnf/deploy-tools):
Compose v2 (``docker compose config``), ansible-playbook ``--syntax-check`` and ansible-lint, helm (real binary)
``lint``/``template``, hadolint, ``systemd-analyze verify``, promtool and a real Prometheus that scrapes an agent's
``/metrics`` and answers every Grafana query.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cnf.config import load_config
from cnf.observability.metrics import METRIC_NAMES, CNFMetrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
ANSIBLE = DEPLOY / "ansible"
CHART = DEPLOY / "helm" / "cnf"
DASHBOARD = DEPLOY / "grafana" / "dashboards" / "cnf-federation.json"
RULES = DEPLOY / "prometheus" / "rules" / "cnf-alerts.yml"
SEED_HELM_SETS = ["--namespace", "openstack", "--set", "cluster.name=openstack-1",
                  "--set", "cluster.grpcAddr=os1-ctrl:50051", "--values", str(CHART / "values.yaml")]
SEED_PEERS = ["os2-ctrl:50051", "os3-ctrl:50051"]

pytestmark = pytest.mark.timeout(300)


def run(argv: list[str], *, cwd: Path = ROOT, env: dict[str, str] | None = None, timeout: float = 120,
        check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, env={**os.environ, **(env or {})}, capture_output=True, text=True,
                          timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(argv)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture(scope="session")
def tools() -> dict[str, str]:
    """Install (first time, ~2 min) or find the validators; their paths by name."""
    proc = run(["bash", str(DEPLOY / "tools" / "install-validators.sh")], timeout=1500)
    found = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    for key in ("HELM", "ANSIBLE_PLAYBOOK", "ANSIBLE_LINT", "HADOLINT", "DOCKER_COMPOSE", "PROMTOOL", "PROMETHEUS",
                "SYSTEMD_ANALYZE", "KUBERNETES_VALIDATE"):
        assert found.get(key) and os.access(found[key], os.X_OK), f"validator {key} missing: {found}"
    return found


# ------------------------------------------------------------------------------------------ docker compose
def compose(tools: dict[str, str], *args: str, file: Path = ROOT / "docker-compose.yml",
            check: bool = True) -> subprocess.CompletedProcess[str]:
    """``docker compose`` through the CLI plugin when the docker CLI exists, else the same binary standalone."""
    if tools.get("DOCKER"):
        argv = [tools["DOCKER"], "compose", "-f", str(file), *args]
    else:
        argv = [tools["DOCKER_COMPOSE"], "-f", str(file), *args]
    return run(argv, env={"DOCKER_CONFIG": tools["DOCKER_CONFIG"]}, check=check)


@pytest.fixture(scope="session")
def compose_model(tools: dict[str, str]) -> dict[str, Any]:
    return json.loads(compose(tools, "config", "--format", "json").stdout)


def _published(service: dict[str, Any]) -> dict[int, int]:
    return {int(p["published"]): int(p["target"]) for p in service.get("ports", [])}


def test_compose_config_is_valid_and_has_the_seed_services(compose_model: dict[str, Any]) -> None:
    services = compose_model["services"]
    assert set(services) == {"postgres", "redis", "etcd", "cnf-agent-1", "cnf-agent-2", "prometheus", "grafana"}
    assert _published(services["cnf-agent-1"]) == {8081: 8080}
    assert _published(services["cnf-agent-2"]) == {8082: 8080}
    assert _published(services["prometheus"]) == {9093: 9090}
    assert _published(services["grafana"]) == {3000: 3000}
    env = services["grafana"]["environment"]
    assert (env["GF_SECURITY_ADMIN_USER"], env["GF_SECURITY_ADMIN_PASSWORD"]) == ("admin", "admin")
    # the worker starts once the master candidate is healthy, so agent 1 wins the first election
    assert services["cnf-agent-2"]["depends_on"]["cnf-agent-1"]["condition"] == "service_healthy"
    for name in ("cnf-agent-1", "cnf-agent-2"):
        assert services[name]["command"] == ["--config", "/etc/cnf/cnf.yaml"]
        for dep in ("postgres", "redis", "etcd"):
            assert dep in services[name]["depends_on"] or "cnf-agent-1" in services[name]["depends_on"]


def test_compose_bind_mounts_exist_and_agent_configs_load(compose_model: dict[str, Any]) -> None:
    configs = {}
    for name, svc in compose_model["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "bind":
                src = Path(vol["source"])
                assert src.exists(), f"{name}: bind mount source {src} missing"
                assert ROOT in src.parents, f"{name}: {src} is outside the repository"
                if vol["target"] == "/etc/cnf/cnf.yaml":
                    configs[name] = load_config(src)
    a1, a2 = configs["cnf-agent-1"], configs["cnf-agent-2"]
    assert a1.cluster_id != a2.cluster_id
    assert a1.peer_clusters == [a2.cluster_grpc_addr] and a2.peer_clusters == [a1.cluster_grpc_addr]
    for cfg in (a1, a2):
        assert cfg.raft.etcd_endpoints == ["etcd:2379"]
        assert cfg.database.url.startswith("postgresql+asyncpg://cnf:cnf@postgres:5432/")
        assert cfg.tasks.broker_url.startswith("redis://redis:6379")
        assert cfg.api.port == 8080


def test_grafana_provisioning_matches_the_compose_mounts(compose_model: dict[str, Any]) -> None:
    mounts = {v["target"]: Path(v["source"]) for v in compose_model["services"]["grafana"]["volumes"]}
    providers = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/cnf.yml").read_text())["providers"]
    path = providers[0]["options"]["path"]
    assert mounts[path] == DASHBOARD.parent
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    assert ds["url"] == "http://prometheus:9090" and ds["type"] == "prometheus"
    home = compose_model["services"]["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{path}/{DASHBOARD.name}"


def test_compose_config_rejects_a_broken_file(tools: dict[str, str], tmp_path: Path) -> None:
    broken = tmp_path / "docker-compose.yml"
    broken.write_text((ROOT / "docker-compose.yml").read_text().replace("hostname: cnf-agent-1",
                                                                         "hostnme: cnf-agent-1"))
    proc = compose(tools, "config", "-q", file=broken, check=False)
    assert proc.returncode != 0 and "hostnme" in proc.stderr


# ------------------------------------------------------------------------------------------ Dockerfile
def test_dockerfile_passes_hadolint_and_copies_what_exists(tools: dict[str, str]) -> None:
    run([tools["HADOLINT"], "--failure-threshold", "info", str(ROOT / "Dockerfile")])
    text = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["cnf-agent"]' in text and 'CMD ["--config", "/etc/cnf/cnf.yaml"]' in text
    assert re.search(r"^EXPOSE 8080 50051$", text, re.M)
    ignored = {ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")}
    for src in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for item in src.split():
            assert (ROOT / item).exists(), f"Dockerfile copies {item}, which does not exist"
            assert item not in ignored, f"{item} is excluded by .dockerignore"


# ------------------------------------------------------------------------------------------ Ansible
SEED_PLAYBOOK_ARGS = ["-e", "cnf_image=ghcr.io/your-org/openstack-cnf", "-e", "cnf_image_tag=0.1.0",
                      "-e", "@vars/example.yml"]


def test_ansible_syntax_check_with_the_seed_command_line(tools: dict[str, str]) -> None:
    run([tools["ANSIBLE_PLAYBOOK"], "-i", "inventory/example", "site.yml", "--syntax-check", *SEED_PLAYBOOK_ARGS],
        cwd=ANSIBLE, env={"ANSIBLE_LOCAL_TEMP": "/tmp", "ANSIBLE_HOME": "/tmp/cnf-ansible-home"})


def test_ansible_syntax_check_rejects_a_broken_playbook(tools: dict[str, str], tmp_path: Path) -> None:
    shutil.copytree(ANSIBLE, tmp_path / "ansible")
    tasks = tmp_path / "ansible/roles/cnf/tasks/main.yml"
    tasks.write_text(tasks.read_text() + "\n- name: Broken\n  ansible.builtin.no_such_module:\n    x: 1\n")
    proc = run([tools["ANSIBLE_PLAYBOOK"], "-i", "inventory/example", "site.yml", "--syntax-check"],
               cwd=tmp_path / "ansible", check=False, env={"ANSIBLE_HOME": "/tmp/cnf-ansible-home"})
    assert proc.returncode != 0 and "no_such_module" in proc.stdout + proc.stderr


def test_ansible_lint_production_profile(tools: dict[str, str]) -> None:
    proc = run([tools["ANSIBLE_LINT"], "--offline", "--profile", "production", "--nocolor", "site.yml",
                "roles/cnf", "vars/example.yml", "inventory/example/hosts.yml"], cwd=ANSIBLE, timeout=240,
               env={"ANSIBLE_HOME": "/tmp/cnf-ansible-home"})
    assert "0 failure(s), 0 warning(s)" in proc.stdout + proc.stderr


@pytest.fixture(scope="session")
def ansible_rendered(tools: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The role's two templates rendered by Ansible itself, for the first controller of the example inventory."""
    out = tmp_path_factory.mktemp("ansible-render")
    role = ANSIBLE / "roles" / "cnf"
    play = [{
        "name": "Render the cnf role's templates", "hosts": "os1-ctrl", "gather_facts": False,
        "vars_files": [str(role / "defaults/main.yml"), str(ANSIBLE / "vars/example.yml")],
        "tasks": [{"name": f"Render {t}", "ansible.builtin.template": {"src": str(role / "templates" / t),
                                                                        "dest": str(out / t.removesuffix(".j2")),
                                                                        "mode": "0644"}}
                  for t in ("cnf.yaml.j2", "cnf-agent.service.j2")],
    }]
    (out / "render.yml").write_text(yaml.safe_dump(play))
    python = str(Path(tools["ANSIBLE_PLAYBOOK"]).resolve().parent / "python")
    run([tools["ANSIBLE_PLAYBOOK"], "-i", str(ANSIBLE / "inventory/example"), str(out / "render.yml"),
         "-e", "ansible_connection=local", "-e", f"ansible_python_interpreter={python}", *SEED_PLAYBOOK_ARGS[:4]],
        cwd=ANSIBLE, env={"ANSIBLE_HOME": "/tmp/cnf-ansible-home"}, timeout=180)
    return out


def test_ansible_rendered_config_loads_and_names_the_peers(ansible_rendered: Path) -> None:
    cfg = load_config(ansible_rendered / "cnf.yaml")
    assert cfg.cluster_name == "openstack-1"
    assert cfg.cluster_grpc_addr == "os1-controller.example.com:50051"
    assert cfg.peer_clusters == ["os2-controller.example.com:50051", "os3-controller.example.com:50051"]
    assert cfg.bgp.as_number == 65001 and cfg.raft.etcd_endpoints[0] == "etcd1.example.com:2379"


def test_ansible_rendered_unit_runs_the_container_with_host_network_and_mounts(
        ansible_rendered: Path, tools: dict[str, str], tmp_path: Path) -> None:
    unit = (ansible_rendered / "cnf-agent.service").read_text()
    assert "--network host" in unit
    assert "ghcr.io/your-org/openstack-cnf:0.1.0 --config /etc/cnf/cnf.yaml" in unit
    for mount in ("/etc/cnf:/etc/cnf:ro", "/etc/ceph:/etc/ceph:ro", "/var/run/libvirt:/var/run/libvirt",
                  "/var/run/frr:/var/run/frr"):
        assert f"--volume {mount} " in unit
    # no Docker engine here: a stand-in docker.service beside the unit satisfies Requires= (verify loads units
    # from the directory of the file it checks); the docker CLI path is this machine's
    (tmp_path / "docker.service").write_text("[Unit]\nDescription=stand-in\n[Service]\nExecStart=/bin/true\n")
    _systemd_verify(tools, unit.replace("/usr/bin/docker", shutil.which("docker") or "/bin/true"), tmp_path)


# ------------------------------------------------------------------------------------------ systemd
def _systemd_verify(tools: dict[str, str], text: str, tmp_path: Path, name: str = "cnf-agent.service") -> None:
    path = tmp_path / name
    path.write_text(text)
    proc = run([tools["SYSTEMD_ANALYZE"], "verify", str(path)], check=False, timeout=60)
    ours = [ln for ln in (proc.stdout + proc.stderr).splitlines() if name in ln]
    assert proc.returncode == 0 and not ours, proc.stdout + proc.stderr


def test_systemd_unit_verifies(tools: dict[str, str], tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "cnf-agent.service").read_text()
    assert "ExecStart=/usr/local/bin/cnf-agent --config /etc/cnf/cnf.yaml" in text
    agent = shutil.which("cnf-agent") or str(ROOT / ".venv/bin/cnf-agent")
    _systemd_verify(tools, text.replace("/usr/local/bin/cnf-agent", agent), tmp_path)


def test_systemd_verify_reports_a_broken_unit(tools: dict[str, str], tmp_path: Path) -> None:
    text = (DEPLOY / "systemd" / "cnf-agent.service").read_text().replace("Restart=", "Restrt=")
    agent = shutil.which("cnf-agent") or str(ROOT / ".venv/bin/cnf-agent")
    with pytest.raises(AssertionError, match="Restrt"):
        _systemd_verify(tools, text.replace("/usr/local/bin/cnf-agent", agent), tmp_path)


# ------------------------------------------------------------------------------------------ Helm
def helm(tools: dict[str, str], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run([tools["HELM"], *args], env={"HELM_CACHE_HOME": "/tmp/cnf-helm/cache",
                                            "HELM_CONFIG_HOME": "/tmp/cnf-helm/config",
                                            "HELM_DATA_HOME": "/tmp/cnf-helm/data"}, check=check)


@pytest.fixture(scope="session")
def cluster_id() -> str:
    return str(uuid.uuid4())  # the seed's $(uuidgen)


@pytest.fixture(scope="session")
def helm_rendered(tools: dict[str, str], cluster_id: str) -> str:
    """``helm template`` with the values of the seed's ``helm upgrade --install`` line."""
    return helm(tools, "template", "cnf", str(CHART), "--set", f"cluster.id={cluster_id}", *SEED_HELM_SETS,
                "--set-json", f"peers={json.dumps(SEED_PEERS)}").stdout


@pytest.fixture(scope="session")
def helm_manifests(helm_rendered: str) -> dict[str, dict[str, Any]]:
    """The rendered manifests by kind."""
    docs = [d for d in yaml.safe_load_all(helm_rendered) if d]
    kinds = {d["kind"]: d for d in docs}
    assert len(kinds) == len(docs)
    return kinds


def test_helm_lint(tools: dict[str, str], cluster_id: str) -> None:
    proc = helm(tools, "lint", str(CHART), "--strict", "--set", f"cluster.id={cluster_id}", *SEED_HELM_SETS[2:],
                "--set-json", f"peers={json.dumps(SEED_PEERS)}")
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("kube_version", ["1.25.0", "1.37.0"])  # the chart's kubeVersion floor, the newest
def test_helm_manifests_validate_against_the_kubernetes_schemas(tools: dict[str, str], helm_rendered: str,
                                                                 kube_version: str, tmp_path: Path) -> None:
    path = tmp_path / "rendered.yaml"
    path.write_text(helm_rendered)
    proc = run([tools["KUBERNETES_VALIDATE"], "--strict", "-k", kube_version, str(path)])
    assert proc.stdout.count("passed for resource") == 5, proc.stdout
    broken = tmp_path / "broken.yaml"
    broken.write_text(helm_rendered.replace("hostNetwork: true", "hostNetwrk: true"))
    bad = run([tools["KUBERNETES_VALIDATE"], "--strict", "-k", kube_version, str(broken)], check=False)
    assert bad.returncode != 0 and "hostNetwrk" in bad.stdout + bad.stderr


def test_helm_daemonset_on_controllers_with_host_network_and_mounts(helm_manifests: dict[str, Any]) -> None:
    assert set(helm_manifests) == {"DaemonSet", "ConfigMap", "Secret", "Service", "ServiceAccount"}
    ds = helm_manifests["DaemonSet"]
    spec = ds["spec"]["template"]["spec"]
    assert spec["nodeSelector"] == {"openstack-control-plane": "enabled"}
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "ClusterFirstWithHostNet"
    assert any(t["key"] == "node-role.kubernetes.io/control-plane" for t in spec["tolerations"])
    (container,) = spec["containers"]
    assert container["args"] == ["--config", "/etc/cnf/cnf.yaml"]
    assert container["image"] == "ghcr.io/your-org/openstack-cnf:0.1.0"
    assert {p["containerPort"] for p in container["ports"]} == {8080, 50051}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    for path in ("/etc/ceph", "/var/run/libvirt", "/var/run/frr"):
        assert volumes[mounts[path]]["hostPath"]["path"] == path
    assert volumes[mounts["/etc/cnf"]]["configMap"]["name"] == helm_manifests["ConfigMap"]["metadata"]["name"]
    assert ds["spec"]["selector"]["matchLabels"].items() <= ds["spec"]["template"]["metadata"]["labels"].items()
    env = {e["name"]: e for e in container["env"]}
    assert env["CNF_DATABASE__URL"]["valueFrom"]["secretKeyRef"]["name"] == helm_manifests["Secret"]["metadata"][
        "name"]


def test_helm_config_carries_the_seed_values(helm_manifests: dict[str, Any], cluster_id: str,
                                             tmp_path: Path) -> None:
    path = tmp_path / "cnf.yaml"
    path.write_text(helm_manifests["ConfigMap"]["data"]["cnf.yaml"])
    env = {e["name"]: e for e in helm_manifests["DaemonSet"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["CNF_API__KEYSTONE__PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "password"
    with pytest.MonkeyPatch.context() as mp:  # the Secret, as the DaemonSet passes it
        mp.setenv("CNF_API__KEYSTONE__PASSWORD", "from-the-secret")
        cfg = load_config(path)
    assert cfg.api.auth_strategy == "keystone" and cfg.api.keystone.password == "from-the-secret"
    assert (cfg.cluster_id, cfg.cluster_name, cfg.cluster_grpc_addr) == (cluster_id, "openstack-1", "os1-ctrl:50051")
    assert cfg.peer_clusters == SEED_PEERS


def test_helm_peers_list_forms(tools: dict[str, str], cluster_id: str,
                               helm_manifests: dict[str, Any]) -> None:
    """``--set peers={a,b}`` renders the same; the seed's literal ``--set peers=["a","b"]`` is refused by helm
    (its --set splits at commas), which is why the docs use --set-json."""
    braces = helm(tools, "template", "cnf", str(CHART), "--set", f"cluster.id={cluster_id}", *SEED_HELM_SETS,
                  "--set", "peers={" + ",".join(SEED_PEERS) + "}").stdout
    cm = next(d for d in yaml.safe_load_all(braces) if d and d["kind"] == "ConfigMap")
    assert cm["data"] == helm_manifests["ConfigMap"]["data"]
    literal = helm(tools, "template", "cnf", str(CHART), "--set", f"cluster.id={cluster_id}", *SEED_HELM_SETS,
                   "--set", "peers=[" + ",".join(f'"{p}"' for p in SEED_PEERS) + "]", check=False)
    assert literal.returncode != 0


def test_helm_refuses_missing_or_malformed_values(tools: dict[str, str]) -> None:
    missing = helm(tools, "template", "cnf", str(CHART), check=False)
    assert missing.returncode != 0 and "cluster.id is required" in missing.stderr
    bad = helm(tools, "template", "cnf", str(CHART), "--set", "cluster.id=not-a-uuid", *SEED_HELM_SETS, check=False)
    assert bad.returncode != 0 and "/cluster/id" in bad.stderr
    peers = helm(tools, "template", "cnf", str(CHART), "--set", f"cluster.id={uuid.uuid4()}", *SEED_HELM_SETS,
                 "--set-json", 'peers=["os2-ctrl"]', check=False)
    assert peers.returncode != 0 and "/peers/0" in peers.stderr


# ------------------------------------------------------------------------------------------ Prometheus + Grafana
def _dashboard_exprs() -> list[str]:
    dash = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]


def _rule_exprs() -> list[str]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return [r["expr"] for g in groups for r in g["rules"]]


PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
                "offset", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = m.group(0)
        rest = text[m.end():].lstrip()
        if word.lower() in PROMQL_WORDS or rest.startswith("(") or text[max(0, m.start() - 1)] == "$":
            continue
        names.add(word)
    return names


def _exported_series_names() -> set[str]:
    names = set(METRIC_NAMES)
    for n in METRIC_NAMES:
        names |= {f"{n}_bucket", f"{n}_sum", f"{n}_count"}
    return names


def test_promql_name_extraction_is_not_vacuous() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le, phase) (rate(cnf_x_bucket{le="1"}[$__rate_interval]))) '
        "* on (instance) group_left (cluster_name) cnf_agent_info > bool 1") == {"cnf_x_bucket", "cnf_agent_info"}


def test_dashboard_and_alerts_reference_only_exported_metrics() -> None:
    exported = _exported_series_names()
    used: set[str] = set()
    for expr in _dashboard_exprs() + _rule_exprs():
        names = promql_metric_names(expr)
        unknown = names - exported
        assert not unknown, f"{expr!r} uses {sorted(unknown)}, not defined in cnf/observability/metrics.py"
        used |= names
    families = {re.sub(r"_(bucket|sum|count)$", "", n) for n in used}
    # the dashboard covers what the issue asks for
    for needed in ("cnf_migrations_in_flight", "cnf_migration_phase_duration_seconds",
                   "cnf_migration_guest_pause_seconds", "cnf_migration_network_blackout_seconds",
                   "cnf_mirror_lag_seconds", "cnf_agent_is_master", "cnf_bgp_sessions_up"):
        assert needed in families


def test_dashboard_structure() -> None:
    dash = json.loads(DASHBOARD.read_text())
    assert dash["uid"] == "cnf-federation" and dash["title"]
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    rows = [p["title"] for p in dash["panels"] if p["type"] == "row"]
    assert rows == ["Federation overview", "Migrations in flight", "Phase timings", "Downtime", "Ceph RBD mirror lag"]
    cells: set[tuple[int, int]] = set()
    for p in dash["panels"]:
        g = p["gridPos"]
        assert g["x"] + g["w"] <= 24
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"panel {p['title']!r} overlaps another"
        cells |= mine
        for t in p.get("targets", []):
            assert t["datasource"]["uid"] == "${datasource}"
    (var,) = dash["templating"]["list"]
    assert var["type"] == "datasource" and var["current"]["value"] == "cnf-prometheus"


def test_prometheus_config_and_rules_pass_promtool(tools: dict[str, str], tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    shutil.copytree(DEPLOY / "prometheus" / "rules", etc / "rules")
    (etc / "targets").mkdir()
    shutil.copy(DEPLOY / "prometheus" / "targets" / "compose.yml", etc / "targets" / "cnf-agents.yml")
    cfg = (DEPLOY / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus", str(etc))
    (etc / "prometheus.yml").write_text(cfg)
    proc = run([tools["PROMTOOL"], "check", "config", str(etc / "prometheus.yml")])
    assert f"SUCCESS: {len(_rule_exprs())} rules found" in proc.stdout
    assert "WARNING" not in proc.stdout + proc.stderr
    # every dashboard query is valid PromQL too (as recording rules, with Grafana's variable substituted)
    as_rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "1m")}
        for i, e in enumerate(_dashboard_exprs())]}]}
    (tmp_path / "dashboard-rules.yml").write_text(yaml.safe_dump(as_rules))
    run([tools["PROMTOOL"], "check", "rules", str(tmp_path / "dashboard-rules.yml")])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def real_prometheus(tools: dict[str, str], tmp_path: Path) -> Iterator[tuple[str, CNFMetrics]]:
    """A real Prometheus (Debian package) scraping, every 0.5 s, a real HTTP server exposing an agent's metrics
    after a sim live migration; yields its base URL and the metrics object."""
    import threading

    import uvicorn
    from starlette.applications import Starlette

    metrics = asyncio.run(_metrics_after_sim_migration())
    app = Starlette()
    app.add_route("/metrics", metrics.starlette_endpoint())
    agent_port, prom_port = _free_port(), _free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=agent_port, log_config=None,
                                           access_log=False, lifespan="off"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    etc = tmp_path / "etc"
    shutil.copytree(DEPLOY / "prometheus" / "rules", etc / "rules")
    (etc / "targets").mkdir()
    (etc / "targets" / "cnf-agents.yml").write_text(yaml.safe_dump([{"targets": [f"127.0.0.1:{agent_port}"]}]))
    cfg = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text().replace("/etc/prometheus", str(etc)))
    cfg["global"]["scrape_interval"] = "500ms"
    cfg["scrape_configs"] = [dict(c, scrape_interval="500ms") for c in cfg["scrape_configs"]
                             if c["job_name"] == "cnf-agents"]
    (etc / "prometheus.yml").write_text(yaml.safe_dump(cfg))
    log = open(tmp_path / "prometheus.log", "w")
    proc = subprocess.Popen([tools["PROMETHEUS"], f"--config.file={etc / 'prometheus.yml'}",
                             f"--storage.tsdb.path={tmp_path / 'data'}", f"--web.listen-address=127.0.0.1:{prom_port}"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        yield f"http://127.0.0.1:{prom_port}", metrics
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()
        server.should_exit = True
        thread.join(timeout=10)


async def _metrics_after_sim_migration() -> CNFMetrics:
    from cnf.clock import ManualClock
    from cnf.migration.engine import MigrationEngine
    from cnf.migration.model import MigrationKind, VmRef
    from cnf.observability.telemetry import MigrationTelemetry
    from cnf.sim.demo import DEMO_CLUSTERS, demo_directory, demo_fabric

    clock = ManualClock()
    fabric = demo_fabric(clock)
    engine = MigrationEngine(demo_directory(fabric), clock)
    src, dst = DEMO_CLUSTERS[0][0], DEMO_CLUSTERS[1][0]
    srv = next(iter(fabric.clusters[src].servers.values()))
    vm = VmRef(id=srv.id, name=srv.name, ip=srv.ip, image=srv.image, flavor=srv.flavor, vcpus=srv.vcpus,
               ram_mb=srv.ram_mb, host=srv.host)
    metrics = CNFMetrics(cluster_id=src, cluster_name="openstack-1", version="test")
    telemetry = MigrationTelemetry(metrics)
    rec = engine.new_record(kind=MigrationKind.LIVE, vm=vm, source_cluster_id=src, dest_cluster_id=dst, epoch=1)
    for _ in range(500):
        adv = await engine.advance(rec)
        telemetry.observe(adv.record, adv.events)
        rec = adv.record
        if adv.delay_s is None:
            break
        clock.advance(adv.delay_s)
    assert str(rec.state) == "completed"
    metrics.set_master(True, 1)
    metrics.set_bgp_sessions(up=1, configured=1)
    metrics.set_mirror_lag("vms", rec.vm.image, 2.0)
    return metrics


@pytest.mark.timeout(120)
def test_every_dashboard_query_runs_on_a_real_prometheus(real_prometheus: tuple[str, CNFMetrics]) -> None:
    base, _metrics = real_prometheus
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=base, timeout=5) as client:
        # wait until Prometheus has at least 3 scrapes of the agent (rate() needs two points)
        while True:
            try:
                r = client.get("/api/v1/query", params={"query": "count_over_time(cnf_agent_info[1m])"})
                result = r.json()["data"]["result"] if r.status_code == 200 else []
                if result and float(result[0]["value"][1]) >= 3:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Prometheus did not scrape the agent within 60 s"
            time.sleep(0.25)
        # a migration completed before the first scrape, so counters are flat: shift the window with increase()
        # over the whole test and check each query is accepted and the key panels have data
        empty = []
        for expr in _dashboard_exprs():
            q = expr.replace("$__rate_interval", "1m")
            r = client.get("/api/v1/query", params={"query": q})
            body = r.json()
            assert r.status_code == 200 and body["status"] == "success", f"{q}: {body}"
            if not body["data"]["result"]:
                empty.append(expr)
        # series that exist after one live migration must show up; rate/increase panels may be empty (flat)
        for expr in _dashboard_exprs():
            if "rate(" in expr or "increase(" in expr or "cnf_proxied" in expr or "cnf_driver_errors" in expr \
                    or "cnf_peer_rpc" in expr or "cnf_migrations_in_flight" in expr:
                continue
            assert expr not in empty, f"panel query returned nothing: {expr}"
        alerts = client.get("/api/v1/rules").json()["data"]["groups"]
        assert {r["name"] for g in alerts for r in g["rules"]} >= {"CNFNoMaster", "CNFMirrorLagHigh"}
        assert all(r["health"] in ("ok", "unknown") for g in alerts for r in g["rules"])
