"""Dependencies shared by the v1 routes: the service, the caller's identity, Idempotency-Key handling."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from cnf.agent.service import FederationService
from cnf.errors import Conflict, Forbidden, InvalidInput


@dataclass(frozen=True)
class Identity:
    user_id: str = "noauth"
    project_id: str = ""
    roles: frozenset[str] = field(default_factory=lambda: frozenset({"admin", "reader"}))


def service(request: Request) -> FederationService:
    svc: FederationService = request.app.state.service
    return svc


def identity(request: Request) -> Identity:
    ident = getattr(request.state, "identity", None)
    return ident if isinstance(ident, Identity) else Identity()


def require_admin(request: Request) -> Identity:
    """Mutations need the ``admin`` role (Keystone); ``reader`` may only read."""
    ident = identity(request)
    if "admin" not in ident.roles:
        raise Forbidden("this action needs the admin role", roles=sorted(ident.roles))
    return ident


def require_reader(request: Request) -> Identity:
    ident = identity(request)
    if not ident.roles & {"admin", "reader", "member"}:
        raise Forbidden("reading needs the reader role", roles=sorted(ident.roles))
    return ident


async def idempotent(request: Request, body: Any, make: Callable[[], Awaitable[tuple[int, dict[str, Any], str]]]
                     ) -> JSONResponse:
    """Run ``make`` once per ``Idempotency-Key``; a replay returns the first response unchanged.

    Reusing a key for a different request is refused (409) so a client bug cannot silently
    return another request's result.
    """
    svc = service(request)
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise InvalidInput("Idempotency-Key must be 1-255 characters", field="Idempotency-Key")
    h = svc.store.request_hash(request.method, request.url.path, body)
    if key:
        prior = await svc.store.get_idempotent(key)
        if prior is not None:
            if prior.request_hash != h:
                raise Conflict("Idempotency-Key was already used for a different request", field="Idempotency-Key")
            headers = {"Idempotent-Replayed": "true"}
            if prior.location:
                headers["Location"] = prior.location
            return JSONResponse(prior.body, status_code=prior.status_code, headers=headers)
    status, payload, location = await make()
    if key:
        await svc.store.put_idempotent(svc.epoch(), key=key, method=request.method, path=request.url.path,
                                       request_hash=h, status_code=status, body=payload, location=location)
    return JSONResponse(payload, status_code=status, headers={"Location": location} if location else None)
