"""The house rules that are checked, not hoped for (issue 18): no import cycles, every engine module on a floor
of the import contract, no private name imported across modules, rooms of bounded size.

`make lint` runs the import contracts themselves (lint-imports) and mypy; these tests guard what the contracts
cannot see: a new module that no layer names, a cycle inside one floor, files and functions that grow too big.
"""

from __future__ import annotations

import ast
from pathlib import Path

import grimp
import pytest
import tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("accel", "dashboard")
MAX_FILE_LINES = 600
MAX_FUNCTION_LINES = 100
FILE_EXCEPTIONS = {"accel/receptive.py"}  # exact receptive fields: one algorithm, kept in one file
FUNCTION_EXCEPTIONS = ("accel/training/",)  # the scripts that train the shipped models


def _sources() -> list[Path]:
    """Every Python file of the engine and the dashboard."""
    return sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py"))


def _cycles(graph: grimp.ImportGraph) -> list[list[str]]:
    """Strongly connected groups of more than one module (iterative Tarjan: each group is an import cycle)."""
    adj = {m: sorted(graph.find_modules_directly_imported_by(m)) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(adj):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            v, i = work.pop()
            if i == 0:
                index[v] = low[v] = len(index)
                stack.append(v)
                on_stack.add(v)
            if i < len(adj[v]):
                work.append((v, i + 1))
                w = adj[v][i]
                if w not in index:
                    work.append((w, 0))
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
                continue
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[v])
    return groups


@pytest.fixture(scope="module")
def graph() -> grimp.ImportGraph:
    """The import graph of accel and dashboard; imports inside functions and under TYPE_CHECKING count."""
    return grimp.build_graph(*PACKAGES, cache_dir=None)


def test_cycle_finder_finds_a_cycle() -> None:
    """The checker below is only as good as its cycle finder: a hand-made a -> b -> c -> a is found."""
    g = grimp.ImportGraph()
    for m in ("p", "p.a", "p.b", "p.c", "p.d"):
        g.add_module(m)
    for a, b in (("p.a", "p.b"), ("p.b", "p.c"), ("p.c", "p.a"), ("p.d", "p.a")):
        g.add_import(importer=a, imported=b)
    assert _cycles(g) == [["p.a", "p.b", "p.c"]]


def test_no_import_cycles_between_modules(graph: grimp.ImportGraph) -> None:
    """Zero cycles among all modules of accel and dashboard, lazy (function-level) imports included."""
    assert _cycles(graph) == []


def test_every_engine_module_is_on_a_floor_of_the_layers_contract() -> None:
    """Each top-level module or package of accel (and the dashboard) is named by exactly one layer, so a new
    room cannot escape the contract by not being listed."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    (layers,) = [c for c in config["contracts"] if c["type"] == "layers"]
    named = [name.strip() for line in layers["layers"] for name in line.replace(":", "|").split("|")]
    assert len(named) == len(set(named)), "a module is named by two layers"
    tops = {
        f"accel.{p.stem if p.is_file() else p.name}"
        for p in (ROOT / "accel").iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p.is_dir() and (p / "__init__.py").exists())
    }
    assert tops - set(named) == set(), "modules on no floor of the layers contract"
    assert set(named) - tops - {"dashboard"} == set(), "layers name modules that do not exist"


def _own_modules() -> set[str]:
    """Dotted names of every module and package of accel and dashboard."""
    names = set()
    for p in _sources():
        parts = list(p.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names.add(".".join(parts))
    return names


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a `from X import ...` in `path` reads from."""
    if not node.level:
        return node.module or ""
    package = list(path.relative_to(ROOT).with_suffix("").parts)[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_no_private_name_is_imported_from_another_module() -> None:
    """`from accel.x import _y` is refused: a name another module needs is public, with a docstring. A package's
    own private submodule (`from . import _opt` inside its package) is not a name of another module."""
    own = _own_modules()
    bad = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            source = _resolve(path, node)
            if source.split(".")[0] not in PACKAGES:
                continue
            for alias in node.names:
                name = alias.name
                if not name.startswith("_") or name.startswith("__"):
                    continue
                if f"{source}.{name}" in own:  # a private submodule of the package it is imported from
                    continue
                bad.append(f"{path.relative_to(ROOT)}:{node.lineno} from {source} import {name}")
    assert bad == []


def test_rooms_have_a_bounded_size() -> None:
    """No file over 600 lines (receptive.py excepted) and no function over 100 lines (training scripts excepted)."""
    big_files, big_functions = [], []
    for path in _sources():
        rel = path.relative_to(ROOT).as_posix()
        text = path.read_text()
        if len(text.splitlines()) > MAX_FILE_LINES and rel not in FILE_EXCEPTIONS:
            big_files.append(f"{rel}: {len(text.splitlines())} lines")
        if rel.startswith(FUNCTION_EXCEPTIONS):
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    big_functions.append(f"{rel}:{node.lineno} {node.name}: {n} lines")
    assert big_files == [] and big_functions == []
