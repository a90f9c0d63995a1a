"""One crash world per session: PostgreSQL DB, Redis, the agent (embedded, Celery runner), a shared sim world."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from crash_harness import CrashWorld, RedisServer, seed_world, write_config

from cnf.migration.steps import STEP_TABLES
from lab.loopback import free_port

#: one VM per matrix cell, plus a margin
VMS = sum(len(t) for t in STEP_TABLES.values()) * 2


@pytest.fixture(scope="session")
def crash_pg_url() -> Iterator[str]:
    """A throwaway PostgreSQL database for the whole crash suite (the ``pg_url`` fixture, session-scoped)."""
    from lab.postgres import throwaway_database

    with throwaway_database("cnf_crash") as url:
        yield url


@pytest.fixture(scope="session")
def crash_world(tmp_path_factory: pytest.TempPathFactory, crash_pg_url: str) -> Iterator[CrashWorld]:
    tmp = tmp_path_factory.mktemp("crash")
    redis = RedisServer(port=free_port(), workdir=tmp)
    redis.start()
    state_file = tmp / "world.json"
    vms = seed_world(state_file, VMS)
    config = tmp / "cnf.yaml"
    api_port = free_port()
    write_config(config, pg_url=crash_pg_url, broker_url=redis.url, state_file=state_file, api_port=api_port,
                 state_dir=tmp / "state")
    world = CrashWorld(tmp=tmp, pg_url=crash_pg_url, redis=redis, config_path=config, state_file=state_file,
                       api_port=api_port, vms=vms)
    try:
        world.start_agent()
        yield world
    finally:
        world.stop_all()
