"""Fixtures for the QEMU lab tests: real TCG guests on two local QEMU "hosts" (``lab.qemu``), shared per session.

The lab (Debian packages installed if missing, guest built and cached by ``lab.guest``) is shared with the
hypervisor contract suite through ``acquire_shared_lab``; every QEMU is ended by PID when the last user releases
it. Each test gets fresh driver objects on its own event loop (``hosts``); the QEMU processes outlive them.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
if str(ROOT) not in sys.path:  # the top-level ``lab`` package is not installed, only ``cnf`` is
    sys.path.insert(0, str(ROOT))

from cnf.hypervisor.qemu import QemuHypervisor  # noqa: E402
from lab.qemu import QemuLabSession, acquire_shared_lab, release_shared_lab  # noqa: E402


@pytest.fixture(scope="session")
def qemu_lab() -> Iterator[QemuLabSession]:
    session = acquire_shared_lab()
    try:
        yield session
    finally:
        release_shared_lab()


@pytest.fixture
async def hosts(qemu_lab: QemuLabSession) -> AsyncIterator[dict[str, QemuHypervisor]]:
    hv = qemu_lab.lab.fresh_hosts()
    try:
        yield hv
    finally:
        for drv in hv.values():
            for d in list(drv.runtime_dir.glob("*/domain.json")):
                dom = await drv.domain(d.parent.name)
                if dom is not None and dom.state in ("incoming", "shutoff"):
                    await drv.destroy_incoming(d.parent.name)
            await drv.close()
