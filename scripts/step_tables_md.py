"""Render the migration step tables of ``docs/migration.md`` from ``cnf.migration.steps.STEP_TABLES``.

Why generated: the tables are what operators read to know what a migration does, in which order, what is undone
and where the point of no return is; hand-kept copies went stale (the early BGP announce, the 5 ms polls in the
pause). ``tests/unit/test_docs_step_tables.py`` fails when the doc and the code differ.

    .venv/bin/python scripts/step_tables_md.py            # print the section
    .venv/bin/python scripts/step_tables_md.py --write    # replace it in docs/migration.md
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cnf.migration.model import MigrationKind  # noqa: E402
from cnf.migration.steps import STEP_TABLES, Step  # noqa: E402

DOC = ROOT / "docs" / "migration.md"
HEADING = "## The tables (generated from the code)"


def _notes(step: Step) -> str:
    parts = []
    if step.irreversible:
        parts.append("**point of no return**")
    if step.on_wait is not None:
        doc = (step.on_wait.__doc__ or step.on_wait.__name__).strip().splitlines()[0].rstrip(".")
        parts.append(f"while waiting: {doc[0].lower()}{doc[1:]}")
    poll = "adaptive poll" if step.poll_fn is not None else f"poll {step.poll_s:g} s"
    parts.append(f"check deadline {step.timeout_s:g} s, {poll}, {step.max_attempts} attempts")
    return "; ".join(parts)


def render() -> str:
    out = [HEADING, ""]
    for kind in (MigrationKind.LIVE, MigrationKind.COLD):
        out += [f"### {kind.value} migration", "", "| # | step | phase | undo | notes |", "|---|---|---|---|---|"]
        for i, step in enumerate(STEP_TABLES[kind]):
            undo = f"`{step.undo.__name__}`" if step.undo is not None else "—"
            out.append(f"| {i} | `{step.name}` | {step.phase.value} | {undo} | {_notes(step)} |")
        out.append("")
    return "\n".join(out)


def current_section(text: str) -> str:
    return text[text.index(HEADING):].rstrip("\n") + "\n"


def main(argv: list[str]) -> int:
    section = render()
    if "--write" in argv:
        text = DOC.read_text()
        DOC.write_text(text[:text.index(HEADING)] + section)
    else:
        print(section, end="")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
