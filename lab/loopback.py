"""Free TCP ports on 127.0.0.1 for the lab's servers and the tests' agents.

Why one place: every lab part (etcd, Ceph, OpenStack, Keystone) and every process-level test harness needs
ports no concurrent run holds; picking them the same way everywhere keeps that guarantee in one function.
"""

from __future__ import annotations

import socket


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all sockets are held open until every port is chosen, so none repeats)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def free_port() -> int:
    return free_ports(1)[0]
