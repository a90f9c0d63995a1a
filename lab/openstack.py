"""Two (or more) real, independent OpenStack clouds on 127.0.0.1 for the CloudDriver lab tests.

Each cloud: its own Keystone, Placement, Glance (file store) and Nova (api, conductor, scheduler,
compute with the CNF receiver over ``fake.FakeDriverWithoutFakeNodes``), installed from PyPI into
one venv outside the repo (``/opt/cnf-lab/openstack-venv``), HTTP services under uwsgi with
``--add-header "Connection: close"`` (without it openstacksdk's second request on a reused
connection is reset). State in the already running MariaDB (one database set per cloud, names
carry a random token) and RabbitMQ (one vhost per cloud). Neutron is a read-only stub: nova-api
asks Neutron for security groups on every server show even with ``--nic none``; real Neutron
did not bind ports under Nova in the lab (see docs/openstack.md).

Why these choices (measured in ../shared/lab/openstack/REPORT.md and here): SQLite gave
``database is locked`` under concurrent Nova services; every ``openstack`` CLI call costs ~2 s of
start-up on 2 cores, so catalog, flavor and image are created in-process with openstacksdk;
a first boot after a cold start once hung in BUILD, so bring-up ends with a warm-up boot that
retries once.

Contract:
- ports are picked by binding port 0; database and vhost names carry a random token: concurrent
  runs never collide;
- every process is started here in its own session and ended by its PID/process group only;
- the venv is reused when its stamp matches the requirement set (sha256 of the pinned list and the
  Python version), rebuilt in place under an exclusive ``flock`` otherwise; the stamp is written
  last, so an interrupted install is never taken for a good one;
- ``down()`` drops the databases and the vhost and removes the data directory.

CLI: ``python -m lab.openstack up [--clouds 2]`` (prints JSON with auth URLs, leaves the clouds
running, state in ``/tmp/cnf-lab-openstack/current.json``); ``python -m lab.openstack down``;
``python -m lab.openstack venv`` (install only).

Modules: ``lab.openstack_host`` (MariaDB, RabbitMQ, the venvs), ``lab.openstack_cloud`` (one cloud: names,
ports, its processes), ``lab.openstack_config`` (its config files), ``lab.openstack_state`` (its databases,
vhost and schema templates), ``lab.openstack_neutron_stub``; this module brings clouds up, shares them
between test sessions and is the CLI. The lab's public names (``__all__``) are all importable from here.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lab.loopback import free_ports
from lab.openstack_cloud import FLAVOR, IMAGE, NETWORK, PASSWORD, SUBNET_CIDR, TOOLS, CloudPorts, LabCloud
from lab.openstack_config import DB_POOL, fernet_key_repository, write_configs
from lab.openstack_host import (
    APT_PACKAGES,
    MYSQL,
    NEUTRON_REQUIREMENTS,
    NEUTRON_VENV,
    PYTHON_FOR_VENV,
    RABBITMQCTL,
    REPO,
    REQUIREMENTS,
    VENV,
    WITH_NEUTRON,
    LabError,
    ensure_system_services,
    ensure_venv,
    requirements_key,
    run_checked,
    wait_http,
)
from lab.openstack_neutron_stub import serve_neutron_stub
from lab.openstack_state import (
    TEMPLATE_DBS,
    create_state_stores,
    drop_state_stores,
    ensure_schema_templates,
    load_templates,
    map_compute_host,
    neutron_schema_steps,
    template_dir,
)
from lab.owned_process import group_members
from lab.shared import SharedLab

__all__ = [
    "APT_PACKAGES", "DB_POOL", "FLAVOR", "IMAGE", "MYSQL", "NETWORK", "NEUTRON_REQUIREMENTS", "NEUTRON_VENV",
    "PASSWORD", "PYTHON_FOR_VENV", "RABBITMQCTL", "REPO", "REQUIREMENTS", "STATE_ROOT", "SUBNET_CIDR",
    "TEMPLATE_DBS", "TOOLS", "VENV", "WITH_NEUTRON", "CloudPorts", "LabCloud", "LabError", "OpenStackLab",
    "acquire", "bring_up", "cleanup_stale", "ensure_schema_templates", "ensure_system_services", "ensure_venv",
    "fernet_key_repository", "free_ports", "main", "memory_mb", "release", "requirements_key", "running",
    "serve_neutron_stub", "up", "warm_up", "write_configs",
]

STATE_ROOT = Path(os.environ.get("CNF_LAB_OPENSTACK_STATE", "/tmp/cnf-lab-openstack"))


# --- bring-up of one cloud -----------------------------------------------------------------------------


def _connect(cloud: LabCloud) -> Any:
    """An openstacksdk connection to ``cloud`` as its admin; the caller closes it (tests use it too)."""
    import openstack

    return openstack.connect(auth_type="password", auth={
        "auth_url": cloud.auth_url, "username": "admin", "password": PASSWORD, "project_name": "admin",
        "user_domain_name": "Default", "project_domain_name": "Default"}, region_name="RegionOne",
        api_timeout=30, load_yaml_config=False, load_envvars=False)


def _register_catalog(cloud: LabCloud) -> None:
    """Service project, service users and the catalog, in one openstacksdk session (not the CLI)."""
    conn = _connect(cloud)
    idn = conn.identity
    project = idn.create_project(name="service", domain_id="default")
    admin = idn.find_role("admin", ignore_missing=False)
    service_role = idn.find_role("service")
    for user in ("placement", "nova", "glance", "neutron"):
        u = idn.create_user(name=user, password=PASSWORD, domain_id="default")
        idn.assign_project_role_to_user(project, u, admin)
        if service_role is not None:
            idn.assign_project_role_to_user(project, u, service_role)
    p = cloud.ports
    for name, kind, url in (("placement", "placement", f"http://127.0.0.1:{p.placement}"),
                            ("nova", "compute", f"http://127.0.0.1:{p.nova}/v2.1"),
                            ("glance", "image", f"http://127.0.0.1:{p.glance}"),
                            ("neutron", "network", f"http://127.0.0.1:{p.neutron}")):
        svc = idn.create_service(name=name, type=kind)
        for interface in ("public", "internal", "admin"):
            idn.create_endpoint(service_id=svc.id, interface=interface, url=url, region_id="RegionOne")
    conn.close()


def _wait_compute_node(cloud: LabCloud, deadline_s: float) -> None:
    conn = _connect(cloud)
    end = time.monotonic() + deadline_s
    try:
        while time.monotonic() < end:
            if list(conn.placement.resource_providers()):
                return
            time.sleep(0.5)
    finally:
        conn.close()
    raise LabError(f"nova-compute of {cloud.name} did not register in Placement within {deadline_s:.0f} s "
                   f"(see {cloud.logs}/nova-compute.out)")


def _content(cloud: LabCloud) -> None:
    conn = _connect(cloud)
    conn.compute.create_flavor(name=FLAVOR, ram=512, vcpus=1, disk=1)
    conn.compute.create_flavor(name="m1.small", ram=2048, vcpus=1, disk=1)
    conn.create_image(IMAGE, filename=str(cloud.root / "tiny.img"), disk_format="raw", container_format="bare",
                      wait=True, timeout=120)
    if cloud.neutron_venv is not None:
        net = conn.network.create_network(name=NETWORK, shared=True)
        conn.network.create_subnet(network_id=net.id, name=f"{NETWORK}-v4", ip_version=4, cidr=SUBNET_CIDR,
                                   enable_dhcp=False, gateway_ip=None)
    conn.close()


def warm_up(cloud: LabCloud, attempts: int = 2) -> float:
    """Boot and delete one server (a first boot after a cold start once hung in BUILD): retries once."""
    conn = _connect(cloud)
    try:
        flavor = conn.compute.find_flavor(FLAVOR, ignore_missing=False)
        image = conn.image.find_image(IMAGE, ignore_missing=False)
        last: Exception | None = None
        for attempt in range(attempts):
            t0 = time.monotonic()
            s = conn.compute.create_server(name=f"warmup-{attempt}", flavor_id=flavor.id, image_id=image.id,
                                           networks="none")
            try:
                conn.compute.wait_for_server(s, status="ACTIVE", wait=60, interval=0.5)
                return time.monotonic() - t0
            except Exception as exc:
                last = exc
            finally:
                conn.compute.delete_server(s, ignore_missing=True)
                with contextlib.suppress(Exception):
                    conn.compute.wait_for_delete(s, wait=60, interval=0.5)
        raise LabError(f"warm-up boot in {cloud.name} failed twice: {last}")
    finally:
        conn.close()


def bring_up(cloud: LabCloud) -> LabCloud:
    """Everything for one cloud, from nothing; ~1 min on 2 cores. Records step timings."""
    t0 = time.monotonic()

    def mark(step: str) -> None:
        cloud.timings[step] = round(time.monotonic() - t0, 1)

    cloud.root.mkdir(parents=True, exist_ok=True)
    write_configs(cloud)
    create_state_stores(cloud)
    load_templates(cloud, template_dir(cloud.venv))
    mark("stores")
    e, setup = cloud.etc, cloud.logs / "setup.log"
    nconf = ["--config-file", str(e / "nova" / "nova.conf")]
    fernet_key_repository(cloud.root / "keystone" / "fernet")
    fernet_key_repository(cloud.root / "keystone" / "cred")
    # the API services need only their database at start-up: they start now, while Keystone is
    # bootstrapped (keystonemiddleware asks Keystone on the first request, not at start)
    cloud._uwsgi("keystone", cloud.ports.keystone, "keystone.wsgi.api:application",
                 {"OS_KEYSTONE_CONFIG_FILES": str(e / "keystone.conf")})
    cloud._uwsgi("placement", cloud.ports.placement, "placement.wsgi.api:application",
                 {"OS_PLACEMENT_CONFIG_DIR": str(e / "placement")})
    cloud._uwsgi("glance", cloud.ports.glance, "glance.wsgi.api:application",
                 {"OS_GLANCE_CONFIG_DIR": str(e / "glance")})
    if cloud.neutron_venv is not None:
        cloud._uwsgi("neutron", cloud.ports.neutron, "neutron.wsgi.api:application",
                     {"OS_NEUTRON_CONFIG_DIR": str(e / "neutron")}, venv=cloud.neutron_venv)
    else:
        cloud._spawn("neutron-stub", [sys.executable, "-m", "lab.openstack", "neutron-stub",
                                      str(cloud.ports.neutron)], {"PYTHONPATH": str(REPO)})
    cloud._uwsgi("nova-api", cloud.ports.nova, "nova.wsgi.osapi_compute:application",
                 {"OS_NOVA_CONFIG_DIR": str(e / "nova")})
    run_checked(cloud._tool("keystone-manage", "--config-file", str(e / "keystone.conf"), "bootstrap",
                            "--bootstrap-password", PASSWORD,
                            "--bootstrap-region-id", "RegionOne", "--bootstrap-admin-url", cloud.auth_url,
                            "--bootstrap-internal-url", cloud.auth_url, "--bootstrap-public-url", cloud.auth_url),
                log=setup)
    mark("keystone_db")
    wait_http(f"http://127.0.0.1:{cloud.ports.keystone}/v3", 120, f"keystone of {cloud.name}")
    _register_catalog(cloud)
    mark("catalog")
    # these build their Placement client at start-up with the service users (401 before the catalog
    # exists: nova-scheduler exits with "Placement service credentials do not work")
    for svc in ("nova-conductor", "nova-scheduler"):
        cloud._spawn(svc, cloud._tool(svc, *nconf))
    cloud._spawn("nova-compute", [cloud._py(), "-m", "cnf.openstack.receiver", *nconf], {"PYTHONPATH": str(REPO)})
    for name, port in (("placement", cloud.ports.placement), ("glance", cloud.ports.glance),
                       ("nova-api", cloud.ports.nova), ("neutron", cloud.ports.neutron)):
        wait_http(f"http://127.0.0.1:{port}/", 120, f"{name} of {cloud.name}")
    mark("http_up")
    _wait_compute_node(cloud, 180)
    map_compute_host(cloud)
    mark("compute_mapped")
    _content(cloud)
    mark("content")
    cloud.timings["warmup_boot"] = round(warm_up(cloud), 1)
    mark("ready")
    return cloud


# --- the lab (N clouds) ---------------------------------------------------------------------------------


@dataclass
class OpenStackLab:
    clouds: list[LabCloud]
    token: str
    root: Path

    @classmethod
    def from_dict(cls, data: dict[str, Any], root: Path | None = None) -> OpenStackLab:
        """The lab a ``lab.json``/``current.json`` record describes (``root`` overrides the recorded one)."""
        return cls(clouds=[LabCloud.from_dict(c) for c in data["clouds"]], token=data["token"],
                   root=root or Path(data["root"]))

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "root": str(self.root), "owner_pid": os.getpid(),
                "clouds": [c.to_dict() for c in self.clouds]}

    def save(self) -> None:
        (self.root / "lab.json").write_text(json.dumps(self.to_dict(), indent=1))

    def down(self) -> None:
        for c in self.clouds:
            c.stop_processes()
        for c in self.clouds:
            drop_state_stores(c)
        if not os.environ.get("CNF_LAB_KEEP"):
            shutil.rmtree(self.root, ignore_errors=True)


def cleanup_stale() -> None:
    """Remove leftovers of earlier runs whose owner process is gone (crashed test sessions)."""
    if not STATE_ROOT.exists():
        return
    for d in STATE_ROOT.iterdir():
        meta = d / "lab.json"
        if not meta.exists():
            continue
        try:
            data = json.loads(meta.read_text())
        except ValueError:
            continue
        owner = int(data.get("owner_pid", 0))
        if owner == 0 or Path(f"/proc/{owner}").exists():
            continue  # 0: started by the CLI, ended by `down` only
        lab = OpenStackLab.from_dict(data, root=d)
        for c in lab.clouds:  # only groups whose leader still runs from this lab's directory are ours
            c.pids = {k: v for k, v in c.pids.items() if _cmdline_mentions(v, str(d))}
        lab.down()
        shutil.rmtree(d, ignore_errors=True)


def _cmdline_mentions(pid: int, text: str) -> bool:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        env_cwd = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return False
    return text in raw or env_cwd.startswith(text)


def up(count: int = 2) -> OpenStackLab:
    """Bring ``count`` independent clouds up in parallel. Raises LabError (after tearing down) on failure."""
    ensure_system_services()
    venv = ensure_venv()
    ensure_schema_templates(venv)
    neutron_venv = None
    if WITH_NEUTRON:
        neutron_venv = ensure_venv(NEUTRON_VENV, NEUTRON_REQUIREMENTS)
        ensure_schema_templates(neutron_venv, NEUTRON_REQUIREMENTS, ("neutron",), neutron_schema_steps)
    cleanup_stale()
    token = secrets.token_hex(3)
    root = STATE_ROOT / token
    root.mkdir(parents=True, exist_ok=True)
    clouds = []
    for i in range(1, count + 1):
        ports = CloudPorts(*free_ports(5))
        clouds.append(LabCloud(index=i, token=token, root=root / f"cloud{i}", ports=ports, venv=venv,
                               neutron_venv=neutron_venv))
    lab = OpenStackLab(clouds=clouds, token=token, root=root)
    lab.save()
    try:
        with concurrent.futures.ThreadPoolExecutor(count) as pool:
            for f in [pool.submit(bring_up, c) for c in clouds]:
                f.result()
    except BaseException:
        lab.save()
        with contextlib.suppress(Exception):
            _dump_logs_hint(lab)
        lab.down()
        raise
    lab.save()
    return lab


def _dump_logs_hint(lab: OpenStackLab) -> None:
    for c in lab.clouds:
        for f in sorted(c.logs.glob("*")):
            if f.is_file() and f.stat().st_size:
                tail = f.read_text(errors="replace").splitlines()[-5:]
                print(f"--- {f}", *tail, sep="\n", file=sys.stderr)


def memory_mb(lab: OpenStackLab) -> dict[str, float]:
    """PSS (proportional set size, the fair share) of every process of the lab, in MB."""
    total = 0
    for c in lab.clouds:
        for pgid in c.pids.values():
            for pid in group_members(pgid):
                try:
                    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                except (OSError, ValueError, IndexError):
                    continue
    return {"pss_mb": round(total / 1024, 1)}


# --- shared by test sessions -----------------------------------------------------------------------------
#
# The contract suite (tests/contract/test_cloud.py) and the lab suite (tests/lab/openstack/) both need
# the clouds; two session fixtures would start four clouds (twice the RAM budget). Both call
# ``acquire``/``release``: the first acquire brings the lab up, the last release takes it down.
# ``CNF_LAB_OPENSTACK_REUSE=<lab.json>`` (developer loop) uses a lab started by ``python -m lab.openstack
# up`` and never stops it.

REUSE_ENV = "CNF_LAB_OPENSTACK_REUSE"


def _start_shared() -> OpenStackLab:
    reuse = os.environ.get(REUSE_ENV)
    if not reuse:
        return up(2)
    data = json.loads(Path(reuse).read_text())
    return OpenStackLab.from_dict(data)


def _stop_shared(lab: OpenStackLab) -> None:
    reuse = os.environ.get(REUSE_ENV)
    if not reuse:
        lab.down()
    else:  # keep the record current (a test may have restarted a service: new PID) for `down`
        Path(reuse).write_text(json.dumps({**lab.to_dict(), "owner_pid": 0}, indent=1))


# a failed bring-up (minutes) is not retried for every test
_SHARED: SharedLab[OpenStackLab] = SharedLab(_start_shared, _stop_shared, remember_failure=True)
acquire = _SHARED.acquire
release = _SHARED.release


# --- CLI ---------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def running(count: int = 2) -> Iterator[OpenStackLab]:
    lab = up(count)
    try:
        yield lab
    finally:
        lab.down()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.openstack")
    sub = ap.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up")
    u.add_argument("--clouds", type=int, default=2)
    sub.add_parser("down")
    sub.add_parser("venv")
    n = sub.add_parser("neutron-stub")
    n.add_argument("port", type=int)
    args = ap.parse_args(argv)
    current = STATE_ROOT / "current.json"
    if args.cmd == "venv":
        print(ensure_venv())
        return 0
    if args.cmd == "neutron-stub":
        serve_neutron_stub(args.port)
        return 0
    if args.cmd == "up":
        t0 = time.monotonic()
        lab = up(args.clouds)
        data = lab.to_dict()
        data["owner_pid"] = 0  # the CLI exits; `down` (not cleanup_stale) ends this lab
        (lab.root / "lab.json").write_text(json.dumps(data, indent=1))
        current.write_text(json.dumps(data, indent=1))
        print(json.dumps({"seconds": round(time.monotonic() - t0, 1), **memory_mb(lab),
                          "clouds": [{"name": c.name, "auth_url": c.auth_url, "timings": c.timings}
                                     for c in lab.clouds]}, indent=1))
        return 0
    if args.cmd == "down":
        if not current.exists():
            print("no lab recorded in", current)
            return 0
        data = json.loads(current.read_text())
        OpenStackLab.from_dict(data).down()
        current.unlink()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
