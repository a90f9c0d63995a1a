"""Throwaway PostgreSQL databases on the machine's server (127.0.0.1:5432, trust), for tests and benchmarks.

``CNF_TEST_PG`` overrides the admin DSN. Each user creates its own database and drops it ``WITH (FORCE)`` at the
end, so runs never share state and a crashed run's connections do not block the drop.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Iterator

PG_ADMIN_DSN = os.environ.get("CNF_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


async def pg_admin(sql: str) -> None:
    """Run one statement as the admin (CREATE/DROP DATABASE)."""
    import asyncpg

    conn = await asyncpg.connect(PG_ADMIN_DSN, timeout=10)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def async_url(database: str) -> str:
    """SQLAlchemy (asyncpg) URL of ``database`` on the admin DSN's server."""
    return PG_ADMIN_DSN.rsplit("/", 1)[0].replace("postgresql://", "postgresql+asyncpg://") + f"/{database}"


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A new database ``<prefix>_<hex>`` for the block (blocking; not inside a running event loop), as its
    asyncpg SQLAlchemy URL; dropped afterwards."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    try:
        yield async_url(name)
    finally:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
