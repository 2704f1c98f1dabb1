"""Three code folders, layered: bench and pipelines import lmcore, never the other way; bench may
import pipelines, pipelines never bench; and no module imports itself back through others."""

from __future__ import annotations

from pathlib import Path

from tests.imports import ROOT, imported_modules, module_file

LAYER = {"lmcore": 0, "pipelines": 1, "bench": 2}  # a module imports from its own layer or below


def modules() -> list[Path]:
    return sorted(p for folder in LAYER for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def imports_of(path: Path) -> set[Path]:
    """The repository files `path` imports when it runs (not the packages they pass through, not
    annotations' imports under TYPE_CHECKING)."""
    names = imported_modules(path, runtime_only=True)
    return {f for name in names if (f := module_file(name)) is not None and f != path}


def folder(path: Path) -> str:
    return path.relative_to(ROOT).parts[0]


def test_imports_only_go_down_the_layers():
    upward = [
        f"{p.relative_to(ROOT)} imports {q.relative_to(ROOT)}"
        for p in modules()
        for q in imports_of(p)
        if LAYER[folder(q)] > LAYER[folder(p)]
    ]
    assert upward == []


def find_cycle(graph: dict[Path, set[Path]]) -> list[Path]:
    """One import cycle of `graph` (its files in order), or [] (depth-first, three colours)."""
    state: dict[Path, str] = {}
    stack: list[Path] = []

    def visit(node: Path) -> list[Path]:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = "done"
        stack.pop()
        return []

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return []


def test_no_import_cycles():
    graph = {p: imports_of(p) for p in modules()}
    cycle = find_cycle(graph)
    assert cycle == [], " -> ".join(str(p.relative_to(ROOT)) for p in cycle)


def test_a_cycle_and_an_upward_import_are_found(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    assert find_cycle({a: {b}, b: {c}, c: {a}}) == [a, b, c, a]
    assert find_cycle({a: {b}, b: {c}, c: set()}) == []
    assert LAYER[folder(ROOT / "bench/targets.py")] > LAYER[folder(ROOT / "lmcore/train.py")]


def test_annotation_only_imports_are_not_runtime_edges():
    sharding = ROOT / "lmcore/sharding.py"  # imports train_state's Batch for its annotations only
    assert "lmcore.train_state" in imported_modules(sharding)
    assert "lmcore.train_state" not in imported_modules(sharding, runtime_only=True)
