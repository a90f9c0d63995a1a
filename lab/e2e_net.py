"""The guest's network in the e2e lab: a tap per QEMU host, one gateway identity on every host, a probe outside.

Why: the product's promise is that a VM keeps its IP and keeps answering while it moves between clouds; the lab
proves it with packets, not with routing tables. Every piece is a network namespace of its own (stdlib only, so
this file also runs as QEMU's tap helper, see below)::

    probe ns  eth0 10.98.0.2/30 --- pr 10.98.0.1/30  [route server ns "rs", forwarding]  br0 10.255.0.254/24
                                                                                        |      |     |     |
    cloud routers (lab.frr, forwarding): c1 10.255.0.1, c2 10.255.0.2 ------------------+------+     |     |
    host ns a  eth0 10.255.0.21/24, default via 10.255.0.1 (its cloud router) ---------------------+     |
    host ns b  eth0 10.255.0.22/24, default via 10.255.0.2 -----------------------------------------------+
      each host: tap "tap-vm" (made by QEMU's tap helper) MAC 02:cf:00:00:00:01, 169.254.0.1/32,
                 route 10.99.0.5/32 dev tap-vm
    guest: eth0 (virtio-net, MAC 52:54:00:99:00:05) 10.99.0.5/32, route 169.254.0.1 dev eth0, default via it

* **Identical gateway on every host**: same tap name, same MAC, same link-local gateway address. The guest's
  neighbour entry for its gateway stays right after a live migration, so nothing in the guest has to notice the
  move (no ARP, no DHCP): only the fabric has to.
* **The /32 exists on a host exactly while a QEMU holding its tap runs there**: the tap is not persistent, so
  it and its host route vanish with the QEMU process (a killed destination leaves nothing behind).
* **The cloud router announces the /32 with the host as next-hop** (third-party next-hop on the shared segment:
  the route server, a ``route-server-client`` hub, passes it on unchanged). The probe reaches the VM only through
  that BGP-learned route: the route server forwards ``10.99.0.5`` by its kernel route (installed by its zebra)
  from the probe's link to the host; replies go host -> its cloud router -> route server -> probe.
* **QEMU's tap helper**: QEMU runs in the machine's root namespace (its migration socket is on loopback), but the
  tap must live in the host's namespace. ``-netdev tap,helper=...`` makes QEMU fork this file as a helper under
  ``ip netns exec <host ns>``: it creates and configures the tap there and hands its file descriptor back over
  the socket QEMU passes (``--fd=N``, one byte + ``SCM_RIGHTS``, the protocol of ``qemu-bridge-helper``). Only
  the backend differs between hosts; the guest-visible device (``virtio-net-pci`` with a fixed MAC) is identical,
  as a live migration requires.

Every namespace name carries the lab's token; ``down`` deletes only those (no process runs inside them: QEMU
runs in the root namespace and the helper exits after handing the fd over).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

VM_IP = "10.99.0.5"
GUEST_MAC = "52:54:00:99:00:05"
GATEWAY_IP = "169.254.0.1"
GATEWAY_MAC = "02:cf:00:00:00:01"
TAP = "tap-vm"
PROBE_ADDRESS = "10.98.0.2"
PROBE_RS_ADDRESS = "10.98.0.1"
RS_ADDRESS = "10.255.0.254"
FABRIC_PREFIX_LEN = 24
CMD_TIMEOUT = 30.0

# linux/if_tun.h
_TUNSETIFF = 0x400454CA
_IFF_TAP = 0x0002
_IFF_NO_PI = 0x1000
_IFF_VNET_HDR = 0x4000


class NetError(RuntimeError):
    """A part of the guest network could not be set up; the message names the command and its output."""


def ip_path() -> str:
    return shutil.which("ip") or "/usr/sbin/ip"


def run_plumbing(argv: list[str], *, check: bool = True,
         error: type[RuntimeError] = NetError) -> subprocess.CompletedProcess[str]:
    """Run a plumbing command (``ip``, ``sysctl``, ...); with ``check``, a non-zero exit raises ``error`` naming
    the command and its output (``lab.controller_ns`` passes its own error class)."""
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
    if check and proc.returncode != 0:
        raise error(f"{' '.join(argv)} failed rc={proc.returncode}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def _sysctl(namespace: str, *settings: str) -> None:
    run_plumbing([ip_path(), "netns", "exec", namespace, "sysctl", "-q", "-w", *settings])


@dataclass(frozen=True)
class GuestNetwork:
    """The namespaces and links this lab adds around an ``FrrLab`` (names derived from ``token``).

    ``routers`` maps a cloud id to its cloud router's ``(namespace, address)``; ``hosts`` maps it to the host's
    address on the fabric segment (the next-hop its cloud router announces for the VM).
    """

    token: str
    rs_namespace: str
    routers: dict[str, tuple[str, str]]
    hosts: dict[str, str]

    def host_namespace(self, cid: str) -> str:
        return f"cnfe2e-{self.token}-h{cid}"

    @property
    def probe_namespace(self) -> str:
        return f"cnfe2e-{self.token}-probe"

    @property
    def namespaces(self) -> list[str]:
        return [self.probe_namespace, *(self.host_namespace(c) for c in self.hosts)]

    # --- lifecycle -------------------------------------------------------------------------------------------

    def up(self) -> None:
        """Create the probe and host namespaces, link them to the route server's side, enable forwarding.

        On failure, what was created is removed before the error propagates.
        """
        ip = ip_path()
        try:
            rs = self.rs_namespace
            _sysctl(rs, "net.ipv4.ip_forward=1")
            probe = self.probe_namespace
            run_plumbing([ip, "netns", "add", probe])
            run_plumbing([ip, "-n", probe, "link", "set", "lo", "up"])
            run_plumbing([ip, "-n", probe, "link", "add", "eth0", "type", "veth", "peer", "name", "pr", "netns", rs])
            run_plumbing([ip, "-n", probe, "addr", "add", f"{PROBE_ADDRESS}/30", "dev", "eth0"])
            run_plumbing([ip, "-n", probe, "link", "set", "eth0", "up"])
            run_plumbing([ip, "-n", probe, "route", "add", "default", "via", PROBE_RS_ADDRESS])
            run_plumbing([ip, "-n", rs, "addr", "add", f"{PROBE_RS_ADDRESS}/30", "dev", "pr"])
            run_plumbing([ip, "-n", rs, "link", "set", "pr", "up"])
            for n, (cid, address) in enumerate(sorted(self.hosts.items()), start=1):
                ns = self.host_namespace(cid)
                router_ns, router_address = self.routers[cid]
                run_plumbing([ip, "netns", "add", ns])
                run_plumbing([ip, "-n", ns, "link", "set", "lo", "up"])
                run_plumbing([ip, "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", f"h{n}", "netns",
                              rs])
                run_plumbing([ip, "-n", ns, "addr", "add", f"{address}/{FABRIC_PREFIX_LEN}", "dev", "eth0"])
                run_plumbing([ip, "-n", ns, "link", "set", "eth0", "up"])
                run_plumbing([ip, "-n", rs, "link", "set", f"h{n}", "master", "br0", "up"])
                run_plumbing([ip, "-n", ns, "route", "add", "default", "via", router_address])
                _sysctl(ns, "net.ipv4.ip_forward=1")
                # the cloud router forwards its host's traffic to the outside (here: the probe's link behind the
                # route server); on the shared segment it would otherwise redirect the host to the route server
                _sysctl(router_ns, "net.ipv4.ip_forward=1", "net.ipv4.conf.all.send_redirects=0",
                        "net.ipv4.conf.eth0.send_redirects=0")
                probe_net = f"{PROBE_RS_ADDRESS.rsplit('.', 1)[0]}.0/30"
                run_plumbing([ip, "-n", router_ns, "route", "replace", probe_net, "via", RS_ADDRESS])
        except BaseException:
            self.down()
            raise

    def down(self) -> None:
        """Delete this lab's namespaces (their veth ends in the route server's namespace go with them)."""
        for ns in self.namespaces:
            if Path("/run/netns", ns).exists():
                run_plumbing([ip_path(), "netns", "del", ns], check=False)

    # --- QEMU ------------------------------------------------------------------------------------------------

    def tap_helper(self, cid: str) -> str:
        """The ``helper=`` command QEMU runs to get host ``cid``'s tap (no commas: QEMU's option syntax)."""
        return (f"{ip_path()} netns exec {self.host_namespace(cid)} {sys.executable} -I {Path(__file__).resolve()} "
                f"tap-helper --tap {TAP} --mac {GATEWAY_MAC} --gateway {GATEWAY_IP} --vm-ip {VM_IP}")

    def qemu_args(self, cid: str) -> tuple[str, ...]:
        """QEMU arguments of the guest's NIC on host ``cid``: backend per host, identical guest-visible device."""
        return ("-netdev", f"tap,id=net0,helper={self.tap_helper(cid)}",
                "-device", f"virtio-net-pci,netdev=net0,mac={GUEST_MAC}")

    # --- observation -----------------------------------------------------------------------------------------

    def tap_packets(self, cid: str) -> dict[str, int] | None:
        """Packets through host ``cid``'s tap: ``to_guest`` / ``from_guest``; None when there is no tap."""
        p = run_plumbing([ip_path(), "-n", self.host_namespace(cid), "-s", "-j", "link", "show", "dev", TAP],
                         check=False)
        if p.returncode != 0:
            return None
        try:
            stats = json.loads(p.stdout)[0]["stats64"]
            return {"to_guest": int(stats["tx"]["packets"]), "from_guest": int(stats["rx"]["packets"])}
        except (ValueError, KeyError, IndexError):
            return None

    def host_route(self, cid: str) -> bool:
        """True if host ``cid`` routes the VM's /32 to its tap (i.e. a QEMU with the guest's NIC runs there)."""
        p = run_plumbing([ip_path(), "-n", self.host_namespace(cid), "route", "show", f"{VM_IP}/32"], check=False)
        return f"dev {TAP}" in p.stdout


