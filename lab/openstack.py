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
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import fcntl
import hashlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.loopback import free_ports

REPO = Path(__file__).resolve().parents[1]
STATE_ROOT = Path(os.environ.get("CNF_LAB_OPENSTACK_STATE", "/tmp/cnf-lab-openstack"))
VENV = Path(os.environ.get("CNF_LAB_OPENSTACK_VENV", "/opt/cnf-lab/openstack-venv"))
PYTHON_FOR_VENV = os.environ.get("CNF_LAB_OPENSTACK_PYTHON", "python3")
REQUIREMENTS = (
    "keystone==30.0.0",
    "nova==34.0.0",
    "openstack-placement==16.0.0",
    "glance==33.0.0",
    "uwsgi==2.0.31",
    "PyMySQL",
    "openstacksdk",
)
NEUTRON_VENV = Path(os.environ.get("CNF_LAB_NEUTRON_VENV", "/opt/cnf-lab/neutron-venv"))
NEUTRON_REQUIREMENTS = ("neutron==29.0.0", "uwsgi==2.0.31", "PyMySQL")
#: real Neutron API (ML2, no agents) instead of the read-only stub; "0" falls back to the stub
WITH_NEUTRON = os.environ.get("CNF_LAB_OPENSTACK_NEUTRON", "1") != "0"
NETWORK = "cnf-net"
SUBNET_CIDR = "10.0.0.0/8"
APT_PACKAGES = ("mariadb-server", "mariadb-client", "rabbitmq-server", "gcc")
MYSQL = ("mysql", "-uroot", "-h127.0.0.1", "-P3306")
RABBITMQCTL = "rabbitmqctl"
PASSWORD = "secret"  # lab-only: every lab user's password
IMAGE = "tiny"
FLAVOR = "m1.tiny"

# console-script entry points, called as `python -c` so the venv keeps working if moved
TOOLS = {
    "keystone-manage": "keystone.cmd.manage",
    "placement-manage": "placement.cmd.manage",
    "glance-manage": "glance.cmd.manage",
    "nova-manage": "nova.cmd.manage",
    "nova-conductor": "nova.cmd.conductor",
    "nova-scheduler": "nova.cmd.scheduler",
    "neutron-db-manage": "neutron.db.migration.cli",
}


class LabError(RuntimeError):
    """The lab could not be brought up; the message names the step and the log to read."""


# --- small plumbing -------------------------------------------------------------------------------




