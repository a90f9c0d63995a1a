"""A real BGP fabric on one machine: an eBGP route server and N cloud routers, each FRR in its own netns.

Why: ``FrrBgpSpeaker`` must be proven against real FRR, with real propagation through a route server,
without touching the host's network. Everything lives in network namespaces this module creates:

    <prefix>-rs : bridge br0 10.255.0.254/24, AS 65000, every cloud is a ``route-server-client``
    <prefix>-cN : eth0 10.255.0.N/24 (+ 10.255.0.(10+N) as a second "VM gateway" next-hop), AS 6500N
    <prefix>-sN : "spare" FRRs, AS 6510N, on no link, one neighbour that never answers: tests stop or freeze
                  them (DriverUnavailable) and read a session that is down, without disturbing the fabric

One FRR per namespace, pathspace name = namespace name: config in ``/etc/frr/<ns>/``, sockets and pid files in
``/var/run/frr/<ns>/``, started with ``ip netns exec <ns> /usr/lib/frr/frrinit.sh start <ns>``, driven with
``vtysh -N <ns>`` or bgpd's vtysh socket ``/var/run/frr/<ns>/bgpd.vty``. The knobs that matter (see docs/bgp.md,
"FRR settings"): ``no bgp ebgp-requires-policy``, ``no bgp network import-check``, clouds export only their own
prefixes (``as-path ^$``), ``neighbor ... advertisement-interval 0`` on both ends of every session (FRR 8.4's
default already, written out so the lab states what production needs), ``timers bgp 3 9``. Nothing else in FRR
8.4 shortens a handoff: each router runs best-path 50 ms after a change (a hard-coded work-queue hold), which is
the floor the benchmark meets; ``coalesce-time`` only delays the first table sent to a peer that comes up, and
``frr defaults datacenter`` changes timers and policy defaults, not update propagation.

Names carry a random token so concurrent runs cannot collide; teardown ends only the processes that run inside
our own namespaces (by PID) and deletes only what ``up`` created. Needs root.

CLI: ``python -m lab.frr up [--clouds 3]`` prints the token and a JSON description (also written to
``/run/cnf-lab/frr-<token>.json``); ``python -m lab.frr down <token>`` tears it down; ``down --stale`` removes
labs whose starting process died without tearing down (a lab started by the CLI itself counts as stale once
``up`` has returned: end it by token).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from lab.owned_process import end_processes
from lab.shared import SharedLab

FRR_LIB = Path("/usr/lib/frr")
FRR_ETC = Path("/etc/frr")
FRR_RUN = Path("/var/run/frr")
STATE_DIR = Path("/run/cnf-lab")
SUBNET = "10.255.0"
RS_ADDRESS = f"{SUBNET}.254"
RS_AS = 65000
CMD_TIMEOUT = 30.0


@dataclass(frozen=True)
class LabRouter:
    """One FRR instance of the lab. ``pathspace`` is what ``vtysh -N`` and ``FrrBgpSpeaker`` need."""

    name: str  # "rs", "c1", "c2", ...
    namespace: str
    as_number: int
    address: str  # peering address (and the cloud's default next-hop)
    vm_next_hop: str  # a second address on the segment, for "--dest-next-hop" tests

    @property
    def pathspace(self) -> str:
        return self.namespace


def _run(argv: list[str], *, check: bool = True, timeout: float = CMD_TIMEOUT) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv!r} failed rc={proc.returncode}: {proc.stdout.strip()} {proc.stderr.strip()}")
    return proc


def ensure_frr_installed() -> None:
    """Install Debian's ``frr`` if it is missing (a fresh CI machine); the lab cannot run without it."""
    if shutil.which("vtysh") and (FRR_LIB / "frrinit.sh").exists() and (FRR_LIB / "bgpd").exists():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "frr"],
                          capture_output=True, text=True, timeout=600, env=env, check=False)
    if proc.returncode != 0:  # the package index may be missing on a fresh image
        subprocess.run(["apt-get", "update"], capture_output=True, timeout=600, env=env, check=False)
        _run(["apt-get", "install", "-y", "--no-install-recommends", "frr"], timeout=600)


