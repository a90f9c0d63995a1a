"""Harness for the ``openstack cnf`` functional tests: an embedded agent over real HTTP, the real CLI.

The agent runs in this process so a test can steer the sim world (slow the disk copy to abort in time);
the CLI runs as a subprocess exactly as an operator types it:
``openstack --os-auth-type none --os-endpoint http://127.0.0.1:PORT cnf …``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from lab.loopback import free_port

OPENSTACK = str(Path(sys.executable).with_name("openstack"))
CLI_TIMEOUT_S = 180
PARALLEL = max(2, min(4, os.cpu_count() or 2))




class ThreadedAgent:
    """An ``Agent`` plus its REST app under uvicorn, on its own event loop in a daemon thread."""

    def __init__(self, db_path: Path, middlewares: list[Any] | None = None, clock_factor: float = 10.0) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._db = db_path
        self._middlewares = middlewares or []
        self._factor = clock_factor
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.agent: Any = None
        self._server: Any = None
        self._thread = threading.Thread(target=self._main, name="cnf-test-agent", daemon=True)

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as e:  # reported to the fixture, which fails the test with it
            self._error = e
            self._ready.set()

    async def _serve(self) -> None:
        import uvicorn

        from cnf.agent.agent import Agent
        from cnf.api.app import create_app
        from cnf.clock import ScaledClock
        from cnf.config import load_config

        cfg = load_config(None, overrides={"embedded": True,
                                           "database": {"url": f"sqlite+aiosqlite:///{self._db}"}})
        self.agent = Agent(cfg, clock=ScaledClock(self._factor))
        await self.agent.start()
        try:
            app = create_app(self.agent.service, middlewares=self._middlewares)
            self._server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_config=None,
                                                         access_log=False, lifespan="off"))
            task = asyncio.create_task(self._server.serve())
            while not self._server.started and not task.done():  # noqa: ASYNC110 - uvicorn has no started event
                await asyncio.sleep(0.05)
            self._ready.set()
            await task
        finally:
            await self.agent.stop()

    def start(self, timeout_s: float = 120) -> ThreadedAgent:
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise RuntimeError(f"agent not serving after {timeout_s} s")
        if self._error is not None:
            raise RuntimeError(f"agent failed to start: {self._error!r}")
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        self._thread.join(60)


@dataclass
class Cli:
    """The real ``openstack`` executable, pointed at one endpoint (noauth or Keystone via ``env``)."""

    args: list[str]
    env: dict[str, str]

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run([OPENSTACK, *self.args, "cnf", *argv], capture_output=True, text=True,
                              timeout=CLI_TIMEOUT_S, env=self.env, stdin=subprocess.DEVNULL)
        if check and proc.returncode != 0:
            raise AssertionError(f"openstack cnf {' '.join(argv)} exited {proc.returncode}\n"
                                 f"stdout: {proc.stdout}\nstderr: {proc.stderr}")
        return proc

    def json(self, *argv: str) -> Any:
        return json.loads(self.run(*argv, "-f", "json").stdout)

    def many(self, *argvs: tuple[str, ...], check: bool = True) -> list[subprocess.CompletedProcess[str]]:
        """Independent read-only invocations run side by side (each ``openstack`` start-up is ~2 s of CPU)."""
        with concurrent.futures.ThreadPoolExecutor(PARALLEL) as pool:
            return list(pool.map(lambda a: self.run(*a, check=check), argvs))


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    return env


def wait_state(api: httpx.Client, migration_id: str, states: tuple[str, ...], timeout_s: float = 60) -> dict[str, Any]:
    end = time.monotonic() + timeout_s
    m: dict[str, Any] = {}
    while time.monotonic() < end:
        m = api.get(f"/v1/migrations/{migration_id}").json()
        if m["state"] in states:
            return m
        time.sleep(0.1)
    raise AssertionError(f"migration {migration_id} not in {states} after {timeout_s} s: {m.get('state')}")
