"""The e2e guest's record in the real OpenStack lab's Nova, for the migration through the agents.

Why: with ``drivers.cloud: real`` the agents find the VM in their cloud's Nova, not in a sim world. The e2e lab
boots its guest in QEMU itself (``lab.e2e``), before any cloud is involved, under the name ``VM_ID``; the agents'
QEMU driver keys domains by CNF VM id. So the Nova record of that guest carries the driver's own identity markers
(``cnf/openstack/client.py``): metadata ``cnf_vm_id=<VM_ID>`` and tag ``cnf-vm-<VM_ID>``. CNF's id of the VM is then
``VM_ID`` in both clouds (the destination's receiver record carries the same markers), the QEMU domain the source
agent adopts is the one the lab booted, and nothing in the lab has to learn Nova's UUID. (The alternative, the Nova
UUID as the CNF id, would need the guest booted under a UUID the cloud gives only after the lab's QEMU is up.)

What the record holds: flavor ``e2e.<RAM_MB>`` (created in both clouds: the agents' QEMU sizes the incoming domain
from the flavor's RAM, so it must equal the lab guest's), the lab's Glance image (never booted: the fake virt
driver runs no guest), no NIC, metadata ``cnf_ip`` (the guest's /32: the lab has no Neutron port for it) and
``cnf_image`` (the RBD image the lab's guest runs on).

Clean-up goes through Nova too: a record is marked ``cnf_state=departed`` first (what ``retire_server`` does, so a
receiver driver keeps the disk), then deleted; the ports CNF pre-created in Neutron for receivers of the VM's IP
are deleted with them.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnf.openstack.client import vm_tag
from lab.e2e import CLUSTERS, IMAGE, RAM_MB, VM_ID
from lab.e2e_net import VM_IP

FLAVOR = f"e2e.{RAM_MB}"
VCPUS = 1


def _connect(cloud: Any) -> Any:
    from lab.openstack import _connect as connect_admin

    return connect_admin(cloud)


@dataclass(frozen=True)
class NovaRecord:
    """One live Nova server of the VM (what the test asserts on)."""

    nova_id: str
    status: str
    power_state: int | None
    receiver: str
    host: str


def clouds_of(openstack: Any) -> dict[str, Any]:
    """The e2e lab's cloud ids -> the OpenStack lab's clouds (a = the first, b = the second)."""
    if len(openstack.clouds) < len(CLUSTERS):
        raise ValueError(f"the OpenStack lab has {len(openstack.clouds)} clouds, the e2e lab needs {len(CLUSTERS)}")
    return dict(zip(CLUSTERS, openstack.clouds[: len(CLUSTERS)], strict=True))


def openstack_from_env() -> Any | None:
    """The lab named by ``CNF_LAB_OPENSTACK_REUSE=<lab.json>`` (``python -m lab.openstack up``), else None.

    Why: the CLI's ``migrate --through-agents`` does not bring clouds up (minutes); with this variable it uses
    running ones (never stopped here), without it the agents keep the sim cloud.
    """
    path = os.environ.get("CNF_LAB_OPENSTACK_REUSE")
    return openstack_from_record(Path(path)) if path else None


def openstack_from_record(path: Path) -> Any:
    from lab.openstack import OpenStackLab

    return OpenStackLab.from_dict(json.loads(path.read_text()))


def openstack_from_state() -> Any:
    """The clouds ``python -m lab.openstack up`` left running (its ``current.json``); never stopped here.

    ``FileNotFoundError`` naming the command to run when none is up.
    """
    from lab.openstack import STATE_ROOT

    current = STATE_ROOT / "current.json"
    if not current.exists():
        raise FileNotFoundError(f"no OpenStack lab is up ({current} is missing): run `python -m lab.openstack up`")
    return openstack_from_record(current)


def agent_openstack_section(cloud: Any) -> dict[str, Any]:
    """The agent's ``openstack:`` config for this lab cloud: admin credentials + the lab's receiver options."""
    opts = cloud.driver_options()
    return {**cloud.credentials(), "network": opts["network"] or "", "attach_port": bool(opts["attach_port"]),
            "receiver_image": opts["receiver_image"]}


def ensure_flavor(cloud: Any) -> None:
    """``e2e.<RAM_MB>`` with the lab guest's RAM (idempotent: the lab may be shared by several runs)."""
    from openstack import exceptions as sdk

    conn = _connect(cloud)
    try:
        try:
            conn.compute.find_flavor(FLAVOR, ignore_missing=False)
        except sdk.NotFoundException:
            conn.compute.create_flavor(name=FLAVOR, ram=RAM_MB, vcpus=VCPUS, disk=1)
    finally:
        conn.close()


