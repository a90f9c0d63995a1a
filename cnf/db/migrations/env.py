"""Alembic environment: async engines (aiosqlite / asyncpg), URL from the CNF config."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection

from cnf.db.models import Base
from cnf.db.store import make_engine

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)


def _url() -> str:
    x = context.get_x_argument(as_dictionary=True)
    if "url" in x:
        return x["url"]
    if config.attributes.get("url"):
        return str(config.attributes["url"])
    from cnf.config import load_config

    return load_config(x.get("config")).database.url


def _run(connection: Connection) -> None:
    if connection.dialect.name == "postgresql":
        # several agents start at once against one database: one upgrades, the others wait and find it done
        connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7302115)")
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True,
                      compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


async def _online() -> None:
    engine = make_engine(_url())
    async with engine.connect() as conn:
        await conn.run_sync(_run)
        await conn.commit()  # the advisory lock's transaction (PostgreSQL) ends here, with the migrations
    await engine.dispose()


if context.is_offline_mode():
    context.configure(url=_url(), target_metadata=Base.metadata, literal_binds=True, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
else:
    asyncio.run(_online())
