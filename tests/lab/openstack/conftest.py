"""Two real OpenStack clouds for the lab tests, started once per session by ``lab.openstack``.

The same ``acquire``/``release`` pair is used by ``tests/contract/test_cloud.py``, so a run of both
suites starts the clouds once (the first acquire brings them up, the last release takes them down).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# the repo root holds the ``lab`` package; tests/lab (no __init__.py) would otherwise be picked up as a
# namespace package ``lab`` when the root is not on sys.path (pytest puts tests/ there)
_REPO = str(Path(__file__).resolve().parents[3])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
if getattr(sys.modules.get("lab"), "__file__", None) is None:
    for _name in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        del sys.modules[_name]
import lab.openstack as lab_openstack  # noqa: E402


@pytest.fixture(scope="session")
def openstack_lab() -> Iterator[Any]:
    lab = lab_openstack.acquire(2)
    try:
        yield lab
    finally:
        lab_openstack.release()
