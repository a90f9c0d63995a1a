"""Fixtures shared by every test tier: throwaway databases, the shared labs, an embedded agent, an HTTP client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from lab.postgres import throwaway_database


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped afterwards), as an asyncpg SQLAlchemy URL."""
    with throwaway_database("cnf_test") as url:
        yield url


@pytest.fixture(scope="session")
def frr_lab() -> Iterator[Any]:
    """The FRR namespace lab (route server + three clouds), shared by the BGP contract suite and tests/lab/frr."""
    from lab.frr import acquire_shared_lab, lab_prerequisites_missing, release_shared_lab

    why = lab_prerequisites_missing()
    if why:
        pytest.skip(why)  # says what is missing (root, FRR); CI has both (scripts/deps)
    lab = acquire_shared_lab()
    try:
        yield lab
    finally:
        release_shared_lab()


@pytest.fixture(scope="session")
def openstack_lab() -> Iterator[Any]:
    """Two real OpenStack clouds, shared by the cloud contract suite and tests/lab/openstack (started once)."""
    import lab.openstack as lab_openstack

    lab = lab_openstack.acquire()
    try:
        yield lab
    finally:
        lab_openstack.release()


@pytest.fixture
def sqlite_url(tmp_path) -> str:  # type: ignore[no-untyped-def]
    return f"sqlite+aiosqlite:///{tmp_path}/cnf.sqlite"


@pytest.fixture
async def embedded_agent(tmp_path) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    """The embedded default (three sim clouds) in this process, its clock sped up 50x for the sim physics."""
    from cnf.agent.agent import Agent
    from cnf.clock import ScaledClock
    from cnf.config import load_config

    cfg = load_config(None, overrides={"embedded": True,
                                       "database": {"url": f"sqlite+aiosqlite:///{tmp_path}/cnf.sqlite"}})
    agent = Agent(cfg, clock=ScaledClock(50.0))
    await agent.start()
    try:
        yield agent
    finally:
        await agent.stop()


@pytest.fixture
async def api(embedded_agent) -> AsyncIterator[object]:  # type: ignore[no-untyped-def]
    import httpx

    from cnf.api.app import create_app

    app = create_app(embedded_agent.service)  # type: ignore[attr-defined]
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://cnf") as client:
        yield client
