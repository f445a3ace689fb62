"""The data package imports without circles: each module's imports form a tree."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

import advmim_lightning.data

DATA = Path(advmim_lightning.data.__file__).parent
PACKAGE = "advmim_lightning.data"


def data_import_graph() -> dict[str, set[str]]:
    """``{module: data modules it imports}`` (every import, ``TYPE_CHECKING`` ones included)."""
    modules = {f"{PACKAGE}.{f.stem}" for f in DATA.glob("*.py") if f.stem != "__init__"}
    graph: dict[str, set[str]] = {}
    for name in sorted(modules):
        tree = ast.parse((DATA / f"{name.rsplit('.', 1)[1]}.py").read_text())
        imported: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f"{node.module}.{alias.name}" for alias in node.names)
            elif isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
        graph[name] = (imported & modules) - {name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (its modules in order), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        state[module] = 1
        path.append(module)
        for other in sorted(graph[module]):
            if state.get(other) == 1:
                return [*path[path.index(other) :], other]
            if other not in state and (cycle := visit(other)):
                return cycle
        path.pop()
        state[module] = 2
        return None

    for module in sorted(graph):
        if module not in state and (cycle := visit(module)):
            return cycle
    return None


def test_the_data_modules_import_each_other_without_circles() -> None:
    graph = data_import_graph()
    assert f"{PACKAGE}.validation" in graph and graph[f"{PACKAGE}.cases"]  # the walk sees them
    cycle = find_cycle(graph)
    assert cycle is None, " -> ".join(cycle or [])


def test_the_checker_finds_a_circle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_validation_is_a_leaf_and_the_phantom_shim_is_gone() -> None:
    graph = data_import_graph()
    assert graph[f"{PACKAGE}.validation"] == set()
    assert f"{PACKAGE}.phantom_source" not in graph[f"{PACKAGE}.phantom"]
    phantom = importlib.import_module(f"{PACKAGE}.phantom")
    with pytest.raises(AttributeError):
        phantom.PhantomSource  # noqa: B018  (the old import path)
    from advmim_lightning.data.phantom_source import PhantomSource

    assert PhantomSource.layout == "phantom"
