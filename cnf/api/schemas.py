"""Request bodies of REST API v1: strict (unknown fields refused), each field validated and documented.

Validation errors become 422 problem+json naming the field (``cnf.api.problem``).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
_HOSTPORT = re.compile(r"^[A-Za-z0-9.\-\[\]:]+:\d{1,5}$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MigrationOptionsBody(_Strict):
    downtime_limit_ms: int = Field(50, ge=10, le=60_000, description="pre-copy stops when the rest fits this")
    max_bandwidth_mbps: int = Field(10_000, ge=1, le=400_000, description="memory copy bandwidth cap, Mbit/s")
    non_convergence: Literal["auto_converge_then_abort", "auto_converge_then_post_copy", "post_copy", "abort"] = \
        "auto_converge_then_abort"
    mirror_lag_limit_s: float = Field(30.0, gt=0, le=86_400)


class MigrateBody(_Strict):
    dest_cluster_id: str = Field(..., min_length=1, max_length=64, description="destination cluster id or name")
    dest_host: str = Field("", max_length=255, description="destination compute host ('' = the cloud chooses)")
    dest_next_hop: str = Field("", description="BGP next hop for the VM's /32 at the destination")
    dry_run: bool = Field(False, description="run PREFLIGHT only and return its report")
    options: MigrationOptionsBody | None = None

    @field_validator("dest_next_hop")
    @classmethod
    def _next_hop(cls, v: str) -> str:
        if v:
            try:
                ipaddress.IPv4Address(v)
            except ValueError:
                raise ValueError(f"{v!r} is not an IPv4 address") from None
        return v


class ClusterRegisterBody(_Strict):
    name: str = Field(..., description="cluster name, e.g. openstack-4")
    auth_url: str = Field(..., description="Keystone v3 URL of the cloud (sim://NAME for a simulated cloud)")
    grpc_addr: str = Field(..., description="host:port of the cloud's CNF agent")
    bgp_as: int = Field(..., ge=1, le=4294967294)
    region: str = Field("RegionOne", max_length=64)
    api_url: str = Field("", description="the agent's REST URL (for proxying)")
    id: str | None = Field(None, description="cluster id (UUID); generated when absent")
    credentials: dict[str, Any] = Field(default_factory=dict, description="Keystone credentials; never returned")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError("must be 1-63 characters of letters, digits, '.', '_' or '-'")
        return v

    @field_validator("auth_url")
    @classmethod
    def _auth_url(cls, v: str) -> str:
        if not re.match(r"^(https?|sim)://[^\s/]+", v):
            raise ValueError("must be an http(s):// Keystone URL (or sim://NAME)")
        return v

    @field_validator("grpc_addr")
    @classmethod
    def _grpc(cls, v: str) -> str:
        if not _HOSTPORT.match(v) or not 0 < int(v.rsplit(":", 1)[1]) < 65536:
            raise ValueError("must be host:port")
        return v

    @field_validator("id")
    @classmethod
    def _id(cls, v: str | None) -> str | None:
        if v is not None:
            import uuid

            try:
                uuid.UUID(v)
            except ValueError:
                raise ValueError("must be a UUID") from None
        return v


class ElectBody(_Strict):
    cluster_id: str = Field(..., min_length=1, max_length=64)


class PolicyBody(_Strict):
    rule: dict[str, Any] = Field(..., description='e.g. {"trigger":"cpu_pct>80","action":"live_migrate",'
                                 '"target":"least_loaded"}')
    enabled: bool = True


class ApproveBody(_Strict):
    vm_ids: list[str] | None = Field(None, description="approve only these VMs' moves (default: all of the plan)")


class SimLoadBody(_Strict):
    cpu_pct_bias: float = Field(..., ge=-100, le=100, description="CPU percentage points added to every VM")
