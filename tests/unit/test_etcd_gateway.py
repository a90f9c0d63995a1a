"""grpc-gateway JSON parsing and endpoint rotation of cnf.agent.etcd_gateway, without a server.

Response bodies are real etcd 3.5.1 answers captured in the lab (tests/data/etcd/gateway_curl_demo.txt and the
session notes in docs/election.md): int64 as strings, proto3 defaults omitted.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from cnf.agent.etcd_gateway import (
    EtcdGateway,
    KeyValue,
    LeaseNotFound,
    TxnResult,
    WatchCompacted,
    _parse_watch_line,
    b64,
    normalize_endpoints,
    prefix_end,
)
from cnf.agent.raft import master_info_from_kv
from cnf.errors import DriverUnavailable, InvalidInput

DATA = Path(__file__).resolve().parents[1] / "data" / "etcd" / "gateway_curl_demo.txt"


def captured() -> dict[str, dict[str, Any]]:
    out = {}
    for line in DATA.read_text().splitlines():
        name, _, body = line.partition(" -> ")
        out[name.strip()] = json.loads(body)
    return out


def test_fixture_has_the_cases_we_rely_on() -> None:
    c = captured()
    assert {"grant TTL=1", "txn#1", "txn#2", "keepalive", "keepalive after revoke"} <= set(c)


def gateway_answering(answers: dict[str, Any], calls: list[tuple[str, dict[str, Any]]] | None = None) -> EtcdGateway:
    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path.removeprefix("/v3")
        if calls is not None:
            calls.append((f"{request.url.host}:{request.url.port}{path}", json.loads(request.content or b"{}")))
        answer = answers[path]
        if isinstance(answer, Exception):
            raise answer
        if isinstance(answer, httpx.Response):
            return answer
        return httpx.Response(200, json=answer)

    return EtcdGateway(["127.0.0.1:1"], transport=httpx.MockTransport(handler))


async def test_grant_reports_the_clamped_ttl() -> None:
    gw = gateway_answering({"/lease/grant": captured()["grant TTL=1"]})
    assert await gw.lease_grant(1) == (6796391515486824100, 2)


async def test_keepalive_ttl_and_missing_ttl_means_lost() -> None:
    c = captured()
    assert await gateway_answering({"/lease/keepalive": c["keepalive"]}).lease_keepalive(1) == 3
    assert await gateway_answering({"/lease/keepalive": c["keepalive after revoke"]}).lease_keepalive(1) == 0


async def test_txn_success_and_omitted_succeeded() -> None:
    c = captured()
    won = await gateway_answering({"/kv/txn": c["txn#1"]}).txn([], [], [])
    assert won.succeeded and won.revision == 114
    kv = won.ranges()[0][0]
    assert (kv.key, kv.value, kv.create_revision, kv.lease) == ("/cnf/demo", b"nodeA", 114, 6796391515486824102)
    lost = await gateway_answering({"/kv/txn": c["txn#2"]}).txn([], [], [])
    assert not lost.succeeded and lost.ranges()[0][0].create_revision == 114


async def test_revoke_of_unknown_lease_is_not_an_error_but_a_put_is() -> None:
    not_found = httpx.Response(404, json={"error": "etcdserver: requested lease not found", "code": 5,
                                          "message": "etcdserver: requested lease not found"})
    gw = gateway_answering({"/lease/revoke": not_found, "/kv/put": not_found})
    await gw.lease_revoke(12345)
    with pytest.raises(LeaseNotFound):
        await gw.put("/a", "b", lease=12345)


async def test_rotation_on_connection_errors_and_503() -> None:
    calls: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(f"{request.url.port}")
        if request.url.port == 1:
            raise httpx.ConnectError("refused")
        if request.url.port == 2:
            return httpx.Response(503, json={"error": "etcdserver: no leader", "message": "etcdserver: no leader"})
        return httpx.Response(200, json={"header": {"revision": "7"}, "kvs": []})

    gw = EtcdGateway(["127.0.0.1:1", "http://127.0.0.1:2", "127.0.0.1:3"], transport=httpx.MockTransport(handler))
    assert await gw.range("/x") == (7, [])
    assert calls == ["1", "2", "3"]
    assert gw.current_endpoint == "http://127.0.0.1:3"  # sticks to the member that answered
    await gw.range("/x")
    assert calls[-1] == "3"


async def test_all_endpoints_down_is_driver_unavailable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("slow")

    gw = EtcdGateway(["127.0.0.1:1", "127.0.0.1:2"], transport=httpx.MockTransport(handler))
    with pytest.raises(DriverUnavailable) as ei:
        await gw.lease_keepalive(5)
    assert ei.value.details["port"] == "etcd" and "ReadTimeout" in str(ei.value)


def test_watch_lines() -> None:
    put = ('{"result":{"header":{"revision":"2"},"events":[{"kv":{"key":"L2NuZi9tYXN0ZXI=","create_revision":"2",'
           '"mod_revision":"2","version":"1","value":"eA=="}}]}}')
    delete = ('{"result":{"header":{"revision":"3"},"events":[{"type":"DELETE","kv":{"key":"L2NuZi9tYXN0ZXI=",'
              '"mod_revision":"3"}}]}}')
    created = '{"result":{"header":{"revision":"2"},"created":true}}'
    (ev,) = _parse_watch_line(put, "e")
    assert ev.type == "PUT" and ev.kv.key == "/cnf/master" and ev.kv.value == b"x"  # PUT has no "type" on the wire
    (ev,) = _parse_watch_line(delete, "e")
    assert ev.type == "DELETE" and ev.kv.mod_revision == 3 and ev.kv.create_revision == 0
    assert _parse_watch_line(created, "e") == []
    with pytest.raises(DriverUnavailable):
        _parse_watch_line('{"error":{"grpc_code":14,"http_code":503,"message":"error reading from server: EOF"}}',
                          "e")
    with pytest.raises(WatchCompacted):
        _parse_watch_line('{"result":{"header":{},"compact_revision":"5","canceled":true}}', "e")


@pytest.mark.parametrize(("given", "expected"), [
    ("127.0.0.1:2379", ["http://127.0.0.1:2379"]),
    ("127.0.0.1:1, http://h:2/", ["http://127.0.0.1:1", "http://h:2"]),
    (["https://a:3"], ["https://a:3"]),
])
def test_normalize_endpoints(given: Any, expected: list[str]) -> None:
    assert normalize_endpoints(given) == expected


@pytest.mark.parametrize("bad", ["", [], ["nohost"], ["ftp://a:1"], ["a:port"]])
def test_bad_endpoints_name_the_field(bad: Any) -> None:
    with pytest.raises(InvalidInput) as ei:
        normalize_endpoints(bad)
    assert ei.value.field == "etcd_endpoints"


def test_prefix_end_and_b64() -> None:
    assert prefix_end("/cnf/agents/") == "/cnf/agents0"
    assert b64("/cnf/") == "L2NuZi8="


def test_master_info_parsing_tolerates_foreign_values() -> None:
    kv = KeyValue(key="/cnf/master", value=json.dumps({"cluster_id": "A", "address": "h:1", "since": 5.0,
                                                       "lease_ttl_s": 2.0}).encode(),
                  create_revision=9, mod_revision=9, version=1, lease=1)
    info = master_info_from_kv(kv)
    assert (info.cluster_id, info.address, info.epoch, info.since, info.lease_ttl_s) == ("A", "h:1", 9, 5.0, 2.0)
    odd = master_info_from_kv(KeyValue("/cnf/master", b"nodeA", 4, 4, 1, 0))
    assert (odd.cluster_id, odd.epoch) == ("nodeA", 4)


def test_txn_result_skips_non_range_responses() -> None:
    r = TxnResult(True, 1, [{"response_put": {}}, {"response_range": {"kvs": []}},
                            {"response_delete_range": {}}])
    assert r.ranges() == [[]]
