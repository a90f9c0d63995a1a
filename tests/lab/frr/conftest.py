"""Fixtures for the FRR lab tests: one real route-server + 3-cloud FRR fabric per test session.

The fabric (fixture ``frr_lab`` in ``tests/conftest.py``) is started by ``lab.frr`` (installs Debian's ``frr`` if
missing, creates its own network namespaces with a random token) and shared with the BGP contract suite through
``acquire_shared_lab``; it is torn down (by
PID, namespaces deleted) when the last user releases it. Each test uses its own /32s, so tests cannot see each
other's routes.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # the top-level ``lab`` package is not installed, only ``cnf`` is
    sys.path.insert(0, str(ROOT))


_prefixes = itertools.count(1)


@pytest.fixture
def prefix() -> str:
    """A /32 no other test of this session uses (10.98.x.y: the contract suite uses 10.99.x.y)."""
    n = next(_prefixes)
    return f"10.98.{n // 250}.{n % 250 + 1}/32"
