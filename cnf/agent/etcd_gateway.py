"""Minimal asyncio client for etcd v3 through its grpc-gateway (JSON over HTTP on the client port), via httpx.

Why this and not aetcd/etcd3gw (see docs/election.md): the agent is asyncio; etcd3gw is synchronous and its watch
thread swallows stream errors (lab pitfall 4); aetcd and etcd3gw both talk to one endpoint per client object, so
rotation is ours anyway; grpc-gateway JSON has no protobuf/grpc version coupling (the ``etcd3`` package broke on
protobuf >= 4). Every call here has an explicit timeout, which matters most: while the Raft leader member is down,
requests to the survivors hang rather than fail (lab pitfall 5), so a keep-alive must give up early and try another
member before the lease runs out.

Wire facts handled in one place (lab pitfalls 2-3): every int64 is a JSON *string*; fields equal to their proto3
default are omitted (a failed txn has no ``succeeded``; a PUT watch event has no ``type``; a keep-alive on a lost
lease has no ``TTL``); keys and values are base64.

Contract: a call either returns a parsed result or raises :class:`~cnf.errors.DriverUnavailable` after trying every
endpoint once (each with its own timeout). The endpoint that answered last is tried first next time.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import httpx
import structlog

from cnf.errors import DriverUnavailable, InvalidInput

log = structlog.get_logger(__name__)


def b64(data: str | bytes) -> str:
    return base64.b64encode(data.encode() if isinstance(data, str) else data).decode()


def unb64(data: str | None) -> bytes:
    return base64.b64decode(data) if data else b""


def prefix_end(prefix: str) -> str:
    """The ``range_end`` selecting every key that starts with ``prefix`` (last byte + 1)."""
    raw = bytearray(prefix.encode())
    raw[-1] += 1
    return raw.decode()


def normalize_endpoints(endpoints: Sequence[str] | str, *, field: str = "etcd_endpoints") -> list[str]:
    """Accept ``host:port`` or ``http(s)://host:port`` (list or comma-separated string); refuse an empty list."""
    items = endpoints.split(",") if isinstance(endpoints, str) else list(endpoints)
    out: list[str] = []
    for raw in items:
        ep = str(raw).strip().rstrip("/")
        if not ep:
            continue
        if "://" not in ep:
            ep = "http://" + ep
        scheme, _, rest = ep.partition("://")
        host, _, port = rest.rpartition(":")
        if scheme not in ("http", "https") or not host or not port.isdigit():
            raise InvalidInput(f"etcd endpoint {raw!r} is not host:port or http(s)://host:port", field=field)
        out.append(ep)
    if not out:
        raise InvalidInput("at least one etcd endpoint is required", field=field)
    return out


@dataclass(frozen=True)
class KeyValue:
    key: str
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, kv: dict[str, Any]) -> KeyValue:
        return cls(key=unb64(kv.get("key")).decode(), value=unb64(kv.get("value")),
                   create_revision=int(kv.get("create_revision", 0)), mod_revision=int(kv.get("mod_revision", 0)),
                   version=int(kv.get("version", 0)), lease=int(kv.get("lease", 0)))


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["PUT", "DELETE"]
    kv: KeyValue


@dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int
    responses: list[dict[str, Any]]

    def ranges(self) -> list[list[KeyValue]]:
        """The ``kvs`` of every ``response_range`` in order (other response kinds are skipped)."""
        out: list[list[KeyValue]] = []
        for r in self.responses:
            if "response_range" in r:
                out.append([KeyValue.from_json(kv) for kv in r["response_range"].get("kvs", [])])
        return out


class WatchCompacted(Exception):
    """The start revision was compacted away; re-read the state and watch from the current revision."""


class LeaseNotFound(Exception):
    """etcd does not know the lease (expired or revoked)."""


