"""docs/architecture.md's module table names every module of the package, and nothing else."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "rabbittask"


def _modules() -> set[str]:
    """Every module, as its path under rabbittask/; a subpackage's `__init__.py` only when it holds code."""
    found = set()
    for path in PACKAGE.rglob("*.py"):
        relative = path.relative_to(PACKAGE).as_posix()
        if relative.endswith("/__init__.py") and not _has_code(path):
            continue
        found.add(relative)
    return found


def _has_code(path: Path) -> bool:
    return any(line.startswith(("def ", "class ", "@")) for line in path.read_text().splitlines())


def _table_rows() -> set[str]:
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("## Modules") : text.index("## Trace context")]
    return set(re.findall(r"^\| `([\w/]+\.py)` \|", section, flags=re.M))


def test_every_module_has_a_row_in_the_architecture_table() -> None:
    missing = sorted(_modules() - _table_rows())
    assert missing == [], f"docs/architecture.md lacks a row for: {', '.join(missing)}"


def test_every_row_of_the_architecture_table_names_a_module_that_exists() -> None:
    stale = sorted(_table_rows() - _modules())
    assert stale == [], f"docs/architecture.md names modules that do not exist: {', '.join(stale)}"