def vm_records(cloud: Any, vm_id: str = VM_ID) -> list[NovaRecord]:
    """The VM's live records in this cloud's Nova (by the tag CNF puts on every record of the VM)."""
    conn = _connect(cloud)
    try:
        found = [s for s in conn.compute.servers(details=True, all_projects=True, tags=vm_tag(vm_id))
                 if s.status != "DELETED"]
        return [NovaRecord(nova_id=str(s.id), status=str(s.status), power_state=s.power_state,
                           receiver=str((s.metadata or {}).get("cnf_receiver", "")), host=str(s.compute_host or ""))
                for s in found]
    finally:
        conn.close()


def delete_vm_records(cloud: Any, vm_id: str = VM_ID, ip: str = VM_IP, *, wait_s: float = 120.0) -> int:
    """Delete the VM's records (marked departed first) and the receiver ports holding its IP; returns how many
    records were deleted. The lab's QEMU guest is not touched (the fake virt driver runs no domain)."""
    conn = _connect(cloud)
    try:
        found = [s for s in conn.compute.servers(details=True, all_projects=True, tags=vm_tag(vm_id))
                 if s.status != "DELETED"]
        for s in found:
            with contextlib.suppress(Exception):
                conn.compute.set_server_metadata(s.id, cnf_state="departed")
            conn.compute.delete_server(s.id, ignore_missing=True)
        for s in found:
            conn.compute.wait_for_delete(s, wait=wait_s, interval=0.5)
        if cloud.neutron_venv is not None:
            for p in list(conn.network.ports(fixed_ips=f"ip_address={ip}")):
                if (p.name or "").startswith("cnf-receiver-"):
                    conn.network.delete_port(p, ignore_missing=True)
        return len(found)
    finally:
        conn.close()


def boot_vm_record(cloud: Any, vm_id: str = VM_ID, ip: str = VM_IP, image: str = IMAGE,
                   *, wait_s: float = 180.0) -> str:
    """Create the running guest's record in this cloud's Nova and wait for ACTIVE; returns the Nova UUID."""
    from lab.openstack import IMAGE as GLANCE_IMAGE

    conn = _connect(cloud)
    try:
        flavor = conn.compute.find_flavor(FLAVOR, ignore_missing=False)
        glance = conn.image.find_image(GLANCE_IMAGE, ignore_missing=False)
        s = conn.compute.create_server(name=vm_id, flavor_id=flavor.id, image_id=glance.id, networks="none",
                                       metadata={"cnf_vm_id": vm_id, "cnf_ip": ip, "cnf_image": image},
                                       tags=[vm_tag(vm_id)])
        conn.compute.wait_for_server(s, status="ACTIVE", wait=wait_s, interval=0.5)
        return str(s.id)
    finally:
        conn.close()


def place_vm(openstack: Any, where: str) -> str:
    """The VM's flavor in every cloud and exactly one ACTIVE record of it, in the cloud the guest runs in
    (``where``); returns its Nova UUID. A record left by an earlier migration there is kept; any other (a failed
    run's, or one in the wrong cloud after the guest moved without the agents) is deleted first."""
    clouds = clouds_of(openstack)
    for cloud in clouds.values():
        ensure_flavor(cloud)
    records = {cid: vm_records(cloud) for cid, cloud in clouds.items()}
    here = records[where]
    if len(here) == 1 and here[0].status == "ACTIVE" and not any(records[c] for c in clouds if c != where):
        return here[0].nova_id
    for cloud in clouds.values():
        delete_vm_records(cloud)
    return boot_vm_record(clouds[where])


def nova_view(openstack: Any) -> dict[str, list[NovaRecord]]:
    """Per e2e cloud id, the VM's live Nova records."""
    return {cid: vm_records(cloud) for cid, cloud in clouds_of(openstack).items()}


def remove_vm(openstack: Any) -> None:
    """Delete the VM's records in every cloud (test teardown: the shared clouds stay clean for other suites)."""
    for cloud in clouds_of(openstack).values():
        delete_vm_records(cloud)
