"""``/v1/clusters``: list, show, metrics, register."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse

from cnf.agent.service import FederationService
from cnf.api.deps import idempotent, require_admin, require_reader, service
from cnf.api.schemas import ClusterRegisterBody

router = APIRouter(prefix="/clusters", tags=["clusters"])


@router.get("", dependencies=[Depends(require_reader)])
async def list_clusters(svc: FederationService = Depends(service)) -> dict[str, Any]:
    return {"clusters": await svc.list_clusters()}


@router.get("/{cluster_id}", dependencies=[Depends(require_reader)])
async def show_cluster(cluster_id: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.show_cluster(cluster_id)


@router.get("/{cluster_id}/metrics", dependencies=[Depends(require_reader)])
async def cluster_metrics(cluster_id: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return await svc.cluster_metrics(cluster_id)


@router.post("", status_code=201, dependencies=[Depends(require_admin)])
async def register_cluster(body: ClusterRegisterBody, request: Request,
                           svc: FederationService = Depends(service)) -> JSONResponse:
    async def make() -> tuple[int, dict[str, Any], str]:
        view = await svc.register_cluster(name=body.name, auth_url=body.auth_url, grpc_addr=body.grpc_addr,
                                          bgp_as=body.bgp_as, region=body.region, api_url=body.api_url,
                                          credentials=body.credentials, cluster_id=body.id)
        return 201, view, f"/v1/clusters/{view['id']}"

    return await idempotent(request, body.model_dump(exclude={"credentials"}), make)
