"""Celery workers in a real federation: every cloud reached through its agent over mTLS CNFPeer.

The agents run ``tasks.runner: celery``; one ``cnf-worker`` per agent (each with its agent's config and
certificate) drives the migrations. The workers hold no driver of their own: every step's call must show
up in the owning agent's ``peer_call`` log, made by a worker (not by the master's in-process runner).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from federation_harness import Federation, register_all, start_federation
from test_federation import migrate, peer_calls, wait_state

from lab.etcd import EtcdCluster
from lab.loopback import free_port
from lab.redis import RedisServer

pytestmark = [pytest.mark.functional, pytest.mark.timeout(300)]


@pytest.fixture
def celery_federation(etcd: EtcdCluster, pg_url: str, tmp_path: Path) -> Iterator[Federation]:
    redis = RedisServer(port=free_port(), workdir=tmp_path)
    redis.start()
    workers: list[subprocess.Popen[bytes]] = []
    try:
        tasks = {"runner": "celery", "broker_url": redis.url, "lease_ttl_s": 3.0, "reconcile_stale_s": 5.0,
                 "reconcile_every_s": 0.5, "step_time_limit_s": 20.0}
        for fed in start_federation(etcd, pg_url, tmp_path, tasks=tasks):
            for a in fed.agents:
                log = (tmp_path / f"worker-{a.name}.log").open("ab")
                workers.append(subprocess.Popen(
                    [sys.executable, "-m", "cnf.tasks.worker", "--config", str(a.config), "--concurrency", "1",
                     "--loglevel", "WARNING"], stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"}))
            yield fed
    finally:
        for w in workers:
            if w.poll() is None:
                os.killpg(w.pid, signal.SIGTERM)
                try:
                    w.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    os.killpg(w.pid, signal.SIGKILL)
                    w.wait(timeout=10)
        redis.stop()


def test_workers_drive_live_and_cold_migrations_through_the_agents(celery_federation: Federation,
                                                                   tmp_path: Path) -> None:
    fed = celery_federation
    master = fed.master_agent()
    register_all(fed, via=master)
    src, dst = [a for a in fed.agents if a is not master]
    vms = httpx.get(f"{master.url}/v1/vms", params={"cluster_id": src.cluster_id}, timeout=10).json()["vms"]
    live = wait_state(fed, migrate(fed, master.url, "live-migrate", vms[0], dst.cluster_id),
                      ("completed", "failed", "needs_operator"), 120)
    assert live["state"] == "completed", live["error"]
    cold = wait_state(fed, migrate(fed, master.url, "migrate", vms[1], dst.cluster_id),
                      ("completed", "failed", "needs_operator"), 120)
    assert cold["state"] == "completed", cold["error"]
    # every cloud-local step ran in the owning agent, called over CNFPeer by a worker with the master's epoch
    callers = {e.get("caller") for a in (src, dst) for e in a.log_events() if e.get("event") == "peer_call"}
    assert callers <= {a.cluster_id for a in fed.agents}, callers
    src_ops = {op for a in fed.agents for op in peer_calls(src, a.cluster_id)}
    dst_ops = {op for a in fed.agents for op in peer_calls(dst, a.cluster_id)}
    assert {"storage.demote", "hypervisor.start_migration", "bgp.withdraw", "cloud.retire_server"} <= src_ops
    assert {"storage.promote", "hypervisor.prepare_incoming", "bgp.announce", "cloud.boot_receiver"} <= dst_ops
    # the master's agent ran no migration step itself: its runner only enqueued
    assert not [e for e in master.log_events() if e.get("event") == "step_started"]
    worker_logs = "".join(p.read_text(errors="replace") for p in tmp_path.glob("worker-*.log"))
    assert '"peer_attached"' in worker_logs and '"task_done"' in worker_logs
    moved = httpx.get(f"{master.url}/v1/vms/{vms[0]['id']}", timeout=10).json()
    assert moved["cluster_id"] == dst.cluster_id and moved["migration_id"] is None
