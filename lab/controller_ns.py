"""Each cloud's controller as a network namespace of its own: the agent and its Celery worker run inside it.

Why: issue 14 asks for each cloud's controller to be a network namespace running its ``cnf-agent``, the agents
talking mTLS gRPC to each other across the fabric. Until this module the agents ran in the machine's namespace on
loopback, so agent-to-agent traffic never left ``lo``. Layout per cloud ``cid`` (names carry the e2e lab's token)::

    controller ns cnfe2e-<token>-c<cid>
      eth0   10.255.0.3<n>/24  -- veth peer "k<n>" on br0 in the route server's namespace (the fabric segment,
                                  like the host namespaces of lab.e2e_net): the agents' gRPC and the REST proxy
                                  between agents (api.advertise_url) go this way
      mgmt0  10.253.<m>.2/30   -- veth peer "ce<token><cid>" 10.253.<m>.1/30 in the root namespace: the lab
                                  (root ns) calls the agent's REST API on 10.253.<m>.2
      lo     127.0.0.1         -- a relay (below) listens here on every shared service's port

* **Shared services through a relay (decision)**: etcd, PostgreSQL, the private Redis, the cloud's Ceph site (mon
  v1/v2 + the OSD/mgr messenger range) and its OpenStack services stay in the root namespace on 127.0.0.1, where
  the lab and the other parts (QEMU, rbd-mirror, Nova) use them; the configs and Ceph's maps name
  ``127.0.0.1:<port>``. ``python -m lab.controller_ns relay --ns <ns> --ports ...`` (one process per controller,
  started in the root namespace, ended by PID) creates its listening sockets *inside* the controller namespace
  (``setns`` into it, bind + listen, ``setns`` back: a socket keeps the namespace it was made in) on
  ``127.0.0.1:<same port>`` and forwards every accepted connection to ``127.0.0.1:<port>`` in the root namespace.
  Why not kernel DNAT: redirecting to another namespace's 127.0.0.1 needs nftables/iptables plus
  ``route_localnet``; neither tool is installed here, and the relay keeps every address in every config and map
  unchanged. The relay is the controller's management network to the shared services: the agents' gRPC does not
  go through it (their peers' addresses are fabric addresses, the relay listens on loopback only).
* **QEMU stays in the root namespace**: its migration stream and RBD data path use 127.0.0.1 there, and the guest's
  tap is made in the host namespace by its tap helper. A QEMU the agent spawned would inherit the controller's
  namespace, so the agents' ``hypervisor.binary`` is a wrapper (:func:`write_qemu_wrapper`) that ``exec``s
  ``nsenter --net=/run/netns/cnfe2e-<token>-root -- qemu-system-x86_64 "$@"`` (``exec`` all the way: the spawned
  PID is QEMU's, which the driver writes to the domain's pidfile). ``cnfe2e-<token>-root`` is ``ip netns attach``
  of the lab process's own namespace (PID 1's belongs to the machine's init and may not be readable).
* The agent and its worker are started with ``nsenter --net=/run/netns/<ns> -- python ...`` (``exec``s: the PID is
  Python's; unlike ``ip netns exec`` no private mount namespace, so a spawned QEMU sees the machine's mounts).

Contract: every name carries the lab's token; :func:`remove_controllers` deletes only those namespaces and ends only
the processes inside them (and relays recorded by :class:`Relay` under the lab's directory).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import functools
import ipaddress
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lab.e2e_net import ip_path, run_plumbing
from lab.owned_process import end_process, end_processes, process_alive

#: the controllers' addresses on the fabric segment (10.255.0.0/24: routers .1/.2, hosts .21/.22, route server .254)
FABRIC_ADDRESSES = {"a": "10.255.0.31", "b": "10.255.0.32"}
FABRIC_PREFIX_LEN = 24
#: the root namespace <-> controller links: one free /30 of this /16 each
MGMT_NET = ipaddress.ip_network("10.253.0.0/16")
CLONE_NEWNET = 0x40000000
RELAY_READY = "relay ready"
ROOT = Path(__file__).resolve().parents[1]


class ControllerError(RuntimeError):
    """A controller namespace or its relay could not be set up; the message names the command and its output."""


def _run(argv: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
    return run_plumbing(argv, check=check, error=ControllerError)


def controller_namespace(token: str, cid: str) -> str:
    return f"cnfe2e-{token}-c{cid}"


def root_handle(token: str) -> str:
    """Name under /run/netns of the lab's own (root) namespace, for ``nsenter --net`` (see the module docstring)."""
    return f"cnfe2e-{token}-root"


