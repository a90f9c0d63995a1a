"""The running federation's record (pure, no lab): what another process rebuilds from it, and when it counts as up.

``lab.e2e_federation`` keeps the agents in a supervisor process; ``migrate``/``status``/``down`` in other processes
know them only through ``<lab>/federation.json``. These checks pin the contract those commands rely on: agents and
workers are known by the recorded PID (alive exactly while that process lives), fields a newer lab records (the
controller namespace and addresses) reach the rebuilt agents, and a record whose supervisor is gone is not "up".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from lab.e2e import E2EError, E2ELab
from lab.e2e_federation import RECORD, AttachedAgent, attach, running_record


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _record(tmp_path: Path, *, supervisor: int, agent_pid: int) -> dict[str, Any]:
    agent = {"name": "lab-a", "cluster_id": "c-a", "url": "http://10.253.1.2:5000", "api_port": 5000,
             "grpc_port": 5001, "as_number": 65001, "config": str(tmp_path / "a.yaml"), "log": str(tmp_path / "a.log"),
             "pid": agent_pid, "namespace": "cnfe2e-x-ca", "api_host": "10.253.1.2", "peer_host": "10.255.0.31"}
    worker = {"name": "worker-lab-a", "config": str(tmp_path / "a.yaml"), "log": str(tmp_path / "w.log"),
              "pid": agent_pid, "namespace": "cnfe2e-x-ca"}
    return {"ready": True, "supervisor_pid": supervisor, "base": str(tmp_path), "tasks": "celery",
            "openstack_record": None, "cloud": "sim", "database": "db", "master_url": agent["url"],
            "agents": {"a": agent}, "workers": {"a": worker}, "nova_boot_s": None}


def test_attached_agents_are_known_by_the_recorded_pid(tmp_path: Path) -> None:
    rec = _record(tmp_path, supervisor=os.getpid(), agent_pid=os.getpid())
    fed = attach(E2ELab(root=tmp_path), rec)
    agent, worker = fed.agents["a"], fed.workers["a"]
    assert isinstance(agent, AttachedAgent)
    assert (agent.pid, worker.pid) == (os.getpid(), os.getpid())
    assert agent.alive() and worker.alive()
    assert agent.cluster_id == "c-a" and fed.tasks == "celery" and fed.database == "db"
    if hasattr(agent, "api_host"):  # the namespace fields of lab.federation reach the rebuilt agent
        assert agent.url == "http://10.253.1.2:5000"
    with pytest.raises(E2EError):
        agent.start()  # only the supervisor starts its agents

    gone = attach(E2ELab(root=tmp_path), _record(tmp_path, supervisor=os.getpid(), agent_pid=_dead_pid()))
    assert not gone.agents["a"].alive() and not gone.workers["a"].alive()


def test_a_record_counts_as_up_only_while_its_supervisor_lives(tmp_path: Path) -> None:
    assert running_record(tmp_path) is None  # no record
    (tmp_path / RECORD).write_text(json.dumps(_record(tmp_path, supervisor=os.getpid(), agent_pid=os.getpid())))
    assert running_record(tmp_path) is not None
    (tmp_path / RECORD).write_text(json.dumps(_record(tmp_path, supervisor=_dead_pid(), agent_pid=os.getpid())))
    assert running_record(tmp_path) is None
    (tmp_path / RECORD).write_text(json.dumps({"ready": False, "supervisor_pid": os.getpid(), "error": "x"}))
    assert running_record(tmp_path) is None
