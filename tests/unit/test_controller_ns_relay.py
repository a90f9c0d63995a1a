"""The namespace relay of ``lab.controller_ns`` (in one namespace: the forwarding logic, not ``setns``).

Why: a relayed side without ``TCP_NODELAY`` held a server's second small write for the client's delayed ACK
(~40 ms per new Ceph connection), which made the agents' demote/promote 2-4x slower through the relay.
"""

from __future__ import annotations

import asyncio
import socket

import pytest

from lab.controller_ns import _Accepted, _Half

TWO_PIECES = (b"first-message", b"second-message")


async def _upstream(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers a request in two separate small writes, like a Ceph mon sending mon_map then config."""
    await reader.readexactly(4)
    for piece in TWO_PIECES:
        writer.write(piece)
        await writer.drain()
    await reader.read()  # until the client closes
    writer.close()


@pytest.mark.timeout(20)
async def test_both_relayed_sides_disable_nagle_and_forward_in_order() -> None:
    loop = asyncio.get_running_loop()
    upstream = await asyncio.start_server(_upstream, "127.0.0.1", 0)
    up_port = upstream.sockets[0].getsockname()[1]
    # a listener made like listen_in's used to be (proto 0): asyncio leaves Nagle on for what it accepts
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.setblocking(False)
    accepted: list[_Accepted] = []

    def factory() -> _Accepted:
        side = _Accepted(up_port)
        accepted.append(side)
        return side

    relay = await loop.create_server(factory, sock=listener)
    try:
        reader, writer = await asyncio.open_connection(*listener.getsockname())
        writer.write(b"ping")
        await writer.drain()
        got = await asyncio.wait_for(reader.readexactly(sum(map(len, TWO_PIECES))), 10)
        assert got == b"".join(TWO_PIECES)
        assert len(accepted) == 1
        sides: list[_Half] = [accepted[0]]
        assert accepted[0].peer is not None
        sides.append(accepted[0].peer)
        for side in sides:
            assert side.transport is not None
            sock = side.transport.get_extra_info("socket")
            assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0, side
        writer.close()
        await writer.wait_closed()
    finally:
        relay.close()
        upstream.close()
        await relay.wait_closed()
        await upstream.wait_closed()

