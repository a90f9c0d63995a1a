"""``/v1/policies``: the scheduler's rules (validated by ``cnf.scheduler.rules.parse_rule``)."""

from __future__ import annotations

import re
from typing import Any

from fastapi import APIRouter, Depends, Path, Response

from cnf.agent.service import FederationService
from cnf.api.deps import require_admin, require_reader, service
from cnf.api.schemas import ApproveBody, PolicyBody
from cnf.db.models import PolicyRow
from cnf.errors import InvalidInput, NotFound
from cnf.scheduler.rules import parse_rule

router = APIRouter(prefix="/policies", tags=["policies"])
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _view(row: PolicyRow) -> dict[str, Any]:
    return {"name": row.name, "rule": row.rule, "enabled": row.enabled, "created_at": row.created_at,
            "updated_at": row.updated_at}


@router.get("", dependencies=[Depends(require_reader)])
async def list_policies(svc: FederationService = Depends(service)) -> dict[str, Any]:
    return {"policies": [_view(r) for r in await svc.store.list_policies()]}


@router.get("/{name}", dependencies=[Depends(require_reader)])
async def show_policy(name: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    return _view(await svc.store.get_policy(name))


@router.put("/{name}", dependencies=[Depends(require_admin)])
async def set_policy(body: PolicyBody, name: str = Path(..., max_length=128),
                     svc: FederationService = Depends(service)) -> dict[str, Any]:
    if not _NAME.match(name):
        raise InvalidInput("policy names are letters, digits, '.', '_' or '-'", field="name")
    rows = await svc.store.list_clusters()
    clusters = [c.id for c in rows] + [c.name for c in rows]
    rule = parse_rule(name, body.rule, known_clusters=clusters)
    row = await svc.store.put_policy(svc.epoch(), name, rule.to_dict(), body.enabled)
    return _view(row)


@router.delete("/{name}", status_code=204, dependencies=[Depends(require_admin)])
async def delete_policy(name: str, svc: FederationService = Depends(service)) -> Response:
    await svc.store.delete_policy(svc.epoch(), name)
    return Response(status_code=204)


def _loop(svc: FederationService) -> Any:
    loop = getattr(svc, "policy_loop", None)
    if loop is None:
        raise NotFound("the policy scheduler does not run on this agent")
    return loop


@router.post("/{name}/evaluate", dependencies=[Depends(require_reader)])
async def evaluate_policy(name: str, svc: FederationService = Depends(service)) -> dict[str, Any]:
    """Dry run: the plan this policy would produce now (moves with why, skips with reasons). Changes nothing."""
    plan = await _loop(svc).evaluate(name)
    return {"policy": name, **plan.to_dict(), "text": plan.render()}


@router.post("/{name}/approve", status_code=202, dependencies=[Depends(require_admin)])
async def approve_policy(name: str, body: ApproveBody | None = None,
                         svc: FederationService = Depends(service)) -> dict[str, Any]:
    """Execute the moves of the last evaluated plan of a ``plan``-mode policy (optionally only some VMs)."""
    started = await _loop(svc).approve(name, body.vm_ids if body else None)
    return {"policy": name, "migrations": started}
