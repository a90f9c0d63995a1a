"""FastAPI factory for REST API v1.

Every agent serves the full API. Mutations and federation-wide reads are meant
for the master; on a non-master they are proxied (``cnf.api.proxy``, when a
federation is configured). Errors are problem+json (``cnf.api.problem``).
OpenAPI is served at ``/v1/openapi.json``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request, Response

from cnf import __version__
from cnf.agent.service import FederationService
from cnf.api import problem
from cnf.api.v1 import clusters, master, migrations, policies, vms

Middleware = Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]


def create_app(service: FederationService, *, middlewares: list[Middleware] | None = None,
               extra_routes: Callable[[FastAPI], Any] | None = None) -> FastAPI:
    app = FastAPI(title="CNF — Cluster Nova Federation", version=__version__, openapi_url="/v1/openapi.json",
                  docs_url="/v1/docs", redoc_url=None)
    app.state.service = service
    problem.install(app)
    for router in (clusters.router, vms.router, migrations.router, master.router, policies.router):
        app.include_router(router, prefix="/v1")

    @app.get("/", include_in_schema=False)
    async def root() -> dict[str, Any]:
        return {"versions": [{"id": "v1", "status": "CURRENT", "links": [{"rel": "self", "href": "/v1"}]}]}

    @app.get("/v1", include_in_schema=False)
    async def v1_root() -> dict[str, Any]:
        return {"id": "v1", "status": "CURRENT", "version": __version__}

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "cluster_id": service.config.cluster_id, "is_master": service.election.is_master()}

    if getattr(service, "fabric", None) is not None and service.config.embedded:
        from cnf.api.v1 import sim

        app.include_router(sim.router, prefix="/v1")
    metrics = getattr(service, "metrics", None)
    if metrics is not None:
        app.add_route("/metrics", metrics.starlette_endpoint(), include_in_schema=False)

    for mw in middlewares or []:
        app.middleware("http")(mw)
    if extra_routes is not None:
        extra_routes(app)
    return app
