"""A real Keystone alone on 127.0.0.1 (keystone 30 from PyPI, SQLite, fernet tokens, uwsgi).

For the agent's Keystone auth and the ``openstack cnf`` CLI through the catalog. Recipe from
``../shared/lab/openstack/REPORT.md``: the WSGI app is the module ``keystone.wsgi.api:application`` with
the config file passed in ``OS_KEYSTONE_CONFIG_FILES``; uwsgi needs ``--add-header "Connection: close"``
(without it openstacksdk/keystoneauth's second request on a reused connection is reset).

The venv is the one ``lab.openstack`` builds (``/opt/cnf-lab/openstack-venv``, it holds keystone 30 and
uwsgi): CI installs it once for both. SQLite is fine here: Keystone is the only writer.

What ``up()`` leaves running: Keystone on a free port; users ``admin`` (role admin, project admin),
``cnf-reader`` (role reader on project admin) and ``cnf`` (role service on project service, the agent's
service user), all with password ``PASSWORD``. Everything lives under one temporary directory
(random token in its name), the uwsgi process group is ended by its PID, ``down()`` removes the directory.

CLI: ``python -m lab.keystone up`` (prints JSON, leaves it running, state in
``/tmp/cnf-lab-keystone/current.json``), ``python -m lab.keystone down``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.loopback import free_port
from lab.openstack_config import fernet_key_repository
from lab.owned_process import end_process

STATE_DIR = Path(os.environ.get("CNF_LAB_KEYSTONE_STATE", "/tmp/cnf-lab-keystone"))
PASSWORD = "secret"  # lab-only
READER = "cnf-reader"
SERVICE_USER = "cnf"


class KeystoneLabError(RuntimeError):
    """Keystone could not be brought up; the message names the step and the log to read."""




APT_PACKAGES = ("gcc", "python3-venv")  # uwsgi is built from its sdist; scripts/deps/apt-cli.txt


def _ensure_apt() -> None:
    missing = [p for p in APT_PACKAGES
               if subprocess.run(["dpkg", "-s", p], capture_output=True, timeout=30).returncode != 0]
    if missing:
        subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *missing], check=True, timeout=900,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"}, capture_output=True)


def _venv() -> Path:
    override = os.environ.get("CNF_LAB_KEYSTONE_VENV")
    if override:
        return Path(override)
    from lab.openstack import ensure_venv

    _ensure_apt()
    return ensure_venv()


def _run(argv: list[str], log: Path, timeout: float = 300, env: dict[str, str] | None = None) -> None:
    with log.open("ab") as f:
        f.write(f"\n$ {' '.join(argv)}\n".encode())
        f.flush()
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, timeout=timeout,
                              env={**os.environ, **(env or {})}, check=False)
    if proc.returncode != 0:
        raise KeystoneLabError(f"{argv[0]} ... exited {proc.returncode}; see {log}")


def _schema(venv: Path, manage: list[str], db: Path, log: Path) -> None:
    """``keystone-manage db_sync`` once per venv, then a copy of the synced SQLite file (saves ~8 s a run).

    The template sits in the venv, keyed by its requirements stamp, and is published with an atomic
    rename, so concurrent runs either see a complete template or none.
    """
    stamp_file = venv / ".cnf-requirements.sha256"
    stamp = stamp_file.read_text().strip()[:16] if stamp_file.exists() else "nostamp"
    template = venv / f"cnf-keystone-sqlite-{stamp}.db"
    if template.exists():
        shutil.copyfile(template, db)
        return
    _run([*manage, "db_sync"], log)
    tmp = template.with_name(f".{template.name}.{os.getpid()}")
    try:
        shutil.copyfile(db, tmp)
        os.replace(tmp, template)
    except OSError:  # a read-only venv only costs the speed-up
        with contextlib.suppress(OSError):
            tmp.unlink()


def _wait_http(url: str, deadline_s: float, proc_pid: int, log: Path) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status < 500:
                    return
        except urllib.error.HTTPError as e:
            if e.code < 500:
                return
        except OSError:
            pass
        try:
            os.kill(proc_pid, 0)
        except ProcessLookupError:
            raise KeystoneLabError(f"uwsgi exited before Keystone answered; see {log}") from None
        time.sleep(0.2)
    raise KeystoneLabError(f"Keystone not answering at {url} after {deadline_s:.0f} s; see {log}")


@dataclass
class KeystoneLab:
    root: str
    port: int
    pid: int
    venv: str
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def auth_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v3"

    def credentials(self, user: str = "admin", project: str = "admin") -> dict[str, str]:
        return {"auth_url": self.auth_url, "username": user, "password": PASSWORD, "project_name": project,
                "user_domain_name": "Default", "project_domain_name": "Default"}

    def os_env(self, user: str = "admin", project: str = "admin") -> dict[str, str]:
        """``OS_*`` variables for the ``openstack`` CLI as this user."""
        c = self.credentials(user, project)
        return {"OS_AUTH_URL": c["auth_url"], "OS_USERNAME": user, "OS_PASSWORD": PASSWORD,
                "OS_PROJECT_NAME": project, "OS_USER_DOMAIN_NAME": "Default", "OS_PROJECT_DOMAIN_NAME": "Default",
                "OS_IDENTITY_API_VERSION": "3", "OS_AUTH_TYPE": "password", "OS_INTERFACE": "public",
                "OS_REGION_NAME": "RegionOne"}

    def token(self, user: str = "admin", project: str = "admin") -> str:
        from keystoneauth1 import session

        c = self.credentials(user, project)
        sess = session.Session(auth=_password(c), timeout=30)
        tok = sess.get_token()
        if not tok:
            raise KeystoneLabError(f"no token for {user}")
        return str(tok)

    def down(self) -> None:
        """End uwsgi's process group (SIGTERM, SIGKILL after 10 s) and remove the data directory."""
        end_process(self.pid, grace_s=10.0, group=True)
        shutil.rmtree(self.root, ignore_errors=True)