def _run(argv: list[str], *, timeout: float = 300, env: dict[str, str] | None = None, log: Path | None = None,
         check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if log is not None:
        with log.open("a") as f:
            f.write(f"$ {' '.join(argv)}\n{proc.stdout}{proc.stderr}\n")
    if check and proc.returncode != 0:
        where = f" (log {log})" if log else ""
        raise LabError(f"{' '.join(argv[:4])} ... exit {proc.returncode}{where}: {proc.stderr[-800:]}")
    return proc


def _tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as s:
        s.settimeout(1.0)
        return s.connect_ex((host, port)) == 0


def _wait_http(url: str, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except (OSError, urllib.error.URLError):
            pass
        time.sleep(0.25)
    raise LabError(f"{what} did not answer at {url} within {deadline_s:.0f} s")


# --- system services and the venv -------------------------------------------------------------------


def ensure_system_services() -> None:
    """MariaDB on 127.0.0.1:3306 (root, no password) and RabbitMQ on 5672 (guest/guest), installed
    and started if this machine lacks them."""
    missing = [p for p in APT_PACKAGES if subprocess.run(["dpkg", "-s", p], capture_output=True).returncode != 0]
    if missing:
        _run(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=900,
             env={"DEBIAN_FRONTEND": "noninteractive"})
    for port, service in ((3306, "mariadb"), (5672, "rabbitmq-server")):
        if not _tcp_open(port):
            _run(["service", service, "start"], timeout=120, check=False)
            end = time.monotonic() + 90
            while not _tcp_open(port) and time.monotonic() < end:
                time.sleep(0.5)
            if not _tcp_open(port):
                raise LabError(f"{service} is not listening on 127.0.0.1:{port}")


def requirements_key(requirements: tuple[str, ...] = REQUIREMENTS) -> str:
    text = "\n".join(requirements) + f"\npython={_venv_python_version()}\n"
    return hashlib.sha256(text.encode()).hexdigest()


def _venv_python_version() -> str:
    out = subprocess.run([PYTHON_FOR_VENV, "-c", "import sys; print(sys.version.split()[0])"],
                         capture_output=True, text=True, timeout=30)
    return out.stdout.strip()


def ensure_venv(venv: Path = VENV, requirements: tuple[str, ...] = REQUIREMENTS) -> Path:
    """A lab venv with exactly ``requirements``; reused when its stamp matches (fast path, no pip)."""
    stamp = venv / ".cnf-requirements.sha256"
    key = requirements_key(requirements)
    if stamp.exists() and stamp.read_text().strip() == key:
        return venv
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be installing right now: wait for it
        if stamp.exists() and stamp.read_text().strip() == key:
            return venv
        if venv.exists():
            shutil.rmtree(venv)
        _run([PYTHON_FOR_VENV, "-m", "venv", str(venv)], timeout=120)
        req = venv / "cnf-requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        _run([str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(req)], timeout=1800,
             log=venv / "cnf-pip.log")
        stamp.write_text(key + "\n")
    return venv



# --- schema templates --------------------------------------------------------------------------------
#
# Running the services' own schema tools costs ~10 Python start-ups per cloud (nova-manage alone
# imports for several seconds on a loaded 2-core box). The schemas only depend on the installed
# versions, so they are built once per requirement set with the real tools, dumped, and loaded into
# every new cloud's databases; only the parts that name the cloud (Keystone bootstrap with its
# endpoints, Nova's cell mappings) are done per cloud.

TEMPLATE_DBS = ("keystone", "placement", "glance", "nova_api", "nova")


def _template_dir(venv: Path) -> Path:
    return venv / "cnf-schema-templates"


def _core_schema_steps(tmp: LabCloud) -> list[list[str]]:
    e = tmp.etc
    nconf = ["--config-file", str(e / "nova" / "nova.conf")]
    return [tmp._tool("keystone-manage", "--config-file", str(e / "keystone.conf"), "db_sync"),
            tmp._tool("placement-manage", "--config-file", str(e / "placement" / "placement.conf"), "db", "sync"),
            tmp._tool("glance-manage", "--config-file", str(e / "glance" / "glance-api.conf"), "db_sync"),
            tmp._tool("nova-manage", *nconf, "api_db", "sync"),
            tmp._tool("nova-manage", *nconf, "db", "sync", "--local_cell")]


def _neutron_schema_steps(tmp: LabCloud) -> list[list[str]]:
    return [tmp._tool("neutron-db-manage", *tmp.neutron_conf_args(), "upgrade", "heads")]


def ensure_schema_templates(venv: Path, requirements: tuple[str, ...] = REQUIREMENTS,
                            dbs: tuple[str, ...] = TEMPLATE_DBS, steps: Any = _core_schema_steps) -> Path:
    """Dumps of freshly synced schemas, keyed like the venv; built under the venv's lock."""
    out = _template_dir(venv)
    stamp = out / "stamp"
    key = requirements_key(requirements)
    if stamp.exists() and stamp.read_text().strip() == key:
        return out
    with open(venv.parent / f".{venv.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if stamp.exists() and stamp.read_text().strip() == key:
            return out
        shutil.rmtree(out, ignore_errors=True)
        work = out / "build"
        work.mkdir(parents=True)
        tmp = LabCloud(index=0, token=f"tpl{os.getpid()}", root=work, ports=CloudPorts(0, 0, 0, 0, 0), venv=VENV,
                       neutron_venv=NEUTRON_VENV if venv == NEUTRON_VENV else None)
        write_configs(tmp)
        names = {n: f"{tmp.db_prefix}_{n}" for n in dbs}
        _run([*MYSQL, "-e", "".join(f"CREATE DATABASE `{d}` CHARACTER SET utf8;" for d in names.values())])
        try:
            with concurrent.futures.ThreadPoolExecutor(2) as pool:
                for f in [pool.submit(_run, argv, log=tmp.logs / "setup.log") for argv in steps(tmp)]:
                    f.result()
            for name, db in names.items():
                dump = _run(["mysqldump", "-uroot", "-h127.0.0.1", "-P3306", "--skip-comments",
                             "--single-transaction", db], timeout=120)
                (out / f"{name}.sql").write_text(dump.stdout)
        finally:
            _run([*MYSQL, "-e", "".join(f"DROP DATABASE IF EXISTS `{d}`;" for d in names.values())], check=False)
        shutil.rmtree(work, ignore_errors=True)
        stamp.write_text(key + "\n")
    return out


def _load_templates(cloud: LabCloud, templates: Path) -> None:
    loads = {"keystone": "keystone", "placement": "placement", "glance": "glance", "nova_api": "nova_api",
             "nova_cell0": "nova", "nova": "nova"}
    for db, tpl in loads.items():
        with (templates / f"{tpl}.sql").open() as f:
            proc = subprocess.run([*MYSQL, f"{cloud.db_prefix}_{db}"], stdin=f, capture_output=True, text=True,
                                  timeout=120)
        if proc.returncode != 0:
            raise LabError(f"loading schema {tpl} into {cloud.db_prefix}_{db}: {proc.stderr[-500:]}")
    if cloud.neutron_venv is not None:
        with (_template_dir(cloud.neutron_venv) / "neutron.sql").open() as f:
            proc = subprocess.run([*MYSQL, f"{cloud.db_prefix}_neutron"], stdin=f, capture_output=True, text=True,
                                  timeout=120)
        if proc.returncode != 0:
            raise LabError(f"loading the neutron schema: {proc.stderr[-500:]}")
    # what `nova-manage cell_v2 map_cell0` and `create_cell --name cell1` would write
    cell0 = "00000000-0000-0000-0000-000000000000"
    sql = ("INSERT INTO cell_mappings (created_at, uuid, name, transport_url, database_connection, disabled) "
           f"VALUES (NOW(), '{cell0}', 'cell0', 'none:///', '{cloud.db_url('nova_cell0')}', 0), "
           f"(NOW(), '{_uuid4()}', 'cell1', 'rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}', "
           f"'{cloud.db_url('nova')}', 0);")
    _run([*MYSQL, f"{cloud.db_prefix}_nova_api", "-e", sql], log=cloud.logs / "setup.log")


def _key_repository(path: Path) -> None:
    """What ``keystone-manage fernet_setup``/``credential_setup`` create: key 0 (staged), 1 (primary)."""
    from cryptography.fernet import Fernet

    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    for name in ("0", "1"):
        (path / name).write_bytes(Fernet.generate_key())
        os.chmod(path / name, 0o600)


# --- one cloud ----------------------------------------------------------------------------------------


@dataclass
class CloudPorts:
    keystone: int
    placement: int
    nova: int
    glance: int
    neutron: int


@dataclass
class LabCloud:
    """One running cloud. ``credentials()`` is what ``cluster register`` would store."""

    index: int
    token: str
    root: Path
    ports: CloudPorts
    venv: Path
    neutron_venv: Path | None = None  # None: the read-only Neutron stub
    pids: dict[str, int] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    commands: dict[str, Any] = field(default_factory=dict)  # name -> [argv, env], for restart_service

    @property
    def name(self) -> str:
        return f"lab{self.index}"

    @property
    def db_prefix(self) -> str:
        return f"cnflab_{self.token}_{self.index}"

    @property
    def vhost(self) -> str:
        return f"cnflab-{self.token}-{self.index}"

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.keystone}/v3"

    @property
    def compute_host(self) -> str:
        return f"cnflab-{self.token}-c{self.index}"

    @property
    def nova_state_path(self) -> Path:
        return self.root / "nova"

    @property
    def etc(self) -> Path:
        return self.root / "etc"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def credentials(self) -> dict[str, Any]:
        return {"auth_url": self.auth_url, "username": "admin", "password": PASSWORD, "project_name": "admin",
                "user_domain_name": "Default", "project_domain_name": "Default", "region_name": "RegionOne"}

    def driver_options(self) -> dict[str, Any]:
        """Registration extras for ``OpenStackCloud`` in this lab (see docs/openstack.md)."""
        return {"receiver_image": IMAGE, "network": NETWORK if self.neutron_venv else None, "attach_port": False}

    def neutron_conf_args(self) -> list[str]:
        n = self.etc / "neutron"
        return ["--config-file", str(n / "neutron.conf"), "--config-file", str(n / "plugins" / "ml2" / "ml2_conf.ini")]

    def db_url(self, name: str) -> str:
        return f"mysql+pymysql://root@127.0.0.1:3306/{self.db_prefix}_{name}?charset=utf8"

    def databases(self) -> list[str]:
        names = ["keystone", "placement", "glance", "nova_api", "nova_cell0", "nova"]
        if self.neutron_venv is not None:
            names.append("neutron")
        return [f"{self.db_prefix}_{n}" for n in names]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["root"] = str(self.root)
        d["venv"] = str(self.venv)
        d["neutron_venv"] = str(self.neutron_venv) if self.neutron_venv else None
        d["auth_url"] = self.auth_url
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LabCloud:
        return cls(index=d["index"], token=d["token"], root=Path(d["root"]), ports=CloudPorts(**d["ports"]),
                   venv=Path(d["venv"]), neutron_venv=Path(d["neutron_venv"]) if d.get("neutron_venv") else None,
                   pids=dict(d["pids"]), timings=dict(d.get("timings", {})),
                   commands=dict(d.get("commands", {})))

    # --- processes ---------------------------------------------------------------------------------

    def _py(self) -> str:
        return str(self.venv / "bin" / "python")

    def _tool(self, name: str, *args: str) -> list[str]:
        venv = self.neutron_venv if name.startswith("neutron") and self.neutron_venv else self.venv
        py = str(venv / "bin" / "python")
        return [py, "-c", f"import sys; from {TOOLS[name]} import main; sys.argv[0] = {name!r}; "
                "sys.exit(main())", *args]

    def _spawn(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        with _spawn_lock:  # ``stop_processes`` takes it too: nothing is started after a stop began
            if self.root in _stopping:
                raise LabError(f"{self.name} is being torn down; not starting {name}")
            log = (self.logs / f"{name}.out").open("ab")
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True, env={**os.environ, **(env or {})}, cwd=str(self.root))
            log.close()
            self.pids[name] = proc.pid
        self.commands[name] = [argv, env or {}]
        (self.root / "pids").mkdir(exist_ok=True)
        (self.root / "pids" / f"{name}.pid").write_text(str(proc.pid))

    def _uwsgi(self, name: str, port: int, module: str, env: dict[str, str], venv: Path | None = None) -> None:
        venv = venv or self.venv
        self._spawn(name, [str(venv / "bin" / "uwsgi"), "--home", str(venv),
                           "--http-socket", f"127.0.0.1:{port}", "--add-header", "Connection: close",
                           "--module", module, "--master", "--processes", "1", "--threads", "4",
                           "--die-on-term", "--need-app", "--buffer-size", "65535", "--reload-mercy", "2",
                           "--worker-reload-mercy", "2", "--lazy-apps"], env)

    def stop_processes(self) -> None:
        """TERM every recorded process group, KILL what is left after 5 s. A bring-up thread still
        running (e.g. the other cloud's, after a failure or a test timeout) can start nothing more."""
        with _spawn_lock:
            _stopping.add(self.root)
        groups = []
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pid, signal.SIGTERM)
                groups.append(pid)
        end = time.monotonic() + 5
        while groups and time.monotonic() < end:
            groups = [g for g in groups if _group_alive(g)]
            time.sleep(0.2)
        for g in groups:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, signal.SIGKILL)
        for pid in self.pids.values():  # reap our direct children
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(pid, os.WNOHANG)

    def stop_service(self, name: str) -> None:
        """Stop one service (e.g. ``keystone`` to make the cloud unreachable)."""
        pid = self.pids.get(name)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)
        end = time.monotonic() + 10
        while _group_alive(pid) and time.monotonic() < end:
            time.sleep(0.1)
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(pid, os.WNOHANG)


    def restart_service(self, name: str) -> None:
        """Start a service stopped by ``stop_service`` again, same command, same port."""
        argv, env = self.commands[name]
        if not _group_alive(self.pids[name]):
            self._spawn(name, list(argv), dict(env))
        p = self.ports
        port = {"keystone": p.keystone, "placement": p.placement, "nova-api": p.nova, "glance": p.glance,
                "neutron-stub": p.neutron, "neutron": p.neutron}.get(name)
        if port:
            _wait_http(f"http://127.0.0.1:{port}/", 120, f"{name} of {self.name}")