def lab_prerequisites_missing() -> str | None:
    """Why this machine cannot run the lab, or None. Root and ``ip netns`` are needed."""
    if os.geteuid() != 0:
        return "the FRR lab needs root (network namespaces, /etc/frr/<ns>)"
    if not shutil.which("ip"):
        return "iproute2 ('ip') is missing"
    return None


@dataclass
class FrrLab:
    """The lab's description and lifecycle. ``up`` is idempotent only in the sense that ``down`` always cleans."""

    clouds: int = 3
    spares: int = 1
    token: str = field(default_factory=lambda: secrets.token_hex(3))
    keepalive: int = 3
    hold: int = 9

    def __post_init__(self) -> None:
        if not 1 <= self.clouds <= 9:
            raise ValueError("clouds must be 1..9")
        prefix = f"cnfbgp-{self.token}"
        self.route_server = LabRouter("rs", f"{prefix}-rs", RS_AS, RS_ADDRESS, RS_ADDRESS)
        self.cloud_routers = [
            LabRouter(f"c{i}", f"{prefix}-c{i}", RS_AS + i, f"{SUBNET}.{i}", f"{SUBNET}.{10 + i}")
            for i in range(1, self.clouds + 1)
        ]
        self.spare_routers = [
            LabRouter(f"s{i}", f"{prefix}-s{i}", RS_AS + 100 + i, f"10.254.{i}.1", f"10.254.{i}.1")
            for i in range(1, self.spares + 1)
        ]

    # --- description ------------------------------------------------------------------------

    @property
    def routers(self) -> list[LabRouter]:
        return [self.route_server, *self.cloud_routers, *self.spare_routers]

    def router(self, name: str) -> LabRouter:
        for r in self.routers:
            if r.name == name:
                return r
        raise KeyError(name)

    def describe(self) -> dict[str, object]:
        return {"token": self.token, "clouds": self.clouds, "spares": self.spares,
                "routers": [asdict(r) for r in self.routers]}

    @property
    def state_file(self) -> Path:
        return STATE_DIR / f"frr-{self.token}.json"

    # --- lifecycle --------------------------------------------------------------------------

    def up(self, timeout: float = 60.0) -> None:
        """Create namespaces, links and configs, start every FRR, wait until the RS has all peers Established.

        On any failure everything created so far is torn down before the error propagates.
        """
        ensure_frr_installed()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        # owner = the process that started it: ``down --stale`` removes labs whose owner died without teardown
        self.state_file.write_text(json.dumps({**self.describe(), "owner_pid": os.getpid()}))
        try:
            self._create_network()
            for r in self.routers:
                self._write_config(r)
            # in parallel: each frrinit start takes ~0.3-0.5 s on a busy 2-core machine
            with concurrent.futures.ThreadPoolExecutor(len(self.routers)) as pool:
                list(pool.map(self.start_router, [r.name for r in self.routers]))
            self.wait_established(timeout)
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Stop every FRR of this lab, end leftover processes in our namespaces by PID, remove all traces.

        Signals instead of ``frrinit.sh stop``: frrinit waits ~6 s per instance, signals end all of them in <1 s.
        """
        present = [r for r in self.routers
                   if Path("/run/netns", r.namespace).exists() or (FRR_ETC / r.namespace).exists()]
        _end_daemons([pid for r in present for pid in self._namespace_pids(r.namespace)])
        for r in present:
            _run(["ip", "netns", "del", r.namespace], check=False)
            shutil.rmtree(FRR_ETC / r.namespace, ignore_errors=True)
            shutil.rmtree(FRR_RUN / r.namespace, ignore_errors=True)
        self.state_file.unlink(missing_ok=True)

    def start_router(self, name: str) -> None:
        r = self.router(name)
        _run(["ip", "netns", "exec", r.namespace, str(FRR_LIB / "frrinit.sh"), "start", r.namespace])

    def stop_router(self, name: str) -> None:
        """Stop one FRR (watchfrr first, so it restarts nothing, then its daemons); returns when they are gone."""
        _end_daemons(self._namespace_pids(self.router(name).namespace))

    def daemon_pid(self, name: str, daemon: str) -> int | None:
        """The PID of ``daemon`` of router ``name``, only if that process really runs in the router's netns."""
        ns = self.router(name).namespace
        try:
            pid = int((FRR_RUN / ns / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _pid_in_namespace(pid, ns) else None

    def vtysh_json(self, name: str, command: str) -> dict[str, object]:
        proc = _run(["vtysh", "-N", self.router(name).pathspace, "-c", command], check=False, timeout=10)
        try:
            data = json.loads(proc.stdout or "{}")
        except json.JSONDecodeError:
            return {}
        return data if isinstance(data, dict) else {}

    def established_peers(self, name: str) -> int:
        summary = self.vtysh_json(name, "show bgp summary json")
        af = summary.get("ipv4Unicast")
        peers = af.get("peers", {}) if isinstance(af, dict) else {}
        return sum(1 for p in peers.values() if isinstance(p, dict) and p.get("state") == "Established")

    def wait_established(self, timeout: float = 60.0) -> None:
        """Poll the route server until every cloud's session is Established (rarely more than ~5 s)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.established_peers("rs") == self.clouds:
                return
            time.sleep(0.1)
        raise TimeoutError(f"BGP sessions not Established after {timeout}s (lab {self.token})")

    # --- building blocks --------------------------------------------------------------------

    def _create_network(self) -> None:
        rs = self.route_server.namespace
        for r in self.routers:
            _run(["ip", "netns", "add", r.namespace])
            _run(["ip", "-n", r.namespace, "link", "set", "lo", "up"])
        _run(["ip", "-n", rs, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", rs, "addr", "add", f"{RS_ADDRESS}/24", "dev", "br0"])
        _run(["ip", "-n", rs, "link", "set", "br0", "up"])
        for i, r in enumerate(self.cloud_routers, start=1):
            # created directly inside the two namespaces: no name ever exists in the host's namespace
            _run(["ip", "-n", r.namespace, "link", "add", "eth0", "type", "veth", "peer", "name", f"p{i}",
                  "netns", rs])
            _run(["ip", "-n", r.namespace, "addr", "add", f"{r.address}/24", "dev", "eth0"])
            _run(["ip", "-n", r.namespace, "addr", "add", f"{r.vm_next_hop}/24", "dev", "eth0"])
            _run(["ip", "-n", r.namespace, "link", "set", "eth0", "up"])
            _run(["ip", "-n", rs, "link", "set", f"p{i}", "master", "br0", "up"])
        for r in self.spare_routers:
            _run(["ip", "-n", r.namespace, "addr", "add", f"{r.address}/32", "dev", "lo"])

    def _frr_config(self, r: LabRouter) -> str:
        lines = ["frr defaults traditional", f"hostname {r.namespace}",
                 f"log file /var/log/frr/{r.namespace}.log informational"]
        if r.name.startswith("c"):
            # export only locally originated prefixes, else each cloud re-advertises the RS's routes back
            lines += ["bgp as-path access-list CNF-LOCAL seq 5 permit ^$",
                      "route-map CNF-EXPORT-LOCAL permit 10", " match as-path CNF-LOCAL", "exit"]
        lines += [f"router bgp {r.as_number}", f" bgp router-id {r.address}", " no bgp ebgp-requires-policy",
                  " no bgp network import-check", f" timers bgp {self.keepalive} {self.hold}"]
        if r.name == "rs":
            # advertisement-interval 0 (MRAI): send each change at once, never batch it behind a timer
            for c in self.cloud_routers:
                lines += [f" neighbor {c.address} remote-as {c.as_number}",
                          f" neighbor {c.address} timers connect 1",
                          f" neighbor {c.address} advertisement-interval 0"]
            lines += [" address-family ipv4 unicast"]
            lines += [f"  neighbor {c.address} route-server-client" for c in self.cloud_routers]
            lines += [" exit-address-family"]
        elif r.name.startswith("s"):
            # a neighbour that never answers (no route to it): a real "session down" for peer-health tests
            lines += [f" neighbor {r.address.rsplit('.', 1)[0]}.254 remote-as {RS_AS}"]
        elif r.name.startswith("c"):
            lines += [f" neighbor {RS_ADDRESS} remote-as {RS_AS}", f" neighbor {RS_ADDRESS} timers connect 1",
                      f" neighbor {RS_ADDRESS} advertisement-interval 0",
                      " address-family ipv4 unicast", f"  neighbor {RS_ADDRESS} route-map CNF-EXPORT-LOCAL out",
                      " exit-address-family"]
        lines += ["exit", ""]
        return "\n".join(lines)

    def _write_config(self, r: LabRouter) -> None:
        etc, run = FRR_ETC / r.namespace, FRR_RUN / r.namespace
        etc.mkdir(parents=True, exist_ok=True)
        run.mkdir(parents=True, exist_ok=True)
        Path("/var/log/frr").mkdir(parents=True, exist_ok=True)
        daemons = (FRR_ETC / "daemons").read_text()
        daemons = daemons.replace("\nbgpd=no", "\nbgpd=yes").replace("\nstaticd=no", "\nstaticd=yes")
        if "\nbgpd=yes" not in daemons:
            daemons += "\nbgpd=yes\n"
        (etc / "daemons").write_text(daemons)
        (etc / "vtysh.conf").write_text("service integrated-vtysh-config\n")
        (etc / "frr.conf").write_text(self._frr_config(r))
        (etc / "frr.conf").chmod(0o640)
        for p in (etc, run, etc / "daemons", etc / "vtysh.conf", etc / "frr.conf", Path("/var/log/frr")):
            shutil.chown(p, "frr", "frr")
        check = _run(["vtysh", "-N", r.namespace, "-C", "-f", str(etc / "frr.conf")], check=False)
        if check.returncode != 0:
            raise RuntimeError(f"invalid FRR config for {r.namespace}: {check.stdout} {check.stderr}")

    @staticmethod
    def _namespace_pids(namespace: str) -> list[int]:
        if not Path("/run/netns", namespace).exists():
            return []
        proc = _run(["ip", "netns", "pids", namespace], check=False)
        return [int(x) for x in proc.stdout.split() if x.isdigit()]


def _end_daemons(pids: list[int]) -> None:
    """End FRR daemons by PID (SIGTERM, SIGKILL after 3 s), watchfrr first so it restarts nothing."""
    def comm(pid: int) -> str:
        try:
            return Path(f"/proc/{pid}/comm").read_text().strip()
        except OSError:
            return ""

    end_processes(sorted(pids, key=lambda p: comm(p) != "watchfrr"), grace_s=3.0)


def _start_frr_lab() -> FrrLab:
    lab = FrrLab()
    lab.up()
    return lab


#: One lab per process for every test module that needs it (contract suite, lab tests, benchmarks): session
#: fixtures in several directories share it, so a test run pays the ~5-8 s bring-up once.
_SHARED: SharedLab[FrrLab] = SharedLab(_start_frr_lab, lambda lab: lab.down())
acquire_shared_lab = _SHARED.acquire
release_shared_lab = _SHARED.release


def _pid_in_namespace(pid: int, namespace: str) -> bool:
    """True if ``pid`` runs in the named netns: a pid file may be stale and name someone else's process."""
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(f"/run/netns/{namespace}").st_ino
    except OSError:
        return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m lab.frr", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p_up = sub.add_parser("up", help="start a lab, print its JSON description")
    p_up.add_argument("--clouds", type=int, default=3)
    p_down = sub.add_parser("down", help="tear down a lab by token, or --stale: every recorded lab whose owner "
                                         "process is gone (never another live run's lab)")
    p_down.add_argument("token", nargs="?")
    p_down.add_argument("--stale", action="store_true")
    args = ap.parse_args(argv)
    why = lab_prerequisites_missing()
    if why:
        print(why, file=sys.stderr)
        return 2
    if args.cmd == "up":
        lab = FrrLab(clouds=args.clouds)
        t0 = time.monotonic()
        lab.up()
        print(json.dumps({**lab.describe(), "up_s": round(time.monotonic() - t0, 2)}, indent=1))
        return 0
    if not args.token and not args.stale:
        ap.error("down needs a token or --stale")
    files = [STATE_DIR / f"frr-{args.token}.json"] if args.token else sorted(STATE_DIR.glob("frr-*.json"))
    for f in files:
        if not f.exists():
            print(f"no lab recorded in {f}", file=sys.stderr)
            return 1
        desc = json.loads(f.read_text())
        if args.stale and Path(f"/proc/{desc.get('owner_pid', 0)}").exists():
            continue  # its owner still runs: not ours to end
        FrrLab(clouds=int(desc["clouds"]), spares=int(desc.get("spares", 1)), token=str(desc["token"])).down()
        print(f"lab {desc['token']} down")
    return 0


if __name__ == "__main__":
    sys.exit(main())