# --- QEMU's tap helper (runs inside the host's namespace, forked by QEMU) --------------------------------------


def _tap_helper(args: argparse.Namespace) -> int:
    """Create the tap in this namespace, give it the gateway's identity and the VM's route, pass the fd to QEMU."""
    flags = _IFF_TAP | _IFF_NO_PI | (_IFF_VNET_HDR if args.use_vnet else 0)
    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH22x", args.tap.encode(), flags))
    ip = ip_path()
    for argv in ([ip, "link", "set", "dev", args.tap, "address", args.mac, "up"],
                 [ip, "addr", "replace", f"{args.gateway}/32", "dev", args.tap],
                 [ip, "route", "replace", f"{args.vm_ip}/32", "dev", args.tap]):
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT, check=False)
        if proc.returncode != 0:
            print(f"tap-helper: {' '.join(argv)}: {proc.stderr.strip()}", file=sys.stderr)
            return 1
    with socket.socket(fileno=args.fd) as sock:
        socket.send_fds(sock, [b"\0"], [fd])
    with contextlib.suppress(OSError):
        os.close(fd)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="lab/e2e_net.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    h = sub.add_parser("tap-helper", help="QEMU's -netdev tap helper (QEMU appends --use-vnet --fd=N --br=X)")
    h.add_argument("--tap", required=True)
    h.add_argument("--mac", required=True)
    h.add_argument("--gateway", required=True)
    h.add_argument("--vm-ip", required=True)
    h.add_argument("--use-vnet", action="store_true")
    h.add_argument("--fd", type=int, required=True)
    h.add_argument("--br", default="")
    args = ap.parse_args(argv)
    return _tap_helper(args)


if __name__ == "__main__":
    sys.exit(main())
