"""``/v1/vms``: inventory, status, migrate, live-migrate (with ``dry_run``)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import JSONResponse

from cnf.agent.service import FederationService, MigrationRequest, migration_view
from cnf.api.deps import idempotent, require_admin, require_reader, service
from cnf.api.schemas import MigrateBody
from cnf.migration.model import MigrationKind, MigrationOptions

router = APIRouter(prefix="/vms", tags=["vms"])

_STATUS = "(?i)^(ACTIVE|SHUTOFF|PAUSED|SUSPENDED|BUILD|ERROR|MIGRATING)$"


@router.get("", dependencies=[Depends(require_reader)])
async def list_vms(cluster_id: str | None = Query(None, max_length=64),
                   status: str | None = Query(None, pattern=_STATUS),
                   svc: FederationService = Depends(service)) -> dict[str, Any]:
    return {"vms": await svc.list_vms(cluster_id, status)}


@router.get("/{vm_id}", dependencies=[Depends(require_reader)])
async def show_vm(vm_id: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.show_vm(vm_id)


async def _migrate(kind: MigrationKind, vm_id: str, body: MigrateBody, request: Request,
                   svc: FederationService) -> JSONResponse:
    req = MigrationRequest(vm_id=vm_id, kind=kind, dest_cluster_id=body.dest_cluster_id, dest_host=body.dest_host,
                           dest_next_hop=body.dest_next_hop, dry_run=body.dry_run,
                           options=MigrationOptions.from_dict(body.options.model_dump()) if body.options else None)
    if body.dry_run:
        return JSONResponse(await svc.preflight(req), status_code=200)

    async def make() -> tuple[int, dict[str, Any], str]:
        rec = await svc.request_migration(req)
        return 202, migration_view(rec), f"/v1/migrations/{rec.id}"

    return await idempotent(request, body.model_dump(), make)


@router.post("/{vm_id}/migrate", status_code=202, dependencies=[Depends(require_admin)])
async def migrate(vm_id: str, body: MigrateBody, request: Request,
                  svc: FederationService = Depends(service)) -> JSONResponse:
    """Cold migration: PREFLIGHT, DISK, CUTOVER, BGP, CLEANUP."""
    return await _migrate(MigrationKind.COLD, vm_id, body, request, svc)


@router.post("/{vm_id}/live-migrate", status_code=202, dependencies=[Depends(require_admin)])
async def live_migrate(vm_id: str, body: MigrateBody, request: Request,
                       svc: FederationService = Depends(service)) -> JSONResponse:
    """Live migration: PREFLIGHT, DISK, MEMORY, CUTOVER, BGP, CLEANUP."""
    return await _migrate(MigrationKind.LIVE, vm_id, body, request, svc)
