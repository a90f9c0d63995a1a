"""The pure core imports no I/O library: import-linter's contract from pyproject.toml must hold."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_import_linter_contract_holds() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent)) or "lint-imports"
    r = subprocess.run([exe, "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Contracts: 1 kept, 0 broken" in r.stdout or "kept" in r.stdout


def test_contract_really_forbids_the_libraries() -> None:
    """Guard against a contract that silently checks nothing."""
    text = (ROOT / "pyproject.toml").read_text()
    for mod in ("cnf.migration", "cnf.scheduler", "sqlalchemy", "fastapi", "celery", "grpc", "openstack",
                "subprocess"):
        assert f'"{mod}"' in text, mod
