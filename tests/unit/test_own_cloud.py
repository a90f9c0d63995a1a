"""``drivers.*`` picks each port's implementation; real ones are built from their config keys."""

from __future__ import annotations

from pathlib import Path

import pytest

from cnf.agent.own_cloud import own_cloud_drivers
from cnf.clock import SystemClock
from cnf.config import load_config
from cnf.errors import InvalidInput
from cnf.sim.demo import DEMO_CLUSTERS, demo_fabric, sim_drivers

CID = DEMO_CLUSTERS[0][0]


def cfg(tmp_path: Path, drivers: dict[str, str], **extra: object):  # type: ignore[no-untyped-def]
    return load_config(None, overrides={"cluster_id": CID, "drivers": drivers, **extra})


def test_all_sim_uses_the_sim_views(tmp_path: Path) -> None:
    sim = sim_drivers(demo_fabric(), CID)
    d = own_cloud_drivers(cfg(tmp_path, {}), SystemClock(), sim)
    assert d.cloud is sim.cloud and d.storage is sim.storage and d.bgp is sim.bgp and d.hypervisor is sim.hypervisor


def test_real_bgp_and_hypervisor_are_built_from_their_keys(tmp_path: Path) -> None:
    sim = sim_drivers(demo_fabric(), CID)
    c = cfg(tmp_path, {"bgp": "real", "hypervisor": "real"},
            bgp={"as_number": 65010, "next_hop": "192.0.2.10", "vtysh_pathspace": "r1"},
            hypervisor={"runtime_dir": str(tmp_path / "qemu"), "accel": "tcg", "binary": "/opt/lab/qemu-on-host"})
    d = own_cloud_drivers(c, SystemClock(), sim)
    from cnf.hypervisor.qemu import QemuHypervisor
    from cnf.network.bgp import FrrBgpSpeaker

    assert isinstance(d.bgp, FrrBgpSpeaker) and d.bgp.as_number == 65010 and d.bgp.default_next_hop == "192.0.2.10"
    assert isinstance(d.hypervisor, QemuHypervisor)
    assert d.hypervisor.machine.binary == "/opt/lab/qemu-on-host"  # e.g. a wrapper into another namespace
    assert d.cloud is sim.cloud and d.storage is sim.storage


def test_real_storage_with_a_missing_ceph_conf_names_the_key(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"storage": "real"}, ceph={"conf": str(tmp_path / "absent.conf")})
    with pytest.raises(InvalidInput) as e:
        own_cloud_drivers(c, SystemClock(), sim_drivers(demo_fabric(), CID))
    assert e.value.field == "storage.conf_path"


def test_real_cloud_without_credentials_names_the_field(tmp_path: Path) -> None:
    c = cfg(tmp_path, {"cloud": "real"}, openstack={"auth_url": "http://127.0.0.1:5000/v3"})
    with pytest.raises(InvalidInput) as e:
        own_cloud_drivers(c, SystemClock(), sim_drivers(demo_fabric(), CID))
    assert e.value.field == "username"


def test_real_cloud_carries_the_receiver_image_and_port_binding(tmp_path: Path) -> None:
    """Without ``receiver_image`` an agent's real cloud refuses every ``create_receiver``: the key must reach it."""
    c = cfg(tmp_path, {"cloud": "real"}, openstack={"auth_url": "http://127.0.0.1:5000/v3", "username": "admin",
                                                    "password": "pw", "project_name": "admin",
                                                    "receiver_image": "tiny", "attach_port": False})
    d = own_cloud_drivers(c, SystemClock(), sim_drivers(demo_fabric(), CID))
    from cnf.openstack.client import OpenStackCloud

    assert isinstance(d.cloud, OpenStackCloud)
    assert d.cloud.receiver_image == "tiny" and d.cloud.attach_port is False
    d.cloud.close()
