"""Session-scoped Ceph lab (two clusters, two-way snapshot mirroring), shared with ``tests/contract``."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import lab.ceph as lab_ceph
except ImportError:  # pytest run from elsewhere: the repo root holds the ``lab`` package
    sys.path.insert(0, str(Path(__file__).resolve().parents[3]))
    import lab.ceph as lab_ceph


@pytest.fixture(scope="session")
def ceph_lab() -> Iterator[Any]:
    lab = lab_ceph.acquire_shared_lab()
    yield lab
    lab_ceph.release_shared_lab()
