"""The four driver ports of one cluster, bundled, and the directory that finds them.

Why: the engine acts on "the source cloud" and "the destination cloud". It must
not care whether a cloud's drivers run in this process (embedded default: sim
clouds served in-process) or behind that cloud's own agent over CNFPeer gRPC
(a real federation): both are a ``ClusterDrivers`` returned by a
``DriverDirectory``. The master never reaches into another cloud except
through this seam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cnf.hypervisor.base import HypervisorDriver
from cnf.network.base import BgpDriver
from cnf.openstack.base import CloudDriver
from cnf.storage.base import StorageDriver


@dataclass(frozen=True)
class ClusterDrivers:
    cluster_id: str
    cloud: CloudDriver
    storage: StorageDriver
    bgp: BgpDriver
    hypervisor: HypervisorDriver


class DriverDirectory(Protocol):
    def drivers(self, cluster_id: str) -> ClusterDrivers:
        """The drivers acting on ``cluster_id``; raises ``NotFound`` for an unknown cluster."""

    def cluster_ids(self) -> list[str]:
        ...


class StaticDirectory:
    """A fixed map of cluster id -> drivers (embedded default, tests)."""

    def __init__(self, entries: dict[str, ClusterDrivers]) -> None:
        self._entries = dict(entries)

    def drivers(self, cluster_id: str) -> ClusterDrivers:
        from cnf.errors import NotFound

        try:
            return self._entries[cluster_id]
        except KeyError:
            raise NotFound(f"no drivers for cluster {cluster_id}", cluster_id=cluster_id) from None

    def cluster_ids(self) -> list[str]:
        return list(self._entries)

    def add(self, entry: ClusterDrivers) -> None:
        self._entries[entry.cluster_id] = entry