_spawn_lock = threading.Lock()
_stopping: set[Path] = set()


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombies still count as members; treat a group whose leader is a zombie and alone as dead
    try:
        with open(f"/proc/{pgid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
        if state == "Z":
            os.waitpid(pgid, os.WNOHANG)
            return _any_in_group(pgid)
    except (FileNotFoundError, ChildProcessError, OSError):
        return _any_in_group(pgid)
    return True


def _any_in_group(pgid: int) -> bool:
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


# --- configuration files ------------------------------------------------------------------------------


def _auth_block(cloud: LabCloud, username: str) -> str:
    return (f"auth_url = {cloud.auth_url}\nauth_type = password\nproject_domain_name = Default\n"
            f"user_domain_name = Default\nproject_name = service\nusername = {username}\npassword = {PASSWORD}\n")


DB_POOL = "max_pool_size = 3\nmax_overflow = 5\n"


def write_configs(cloud: LabCloud) -> None:
    r, e, lg = cloud.root, cloud.etc, cloud.logs
    for d in (e / "nova", e / "glance", e / "placement", lg, r / "keystone" / "fernet", r / "keystone" / "cred",
              r / "nova" / "instances", r / "nova" / "lock", r / "glance" / "images", r / "glance" / "staging",
              r / "glance" / "tasks", r / "glance" / "lock"):
        d.mkdir(parents=True, exist_ok=True)
    (e / "keystone.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
[database]
connection = {cloud.db_url('keystone')}
{DB_POOL}[token]
provider = fernet
[fernet_tokens]
key_repository = {r}/keystone/fernet
[credential]
key_repository = {r}/keystone/cred
""")
    (e / "placement" / "placement.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
[placement_database]
connection = {cloud.db_url('placement')}
{DB_POOL}[api]
auth_strategy = keystone
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'placement')}""")
    shutil.copy(cloud.venv / "etc" / "glance" / "glance-api-paste.ini", e / "glance" / "glance-api-paste.ini")
    (e / "glance" / "glance-api.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
enabled_backends = fs:file
workers = 1
[database]
connection = {cloud.db_url('glance')}
{DB_POOL}[glance_store]
default_backend = fs
[fs]
filesystem_store_datadir = {r}/glance/images/
[os_glance_staging_store]
filesystem_store_datadir = {r}/glance/staging/
[os_glance_tasks_store]
filesystem_store_datadir = {r}/glance/tasks/
[paste_deploy]
flavor = keystone
config_file = {e}/glance/glance-api-paste.ini
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'glance')}[oslo_concurrency]
lock_path = {r}/glance/lock
""")
    shutil.copy(cloud.venv / "etc" / "nova" / "api-paste.ini", e / "nova" / "api-paste.ini")
    (e / "nova" / "nova.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
state_path = {r}/nova
instances_path = {r}/nova/instances
transport_url = rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}
compute_driver = cnf_receiver.FakeReceiverDriver
host = {cloud.compute_host}
my_ip = 127.0.0.1
heal_instance_info_cache_interval = -1
[api]
auth_strategy = keystone
[wsgi]
api_paste_config = {e}/nova/api-paste.ini
[api_database]
connection = {cloud.db_url('nova_api')}
{DB_POOL}[database]
connection = {cloud.db_url('nova')}
{DB_POOL}[conductor]
workers = 1
[scheduler]
workers = 1
discover_hosts_in_cells_interval = -1
[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'nova')}[service_user]
send_service_user_token = true
{_auth_block(cloud, 'nova')}[placement]
region_name = RegionOne
{_auth_block(cloud, 'placement')}[neutron]
region_name = RegionOne
{_auth_block(cloud, 'neutron')}[glance]
region_name = RegionOne
[oslo_concurrency]
lock_path = {r}/nova/lock
[oslo_messaging_notifications]
driver = noop
[vnc]
enabled = false
""")
    if cloud.neutron_venv is not None:
        n = e / "neutron"
        (n / "plugins" / "ml2").mkdir(parents=True, exist_ok=True)
        (r / "neutron" / "lock").mkdir(parents=True, exist_ok=True)
        shutil.copy(cloud.neutron_venv / "etc" / "neutron" / "api-paste.ini", n / "api-paste.ini")
        (n / "neutron.conf").write_text(f"""[DEFAULT]
log_dir = {lg}
core_plugin = ml2
service_plugins =
auth_strategy = keystone
transport_url = rabbit://guest:guest@127.0.0.1:5672/{cloud.vhost}
api_paste_config = {n}/api-paste.ini
notify_nova_on_port_status_changes = false
notify_nova_on_port_data_changes = false
api_workers = 1
rpc_workers = 0
rpc_state_report_workers = 0
[database]
connection = {cloud.db_url('neutron')}
{DB_POOL}[keystone_authtoken]
www_authenticate_uri = {cloud.auth_url}
{_auth_block(cloud, 'neutron')}[oslo_concurrency]
lock_path = {r}/neutron/lock
""")
        (n / "plugins" / "ml2" / "ml2_conf.ini").write_text("""[ml2]
type_drivers = flat,local
tenant_network_types = local
mechanism_drivers =
extension_drivers = port_security
[ml2_type_flat]
flat_networks = *
""")
    # a stable node identity lets nova-compute (FakeDriverWithoutFakeNodes) be restarted
    (r / "nova" / "compute_id").write_text(_uuid4())
    (r / "tiny.img").write_bytes(os.urandom(1 << 20))


