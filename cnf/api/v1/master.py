"""``/v1/master``: who is master (cluster id, address, epoch, since, lease TTL) and graceful hand-over."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cnf.agent.service import FederationService
from cnf.api.deps import require_admin, require_reader, service
from cnf.api.schemas import ElectBody

router = APIRouter(prefix="/master", tags=["master"])


@router.get("", dependencies=[Depends(require_reader)])
async def show_master(svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.master()


@router.post("/elect", status_code=202, dependencies=[Depends(require_admin)])
async def elect(body: ElectBody, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.elect(body.cluster_id)
