"""What every lab cloud shares on this machine: MariaDB, RabbitMQ, the OpenStack venvs, and running a step.

Why a module of its own: these are installed or started once per machine (not per cloud) and reused by
every run, and ``lab.keystone`` reuses the venv without any cloud. See ``lab.openstack`` for the lab's contract.

Contract:
- MariaDB listens on 127.0.0.1:3306 (root, no password), RabbitMQ on 5672 (guest/guest); both are
  installed (apt) and started when missing, never stopped here;
- a venv is reused when its stamp matches the requirement set (sha256 of the pinned list and the Python
  version), rebuilt in place under an exclusive ``flock`` otherwise; the stamp is written last, so an
  interrupted install is never taken for a good one.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
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
APT_PACKAGES = ("mariadb-server", "mariadb-client", "rabbitmq-server", "gcc")
MYSQL = ("mysql", "-uroot", "-h127.0.0.1", "-P3306")
RABBITMQCTL = "rabbitmqctl"


class LabError(RuntimeError):
    """The lab could not be brought up; the message names the step and the log to read."""


# --- running a step -----------------------------------------------------------------------------------


def run_checked(argv: list[str], *, timeout: float = 300, env: dict[str, str] | None = None,
                log: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run one bring-up step; its output is appended to ``log``. With ``check``, a non-zero exit raises
    :class:`LabError` naming the command, the log and the end of stderr."""
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


def wait_http(url: str, deadline_s: float, what: str) -> None:
    """Poll ``url`` until it answers below 500 (401 counts: the service is up); :class:`LabError` after
    ``deadline_s``."""
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
        run_checked(["apt-get", "install", "-y", "--no-install-recommends", *missing], timeout=900,
                    env={"DEBIAN_FRONTEND": "noninteractive"})
    for port, service in ((3306, "mariadb"), (5672, "rabbitmq-server")):
        if not _tcp_open(port):
            run_checked(["service", service, "start"], timeout=120, check=False)
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
        run_checked([PYTHON_FOR_VENV, "-m", "venv", str(venv)], timeout=120)
        req = venv / "cnf-requirements.txt"
        req.write_text("\n".join(requirements) + "\n")
        run_checked([str(venv / "bin" / "pip"), "install", "--quiet", "-r", str(req)], timeout=1800,
                    log=venv / "cnf-pip.log")
        stamp.write_text(key + "\n")
    return venv
