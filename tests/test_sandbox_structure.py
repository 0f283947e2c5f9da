"""The sandbox's shape: imports between its modules go one way (no cycle, not even under
TYPE_CHECKING) and no module reaches the 400-line cap of the working agreement."""

from __future__ import annotations

import ast
from pathlib import Path

import pipeline.sandbox

PACKAGE = Path(pipeline.sandbox.__file__).parent
MODULES = {p.stem: p for p in PACKAGE.glob("*.py")}
MAX_LINES = 400


def _imports(path: Path) -> set[str]:
    """The sandbox modules ``path`` imports, anywhere in the file."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "pipeline.sandbox":
                found.update(a.name if a.name in MODULES else "__init__" for a in node.names)
            elif node.module.startswith("pipeline.sandbox."):
                found.add(node.module.removeprefix("pipeline.sandbox.").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("pipeline.sandbox."):
                    found.add(alias.name.removeprefix("pipeline.sandbox.").split(".")[0])
    return found - {path.stem}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle, as the list of modules on it, or None."""
    state: dict[str, str] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_checker_finds_a_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_sandbox_imports_go_one_way() -> None:
    graph = {name: _imports(path) for name, path in MODULES.items()}
    assert graph["kie"] and "app" not in graph["kie"]  # the parse sees real imports
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_no_sandbox_module_reaches_the_line_cap() -> None:
    sizes = {name: len(p.read_text(encoding="utf-8").splitlines()) for name, p in MODULES.items()}
    assert {n: s for n, s in sizes.items() if s >= MAX_LINES} == {}
