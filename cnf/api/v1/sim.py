"""``/v1/sim``: control of the embedded default's simulated clouds (mounted only when they exist).

Why an endpoint: the demo (and an operator trying CNF on a laptop) needs to make a policy fire; in a real
cloud load comes from the guests. Never mounted on an agent with real drivers.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends

from cnf.agent.service import FederationService
from cnf.api.deps import require_admin, service
from cnf.api.schemas import SimLoadBody
from cnf.errors import NotFound

router = APIRouter(prefix="/sim", tags=["sim"])


@router.post("/clusters/{cluster_id}/load", dependencies=[Depends(require_admin)])
async def set_load(cluster_id: str, body: SimLoadBody, svc: FederationService = Depends(service)) -> dict[str, Any]:
    fabric = getattr(svc, "fabric", None)
    row = await svc.store.get_cluster(cluster_id)
    if fabric is None or row.id not in fabric.clusters:
        raise NotFound(f"cluster {cluster_id} is not a simulated cloud of this agent", cluster_id=cluster_id)
    with fabric.transaction() as world:
        world.clusters[row.id].load_bias = body.cpu_pct_bias
    await svc.sync_inventory(only=row.id)
    m = await svc.directory.drivers(row.id).cloud.metrics()
    return {"cluster_id": row.id, "cpu_pct_bias": body.cpu_pct_bias, "cpu_pct": round(m.cpu_pct, 1)}
