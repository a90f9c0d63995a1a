"""This agent's own cloud: each port's driver chosen by config (``sim`` or ``real``) and built from it.

Why one place: an operator reading ``drivers.*`` in ``cnf.yaml`` finds here exactly what each choice
constructs and from which keys. Real drivers are imported only when chosen, so an agent on the embedded
default needs none of FRR, Ceph, QEMU or a Keystone.
"""

from __future__ import annotations

from typing import Any

from cnf.clock import Clock
from cnf.config import CNFConfig
from cnf.hypervisor.base import HypervisorDriver
from cnf.network.base import BgpDriver
from cnf.openstack.base import CloudDriver
from cnf.ports import ClusterDrivers
from cnf.storage.base import StorageDriver


def real_cloud(cfg: CNFConfig, clock: Clock) -> CloudDriver:
    from cnf.openstack.client import CloudCredentials, OpenStackCloud

    o = cfg.openstack
    creds = CloudCredentials(auth_url=o.auth_url, username=o.username, password=o.password,
                             project_name=o.project_name, user_domain_name=o.user_domain_name,
                             project_domain_name=o.project_domain_name,
                             application_credential_id=o.application_credential_id,
                             application_credential_secret=o.application_credential_secret,
                             region_name=o.region_name)
    return OpenStackCloud(cfg.cluster_id, creds, network=o.network or None, attach_port=o.attach_port,
                          receiver_image=o.receiver_image, clock=clock)


def real_storage(cfg: CNFConfig) -> StorageDriver:
    from cnf.storage.ceph import CephRbdMirror, CephSiteConfig

    c = cfg.ceph
    site = CephSiteConfig(cluster_name=c.cluster_name or cfg.cluster_name, conf_path=c.conf, pool=c.pool,
                          client_name=c.client_name if c.client_name.startswith("client.") else
                          f"client.{c.client_name}", keyring=c.keyring or None)
    return CephRbdMirror(cfg.cluster_id, site)


def real_bgp(cfg: CNFConfig, clock: Clock) -> BgpDriver:
    from cnf.network.bgp import FrrBgpSpeaker

    b = cfg.bgp
    return FrrBgpSpeaker(cfg.cluster_id, b.as_number, b.next_hop, pathspace=b.vtysh_pathspace or None,
                         observer_pathspace=b.observer_pathspace or None, transport=b.transport,
                         run_dir=b.frr_run_dir, clock=clock)


def real_hypervisor(cfg: CNFConfig) -> HypervisorDriver:
    from cnf.hypervisor.qemu import QemuHypervisor, QemuMachine

    h = cfg.hypervisor
    machine = QemuMachine(binary=h.binary, accel=h.accel, kernel=h.kernel, initrd=h.initrd, append=h.append,
                          disk_template=h.disk_template, extra_args=tuple(h.extra_args))
    return QemuHypervisor(cfg.cluster_id, h.runtime_dir, machine, listen_address=h.listen_address)


def own_cloud_drivers(cfg: CNFConfig, clock: Clock, sim: Any) -> ClusterDrivers:
    """The four ports of this agent's cloud; ``sim`` is a ``ClusterDrivers`` of sim views for the ``sim`` ones."""
    d = cfg.drivers
    return ClusterDrivers(
        cluster_id=cfg.cluster_id,
        cloud=real_cloud(cfg, clock) if d.cloud == "real" else sim.cloud,
        storage=real_storage(cfg) if d.storage == "real" else sim.storage,
        bgp=real_bgp(cfg, clock) if d.bgp == "real" else sim.bgp,
        hypervisor=real_hypervisor(cfg) if d.hypervisor == "real" else sim.hypervisor,
    )
