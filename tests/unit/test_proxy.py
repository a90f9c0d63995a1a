"""The any-node proxy: a non-master forwards to the master unchanged, never loops, 503s without a master."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cnf.agent.raft import MasterInfo
from cnf.api.app import create_app
from cnf.api.proxy import FORWARDED_BY, master_proxy


class FollowerElection:
    """A follower's view: someone else (or nobody) is master."""

    def __init__(self, master: MasterInfo | None) -> None:
        self.master = master

    def is_master(self) -> bool:
        return False

    def epoch(self) -> int | None:
        return None

    async def current_master(self) -> MasterInfo | None:
        return self.master


@pytest.fixture
async def pair(embedded_agent: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FollowerElection]]:
    """A worker app whose master is the embedded agent's app (reached through an in-process transport)."""
    master_app = create_app(embedded_agent.service)
    worker_service = type("WorkerService", (), {})()
    worker_service.config = embedded_agent.config.model_copy(update={"cluster_id":
                                                                      "99999999-9999-4999-8999-999999999999"})
    election = FollowerElection(MasterInfo(cluster_id=embedded_agent.config.cluster_id, address="http://master",
                                           epoch=7, since=0.0, lease_ttl_s=2.0))
    worker_service.election = election
    worker_service.store = embedded_agent.service.store
    worker_app = create_app(worker_service, middlewares=[master_proxy(worker_service,
                                                                      transport=httpx.ASGITransport(master_app))])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=worker_app), base_url="http://worker") as c:
        yield c, election


async def test_reads_writes_and_errors_are_forwarded_unchanged(pair: Any) -> None:
    client, _ = pair
    r = await client.get("/v1/clusters", params={"x": "1"})
    assert r.status_code == 200 and len(r.json()["clusters"]) == 3
    assert "cnf-99999999-9999-4999-8999-999999999999" in r.headers["via"]
    vms = (await client.get("/v1/vms", params={"cluster_id": "openstack-1"})).json()["vms"]
    mig = await client.post(f"/v1/vms/{vms[0]['id']}/migrate", json={"dest_cluster_id": "openstack-2"},
                            headers={"Idempotency-Key": "k1"})
    assert mig.status_code == 202 and mig.headers["location"].startswith("/v1/migrations/")
    again = await client.post(f"/v1/vms/{vms[0]['id']}/migrate", json={"dest_cluster_id": "openstack-2"},
                              headers={"Idempotency-Key": "k1"})
    assert again.json()["id"] == mig.json()["id"]
    bad = await client.post(f"/v1/vms/{vms[0]['id']}/live-migrate", json={"dest_next_hop": "x"})
    assert bad.status_code == 422 and bad.headers["content-type"].startswith("application/problem+json")
    assert (await client.get("/v1/vms/nope")).status_code == 404


async def test_no_master_is_503_with_retry_after(pair: Any) -> None:
    client, election = pair
    election.master = None
    r = await client.get("/v1/clusters")
    assert r.status_code == 503 and r.headers["retry-after"] == "1" and r.json()["code"] == "no_master"


async def test_an_already_forwarded_request_is_not_forwarded_again(pair: Any) -> None:
    client, _ = pair
    r = await client.get("/v1/clusters", headers={FORWARDED_BY: "someone"})
    assert r.status_code == 503 and r.json()["code"] == "not_master" and r.headers["retry-after"]


async def test_master_unreachable_is_503(embedded_agent: Any) -> None:
    svc = type("S", (), {})()
    svc.config = embedded_agent.config
    svc.config = svc.config.model_copy(update={"cluster_id": "99999999-9999-4999-8999-999999999999"})
    svc.election = FollowerElection(MasterInfo(cluster_id="other", address="http://127.0.0.1:9", epoch=1, since=0,
                                               lease_ttl_s=2))
    app = create_app(svc, middlewares=[master_proxy(svc, timeout_s=2)])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://w") as c:
        r = await c.post("/v1/master/elect", json={"cluster_id": "x"})
    assert r.status_code == 503 and r.headers["retry-after"]
