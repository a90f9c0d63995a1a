"""Two throwaway Ceph clusters on loopback with two-way snapshot RBD mirroring, for tests, benchmarks and ``make lab``.

Why: ``CephRbdMirror`` must be proven against real monitors, OSDs and rbd-mirror daemons (the pitfalls in
``docs/storage.md`` are all behaviours of the real thing). Recipe from the lab report (``lab/ceph``), in Python:
each site = 1 mon + 1 mgr + 1 OSD (memstore by default, bluestore on a sparse file optionally), cephx, pool
``vms``; pool mirror mode ``image``; peer bootstrap ``rx-tx``; one rbd-mirror per site started with ``CEPH_CONF``.

Tuned for a short handover (measured in ``lab/ceph-handover``): ``paxos_propose_interval = 0.01``,
``paxos_min_wait = 0.001`` (each mirror snapshot create/remove waits for a monitor proposal; the default 1 s makes
a demote->promote ~5 s) and ``rbd_mirror_image_state_check_interval = 1`` (reverse sync after a role change in
<1 s instead of 20-30 s). ``tuned=False`` gives Ceph's defaults (used by the benchmark's baseline notes).

Contract:
- mon ports are picked by binding port 0; the OSD/mgr messenger range is a random free range below the ephemeral
  range, so concurrent runs do not collide; every path (conf, keyrings, sockets, logs) is under one fresh dir;
- daemons are started by this object (``setsid``, no systemd) and ended only by their recorded PID;
- every external command has a timeout.

CLI: ``python -m lab.ceph up [--dir D]`` starts both sites and leaves them running (state in ``D/lab.json``);
``python -m lab.ceph down [--dir D]`` stops them by the recorded PIDs and removes ``D``.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from lab.loopback import free_ports
from lab.shared import SharedLab

DEFAULT_STATE_DIR = Path("/tmp/cnf-lab-ceph")
POOL = "vms"
PACKAGES = ("ceph-mon", "ceph-mgr", "ceph-osd", "rbd-mirror", "ceph-common", "python3-rbd", "python3-rados")
SYSTEM_PYTHON = "/usr/bin/python3"
TUNED_SETTINGS = {
    "paxos_propose_interval": "0.01",
    "paxos_min_wait": "0.001",
    "rbd_mirror_image_state_check_interval": "1",
}


class LabError(RuntimeError):
    pass


def ensure_packages() -> None:
    """Install the Debian packages the lab needs when one of its tools is missing (a fresh CI machine)."""
    tools = ("ceph-mon", "ceph-mgr", "ceph-osd", "rbd-mirror", "rbd", "ceph", "monmaptool", "ceph-authtool")
    have_bindings = subprocess.run([SYSTEM_PYTHON, "-I", "-c", "import rados, rbd"], capture_output=True,
                                   timeout=30).returncode == 0 if Path(SYSTEM_PYTHON).exists() else False
    if all(shutil.which(t) for t in tools) and have_bindings:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", *PACKAGES], check=True, env=env,
                   timeout=900, stdout=subprocess.DEVNULL)


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True




def free_port_range(width: int) -> int:
    """Start of ``width`` consecutive free ports in 20000-32000 (below Linux's ephemeral range, so ports picked
    by other runs with bind(0) never fall inside; Ceph itself skips a port that is taken at bind time)."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32000 - width)
        if all(_port_free(p) for p in range(base, base + width)):
            return base
    raise LabError("no free port range for the Ceph messengers")


