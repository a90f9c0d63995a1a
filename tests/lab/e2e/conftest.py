"""Session-scoped end-to-end lab: two Ceph sites, FRR route server + two cloud routers, host and probe namespaces,
two QEMU hosts, the guest with its disk and NIC.

Started by ``lab.e2e`` itself (Debian packages installed if missing) and ended by PID / own namespaces in the
finalizer, whatever the test did. One bring-up serves every test of the directory (the live tests migrate the VM
from wherever it runs). The Ceph pair is the session's shared ``lab.ceph`` lab (the storage contract suite and
tests/lab/ceph use the same one: one Ceph bring-up per test run, ~12-45 s); the e2e lab only adds its own image to
it. FRR, the namespaces and QEMU are its own (~10 s). The migration through the agents also uses the session's real
OpenStack clouds (``e2e_clouds``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # the top-level ``lab`` package is not installed, only ``cnf`` is
    sys.path.insert(0, str(ROOT))

import lab.ceph as lab_ceph  # noqa: E402
from lab.e2e import E2ELab  # noqa: E402
from lab.frr import lab_prerequisites_missing  # noqa: E402


@pytest.fixture(scope="session")
def e2e_lab() -> Iterator[E2ELab]:
    why = lab_prerequisites_missing()
    if why:  # not root / no netns support: a machine that cannot run any lab test, not a failure of this one
        pytest.skip(why)
    ceph = lab_ceph.acquire_shared_lab()
    try:
        lab = E2ELab.new()
        try:
            lab.up(ceph=ceph)
            yield lab
        finally:
            lab.down()
    finally:
        lab_ceph.release_shared_lab()


@pytest.fixture
def e2e_clouds(openstack_lab: Any) -> Iterator[Any]:
    """The session's two real OpenStack clouds (``openstack_lab`` in tests/conftest.py: shared with
    tests/lab/openstack and the cloud contract suite, started once) as the e2e lab's clouds a and b. Afterwards the
    VM's Nova records are deleted in both, so the other suites find the clouds as they left them."""
    from lab.e2e_nova import remove_vm

    try:
        yield openstack_lab
    finally:
        remove_vm(openstack_lab)
