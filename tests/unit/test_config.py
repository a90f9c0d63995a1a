"""Config: the seed's keys load; a bad file names the key in one line and cnf-agent exits 2."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from cnf.config import load_config
from cnf.errors import ConfigError

SEED = """
cluster_id: "22222222-2222-4222-8222-222222222222"
cluster_name: "openstack-2"
cluster_grpc_addr: "os2-controller.example.com:50051"
peer_clusters:
  - "os1-controller.example.com:50051"
  - "os3-controller.example.com:50051"
ceph:
  pool: "vms"
  mirror_mode: "image"
bgp:
  as_number: 65002
  route_reflector_addr: "rr.example.com"
raft:
  etcd_endpoints: ["etcd.example.com:2379"]
database:
  url: "postgresql+asyncpg://cnf:secret@pg.example.com:5432/cnf"
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "cnf.yaml"
    p.write_text(text)
    return p


def test_seed_example_loads(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, SEED))
    assert cfg.cluster_name == "openstack-2" and cfg.bgp.as_number == 65002
    assert cfg.raft.etcd_endpoints == ["etcd.example.com:2379"] and cfg.ceph.mirror_mode == "image"
    assert cfg.api.port == 8080 and not cfg.embedded and cfg.drivers.cloud == "sim"


def test_no_file_is_the_embedded_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr("cnf.config.DEFAULT_PATH", tmp_path / "absent.yaml")
    cfg = load_config(None)
    assert cfg.embedded and cfg.database.url.startswith("sqlite+aiosqlite")


def test_environment_overrides_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CNF_BGP__AS_NUMBER", "65009")
    monkeypatch.setenv("CNF_API_PORT", "9999")
    cfg = load_config(write(tmp_path, SEED))
    assert cfg.bgp.as_number == 65009 and cfg.api.port == 9999


@pytest.mark.parametrize("patch,key", [
    ("bgp:\n  as_number: -1\n", "bgp.as_number"),
    ("ceph:\n  mirror_mode: journal\n", "ceph.mirror_mode"),
    ("raft:\n  etcd_endpoints: ['nohostport']\n", "raft.etcd_endpoints"),
    ("cluster_id: not-a-uuid\n", "cluster_id"),
    ("database:\n  url: mysql://x\n", "database.url"),
    ("colour: blue\n", "colour"),
    ("bgp:\n  asn: 1\n", "bgp.asn"),
])
def test_bad_values_name_the_key(tmp_path: Path, patch: str, key: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_config(write(tmp_path, patch))
    assert e.value.key == key and key in e.value.message


def test_broken_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"not valid YAML at line [23]"):
        load_config(write(tmp_path, "a: 1\nb: [unclosed\n"))
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")


def test_cnf_agent_exits_2_with_one_line(tmp_path: Path) -> None:
    bad = write(tmp_path, "bgp:\n  as_number: nope\n")
    r = subprocess.run([sys.executable, "-m", "cnf.main", "--config", str(bad)], capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "bgp.as_number" in lines[0], r.stderr
