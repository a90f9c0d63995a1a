"""A real Keystone (``lab.keystone``, session scope) and an embedded agent behind ``keystone_auth_middleware``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "osc"))  # the shared CLI/agent harness

from osc_cli_harness import ThreadedAgent


@pytest.fixture(scope="session")
def keystone() -> Iterator[Any]:
    from lab import keystone as lab_keystone

    lab = lab_keystone.up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture(scope="module")
def validator(keystone: Any) -> Any:
    from cnf.api.auth import KeystoneAuthSettings, KeystoneTokenValidator
    from lab.keystone import PASSWORD, SERVICE_USER

    return KeystoneTokenValidator(KeystoneAuthSettings(auth_url=keystone.auth_url, username=SERVICE_USER,
                                                       password=PASSWORD, project_name="service"))


@pytest.fixture(scope="module")
def ks_agent(keystone: Any, validator: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ThreadedAgent]:
    from cnf.api.auth import keystone_auth_middleware

    mw = keystone_auth_middleware(validator.settings, validator=validator)
    agent = ThreadedAgent(tmp_path_factory.mktemp("ks-agent") / "cnf.sqlite", middlewares=[mw]).start()
    try:
        yield agent
    finally:
        agent.stop()
