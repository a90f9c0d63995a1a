"""Ending the processes a lab started, by PID or by process group, and telling whether they are gone.

Why one place: every lab part (etcd members, FRR daemons, the OpenStack services, Keystone's uwsgi) must end
what it started and nothing else, the same way: SIGTERM, a grace period, SIGKILL for what is left. They also
need one answer to "is it still there?" that does not count a zombie as running (a killed child stays a
zombie until reaped, and ``kill(pid, 0)`` succeeds on it).

Contract:
- only the PIDs or process groups passed in are signalled; one that is already gone is skipped;
- every one is sent SIGCONT before SIGTERM (a test may have frozen it; a stopped process acts on SIGTERM
  only once continued), in the order given (callers that need an order, e.g. FRR's watchfrr first, sort);
- a zombie counts as gone; it is reaped when it is a child of this process (otherwise its parent reaps it);
- ``end_processes`` and ``kill_processes`` return once every one is gone or at their deadline, and return
  the ones still there (none in practice: SIGKILL cannot be caught).
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

#: how long ``end_processes`` waits for what it SIGKILLed
KILL_WAIT_S = 5.0
_POLL_S = 0.05


def process_alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a zombie child of ours is reaped here)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, but someone else's
    if _state(pid) != "Z":
        return True
    _reap(pid)
    return False


def group_alive(pgid: int) -> bool:
    """True while any process of group ``pgid`` runs. A zombie leader (reaped here if ours) and zombie
    members do not count: the group of a uwsgi whose master died but whose worker lingers is still alive."""
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    if _state(pgid) not in ("Z", None):
        return True  # the leader itself runs
    _reap(pgid)
    return bool(group_members(pgid))


def group_members(pgid: int) -> list[int]:
    """PIDs of the processes (not zombies) in group ``pgid``, read from /proc."""
    members = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            fields = (p / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid and fields[0] != "Z":
                members.append(int(p.name))
        except (OSError, ValueError, IndexError):
            continue
    return members


def end_processes(pids: Sequence[int], grace_s: float, *, groups: bool = False) -> list[int]:
    """SIGTERM each of ``pids`` (process groups when ``groups``), wait up to ``grace_s`` for all to be gone,
    then SIGKILL the rest and wait up to :data:`KILL_WAIT_S` more. Returns the ones still there."""
    send = os.killpg if groups else os.kill
    signalled = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGCONT)
            send(pid, signal.SIGTERM)
            signalled.append(pid)
    left = _wait_gone(signalled, grace_s, group_alive if groups else process_alive)
    if left:
        left = kill_processes(left, KILL_WAIT_S, groups=groups)
    _reap_all(pids)
    return left


def end_process(pid: int, grace_s: float, *, group: bool = False) -> bool:
    """:func:`end_processes` for one PID (or group); True once it is gone."""
    return not end_processes([pid], grace_s, groups=group)


def kill_processes(pids: Sequence[int], within_s: float, *, groups: bool = False) -> list[int]:
    """SIGKILL each of ``pids`` (process groups when ``groups``) at once, a crash with no chance to clean up;
    wait up to ``within_s`` for all to be gone. Returns the ones still there."""
    send = os.killpg if groups else os.kill
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            send(pid, signal.SIGKILL)
    left = _wait_gone(list(pids), within_s, group_alive if groups else process_alive)
    _reap_all(pids)
    return left


def _wait_gone(pids: list[int], within_s: float, alive: Callable[[int], bool]) -> list[int]:
    deadline = time.monotonic() + within_s
    left = [p for p in pids if alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(_POLL_S)
        left = [p for p in left if alive(p)]
    return left


def _state(pid: int) -> str | None:
    """The one-letter state in /proc/<pid>/stat (``Z`` for a zombie); None when it cannot be read."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def _reap_all(pids: Sequence[int]) -> None:
    for pid in pids:
        _reap(pid)
