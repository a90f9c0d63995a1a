"""The CloudDriver port: what CNF needs from one OpenStack cloud (Nova, Neutron, Cinder, Placement).

Contract for every implementation (sim and openstacksdk):
- Methods are ``async`` and never block the event loop (sync SDKs run in a thread).
- Mutations are idempotent: stopping a stopped server, deleting an absent record or
  creating a receiver that already exists for the same migration succeeds without a
  second effect.
- Library errors are translated here: unreachable cloud -> ``DriverUnavailable``,
  unknown server -> ``NotFound``, anything else -> ``DriverError``. Waits time out
  with ``StepTimeout`` naming what was awaited, never hang.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Server:
    """A Nova server as CNF sees it."""

    id: str
    name: str
    status: str  # Nova status: ACTIVE, SHUTOFF, BUILD, ERROR, ...
    host: str
    flavor: str
    vcpus: int
    ram_mb: int
    ip: str  # the fixed IP whose /32 moves with the VM
    project_id: str = ""
    image: str = ""  # the RBD image name of the root disk
    tags: tuple[str, ...] = ()
    cpu_pct: float = 0.0  # live usage, for the scheduler
    mem_pct: float = 0.0
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Host:
    name: str
    vcpus: int
    ram_mb: int
    vcpus_used: int
    ram_mb_used: int
    cpu_model: str = "qemu64"
    cpu_pct: float = 0.0


@dataclass(frozen=True)
class Flavor:
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int = 1


@dataclass(frozen=True)
class CloudMetrics:
    """Per-cluster figures shown by ``cluster metrics`` and used by the scheduler."""

    vcpus: int
    vcpus_used: int
    ram_mb: int
    ram_mb_used: int
    vm_count: int
    cpu_pct: float
    mem_pct: float

    @property
    def free_vcpus(self) -> int:
        return self.vcpus - self.vcpus_used

    @property
    def free_ram_mb(self) -> int:
        return self.ram_mb - self.ram_mb_used

    def to_dict(self) -> dict[str, Any]:
        return {
            "vcpus": self.vcpus, "vcpus_used": self.vcpus_used, "free_vcpus": self.free_vcpus,
            "ram_mb": self.ram_mb, "ram_mb_used": self.ram_mb_used, "free_ram_mb": self.free_ram_mb,
            "vm_count": self.vm_count, "cpu_pct": round(self.cpu_pct, 2), "mem_pct": round(self.mem_pct, 2),
        }


@dataclass(frozen=True)
class ServerSpec:
    """What the destination needs to create the receiving server record for a migrating VM."""

    vm_id: str
    name: str
    flavor: str
    vcpus: int
    ram_mb: int
    ip: str
    image: str
    host: str = ""  # destination host, "" lets the cloud choose
    project_id: str = ""
    migration_id: str = ""


@runtime_checkable
class CloudDriver(Protocol):
    cluster_id: str

    async def list_servers(self) -> list[Server]:
        """All servers of all projects in this cloud."""

    async def get_server(self, vm_id: str) -> Server | None:
        """The server, or None when this cloud has no record of it."""

    async def list_hosts(self) -> list[Host]:
        ...

    async def list_flavors(self) -> list[Flavor]:
        ...

    async def metrics(self) -> CloudMetrics:
        ...

    async def stop_server(self, vm_id: str) -> None:
        """Power off; idempotent. Raises NotFound for an unknown server."""

    async def start_server(self, vm_id: str) -> None:
        """Power on; idempotent."""

    async def create_receiver(self, spec: ServerSpec) -> Server:
        """Create (or return the existing) destination record for ``spec.migration_id``:
        server record, port with ``spec.ip`` as fixed IP, flavor mapping. The server is
        not running until ``activate_receiver`` (live) or ``boot_receiver`` (cold)."""

    async def delete_receiver(self, vm_id: str) -> None:
        """Remove a receiver that never went live (compensation); idempotent."""

    async def activate_receiver(self, vm_id: str) -> Server:
        """Mark the receiver as the owner of the VM that arrived by live migration (ACTIVE)."""

    async def boot_receiver(self, vm_id: str, power_on: bool = True) -> Server:
        """Cold path: make the receiver the owner of the promoted volume; boot it when ``power_on``
        (ACTIVE), else leave it SHUTOFF as the VM was at the source."""

    async def retire_server(self, vm_id: str) -> None:
        """Remove the source's record after the VM moved away; idempotent, keeps the disk."""
