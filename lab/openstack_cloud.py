"""One lab cloud: its identity (names, ports, databases), credentials, and the processes it runs.

Why a module of its own: everything else in the lab (configuration files, state stores, bring-up, the
N-cloud lab, the tests) works on a :class:`LabCloud`; this is what a test holds to stop and restart a
service. See ``lab.openstack`` for the lab's contract.

Contract: every process is started here in its own session (its PID is its process group) and ended by
that group only (``lab.owned_process``); once ``stop_processes`` began, nothing more is started for the cloud.
"""

from __future__ import annotations

import os
import subprocess
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.openstack_host import LabError, wait_http
from lab.owned_process import end_processes, group_alive, kill_processes

PASSWORD = "secret"  # lab-only: every lab user's password
IMAGE = "tiny"
FLAVOR = "m1.tiny"
NETWORK = "cnf-net"
SUBNET_CIDR = "10.0.0.0/8"

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
        end_processes(list(self.pids.values()), grace_s=5.0, groups=True)

    def stop_service(self, name: str) -> None:
        """Stop one service at once (SIGKILL to its group, e.g. ``keystone`` to make the cloud unreachable);
        returns once the group is gone, 10 s at the latest."""
        pid = self.pids.get(name)
        if pid is None:
            return
        kill_processes([pid], within_s=10.0, groups=True)

    def restart_service(self, name: str) -> None:
        """Start a service stopped by ``stop_service`` again, same command, same port."""
        argv, env = self.commands[name]
        if not group_alive(self.pids[name]):
            self._spawn(name, list(argv), dict(env))
        p = self.ports
        port = {"keystone": p.keystone, "placement": p.placement, "nova-api": p.nova, "glance": p.glance,
                "neutron-stub": p.neutron, "neutron": p.neutron}.get(name)
        if port:
            wait_http(f"http://127.0.0.1:{port}/", 120, f"{name} of {self.name}")


_spawn_lock = threading.Lock()
_stopping: set[Path] = set()
