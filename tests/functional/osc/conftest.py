"""Fixtures: an embedded-default agent served over real HTTP (module scope) and the CLI pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from osc_cli_harness import Cli, ThreadedAgent, cli_env


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedAgent]:
    a = ThreadedAgent(tmp_path_factory.mktemp("osc-agent") / "cnf.sqlite").start()
    try:
        yield a
    finally:
        a.stop()


@pytest.fixture(scope="module")
def cli(agent: ThreadedAgent) -> Cli:
    return Cli(["--os-auth-type", "none", "--os-endpoint", agent.url], cli_env())


@pytest.fixture(scope="module")
def api(agent: ThreadedAgent) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=agent.url, timeout=30) as c:
        yield c