def netns_inode(path: str) -> int:
    """Inode of a network namespace file (``/proc/<pid>/ns/net`` or ``/run/netns/<name>``): equal = same namespace."""
    return os.stat(path).st_ino


def _used_mgmt_subnets() -> set[str]:
    p = _run([ip_path(), "-j", "addr", "show"])
    used = set()
    for link in json.loads(p.stdout or "[]"):
        for a in link.get("addr_info", []):
            if a.get("family") == "inet":
                net = ipaddress.ip_interface(f"{a['local']}/{a['prefixlen']}").network
                if net.overlaps(MGMT_NET):
                    used.add(str(ipaddress.ip_network(f"{a['local']}/30", strict=False)))
    return used


@dataclass(frozen=True)
class Controller:
    """One controller namespace: its name, fabric address, and the /30 to the root namespace."""

    token: str
    cid: str
    index: int  # 1-based, names the veth peer on br0 ("k<index>")
    mgmt: str  # the /30, e.g. "10.253.4.0/30"

    @property
    def namespace(self) -> str:
        return controller_namespace(self.token, self.cid)

    @property
    def fabric_address(self) -> str:
        return FABRIC_ADDRESSES[self.cid]

    @property
    def root_side(self) -> str:
        """The root namespace's end of the management link (the lab's address on it)."""
        return str(next(ipaddress.ip_network(self.mgmt).hosts()))

    @property
    def api_address(self) -> str:
        """The controller's end of the management link: where the lab reaches the agent's REST API."""
        return str(list(ipaddress.ip_network(self.mgmt).hosts())[1])

    @property
    def root_link(self) -> str:
        return f"ce{self.token}{self.cid}"[:15]

    def up(self, rs_namespace: str) -> None:
        """Create the namespace, its fabric veth (on br0 in ``rs_namespace``) and its management veth to the root
        namespace. On failure the namespace is deleted before the error propagates."""
        ip, ns = ip_path(), self.namespace
        try:
            _run([ip, "netns", "add", ns])
            _run([ip, "-n", ns, "link", "set", "lo", "up"])
            _run([ip, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"k{self.index}",
                  "netns", rs_namespace])
            _run([ip, "-n", ns, "addr", "add", f"{self.fabric_address}/{FABRIC_PREFIX_LEN}", "dev", "eth0"])
            _run([ip, "-n", ns, "link", "set", "eth0", "up"])
            _run([ip, "-n", rs_namespace, "link", "set", f"k{self.index}", "master", "br0", "up"])
            plen = ipaddress.ip_network(self.mgmt).prefixlen
            _run([ip, "link", "add", self.root_link, "type", "veth", "peer", "name", "mgmt0", "netns", ns])
            _run([ip, "-n", ns, "addr", "add", f"{self.api_address}/{plen}", "dev", "mgmt0"])
            _run([ip, "-n", ns, "link", "set", "mgmt0", "up"])
            _run([ip, "addr", "add", f"{self.root_side}/{plen}", "dev", self.root_link])
            _run([ip, "link", "set", self.root_link, "up"])
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Delete the namespace (its veths and their peers go with it once no socket holds it)."""
        if Path("/run/netns", self.namespace).exists():
            _run([ip_path(), "netns", "del", self.namespace], check=False)
        if Path("/sys/class/net", self.root_link).exists():
            _run([ip_path(), "link", "del", self.root_link], check=False)


def plan_controllers(token: str, cids: tuple[str, ...]) -> list[Controller]:
    """One controller per cloud, each on a /30 of ``MGMT_NET`` no address of the root namespace is in."""
    used = _used_mgmt_subnets()
    free = (n for n in MGMT_NET.subnets(new_prefix=30) if str(n) not in used and n.network_address.packed[2] != 0)
    return [Controller(token=token, cid=cid, index=i, mgmt=str(next(free))) for i, cid in enumerate(cids, start=1)]


def attach_root(token: str) -> str:
    """``ip netns attach`` this process's network namespace as ``cnfe2e-<token>-root``; returns its path."""
    name = root_handle(token)
    path = Path("/run/netns", name)
    if path.exists() and netns_inode(str(path)) == netns_inode("/proc/self/ns/net"):
        return str(path)
    _run([ip_path(), "netns", "attach", name, str(os.getpid())])
    return str(path)


