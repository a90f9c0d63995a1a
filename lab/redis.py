"""A throwaway ``redis-server`` on a loopback port: the Celery broker of the functional tests.

Why a private server and not the machine's (:6379): tests restart it (the crash matrix's "Redis restart"
fault) and must start from an empty queue; neither is acceptable on a shared server. Ended by its PID.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


@dataclass
class RedisServer:
    port: int
    workdir: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, within_s: float = 10.0) -> None:
        exe = shutil.which("redis-server")
        if exe is None:  # a fresh machine: install it (scripts/deps/apt-durable-work.txt lists it too)
            subprocess.run(["apt-get", "install", "-y", "--no-install-recommends", "redis-server"], check=True,
                           timeout=600, stdout=subprocess.DEVNULL)
            exe = shutil.which("redis-server")
        assert exe, "redis-server is not installed (scripts/deps/apt-durable-work.txt)"
        argv = [exe, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                "--dir", str(self.workdir), "--protected-mode", "no"]
        with (self.workdir / "redis.log").open("ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        self._wait(self.ping, within_s, "redis to answer")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty: every queued task is gone."""
        self.stop()
        self._wait(lambda: not self.ping(), 10, "redis to stop")
        self.start()

    @staticmethod
    def _wait(predicate: Callable[[], bool], within_s: float, what: str) -> None:
        end = time.monotonic() + within_s
        while time.monotonic() < end:
            if predicate():
                return
            time.sleep(0.05)
        raise RuntimeError(f"timed out after {within_s} s waiting for {what}")
