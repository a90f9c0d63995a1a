"""``lab.owned_process``: the one way every lab part ends the processes it started (etcd, FRR, OpenStack, Keystone).

Real child processes (``python -c``), no mocks: each test proves one clause of the module's contract.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.owned_process import end_process, end_processes, group_alive, group_members, kill_processes, process_alive

# a child that records SIGTERM in a file, says "ready" once the handler is installed, then waits
_TERM_RECORDER = """
import pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])
def on_term(*_):
    out.write_text("term")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term if sys.argv[2] == "record" else signal.SIG_IGN)
print("ready", flush=True)
time.sleep(60)
"""


@pytest.fixture
def spawned() -> Iterator[list[subprocess.Popen[str]]]:
    procs: list[subprocess.Popen[str]] = []
    yield procs
    for p in procs:  # a failed test must leave nothing running: the whole group goes
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def start(procs: list[subprocess.Popen[str]], out: Path, mode: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", _TERM_RECORDER, str(out), mode], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    procs.append(p)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def test_a_child_is_ended_by_sigterm_and_reaped(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    p = start(spawned, tmp_path / "out", "record")
    assert process_alive(p.pid)
    assert end_process(p.pid, grace_s=10.0)
    assert (tmp_path / "out").read_text() == "term"
    assert not Path(f"/proc/{p.pid}").exists()  # reaped, not left a zombie
    assert not process_alive(p.pid)


def test_a_frozen_process_is_continued_so_it_acts_on_sigterm(tmp_path: Path,
                                                             spawned: list[subprocess.Popen[str]]) -> None:
    p = start(spawned, tmp_path / "out", "record")
    os.kill(p.pid, signal.SIGSTOP)
    t0 = time.monotonic()
    assert end_process(p.pid, grace_s=30.0)
    assert time.monotonic() - t0 < 15.0  # ended by SIGTERM, not after the grace period
    assert (tmp_path / "out").read_text() == "term"


def test_what_ignores_sigterm_is_killed_after_the_grace_period(tmp_path: Path,
                                                               spawned: list[subprocess.Popen[str]]) -> None:
    p = start(spawned, tmp_path / "out", "ignore")
    t0 = time.monotonic()
    assert end_processes([p.pid], grace_s=0.5) == []
    assert time.monotonic() - t0 >= 0.5
    assert not process_alive(p.pid)


def test_kill_is_at_once_with_no_sigterm_handler_run(tmp_path: Path, spawned: list[subprocess.Popen[str]]) -> None:
    p = start(spawned, tmp_path / "out", "record")
    assert kill_processes([p.pid], within_s=10.0) == []
    assert not (tmp_path / "out").exists()
    assert not process_alive(p.pid)


def test_a_group_lives_while_a_member_runs_after_its_leader_died(spawned: list[subprocess.Popen[str]]) -> None:
    leader = subprocess.Popen(["sh", "-c", "sleep 60 & echo $!; wait"], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    spawned.append(leader)
    assert leader.stdout is not None
    member = int(leader.stdout.readline())
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait(timeout=10)
    assert group_alive(leader.pid)  # the leader is gone; its group still runs
    assert group_members(leader.pid) == [member]
    assert end_process(leader.pid, grace_s=10.0, group=True)
    assert not group_alive(leader.pid)
    assert group_members(leader.pid) == []


def test_a_pid_that_is_gone_is_skipped() -> None:
    p = subprocess.Popen(["true"])
    p.wait(timeout=10)
    assert not process_alive(p.pid)
    assert end_processes([p.pid], grace_s=1.0) == []
    assert kill_processes([p.pid], within_s=1.0, groups=True) == []
