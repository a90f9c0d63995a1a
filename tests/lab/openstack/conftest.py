"""Import path for the OpenStack lab tests; their ``openstack_lab`` fixture is in ``tests/conftest.py``.

That one session fixture serves ``tests/contract/test_cloud.py`` too, so a run of both suites starts the clouds
once (``lab.openstack.acquire``/``release``: the first brings them up, the last takes them down).
"""

from __future__ import annotations

import sys
from pathlib import Path

# the repo root holds the ``lab`` package; tests/lab (no __init__.py) would otherwise be picked up as a
# namespace package ``lab`` when the root is not on sys.path (pytest puts tests/ there)
_REPO = str(Path(__file__).resolve().parents[3])
if _REPO not in sys.path:
    sys.path.insert(0, _REPO)
if getattr(sys.modules.get("lab"), "__file__", None) is None:
    for _name in [m for m in sys.modules if m == "lab" or m.startswith("lab.")]:
        del sys.modules[_name]
