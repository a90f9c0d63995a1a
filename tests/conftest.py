"""Fixtures shared by every test tier: throwaway databases, an embedded agent, an HTTP client on it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

from lab.postgres import async_url, pg_admin


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for one test (dropped afterwards), as an asyncpg SQLAlchemy URL."""
    name = f"cnf_test_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield async_url(name)
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


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
