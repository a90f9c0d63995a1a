"""A persistent session on an FRR daemon's vtysh socket (``<run_dir>/[<pathspace>/]bgpd.vty``).

Why: ``vtysh`` is a thin client. Each ``vtysh -c ...`` process builds FRR's whole command tree, reads
``vtysh.conf`` and the history file and connects to *every* daemon before running a command: ~25 ms of CPU on an
idle 2-core machine, 0.1-0.35 s under load. FrrBgpSpeaker polls FRR's table while it waits for an announcement to
leave (FRR runs best-path 50 ms after a change, see docs/bgp.md), so a spawn per poll cost more than FRR itself.
This module speaks vtysh's own protocol to the one daemon the driver needs (``bgpd``), over one connection that
stays open: a command costs ~0.1-0.3 ms.

Protocol (FRR ``lib/vty.c``: ``vtysh_accept``/``vtysh_read``, unchanged from 7.x to 8.4): the client writes a
command line terminated by NUL; the daemon answers with the command's output followed by 3 NUL bytes and one byte
holding the command's status (``CMD_SUCCESS`` 0, ``CMD_WARNING`` 1, ``CMD_ERR_NO_MATCH`` 2, ...,
``CMD_WARNING_CONFIG_FAILED`` 13). A new session starts in VIEW node; like vtysh we send ``enable`` first.
Access needs what vtysh needs: root or membership of FRR's ``frrvty`` group (the socket is ``frr:frrvty 0770``).

Contracts:
- ``run`` executes commands in order on one session and stops at the first one whose status is not success
  (unlike ``vtysh -c``, which goes on after a ``CMD_WARNING`` in whatever node it was left in); after a failure
  it sends ``end`` so the next batch starts from ENABLE node again. It returns the status and every output.
- Unreachable daemon (no socket, connection refused, permission denied) or no complete answer within ``timeout``
  -> ``VtyUnreachable``; the connection is then dropped, because its state (node, unread bytes) is unknown.
- A connection that broke since its last use (daemon restarted) is re-opened once and the batch re-run from its
  first command: callers only send batches that are safe to repeat (FRR's ``network``/``no network``/route-map
  statements are idempotent).
- One batch at a time per session (an ``asyncio.Lock``): the session has a node, so batches must not interleave.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from pathlib import Path

CMD_SUCCESS = 0
CMD_SUCCESS_DAEMON = 10
_OK = (CMD_SUCCESS, CMD_SUCCESS_DAEMON)
_TERMINATOR = b"\x00\x00\x00"
_READ_LIMIT = 64 * 1024 * 1024  # one answer is read whole: a full table view can be several MiB


class VtyUnreachable(Exception):
    """The daemon's vtysh socket cannot be used (absent, refused, no answer in time, closed mid-answer)."""


def socket_path(run_dir: str | Path, pathspace: str | None, daemon: str = "bgpd") -> Path:
    """Where FRR puts ``daemon``'s vtysh socket: ``<run_dir>/<daemon>.vty``, or under ``<pathspace>/`` with ``-N``."""
    base = Path(run_dir)
    return (base / pathspace if pathspace else base) / f"{daemon}.vty"


class FrrVtySession:
    """One long-lived session on one daemon's vtysh socket. Create it inside the event loop that uses it; safe to
    share between that loop's coroutines."""

    def __init__(self, path: str | Path, timeout: float) -> None:
        self.path = Path(path)
        self.timeout = timeout
        self._lock = asyncio.Lock()
        self.loop = asyncio.get_running_loop()  # streams belong to one event loop
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def run(self, commands: Sequence[str]) -> tuple[int, str]:
        """Run ``commands`` in order; returns (status of the first failing command or 0, all output so far)."""
        async with self._lock:
            # a connection opened by an earlier batch may have broken since (e.g. the daemon restarted): then
            # open a new one and run the whole batch once more
            retry_once = self._writer is not None
            while True:
                try:
                    return await asyncio.wait_for(self._run_locked(commands), timeout=self.timeout)
                except TimeoutError:
                    self._drop()
                    raise VtyUnreachable(f"{self.path}: no answer within {self.timeout}s") from None
                except asyncio.CancelledError:
                    self._drop()  # cancelled mid-answer: unread bytes would be taken for the next command's
                    raise
                except (ConnectionError, EOFError, asyncio.IncompleteReadError) as exc:
                    self._drop()
                    if not retry_once:
                        raise VtyUnreachable(f"{self.path}: {exc or type(exc).__name__}") from exc
                    retry_once = False

    async def close(self) -> None:
        async with self._lock:
            self._drop()

    # --- internals (called with the lock held) ---------------------------------------------------

    async def _run_locked(self, commands: Sequence[str]) -> tuple[int, str]:
        if self._writer is None:
            await self._connect()
        outputs: list[str] = []
        for i, command in enumerate(commands):
            status, text = await self._command(command)
            outputs.append(text)
            if status not in _OK:
                if any(c == "configure terminal" for c in commands[:i + 1]):
                    await self._command("end")  # back to ENABLE node for the next batch
                return status, "".join(outputs)
        return CMD_SUCCESS, "".join(outputs)

    async def _connect(self) -> None:
        try:
            self._reader, self._writer = await asyncio.open_unix_connection(str(self.path), limit=_READ_LIMIT)
        except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError) as exc:
            raise VtyUnreachable(f"{self.path}: {exc.strerror or exc}") from exc
        status, text = await self._command("enable")
        if status not in _OK:
            self._drop()
            raise VtyUnreachable(f"{self.path}: 'enable' refused: {text.strip()[:200]}")

    async def _command(self, command: str) -> tuple[int, str]:
        if "\x00" in command or "\n" in command:  # callers validate; a NUL/newline would split the command
            raise ValueError(f"command contains NUL or newline: {command!r}")
        assert self._reader is not None and self._writer is not None
        self._writer.write(command.encode() + b"\x00")
        await self._writer.drain()
        data = await self._reader.readuntil(_TERMINATOR)
        status = (await self._reader.readexactly(1))[0]
        return status, data[:-len(_TERMINATOR)].decode(errors="replace")

    def _drop(self) -> None:
        if self._writer is not None:
            with contextlib.suppress(Exception):
                self._writer.close()
        self._reader = self._writer = None