def _password(c: dict[str, str]) -> Any:
    from keystoneauth1.identity import v3

    return v3.Password(auth_url=c["auth_url"], username=c["username"], password=c["password"],
                       project_name=c["project_name"], user_domain_name=c["user_domain_name"],
                       project_domain_name=c["project_domain_name"])


def _seed_users(lab: KeystoneLab) -> None:
    """Users the tests need, created over Keystone's REST API as admin (no CLI start-up cost)."""
    from keystoneauth1 import session

    sess = session.Session(auth=_password(lab.credentials()), timeout=30)
    url = lab.auth_url

    def post(path: str, body: dict[str, Any]) -> dict[str, Any]:
        r = sess.post(url + path, json=body, raise_exc=True)
        return dict(r.json())

    def find(kind: str, name: str) -> str:
        r = sess.get(f"{url}/{kind}", params={"name": name}, raise_exc=True)
        items = r.json()[kind]
        if not items:
            raise KeystoneLabError(f"Keystone has no {kind[:-1]} {name!r}")
        return str(items[0]["id"])

    admin_project = find("projects", "admin")
    service_project = post("/projects", {"project": {"name": "service", "domain_id": "default"}})["project"]["id"]
    service_role = find("roles", "service")  # keystone-manage bootstrap creates admin, member, reader, service
    reader_role = find("roles", "reader")
    reader = post("/users", {"user": {"name": READER, "password": PASSWORD, "domain_id": "default"}})["user"]["id"]
    svc = post("/users", {"user": {"name": SERVICE_USER, "password": PASSWORD, "domain_id": "default"}})["user"]["id"]
    sess.put(f"{url}/projects/{admin_project}/users/{reader}/roles/{reader_role}", raise_exc=True)
    sess.put(f"{url}/projects/{service_project}/users/{svc}/roles/{service_role}", raise_exc=True)


def up() -> KeystoneLab:
    """Bring up a fresh Keystone; raises ``KeystoneLabError`` naming the step and log on failure."""
    timings: dict[str, float] = {}
    venv = _venv()
    root = Path(f"/tmp/cnf-lab-keystone-{os.getpid()}-{secrets.token_hex(3)}")
    etc, logs = root / "etc", root / "logs"
    for d in (etc, logs):
        d.mkdir(parents=True, exist_ok=True)
    port = free_port()
    conf = etc / "keystone.conf"
    conf.write_text(f"""[DEFAULT]
log_dir = {logs}
[database]
connection = sqlite:///{root}/keystone.db
[token]
provider = fernet
[fernet_tokens]
key_repository = {root}/fernet
[fernet_receipts]
key_repository = {root}/fernet
[credential]
key_repository = {root}/cred
""")
    fernet_key_repository(root / "fernet")
    fernet_key_repository(root / "cred")
    setup = logs / "setup.log"
    py = str(venv / "bin" / "python")
    manage = [py, "-c", "import sys; from keystone.cmd.manage import main; sys.argv[0] = 'keystone-manage'; "
              "sys.exit(main())", "--config-file", str(conf)]
    url = f"http://127.0.0.1:{port}/v3"
    try:
        t0 = time.monotonic()
        _schema(venv, manage, root / "keystone.db", setup)
        t1 = time.monotonic()
        _run([*manage, "bootstrap", "--bootstrap-password", PASSWORD, "--bootstrap-region-id", "RegionOne",
              "--bootstrap-admin-url", url, "--bootstrap-internal-url", url, "--bootstrap-public-url", url], setup)
        timings["db_sync_s"], timings["bootstrap_s"] = t1 - t0, time.monotonic() - t1
        log = (logs / "uwsgi.out").open("ab")
        proc = subprocess.Popen(
            [str(venv / "bin" / "uwsgi"), "--home", str(venv), "--http-socket", f"127.0.0.1:{port}",
             "--add-header", "Connection: close", "--module", "keystone.wsgi.api:application", "--master",
             "--processes", "1", "--threads", "4", "--die-on-term", "--need-app", "--buffer-size", "65535",
             "--lazy-apps"],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
            env={**os.environ, "OS_KEYSTONE_CONFIG_FILES": str(conf)}, cwd=str(root))
        log.close()
    except BaseException:
        shutil.rmtree(root, ignore_errors=True)
        raise
    lab = KeystoneLab(root=str(root), port=port, pid=proc.pid, venv=str(venv))
    try:
        t2 = time.monotonic()
        _wait_http(url, 120, proc.pid, logs / "uwsgi.out")
        timings["uwsgi_ready_s"] = time.monotonic() - t2
        _seed_users(lab)
    except BaseException:
        lab.down()
        raise
    lab.timings = {k: round(v, 1) for k, v in timings.items()}
    return lab


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lab.keystone")
    p.add_argument("action", choices=("up", "down"))
    args = p.parse_args(argv)
    state = STATE_DIR / "current.json"
    if args.action == "up":
        lab = up()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        state.write_text(json.dumps(asdict(lab)))
        print(json.dumps({**asdict(lab), "auth_url": lab.auth_url, "admin": lab.credentials()}, indent=2))
        return 0
    if not state.exists():
        print("no Keystone lab recorded", file=sys.stderr)
        return 0
    KeystoneLab(**json.loads(state.read_text())).down()
    state.unlink()
    return 0


if __name__ == "__main__":
    sys.exit(main())
