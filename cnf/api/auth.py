"""Keystone authentication for the REST API: ``X-Auth-Token`` -> ``request.state.identity``.

``keystone_auth_middleware(settings)`` returns an HTTP middleware for ``create_app(..., middlewares=[...])``
(used when ``api.auth_strategy == "keystone"``). For every request outside ``exempt_paths`` it:

- answers 401 problem+json (``code: unauthorized``, ``WWW-Authenticate: Keystone uri="…"``) when the
  token is missing, unknown, expired or revoked;
- otherwise sets ``request.state.identity = Identity(user_id, project_id, roles)`` from Keystone's own
  answer; ``cnf.api.deps.require_admin``/``require_reader`` then give 403 to a reader on a mutation;
- answers 503 (``driver_unavailable``) when Keystone cannot be asked (down, timeout, or CNF's own service
  credentials refused) — an outage is never reported as "your token is bad".

Why keystoneauth1 and not keystonemiddleware's ``auth_token``: ``auth_token`` is a WSGI/webob filter
configured through oslo.config and paste. Putting it in front of this ASGI app needs a WSGI bridge
around every request plus a second configuration system. What it does for a token is one call —
``GET /v3/auth/tokens`` with ``X-Subject-Token``, authenticated as a service user — which keystoneauth1
makes with the same semantics (catalog-free, re-authenticating the service token on 401). Roles come
from the token as Keystone expanded them (``admin`` implies ``member`` implies ``reader``).

Validations are cached for ``cache_ttl_s`` (default 60 s, never past the token's ``expires_at``),
keyed by the SHA-256 of the token (the token itself is not kept). A revoked token is therefore
accepted for at most ``cache_ttl_s``; ``auth_token``'s default is 300 s.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

import structlog
from fastapi import Request, Response

from cnf.api.deps import Identity
from cnf.api.problem import problem_response

log = structlog.get_logger(__name__)

DEFAULT_EXEMPT = ("/", "/v1", "/healthz", "/v1/openapi.json", "/v1/docs", "/metrics")


@dataclass(frozen=True)
class KeystoneAuthSettings:
    """What the agent needs to validate tokens: Keystone's URL and a service user allowed to validate.

    The service user needs the ``service`` or ``admin`` role (Keystone's ``identity:validate_token``).
    """

    auth_url: str
    username: str
    password: str = field(repr=False)
    project_name: str = "service"
    user_domain_name: str = "Default"
    project_domain_name: str = "Default"
    cache_ttl_s: float = 60.0
    timeout_s: float = 10.0
    verify: bool | str = True  # CA bundle path, or False for a lab with self-signed TLS
    exempt_paths: tuple[str, ...] = DEFAULT_EXEMPT

    @classmethod
    def from_any(cls, obj: Any) -> KeystoneAuthSettings:
        """Accept this class, a mapping, or any object with these attributes (e.g. a config section)."""
        if isinstance(obj, cls):
            return obj
        names = [f.name for f in fields(cls)]
        if isinstance(obj, Mapping):
            data = {k: obj[k] for k in names if k in obj}
        else:
            data = {k: getattr(obj, k) for k in names if hasattr(obj, k)}
        if "exempt_paths" in data:
            data["exempt_paths"] = tuple(data["exempt_paths"])
        return cls(**data)


class TokenInvalid(Exception):
    """Keystone says the token is not (or no longer) valid."""


class KeystoneUnavailable(Exception):
    """Keystone could not be asked (down, timeout, or the service credentials are refused)."""


class KeystoneTokenValidator:
    """Validates tokens against Keystone v3 with a keystoneauth1 session (blocking; call in a thread)."""

    def __init__(self, settings: KeystoneAuthSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        from keystoneauth1 import session as ks_session
        from keystoneauth1.identity import v3

        self.settings = settings
        self._auth_url = settings.auth_url.rstrip("/")
        if not self._auth_url.endswith("/v3"):
            self._auth_url += "/v3"
        auth = v3.Password(auth_url=self._auth_url, username=settings.username, password=settings.password,
                           project_name=settings.project_name, user_domain_name=settings.user_domain_name,
                           project_domain_name=settings.project_domain_name)
        self._session = ks_session.Session(auth=auth, verify=settings.verify, timeout=settings.timeout_s)
        self._clock = clock
        self._cache: dict[str, tuple[Identity, float]] = {}
        self._lock = threading.Lock()
        self.keystone_calls = 0  # observable for tests and metrics

    @property
    def www_authenticate(self) -> str:
        return f'Keystone uri="{self.settings.auth_url}"'

    def _cached(self, key: str) -> Identity | None:
        with self._lock:
            hit = self._cache.get(key)
            if hit is None:
                return None
            if hit[1] <= self._clock():
                del self._cache[key]
                return None
            return hit[0]

    def validate(self, token: str) -> Identity:
        from keystoneauth1 import exceptions as ks_exc

        key = hashlib.sha256(token.encode()).hexdigest()
        ident = self._cached(key)
        if ident is not None:
            return ident
        self.keystone_calls += 1
        try:
            resp = self._session.get(f"{self._auth_url}/auth/tokens", headers={"X-Subject-Token": token},
                                     authenticated=True, raise_exc=False)
        except ks_exc.Unauthorized as e:  # our own service credentials were refused
            raise KeystoneUnavailable(f"Keystone refused CNF's service credentials: {e}") from None
        except ks_exc.ClientException as e:
            raise KeystoneUnavailable(f"Keystone at {self.settings.auth_url} unavailable: {e}") from None
        if resp.status_code == 404:  # Keystone's answer for an unknown, expired or revoked subject token
            raise TokenInvalid("the token is not valid (unknown, expired or revoked)")
        if resp.status_code == 401:  # still 401 after keystoneauth re-authenticated: our own credentials
            raise KeystoneUnavailable("Keystone refused CNF's service credentials (HTTP 401)")
        if resp.status_code == 403:
            raise KeystoneUnavailable("CNF's service user may not validate tokens (give it the 'service' role)")
        if resp.status_code != 200:
            raise KeystoneUnavailable(f"Keystone answered HTTP {resp.status_code} to token validation")
        body = resp.json().get("token", {})
        ident = Identity(user_id=str(body.get("user", {}).get("id", "")),
                         project_id=str((body.get("project") or {}).get("id", "")),
                         roles=frozenset(str(r.get("name", "")) for r in body.get("roles", [])))
        ttl = self.settings.cache_ttl_s
        expires = _expires_in(body.get("expires_at"))
        if expires is not None:
            ttl = min(ttl, expires)
        if ttl > 0:
            with self._lock:
                if len(self._cache) > 10_000:  # bounded: drop everything rather than grow without limit
                    self._cache.clear()
                self._cache[key] = (ident, self._clock() + ttl)
        return ident


def _expires_in(expires_at: Any) -> float | None:
    if not expires_at:
        return None
    try:
        when = dt.datetime.fromisoformat(str(expires_at).replace("Z", "+00:00"))
    except ValueError:
        return None
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


HttpMiddleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def keystone_auth_middleware(settings: Any, *, validator: KeystoneTokenValidator | None = None) -> HttpMiddleware:
    """The middleware for ``create_app(service, middlewares=[keystone_auth_middleware(settings)])``.

    ``settings``: a :class:`KeystoneAuthSettings`, a mapping or an object with the same attribute names.
    """
    cfg = KeystoneAuthSettings.from_any(settings)
    checker = validator or KeystoneTokenValidator(cfg)
    exempt = frozenset(p.rstrip("/") or "/" for p in cfg.exempt_paths)

    async def keystone_auth(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path.rstrip("/") or "/"
        if path in exempt:
            return await call_next(request)
        token = request.headers.get("X-Auth-Token", "").strip()
        challenge = {"WWW-Authenticate": checker.www_authenticate}
        if not token:
            return problem_response(401, "unauthorized", "Authentication required",
                                    "this API needs a Keystone token in X-Auth-Token", headers=challenge)
        try:
            ident = await asyncio.to_thread(checker.validate, token)
        except TokenInvalid as e:
            log.info("auth.token_rejected", path=path)
            return problem_response(401, "unauthorized", "Authentication required", str(e), headers=challenge)
        except KeystoneUnavailable as e:
            log.warning("auth.keystone_unavailable", error=str(e))
            return problem_response(503, "driver_unavailable", "Backend unavailable", str(e),
                                    headers={"Retry-After": "5"}, retryable=True)
        request.state.identity = ident
        return await call_next(request)

    return keystone_auth


__all__ = ["KeystoneAuthSettings", "KeystoneTokenValidator", "keystone_auth_middleware"]
