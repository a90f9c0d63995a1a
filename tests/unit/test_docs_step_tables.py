"""docs/migration.md's step tables are the code's (``scripts/step_tables_md.py --write`` regenerates them)."""

from __future__ import annotations

from scripts.step_tables_md import DOC, current_section, render


def test_the_documented_step_tables_are_the_code_s() -> None:
    assert current_section(DOC.read_text()) == render(), \
        "docs/migration.md is stale: run .venv/bin/python scripts/step_tables_md.py --write"
