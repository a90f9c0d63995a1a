"""``cnf.api.auth``: 401 for a missing/bad token, identity from the token, 403 for a reader's mutation,
503 when Keystone cannot be asked, validations cached. Keystone itself is faked here; the real one is in
``tests/functional/keystone``."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from cnf.api.auth import (
    KeystoneAuthSettings,
    KeystoneTokenValidator,
    KeystoneUnavailable,
    TokenInvalid,
    keystone_auth_middleware,
)
from cnf.api.deps import Identity

pytestmark = pytest.mark.timeout(60)

SETTINGS = KeystoneAuthSettings(auth_url="http://127.0.0.1:5000/v3", username="cnf", password="pw")


class FakeValidator:
    www_authenticate = 'Keystone uri="http://127.0.0.1:5000/v3"'

    def __init__(self) -> None:
        self.seen: list[str] = []

    def validate(self, token: str) -> Identity:
        self.seen.append(token)
        if token == "admin-token":
            return Identity("u-admin", "p-admin", frozenset({"admin", "member", "reader"}))
        if token == "reader-token":
            return Identity("u-reader", "p-admin", frozenset({"reader"}))
        if token == "keystone-down":
            raise KeystoneUnavailable("Keystone at http://127.0.0.1:5000/v3 unavailable: connection refused")
        raise TokenInvalid("the token is not valid (unknown, expired or revoked)")


@pytest.fixture
async def guarded(embedded_agent: Any) -> AsyncIterator[tuple[httpx.AsyncClient, FakeValidator]]:
    from cnf.api.app import create_app

    fake = FakeValidator()
    app = create_app(embedded_agent.service,
                     middlewares=[keystone_auth_middleware(SETTINGS, validator=fake)])  # type: ignore[arg-type]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cnf") as c:
        yield c, fake


def _problem(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    body = r.json()
    assert body["code"] == code and body["detail"]
    return dict(body)


async def test_missing_and_bad_tokens_are_401(guarded: tuple[httpx.AsyncClient, FakeValidator]) -> None:
    api, fake = guarded
    r = await api.get("/v1/vms")
    _problem(r, 401, "unauthorized")
    assert r.headers["www-authenticate"] == 'Keystone uri="http://127.0.0.1:5000/v3"'
    _problem(await api.get("/v1/vms", headers={"X-Auth-Token": "forged"}), 401, "unauthorized")
    assert fake.seen == ["forged"]
    # discovery and health stay open, like every OpenStack API
    assert (await api.get("/healthz")).status_code == 200
    assert (await api.get("/")).status_code == 200
    assert (await api.get("/v1/openapi.json")).status_code == 200


async def test_admin_may_mutate_reader_may_only_read(guarded: tuple[httpx.AsyncClient, FakeValidator]) -> None:
    api, _ = guarded
    admin, reader = {"X-Auth-Token": "admin-token"}, {"X-Auth-Token": "reader-token"}
    rule = {"rule": {"trigger": "cpu_pct>80", "action": "notify"}}
    assert (await api.get("/v1/vms", headers=reader)).status_code == 200
    assert (await api.get("/v1/master", headers=reader)).status_code == 200
    _problem(await api.put("/v1/policies/p1", json=rule, headers=reader), 403, "forbidden")
    _problem(await api.post("/v1/vms/vm-1-1/live-migrate", json={"dest_cluster_id": "openstack-2"}, headers=reader),
             403, "forbidden")
    _problem(await api.post("/v1/master/elect", json={"cluster_id": "openstack-1"}, headers=reader), 403,
             "forbidden")
    assert (await api.put("/v1/policies/p1", json=rule, headers=admin)).status_code == 200
    assert (await api.delete("/v1/policies/p1", headers=admin)).status_code == 204


async def test_keystone_outage_is_503_not_401(guarded: tuple[httpx.AsyncClient, FakeValidator]) -> None:
    api, _ = guarded
    r = await api.get("/v1/vms", headers={"X-Auth-Token": "keystone-down"})
    body = _problem(r, 503, "driver_unavailable")
    assert body["retryable"] is True and r.headers["retry-after"] == "5"


def test_settings_accept_a_mapping_or_a_config_object() -> None:
    s = KeystoneAuthSettings.from_any({"auth_url": "http://ks:5000", "username": "cnf", "password": "s3cr3t-pw",
                                       "cache_ttl_s": 5, "exempt_paths": ["/healthz"], "unrelated": 1})
    assert s.cache_ttl_s == 5 and s.exempt_paths == ("/healthz",) and "s3cr3t-pw" not in repr(s)

    class Section:
        auth_url = "http://ks:5000/v3"
        username = "cnf"
        password = "y"

    assert KeystoneAuthSettings.from_any(Section()).project_name == "service"


class FakeResponse:
    def __init__(self, status: int, body: dict[str, Any] | None = None) -> None:
        self.status_code = status
        self._body = body or {}

    def json(self) -> dict[str, Any]:
        return self._body


class FakeSession:
    def __init__(self, responses: list[FakeResponse]) -> None:
        self.responses = responses
        self.requests: list[dict[str, Any]] = []

    def get(self, url: str, **kwargs: Any) -> FakeResponse:
        self.requests.append({"url": url, **kwargs})
        return self.responses.pop(0)


def _token(roles: list[str], expires_at: str = "2999-01-01T00:00:00.000000Z") -> FakeResponse:
    return FakeResponse(200, {"token": {"user": {"id": "u1"}, "project": {"id": "p1"}, "expires_at": expires_at,
                                        "roles": [{"id": r, "name": r} for r in roles]}})


def test_validator_maps_keystone_answers_and_caches() -> None:
    now = [1000.0]
    v = KeystoneTokenValidator(KeystoneAuthSettings(auth_url="http://ks:5000", username="cnf", password="pw",
                                                    cache_ttl_s=60), clock=lambda: now[0])
    sess = FakeSession([_token(["admin", "reader"]), _token(["admin", "reader"]), FakeResponse(404),
                        FakeResponse(401), FakeResponse(403), FakeResponse(500)])
    v._session = sess  # type: ignore[assignment]
    ident = v.validate("tok-1")
    assert ident == Identity("u1", "p1", frozenset({"admin", "reader"}))
    assert sess.requests[0]["url"] == "http://ks:5000/v3/auth/tokens"
    assert sess.requests[0]["headers"] == {"X-Subject-Token": "tok-1"}
    assert v.validate("tok-1") == ident and v.keystone_calls == 1  # cached
    now[0] += 61
    assert v.validate("tok-1") == ident and v.keystone_calls == 2  # cache expired: asked again
    with pytest.raises(TokenInvalid):
        v.validate("revoked")
    for _ in range(3):  # our own credentials refused / not allowed / Keystone broken: an outage, not a bad token
        with pytest.raises(KeystoneUnavailable):
            v.validate("any")


def test_validator_never_caches_past_token_expiry() -> None:
    v = KeystoneTokenValidator(KeystoneAuthSettings(auth_url="http://ks:5000/v3", username="c", password="p"))
    v._session = FakeSession([_token(["reader"], expires_at="2000-01-01T00:00:00Z"),  # type: ignore[assignment]
                              _token(["reader"], expires_at="2000-01-01T00:00:00Z")])
    v.validate("old")
    v.validate("old")
    assert v.keystone_calls == 2


def test_validator_keystone_unreachable_is_unavailable() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    v = KeystoneTokenValidator(KeystoneAuthSettings(auth_url=f"http://127.0.0.1:{port}/v3", username="c",
                                                    password="p", timeout_s=5))
    with pytest.raises(KeystoneUnavailable, match="unavailable"):
        v.validate("tok")
