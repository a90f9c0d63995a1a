"""``/v1/migrations``: list, show (phases, steps, timings, downtime, events), abort."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from cnf.agent.service import FederationService, migration_view
from cnf.api.deps import idempotent, require_admin, require_reader, service

router = APIRouter(prefix="/migrations", tags=["migrations"])

_STATES = "^(pending|running|compensating|completed|failed|aborted|needs_operator)$"


@router.get("", dependencies=[Depends(require_reader)])
async def list_migrations(vm_id: str | None = Query(None, max_length=64),
                          state: str | None = Query(None, pattern=_STATES),
                          svc: FederationService = Depends(service)) -> dict[str, Any]:
    return {"migrations": await svc.list_migrations(vm_id, state)}


@router.get("/{migration_id}", dependencies=[Depends(require_reader)])
async def show_migration(migration_id: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.show_migration(migration_id)


@router.post("/{migration_id}/abort", status_code=202, dependencies=[Depends(require_admin)])
async def abort_migration(migration_id: str, request: Request,
                          svc: FederationService = Depends(service)) -> JSONResponse:
    async def make() -> tuple[int, dict[str, Any], str]:
        rec = await svc.abort(migration_id)
        return 202, migration_view(rec), f"/v1/migrations/{rec.id}"

    return await idempotent(request, {"abort": migration_id}, make)
