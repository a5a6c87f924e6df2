"""The import graph of `rabbittask`, read from the source: no cycles, and no module over 400 lines.

Every `import` counts, wherever it is: at the top, or inside a function (a lazy import still ties
two modules together; it only moves the failure to the first call). Imports under `if
TYPE_CHECKING:` are collected apart and left out of the cycle check: they never run.
"""

from __future__ import annotations

import ast
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "rabbittask"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE
MAX_LINES = 400

# Imports that close a cycle, each (importer, imported), for cycles through modules being rewritten
# on other branches (worker/, app.py, task.py, publish/, results/), left to that work. None today:
# the one cycle found (tracing <-> otel) is fixed. A listed edge that no longer exists, or no longer
# closes a cycle, fails the test, so the list cannot go stale.
KNOWN_CYCLE_EDGES: set[tuple[str, str]] = set()

# Modules over MAX_LINES, with their length when listed. A module listed here that shrinks to
# MAX_LINES or less fails the test until it is taken off the list.
KNOWN_LONG: dict[str, int] = {}


@dataclass
class Graph:
    """Edges between modules of the package: those that run, and those only type checkers follow."""

    modules: dict[str, Path] = field(default_factory=dict)
    runtime: dict[str, set[str]] = field(default_factory=dict)
    type_checking: dict[str, set[str]] = field(default_factory=dict)


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imports(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement of a module, at any depth, and whether it sits under `if TYPE_CHECKING:`."""

    def walk(node: ast.AST, guarded: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import | ast.ImportFrom):
                yield child, guarded
            elif isinstance(child, ast.If) and is_type_checking(child.test):
                for stmt in child.body:
                    yield from walk_one(stmt, True)
                for stmt in child.orelse:
                    yield from walk_one(stmt, guarded)
            else:
                yield from walk(child, guarded)

    def walk_one(node: ast.stmt, guarded: bool) -> Iterator[tuple[ast.Import | ast.ImportFrom, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, guarded
        else:
            yield from walk(node, guarded)

    yield from walk(tree, False)


def targets(node: ast.Import | ast.ImportFrom, importer: str, is_package: bool, known: set[str]) -> set[str]:
    """The modules of the package an import statement loads (a `from m import name` of a submodule loads it)."""
    if isinstance(node, ast.Import):
        return {alias.name for alias in node.names if alias.name.split(".")[0] == PACKAGE}
    if node.level:  # relative: resolved against the importer's package
        base = importer.split(".") if is_package else importer.split(".")[:-1]
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    if source.split(".")[0] != PACKAGE:
        return set()
    found = set()
    for alias in node.names:
        submodule = f"{source}.{alias.name}"
        found.add(submodule if submodule in known else source)
    return found


def build() -> Graph:
    graph = Graph()
    paths = sorted(ROOT.rglob("*.py"))
    graph.modules = {module_name(p): p for p in paths}
    known = set(graph.modules)
    for name, path in graph.modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        graph.runtime[name], graph.type_checking[name] = set(), set()
        for node, guarded in imports(tree):
            for target in targets(node, name, path.name == "__init__.py", known):
                if target != name:
                    (graph.type_checking if guarded else graph.runtime)[name].add(target)
    return graph


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a list of modules (the first repeated at the end), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state and (cycle := visit(start)) is not None:
            return cycle
    return None


def without(edges: dict[str, set[str]], drop: set[tuple[str, str]]) -> dict[str, set[str]]:
    return {a: {b for b in targets if (a, b) not in drop} for a, targets in edges.items()}


def test_imports_are_read_at_the_top_in_functions_and_apart_under_type_checking() -> None:
    tree = ast.parse(
        textwrap.dedent(
            """
            import typing
            import rabbittask.errors
            from rabbittask import message, App
            from . import topology
            from .admin.live import connect
            if typing.TYPE_CHECKING:
                from rabbittask.app import App
            def later():
                from rabbittask.ops import heartbeat
            """
        )
    )
    known = {"rabbittask", "rabbittask.errors", "rabbittask.message", "rabbittask.ops.heartbeat", "rabbittask.app"}
    known |= {"rabbittask.ops", "rabbittask.ops.topology", "rabbittask.ops.admin.live"}
    importer = "rabbittask.ops.status"
    found = {(t, guarded) for node, guarded in imports(tree) for t in targets(node, importer, False, known)}
    assert found == {
        ("rabbittask.errors", False),
        ("rabbittask.message", False),
        ("rabbittask", False),  # App: a name of the package's __init__
        ("rabbittask.ops.topology", False),
        ("rabbittask.ops.admin.live", False),
        ("rabbittask.app", True),
        ("rabbittask.ops.heartbeat", False),
    }


def test_the_graph_holds_every_module_of_the_package() -> None:
    graph = build()
    assert {"rabbittask", "rabbittask.errors", "rabbittask.ops.heartbeat", "rabbittask.cli"} <= set(graph.runtime)
    assert "rabbittask.errors" in graph.runtime["rabbittask.message"]
    assert "rabbittask.app" in graph.type_checking["rabbittask.ops.status"]
    assert "rabbittask.app" not in graph.runtime["rabbittask.ops.status"]


def test_there_is_no_import_cycle() -> None:
    graph = build()
    cycle = find_cycle(without(graph.runtime, KNOWN_CYCLE_EDGES))
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_known_cycle_edge_still_exists_and_still_closes_a_cycle() -> None:
    graph = build()
    for edge in sorted(KNOWN_CYCLE_EDGES):
        importer, imported = edge
        assert imported in graph.runtime.get(importer, set()), f"{edge} is gone: remove it from KNOWN_CYCLE_EDGES"
        alone = without(graph.runtime, KNOWN_CYCLE_EDGES - {edge})
        assert find_cycle(alone) is not None, f"{edge} no longer closes a cycle: remove it from KNOWN_CYCLE_EDGES"


def test_no_module_is_over_400_lines() -> None:
    graph = build()
    lengths = {name: len(path.read_text().splitlines()) for name, path in graph.modules.items()}
    long = {name: n for name, n in lengths.items() if n > MAX_LINES and name not in KNOWN_LONG}
    assert long == {}, f"modules over {MAX_LINES} lines (split them by concept): {long}"
    stale = sorted(name for name in KNOWN_LONG if lengths.get(name, 0) <= MAX_LINES)
    assert stale == [], f"no longer over {MAX_LINES} lines: remove them from KNOWN_LONG: {stale}"


def test_find_cycle_reports_the_modules_of_a_cycle_in_order() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycle(edges) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