def detach_root(token: str) -> bool:
    """Remove the ``attach_root`` handle of this token, if any; returns whether there was one."""
    if not Path("/run/netns", root_handle(token)).exists():
        return False
    _run([ip_path(), "netns", "del", root_handle(token)], check=False)
    return True


def write_qemu_wrapper(path: Path, root_netns: str) -> Path:
    """A shell script that runs QEMU in the namespace ``root_netns`` (a path), ``exec``ing all the way."""
    qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
    nsenter = shutil.which("nsenter") or "/usr/bin/nsenter"
    path.write_text(f'#!/bin/sh\n# QEMU in the lab\'s root namespace, whoever spawns it (lab/controller_ns.py)\n'
                    f'exec {nsenter} --net={root_netns} -- {qemu} "$@"\n')
    path.chmod(0o755)
    return path


def in_namespace(ns: str, argv: list[str]) -> list[str]:
    """``argv`` run inside network namespace ``ns`` (``nsenter`` execs: the PID stays the program's)."""
    return [shutil.which("nsenter") or "/usr/bin/nsenter", f"--net=/run/netns/{ns}", "--", *argv]


def established(ns: str) -> list[tuple[str, str]]:
    """Established TCP connections inside namespace ``ns`` as ``(local, peer)`` ``addr:port`` pairs (IPv4; a
    dual-stack listener's ``[::ffff:10.255.0.31]:p`` is given as ``10.255.0.31:p``)."""
    p = _run([ip_path(), "netns", "exec", ns, "ss", "-tnH", "state", "established"], check=False)

    def v4(address: str) -> str:
        return address.replace("[::ffff:", "").replace("]", "")

    out = []
    for line in p.stdout.splitlines():
        cols = line.split()
        if len(cols) >= 4:
            out.append((v4(cols[-2]), v4(cols[-1])))
    return out


# --- the relay -------------------------------------------------------------------------------------------------


@dataclass
class Relay:
    """The relay process of one controller (see the module docstring); its PID is in ``pid_file``."""

    namespace: str
    ports: list[int]
    log: Path
    pid_file: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self, within_s: float = 15.0) -> None:
        argv = [sys.executable, "-m", "lab.controller_ns", "relay", "--ns", self.namespace,
                "--ports", ",".join(str(p) for p in sorted(set(self.ports)))]
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         cwd=str(ROOT), start_new_session=True)
        self.pid_file.write_text(str(self.proc.pid))
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if RELAY_READY in self.log.read_text(errors="replace"):
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise ControllerError(f"relay for {self.namespace} not ready: {self.log.read_text(errors='replace')[-800:]}")

    def stop(self) -> None:
        if self.proc is not None:
            end_process(self.proc.pid, grace_s=5.0)
            self.proc.poll()
        self.proc = None
        self.pid_file.unlink(missing_ok=True)


def remove_controllers(token: str, lab_root: Path) -> list[str]:
    """Leftovers of a crashed run: end the processes inside this token's controller namespaces and the relays whose
    PIDs are recorded under ``lab_root/agents``, delete the namespaces and the root handle. Returns what went."""
    gone = []
    for pid_file in (lab_root / "agents").glob("relay-*.pid") if (lab_root / "agents").exists() else []:
        with contextlib.suppress(OSError, ValueError):
            pid = int(pid_file.read_text().strip())
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"lab.controller_ns" in cmd and token.encode() in cmd and process_alive(pid):
                end_process(pid, grace_s=5.0)
                gone.append(f"relay pid {pid}")
    netns = Path("/run/netns")
    names = sorted(p.name for p in netns.glob(f"cnfe2e-{token}-c*")) if netns.exists() else []
    for ns in names:
        pids = [int(x) for x in _run([ip_path(), "netns", "pids", ns], check=False).stdout.split() if x.isdigit()]
        if pids:
            end_processes(pids, grace_s=10.0)
            gone.append(f"{ns} pids {pids}")
        _run([ip_path(), "netns", "del", ns], check=False)
        gone.append(ns)
    for link in Path("/sys/class/net").glob(f"ce{token}*"):
        _run([ip_path(), "link", "del", link.name], check=False)
    if detach_root(token):
        gone.append(root_handle(token))
    return gone


