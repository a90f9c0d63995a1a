"""Any agent serves the whole API: a non-master forwards ``/v1`` requests to the master, transparently.

Contract:
- forwarded as sent: method, path, query, body, ``X-Auth-Token``/``Idempotency-Key`` and the other
  end-to-end headers; the master's status, body (problem+json errors included) and ``Location`` come back
  unchanged, with a ``Via`` entry naming each agent on the way;
- never loops: a request that already carries ``X-CNF-Forwarded-By`` is not forwarded again (the agent
  answers 503 ``not_master`` so the client retries and finds the new master);
- while no master is elected, or the master cannot be reached: 503 with ``Retry-After``;
- ``GET /v1/master`` and the OpenAPI document are answered locally (they must work during a failover).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import httpx
import structlog
from fastapi import Request, Response

from cnf.agent.service import FederationService
from cnf.api.problem import error_response
from cnf.errors import NoMaster, NotMaster

log = structlog.get_logger(__name__)

FORWARDED_BY = "X-CNF-Forwarded-By"
LOCAL = {("GET", "/v1/master"), ("GET", "/v1/openapi.json"), ("GET", "/v1/docs"), ("GET", "/v1")}
HOP_BY_HOP = {"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailers",
              "transfer-encoding", "upgrade", "host", "content-length"}


def master_proxy(service: FederationService, *, timeout_s: float = 30.0,
                 transport: httpx.AsyncBaseTransport | None = None
                 ) -> Callable[[Request, Callable[[Request], Awaitable[Response]]], Awaitable[Response]]:
    client = httpx.AsyncClient(timeout=timeout_s, transport=transport)
    me = service.config.cluster_id

    async def proxy(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        path = request.url.path
        if not path.startswith("/v1") or (request.method, path) in LOCAL or service.election.is_master():
            return await call_next(request)
        if request.headers.get(FORWARDED_BY):
            return error_response(NotMaster(f"agent {me} is not the master (forwarded by "
                                            f"{request.headers[FORWARDED_BY]}); retry", retry_after_s=1))
        master = await service.election.current_master()
        if master is None or not master.address or master.cluster_id == me:
            return error_response(NoMaster("no master is elected right now; retry shortly", retry_after_s=1))
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers[FORWARDED_BY] = me
        via = request.headers.get("via")
        headers["Via"] = f"{via}, 1.1 cnf-{me}" if via else f"1.1 cnf-{me}"
        url = master.address.rstrip("/") + path + (f"?{request.url.query}" if request.url.query else "")
        try:
            upstream = await client.request(request.method, url, content=await request.body(), headers=headers)
        except httpx.HTTPError as e:
            log.warning("proxy_failed", master=master.cluster_id, url=url, error=repr(e))
            return error_response(NoMaster(f"the master {master.cluster_id} at {master.address} did not answer",
                                           retry_after_s=1))
        out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_BY_HOP | {"content-encoding"}}
        out["Via"] = (upstream.headers.get("via", "") + ", " if upstream.headers.get("via") else "") + \
            f"1.1 cnf-{me}"
        metrics = getattr(service, "metrics", None)
        if metrics is not None:
            metrics.count_proxied(request.method, upstream.status_code)
        return Response(content=upstream.content, status_code=upstream.status_code, headers=out)

    return proxy