# -- txn building blocks (plain dicts in grpc-gateway JSON) ------------------------------------------------------
def cmp_create_revision(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": str(revision)}


def cmp_mod_revision(key: str, revision: int) -> dict[str, Any]:
    return {"key": b64(key), "target": "MOD", "result": "EQUAL", "mod_revision": str(revision)}


def op_put(key: str, value: bytes | str, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def op_range(key: str, range_end: str | None = None) -> dict[str, Any]:
    body = {"key": b64(key)}
    if range_end is not None:
        body["range_end"] = b64(range_end)
    return {"request_range": body}


def op_delete(key: str) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


class EtcdGateway:
    """etcd v3 over grpc-gateway JSON with endpoint rotation; see the module docstring."""

    def __init__(self, endpoints: Sequence[str] | str, *, request_timeout_s: float = 2.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.endpoints = normalize_endpoints(endpoints)
        self.request_timeout_s = request_timeout_s
        self._current = 0
        self._http = httpx.AsyncClient(transport=transport, timeout=request_timeout_s)

    @property
    def current_endpoint(self) -> str:
        return self.endpoints[self._current % len(self.endpoints)]

    def rotate(self, reason: str) -> None:
        old = self.current_endpoint
        self._current = (self._current + 1) % len(self.endpoints)
        log.info("etcd_endpoint_rotated", from_endpoint=old, to_endpoint=self.current_endpoint, reason=reason)

    async def close(self) -> None:
        await self._http.aclose()

    async def _post(self, path: str, body: dict[str, Any], *, timeout_s: float | None = None,
                    not_found_ok: bool = False) -> dict[str, Any]:
        timeout = timeout_s or self.request_timeout_s
        errors: list[str] = []
        for _ in range(len(self.endpoints)):
            ep = self.current_endpoint
            try:
                resp = await self._http.post(ep + "/v3" + path, json=body, timeout=timeout)
            except httpx.HTTPError as exc:  # refused, reset, timed out: try the next member
                errors.append(f"{ep}: {type(exc).__name__}")
                self.rotate(type(exc).__name__)
                continue
            if resp.status_code == 200:
                data: dict[str, Any] = resp.json()
                return data
            message = _error_message(resp)
            if resp.status_code == 404 and "lease not found" in message:
                if not_found_ok:
                    return {}
                raise LeaseNotFound(message)
            if resp.status_code >= 500 or resp.status_code in (408, 429):  # no leader, timeout, unavailable
                errors.append(f"{ep}: {resp.status_code} {message}")
                self.rotate(message)
                continue
            raise DriverUnavailable(f"etcd refused {path}: {resp.status_code} {message}", port="etcd",
                                    operation=path)
        raise DriverUnavailable(f"no etcd endpoint answered {path}: {'; '.join(errors)}", port="etcd",
                                operation=path, endpoints=self.endpoints)

    # -- leases ---------------------------------------------------------------------------------
    async def lease_grant(self, ttl_s: float) -> tuple[int, int]:
        """Grant a lease; returns (lease id, TTL granted by etcd, which may be clamped up)."""
        r = await self._post("/lease/grant", {"TTL": str(max(1, round(ttl_s)))})
        return int(r["ID"]), int(r.get("TTL", 0))

    async def lease_keepalive(self, lease_id: int, *, timeout_s: float | None = None) -> int:
        """Renew once; returns the TTL etcd reports, 0 if the lease is gone (etcd then omits ``TTL``)."""
        r = await self._post("/lease/keepalive", {"ID": str(lease_id)}, timeout_s=timeout_s)
        return int(r.get("result", {}).get("TTL", 0))

    async def lease_revoke(self, lease_id: int, *, timeout_s: float | None = None) -> None:
        """Revoke (deletes every key bound to it); an unknown lease is not an error."""
        await self._post("/lease/revoke", {"ID": str(lease_id)}, timeout_s=timeout_s, not_found_ok=True)

    # -- keys -----------------------------------------------------------------------------------
    async def range(self, key: str, range_end: str | None = None) -> tuple[int, list[KeyValue]]:
        """Linearizable read; returns (store revision, key-values sorted by key)."""
        body: dict[str, Any] = {"key": b64(key)}
        if range_end is not None:
            body["range_end"] = b64(range_end)
        r = await self._post("/kv/range", body)
        return int(r["header"]["revision"]), [KeyValue.from_json(kv) for kv in r.get("kvs", [])]

    async def get(self, key: str) -> KeyValue | None:
        _, kvs = await self.range(key)
        return kvs[0] if kvs else None

    async def put(self, key: str, value: bytes | str, lease: int = 0) -> int:
        body: dict[str, Any] = op_put(key, value, lease)["request_put"]
        r = await self._post("/kv/put", body)
        return int(r["header"]["revision"])

    async def delete(self, key: str) -> int:
        r = await self._post("/kv/deleterange", {"key": b64(key)})
        return int(r.get("deleted", 0))

    async def txn(self, compare: list[dict[str, Any]], success: list[dict[str, Any]],
                  failure: list[dict[str, Any]]) -> TxnResult:
        r = await self._post("/kv/txn", {"compare": compare, "success": success, "failure": failure})
        return TxnResult(succeeded=bool(r.get("succeeded", False)), revision=int(r["header"]["revision"]),
                         responses=list(r.get("responses", [])))

    # -- watch ----------------------------------------------------------------------------------
    async def watch_once(self, key: str, range_end: str | None, start_revision: int,
                         timeout_s: float) -> list[WatchEvent]:
        """Wait for the first batch of events on ``[key, range_end)`` at or after ``start_revision``.

        Returns ``[]`` when nothing happened within ``timeout_s`` (callers re-read and watch again: never block
        forever on a member that may have died silently). Raises DriverUnavailable if the stream breaks (the
        endpoint is rotated first) and :class:`WatchCompacted` if the revision is gone.
        """
        create: dict[str, Any] = {"key": b64(key), "start_revision": str(start_revision)}
        if range_end is not None:
            create["range_end"] = b64(range_end)
        ep = self.current_endpoint
        timeout = httpx.Timeout(self.request_timeout_s, read=None)
        try:
            async with asyncio.timeout(timeout_s):
                async with self._http.stream("POST", ep + "/v3/watch", json={"create_request": create},
                                             timeout=timeout) as resp:
                    if resp.status_code != 200:
                        await resp.aread()
                        raise DriverUnavailable(f"etcd watch refused by {ep}: {resp.status_code}", port="etcd",
                                                operation="/watch")
                    async for line in resp.aiter_lines():
                        if not line.strip():
                            continue
                        events = _parse_watch_line(line, ep)
                        if events:
                            return events
                raise DriverUnavailable(f"etcd watch stream on {ep} ended", port="etcd", operation="/watch")
        except TimeoutError:
            return []
        except httpx.HTTPError as exc:
            self.rotate(f"watch: {type(exc).__name__}")
            raise DriverUnavailable(f"etcd watch on {ep} failed: {type(exc).__name__}", port="etcd",
                                    operation="/watch") from exc
        except DriverUnavailable:
            if self.current_endpoint == ep:
                self.rotate("watch stream broken")
            raise


def _parse_watch_line(line: str, endpoint: str) -> list[WatchEvent]:
    msg = json.loads(line)
    if "error" in msg:
        raise DriverUnavailable(f"etcd watch on {endpoint}: {msg['error'].get('message', msg['error'])}",
                                port="etcd", operation="/watch")
    result = msg.get("result", {})
    if int(result.get("compact_revision", 0)):
        raise WatchCompacted(str(result["compact_revision"]))
    if result.get("canceled"):
        raise DriverUnavailable(f"etcd watch on {endpoint} canceled: {result.get('cancel_reason', '')}",
                                port="etcd", operation="/watch")
    return [WatchEvent(type="DELETE" if ev.get("type") == "DELETE" else "PUT", kv=KeyValue.from_json(ev["kv"]))
            for ev in result.get("events", [])]


def _error_message(resp: httpx.Response) -> str:
    try:
        data = resp.json()
    except ValueError:
        return resp.text[:200]
    if isinstance(data, dict):
        err = data.get("error", data)
        if isinstance(err, dict):
            return str(err.get("message", err))
        return str(err)
    return str(data)[:200]