def _setns(fd: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def listen_in(ns_path: str, ports: list[int]) -> list[socket.socket]:
    """Listening sockets on ``127.0.0.1:<port>`` inside the namespace at ``ns_path``; the calling thread returns
    to its own namespace before this returns (also on error)."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(ns_path, os.O_RDONLY)
    socks: list[socket.socket] = []
    try:
        _setns(target)
        try:
            for port in ports:
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.bind(("127.0.0.1", port))
                s.listen(128)
                s.setblocking(False)
                socks.append(s)
        finally:
            _setns(home)
    except BaseException:
        for s in socks:
            s.close()
        raise
    finally:
        os.close(home)
        os.close(target)
    return socks


class _Half(asyncio.Protocol):
    """One side of a relayed connection: what it receives is written to its peer's transport at once.

    Why protocols and not streams: every relayed round trip crosses the relay twice; a protocol writes in the
    same loop iteration the data arrived in (no task wake-up per chunk), which halves the relay's added latency
    (measured: streams ~150 us per round trip at load 2.5). Flow control: a peer whose buffer is full pauses this
    side's reading. EOF is passed on as a half-close (a client that shuts down writing still gets its answer);
    when either side is lost, the other is closed. What arrives before the two sides are linked (a server that
    speaks first, e.g. Ceph's msgr2 banner, can send before ``create_connection`` returns) is kept and written at
    ``link``: dropping it stalled every new Ceph connection until the messenger retried (40-100 ms).
    Both sides set ``TCP_NODELAY`` themselves: asyncio sets it only on sockets whose ``proto`` is
    ``IPPROTO_TCP``, and a socket accepted from a listener made with proto 0 is not; with Nagle on, a server
    reply written in two pieces waited for the client's delayed ACK (~40 ms: every new Ceph connection's
    config message after its mon_map, which made demote/promote through the relay 2-4x slower).
    """

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer: _Half | None = None
        self.eof = False
        self.early: list[bytes] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def link(self, peer: _Half) -> None:
        """Pair the two sides, then pass on what either received before (and an EOF it saw)."""
        self.peer, peer.peer = peer, self
        for side in (self, peer):
            other = side.peer
            assert other is not None and other.transport is not None
            for data in side.early:
                other.transport.write(data)
            side.early.clear()
            if side.eof and other.transport.can_write_eof():
                other.transport.write_eof()

    def data_received(self, data: bytes) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.write(data)
        else:
            self.early.append(data)

    def eof_received(self) -> bool:
        self.eof = True
        peer = self.peer
        if peer is None:
            return True  # passed on at ``link``
        if peer.transport is None or peer.eof or not peer.transport.can_write_eof():
            return False  # both directions done (or cannot half-close): close
        peer.transport.write_eof()
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.close()

    def pause_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.peer is not None and self.peer.transport is not None:
            self.peer.transport.resume_reading()


class _Accepted(_Half):
    """The controller's side: on accept, connect to ``127.0.0.1:<port>`` in the relay's (root) namespace."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.transport.pause_reading()  # nothing to write to yet
        asyncio.get_running_loop().create_task(self._connect())

    async def _connect(self) -> None:
        assert self.transport is not None
        try:
            _, upstream = await asyncio.get_running_loop().create_connection(_Half, "127.0.0.1", self.port)
        except OSError:
            self.transport.close()
            return
        self.link(upstream)
        if self.transport.is_closing():
            assert upstream.transport is not None
            upstream.transport.close()
            return
        self.transport.resume_reading()


async def _relay(ns: str, ports: list[int]) -> None:
    socks = listen_in(f"/run/netns/{ns}", ports)  # the relay's own thread stays in the root namespace
    loop = asyncio.get_running_loop()
    servers = []
    for s in socks:
        port = s.getsockname()[1]
        servers.append(await loop.create_server(functools.partial(_Accepted, port), sock=s))
    print(f"{RELAY_READY}: {ns} 127.0.0.1 ports {ports}", flush=True)
    await asyncio.Event().wait()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.controller_ns")
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("relay", help="forward 127.0.0.1:<port> inside --ns to 127.0.0.1:<port> here")
    r.add_argument("--ns", required=True)
    r.add_argument("--ports", required=True, help="comma-separated")
    args = ap.parse_args(argv)
    ports = [int(p) for p in args.ports.split(",") if p]
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(_relay(args.ns, ports))
    return 0


if __name__ == "__main__":
    sys.exit(main())