@dataclass
class CephSite:
    """One cluster. ``name`` is both the Ceph cluster name (``--cluster``) and the mirror site name."""

    name: str
    root: Path
    mon_v2: int
    mon_v1: int
    msgr_min: int
    store: str = "memstore"
    pids: dict[str, int] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "ceph.conf"

    @property
    def keyring(self) -> Path:
        return self.root / "keyring"

    def base_args(self) -> list[str]:
        return ["--cluster", self.name, "-c", str(self.conf)]

    def run(self, tool: str, *args: str, timeout: float = 30.0, check: bool = True,
            stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        argv = [tool, *self.base_args(), *args]
        if tool == "rbd":
            argv[1:1] = []
        p = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
        if check and p.returncode != 0:
            raise LabError(f"{' '.join(argv)} -> rc {p.returncode}: {p.stderr.decode(errors='replace')[-800:]}")
        return p

    def ceph(self, *args: str, timeout: float = 30.0, check: bool = True) -> str:
        return self.run("ceph", "--connect-timeout", "10", *args, timeout=timeout, check=check).stdout.decode()

    def rbd(self, *args: str, timeout: float = 60.0, check: bool = True) -> subprocess.CompletedProcess[bytes]:
        return self.run("rbd", *args, timeout=timeout, check=check)

    def driver_config(self) -> dict[str, Any]:
        """Keyword arguments for ``cnf.storage.ceph.CephSiteConfig``."""
        return {"cluster_name": self.name, "conf_path": str(self.conf), "pool": POOL, "client_name": "client.admin",
                "keyring": str(self.keyring)}

    # --- processes -------------------------------------------------------------------------------------------

    def _spawn(self, key: str, argv: list[str], env: dict[str, str] | None = None) -> None:
        log = open(self.root / "log" / f"{key}.out", "ab")  # handed to the child
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                    start_new_session=True, env=env)
        finally:
            log.close()
        self.pids[key] = proc.pid
        (self.root / "run" / f"{key}.pid").write_text(str(proc.pid))

    def stop(self) -> None:
        """SIGTERM every recorded PID, SIGKILL what is left after 5 s, remove the site's directory."""
        for pid in self.pids.values():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for pid in self.pids.values():
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.05)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            _reap(pid)
        self.pids.clear()
        shutil.rmtree(self.root, ignore_errors=True)

    def stop_mirror_daemon(self) -> None:
        """Stop this site's rbd-mirror (SIGTERM by PID): nothing is copied here until :meth:`start_mirror_daemon`.

        Not SIGSTOP: a stopped daemon keeps its watch on the peer's image headers, and every snapshot create /
        demote at the peer then waits for its notify acknowledgement (seconds each).
        """
        pid = self.pids.pop("rbd-mirror", None)
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _alive(pid):
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _reap(pid)

    # --- bring-up --------------------------------------------------------------------------------------------

    def write_conf(self, tuned: bool, memstore_bytes: int) -> None:
        d = self.root
        extra = "\n".join(f"{k} = {v}" for k, v in TUNED_SETTINGS.items()) if tuned else ""
        self.conf.write_text(f"""[global]
# no fsid: rbd-mirror re-reads this file (CEPH_CONF) for the remote peer connection too
mon_host = [v2:127.0.0.1:{self.mon_v2},v1:127.0.0.1:{self.mon_v1}]
public_network = 127.0.0.0/8
public_addr = 127.0.0.1
ms_bind_port_min = {self.msgr_min}
ms_bind_port_max = {self.msgr_min + 39}
auth_cluster_required = cephx
auth_service_required = cephx
auth_client_required = cephx
keyring = {d}/keyring
run_dir = {d}/run
admin_socket = {d}/run/$cluster-$name.asok
log_file = {d}/log/$cluster-$name.log
osd_pool_default_size = 1
osd_pool_default_min_size = 1
osd_pool_default_pg_autoscale_mode = off
mon_allow_pool_size_one = true
mon_allow_pool_delete = true
mon_warn_on_pool_no_redundancy = false
osd_crush_chooseleaf_type = 0
mon_data_avail_warn = 1
mgr_initial_modules =
rados_osd_op_timeout = 30
rados_mon_op_timeout = 30
{extra}
[mon]
mon_data = {d}/mon/$cluster-$id
keyring = $mon_data/keyring
[mgr]
mgr_data = {d}/mgr/$cluster-$id
keyring = $mgr_data/keyring
[osd]
osd_data = {d}/osd/$cluster-$id
keyring = $osd_data/keyring
osd_objectstore = {self.store}
memstore_device_bytes = {memstore_bytes}
bluestore_block_path = {d}/osd/block-$id
bluestore_block_create = true
bluestore_block_size = 10737418240
bluestore_fsck_on_mkfs = false
osd_memory_target = 939524096
bluestore_cache_autotune = false
bluestore_cache_size = 134217728
""")

    def up(self, tuned: bool = True, memstore_bytes: int = 2 << 30) -> None:
        d = self.root
        for sub in ("run", "log", "mon", "mgr", "osd"):
            (d / sub).mkdir(parents=True, exist_ok=True)
        self.write_conf(tuned, memstore_bytes)
        mon_keyring = d / "mon.keyring"
        _run(["ceph-authtool", "--create-keyring", str(mon_keyring), "--gen-key", "-n", "mon.", "--cap", "mon",
              "allow *"])
        _run(["ceph-authtool", "--create-keyring", str(self.keyring), "--gen-key", "-n", "client.admin",
              "--cap", "mon", "allow *", "--cap", "osd", "allow *", "--cap", "mds", "allow *", "--cap", "mgr",
              "allow *"])
        _run(["ceph-authtool", str(mon_keyring), "--import-keyring", str(self.keyring)])
        _run(["monmaptool", "--create", "--addv", "a", f"[v2:127.0.0.1:{self.mon_v2},v1:127.0.0.1:{self.mon_v1}]",
              "--fsid", str(uuid.uuid4()), str(d / "monmap")])
        _run(["ceph-mon", *self.base_args(), "--mkfs", "-i", "a", "--monmap", str(d / "monmap"), "--keyring",
              str(mon_keyring)])
        self._spawn("mon.a", ["ceph-mon", *self.base_args(), "-i", "a", "-f"])
        _wait(lambda: self.run("ceph", "--connect-timeout", "3", "-s", timeout=10, check=False).returncode == 0,
              60, f"{self.name}: mon up")
        self.ceph("config", "set", "mon", "auth_allow_insecure_global_id_reclaim", "false")
        if tuned:  # also in the config DB, so `config get` / PREFLIGHT see what runs (lab/ceph-handover P-c)
            for key in ("paxos_propose_interval", "paxos_min_wait"):
                self.ceph("config", "set", "mon", key, TUNED_SETTINGS[key])
        # mgr
        mgr_dir = d / "mgr" / f"{self.name}-x"
        mgr_dir.mkdir(parents=True, exist_ok=True)
        self.ceph("auth", "get-or-create", "mgr.x", "mon", "allow profile mgr", "osd", "allow *", "mds", "allow *",
                  "-o", str(mgr_dir / "keyring"))
        self._spawn("mgr.x", ["ceph-mgr", *self.base_args(), "-i", "x", "-f"])
        # osd
        osd_uuid = str(uuid.uuid4())
        secret = _run(["ceph-authtool", "--gen-print-key"]).strip()
        osd_id = self.run("ceph", "osd", "new", osd_uuid, "-i", "-",
                          stdin=json.dumps({"cephx_secret": secret}).encode()).stdout.decode().strip()
        osd_dir = d / "osd" / f"{self.name}-{osd_id}"
        osd_dir.mkdir(parents=True, exist_ok=True)
        _run(["ceph-authtool", "--create-keyring", str(osd_dir / "keyring"), "--name", f"osd.{osd_id}",
              "--add-key", secret])
        _run(["ceph-osd", *self.base_args(), "-i", osd_id, "--mkfs", "--osd-uuid", osd_uuid], timeout=120)
        self._spawn(f"osd.{osd_id}", ["ceph-osd", *self.base_args(), "-i", osd_id, "-f"])
        _wait(lambda: json.loads(self.ceph("osd", "stat", "-f", "json", check=False) or "{}").get("num_up_osds") == 1,
              90, f"{self.name}: osd up")
        self.ceph("osd", "pool", "create", POOL, "8", "8")
        self.ceph("osd", "pool", "set", POOL, "size", "1", "--yes-i-really-mean-it")
        self.ceph("osd", "pool", "set", POOL, "min_size", "1")
        self.rbd("pool", "init", POOL)

    def start_mirror_daemon(self) -> None:
        user = f"client.rbd-mirror.{self.name}"
        kr = self.root / "rbd-mirror.keyring"
        if "rbd-mirror" in self.pids and _alive(self.pids["rbd-mirror"]):
            return
        self.ceph("auth", "get-or-create", user, "mon", "profile rbd-mirror", "osd", "profile rbd", "-o", str(kr))
        # rbd-mirror's per-pool connections re-read the default conf path unless CEPH_CONF is set (lab/ceph P-§3)
        env = dict(os.environ, CEPH_CONF=str(self.conf))
        self._spawn("rbd-mirror", ["rbd-mirror", *self.base_args(), "--id", f"rbd-mirror.{self.name}", "--keyring",
                                   str(kr), "-f"], env=env)

    # --- data helpers for tests and benchmarks (never write to a non-primary image: lab/ceph P3) ------------------

    def create_image(self, image: str, size_mb: int) -> None:
        self.rbd("create", f"{POOL}/{image}", "--size", f"{size_mb}M")

    def remove_image(self, image: str) -> None:
        self.rbd("rm", f"{POOL}/{image}", "--no-progress", check=False, timeout=120)

    def write(self, image: str, offset: int, data: bytes, timeout: float = 120.0) -> None:
        """Write ``data`` at ``offset`` through librbd (Debian's python3-rbd): the guest's writes, in tests."""
        script = (
            "import sys, rados, rbd\n"
            "conf, cluster, pool, image, off = sys.argv[1:6]\n"
            "data = sys.stdin.buffer.read()\n"
            "with rados.Rados(conffile=conf, clustername=cluster, name='client.admin',"
            " conf={'admin_socket': ''}) as c:\n"
            "    with c.open_ioctx(pool) as io, rbd.Image(io, image) as im:\n"
            "        step = 4 << 20\n"
            "        for i in range(0, len(data), step):\n"
            "            im.write(data[i:i + step], int(off) + i)\n"
            "        im.flush()\n"
        )
        p = subprocess.run([SYSTEM_PYTHON, "-I", "-c", script, str(self.conf), self.name, POOL, image, str(offset)],
                           input=data, capture_output=True, timeout=timeout)
        if p.returncode != 0:
            raise LabError(f"write {image}@{self.name}: {p.stderr.decode(errors='replace')[-600:]}")

    def write_random(self, image: str, total_mb: int, seed: int | None = None) -> None:
        """``total_mb`` MiB of random data in 4 MiB blocks at random 4 MiB-aligned offsets of a ``size_mb`` image."""
        info = json.loads(self.rbd("info", f"{POOL}/{image}", "--format", "json").stdout)
        blocks = int(info["size"]) // (4 << 20)
        rng = random.Random(seed)
        data = rng.randbytes(4 << 20)
        for _ in range(total_mb // 4):
            self.write(image, rng.randrange(blocks) * (4 << 20), data)

    def export_sha256(self, image: str, timeout: float = 300.0) -> str:
        """SHA-256 of the whole image via ``rbd export`` (a read: safe on the non-primary copy)."""
        h = hashlib.sha256()
        argv = ["rbd", *self.base_args(), "export", f"{POOL}/{image}", "-", "--no-progress"]
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as proc:
            assert proc.stdout is not None
            timer = threading.Timer(timeout, proc.kill)
            timer.start()
            try:
                for chunk in iter(lambda: proc.stdout.read(1 << 20), b""):  # type: ignore[union-attr]
                    h.update(chunk)
            finally:
                timer.cancel()
            rc = proc.wait(timeout=10)
        if rc != 0:
            raise LabError(f"rbd export {image}@{self.name} rc {rc}")
        return h.hexdigest()


@dataclass
class CephMirrorLab:
    """Two sites, mirrored both ways. ``sites[0]`` is where tests create images."""

    root: Path
    sites: list[CephSite]
    tuned: bool = True

    @property
    def a(self) -> CephSite:
        return self.sites[0]

    @property
    def b(self) -> CephSite:
        return self.sites[1]

    @classmethod
    def create(cls, root: Path | None = None, *, tuned: bool = True, store: str = "memstore") -> CephMirrorLab:
        root = Path(root) if root else Path(tempfile.mkdtemp(prefix="cnf-ceph-"))
        sites = []
        for name in ("site-a", "site-b"):
            v2, v1 = free_ports(2)
            sites.append(CephSite(name=name, root=root / name, mon_v2=v2, mon_v1=v1, msgr_min=free_port_range(40),
                                  store=store))
        return cls(root=root, sites=sites, tuned=tuned)

    def up(self, memstore_bytes: int = 2 << 30) -> None:
        """Both clusters (in parallel), mirroring configured both ways, rbd-mirror daemons healthy. ~20-30 s."""
        ensure_packages()
        errors: list[BaseException] = []

        def bring(site: CephSite) -> None:
            try:
                site.up(self.tuned, memstore_bytes)
            except BaseException as e:  # re-raised below, after both threads ended
                errors.append(e)

        threads = [threading.Thread(target=bring, args=(s,)) for s in self.sites]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self.save()
        if errors:
            raise errors[0]
        a, b = self.a, self.b
        for s in self.sites:
            s.rbd("mirror", "pool", "enable", POOL, "image", "--site-name", s.name)
        token = a.root / "bootstrap-token"
        token.write_bytes(a.rbd("mirror", "pool", "peer", "bootstrap", "create", "--site-name", a.name, POOL).stdout)
        b.rbd("mirror", "pool", "peer", "bootstrap", "import", "--site-name", b.name, "--direction", "rx-tx", POOL,
              str(token))
        for s in self.sites:
            s.start_mirror_daemon()
        self.save()
        for s in self.sites:
            _wait(lambda s=s: self._daemon_ok(s), 90, f"{s.name}: rbd-mirror healthy")  # type: ignore[misc]

    @staticmethod
    def _daemon_ok(site: CephSite) -> bool:
        p = site.rbd("mirror", "pool", "status", POOL, "--format", "json", check=False, timeout=15)
        if p.returncode != 0:
            return False
        return bool(json.loads(p.stdout).get("summary", {}).get("daemon_health") == "OK")

    def down(self) -> None:
        """SIGTERM every daemon of both sites at once, SIGKILL what is left after 3 s (the data is throwaway)."""
        pids = [pid for s in self.sites for pid in s.pids.values()]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and any(_alive(p) for p in pids):
            time.sleep(0.05)
        for s in self.sites:
            s.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {"root": str(self.root), "tuned": self.tuned, "sites": [asdict(s) | {"root": str(s.root)}
                                                                        for s in self.sites]}
        (self.root / "lab.json").write_text(json.dumps(state, indent=2))

    @classmethod
    def load(cls, root: Path) -> CephMirrorLab:
        state = json.loads((Path(root) / "lab.json").read_text())
        sites = [CephSite(**(s | {"root": Path(s["root"])})) for s in state["sites"]]
        return cls(root=Path(state["root"]), sites=sites, tuned=state["tuned"])


def _start_ceph_lab() -> CephMirrorLab:
    lab = CephMirrorLab.create()
    try:
        lab.up()
    except BaseException:
        lab.down()
        raise
    return lab


#: One lab per test process, shared by every session fixture that asks (contract suite + lab tests); the last
#: ``release_shared_lab`` stops it.
_SHARED: SharedLab[CephMirrorLab] = SharedLab(_start_ceph_lab, lambda lab: lab.down())
acquire_shared_lab = _SHARED.acquire
release_shared_lab = _SHARED.release


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as dead
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _run(argv: list[str], timeout: float = 60.0) -> str:
    p = subprocess.run(argv, capture_output=True, timeout=timeout)
    if p.returncode != 0:
        raise LabError(f"{' '.join(argv)} -> rc {p.returncode}: {p.stderr.decode(errors='replace')[-800:]}")
    return p.stdout.decode()


def _wait(pred: Any, timeout: float, what: str, interval: float = 0.3) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if pred():
                return
        except (subprocess.SubprocessError, LabError, ValueError):
            pass
        time.sleep(interval)
    raise LabError(f"timed out waiting for {what}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.ceph")
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--dir", type=Path, default=DEFAULT_STATE_DIR)
    ap.add_argument("--store", choices=["memstore", "bluestore"], default="memstore")
    ap.add_argument("--untuned", action="store_true", help="Ceph's default monitor/rbd-mirror settings")
    args = ap.parse_args(argv)
    if args.action == "up":
        if (args.dir / "lab.json").exists():
            print(f"already up: {args.dir}/lab.json", file=sys.stderr)
            return 1
        lab = CephMirrorLab.create(args.dir, tuned=not args.untuned, store=args.store)
        t0 = time.monotonic()
        try:
            lab.up()
        except BaseException:
            lab.down()
            raise
        print(json.dumps({"up_s": round(time.monotonic() - t0, 1),
                          "sites": {s.name: s.driver_config() for s in lab.sites}}, indent=2))
        return 0
    if (args.dir / "lab.json").exists():
        CephMirrorLab.load(args.dir).down()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