def _uuid4() -> str:
    import uuid

    return str(uuid.uuid4())


# --- bring-up -------------------------------------------------------------------------------------------


def _create_state_stores(cloud: LabCloud) -> None:
    sql = "".join(f"CREATE DATABASE `{db}` CHARACTER SET utf8;" for db in cloud.databases())
    _run([*MYSQL, "-e", sql], timeout=60, log=cloud.logs / "setup.log")
    _run([RABBITMQCTL, "add_vhost", cloud.vhost], timeout=60, log=cloud.logs / "setup.log")
    _run([RABBITMQCTL, "set_permissions", "-p", cloud.vhost, "guest", ".*", ".*", ".*"], timeout=60,
         log=cloud.logs / "setup.log")


def _drop_state_stores(cloud: LabCloud) -> None:
    sql = "".join(f"DROP DATABASE IF EXISTS `{db}`;" for db in cloud.databases())
    _run([*MYSQL, "-e", sql], timeout=60, check=False)
    _run([RABBITMQCTL, "delete_vhost", cloud.vhost], timeout=60, check=False)


def _connect(cloud: LabCloud) -> Any:
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


def _map_compute_host(cloud: LabCloud) -> None:
    """What ``nova-manage cell_v2 discover_hosts`` writes for our one compute host (a host mapping to
    cell1, the compute node marked mapped), without a ~10 s nova-manage start-up."""
    db = cloud.db_prefix
    sql = (f"INSERT INTO `{db}_nova_api`.host_mappings (created_at, cell_id, host) "
           f"SELECT NOW(), id, '{cloud.compute_host}' FROM `{db}_nova_api`.cell_mappings WHERE name = 'cell1';"
           f"UPDATE `{db}_nova`.compute_nodes SET mapped = 1 WHERE host = '{cloud.compute_host}';")
    _run([*MYSQL, "-e", sql], log=cloud.logs / "setup.log")


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
    _create_state_stores(cloud)
    _load_templates(cloud, _template_dir(cloud.venv))
    mark("stores")
    e, setup = cloud.etc, cloud.logs / "setup.log"
    nconf = ["--config-file", str(e / "nova" / "nova.conf")]
    _key_repository(cloud.root / "keystone" / "fernet")
    _key_repository(cloud.root / "keystone" / "cred")
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
    _run(cloud._tool("keystone-manage", "--config-file", str(e / "keystone.conf"), "bootstrap",
                     "--bootstrap-password", PASSWORD,
                     "--bootstrap-region-id", "RegionOne", "--bootstrap-admin-url", cloud.auth_url,
                     "--bootstrap-internal-url", cloud.auth_url, "--bootstrap-public-url", cloud.auth_url), log=setup)
    mark("keystone_db")
    _wait_http(f"http://127.0.0.1:{cloud.ports.keystone}/v3", 120, f"keystone of {cloud.name}")
    _register_catalog(cloud)
    mark("catalog")
    # these build their Placement client at start-up with the service users (401 before the catalog
    # exists: nova-scheduler exits with "Placement service credentials do not work")
    for svc in ("nova-conductor", "nova-scheduler"):
        cloud._spawn(svc, cloud._tool(svc, *nconf))
    cloud._spawn("nova-compute", [cloud._py(), "-m", "cnf.openstack.receiver", *nconf], {"PYTHONPATH": str(REPO)})
    for name, port in (("placement", cloud.ports.placement), ("glance", cloud.ports.glance),
                       ("nova-api", cloud.ports.nova), ("neutron", cloud.ports.neutron)):
        _wait_http(f"http://127.0.0.1:{port}/", 120, f"{name} of {cloud.name}")
    mark("http_up")
    _wait_compute_node(cloud, 180)
    _map_compute_host(cloud)
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

    def to_dict(self) -> dict[str, Any]:
        return {"token": self.token, "root": str(self.root), "owner_pid": os.getpid(),
                "clouds": [c.to_dict() for c in self.clouds]}

    def save(self) -> None:
        (self.root / "lab.json").write_text(json.dumps(self.to_dict(), indent=1))

    def down(self) -> None:
        for c in self.clouds:
            c.stop_processes()
        for c in self.clouds:
            _drop_state_stores(c)
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
        lab = OpenStackLab(clouds=[LabCloud.from_dict(c) for c in data["clouds"]], token=data["token"], root=d)
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
        ensure_schema_templates(neutron_venv, NEUTRON_REQUIREMENTS, ("neutron",), _neutron_schema_steps)
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
            for p in Path("/proc").iterdir():
                if not p.name.isdigit():
                    continue
                try:
                    if int((p / "stat").read_text().rsplit(")", 1)[1].split()[2]) != pgid:
                        continue
                    for line in (p / "smaps_rollup").read_text().splitlines():
                        if line.startswith("Pss:"):
                            total += int(line.split()[1])
                except (OSError, ValueError, IndexError):
                    continue
    return {"pss_mb": round(total / 1024, 1)}


# --- the Neutron stub -------------------------------------------------------------------------------------


def serve_neutron_stub(port: int) -> None:
    """Read-only stand-in for Neutron: every list is empty, every other path 404. nova-api renders
    security groups from ``GET /v2.0/ports`` on every server show, even for ``--nic none`` servers."""
    from wsgiref.simple_server import WSGIRequestHandler, make_server

    lists = {"ports", "networks", "subnets", "security-groups", "floatingips", "extensions"}

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        path = environ.get("PATH_INFO", "").rstrip("/").removesuffix(".json")
        method = environ.get("REQUEST_METHOD", "GET")
        body: dict[str, Any]
        status, body = "404 Not Found", {"NeutronError": {"type": "NotFound", "message": path, "detail": ""}}
        if path == "":
            status, body = "200 OK", {"versions": [{"id": "v2.0", "status": "CURRENT",
                                                     "links": [{"rel": "self", "href": "/v2.0/"}]}]}
        elif path == "/v2.0":
            status, body = "200 OK", {"resources": []}
        elif method == "GET" and path.startswith("/v2.0/") and path[6:] in lists:
            status, body = "200 OK", {path[6:].replace("-", "_"): []}
        data = json.dumps(body).encode()
        start_response(status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
        return [data]

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    make_server("127.0.0.1", port, app, handler_class=Quiet).serve_forever()


# --- shared by test sessions -----------------------------------------------------------------------------
#
# The contract suite (tests/contract/test_cloud.py) and the lab suite (tests/lab/openstack/) both need
# the clouds; two session fixtures would start four clouds (twice the RAM budget). Both call
# ``acquire``/``release``: the first acquire brings the lab up, the last release takes it down.
# ``CNF_LAB_OPENSTACK_REUSE=<lab.json>`` (developer loop) uses a lab started by ``python -m lab.openstack
# up`` and never stops it.

_shared: dict[str, Any] = {"lab": None, "refs": 0, "reused": False, "error": None}
_shared_lock = threading.Lock()


def acquire(count: int = 2) -> OpenStackLab:
    with _shared_lock:
        if _shared["error"] is not None:  # a failed bring-up is not retried for every test
            raise LabError(f"OpenStack lab bring-up failed earlier in this session: {_shared['error']}")
        if _shared["lab"] is None:
            reuse = os.environ.get("CNF_LAB_OPENSTACK_REUSE")
            if reuse:
                data = json.loads(Path(reuse).read_text())
                _shared["lab"] = OpenStackLab(clouds=[LabCloud.from_dict(c) for c in data["clouds"]],
                                              token=data["token"], root=Path(data["root"]))
                _shared["reused"] = reuse
            else:
                try:
                    _shared["lab"] = up(count)
                except BaseException as exc:
                    _shared["error"] = exc
                    raise
        _shared["refs"] += 1
        lab: OpenStackLab = _shared["lab"]
        return lab


def release() -> None:
    with _shared_lock:
        _shared["refs"] -= 1
        if _shared["refs"] <= 0 and _shared["lab"] is not None:
            if not _shared["reused"]:
                _shared["lab"].down()
            else:  # keep the record current (a test may have restarted a service: new PID) for `down`
                data = {**_shared["lab"].to_dict(), "owner_pid": 0}
                Path(_shared["reused"]).write_text(json.dumps(data, indent=1))
            _shared["lab"] = None


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
        OpenStackLab(clouds=[LabCloud.from_dict(c) for c in data["clouds"]], token=data["token"],
                     root=Path(data["root"])).down()
        current.unlink()
        return 0
    return 2


if __name__ == "__main__":
    sys.exit(main())
