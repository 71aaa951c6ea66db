"""The package's layering, checked: the executable form of the drawing in ``docs/DESIGN.md``.

Every module of ``src/dbloss`` is parsed with :mod:`ast` (nothing is imported); each ``import`` and
``from ... import`` in it, at the top or inside a function, is an edge of the module import graph,
except those under ``if TYPE_CHECKING:`` (annotations only, never executed). ``from dbloss.x import y``
points at the module ``dbloss.x.y`` when ``y`` is one, else at ``dbloss.x`` (a package means its
``__init__``). Two rules:

* no cycle: imports go one way (a lazy import inside a function counts too: it only hides the cycle);
* layers, lowest first; a module imports only from its own layer or lower ones:

  ====  =====================================================================================
  0     ``dbloss`` (``__version__``), ``errors``, ``files``, ``labels``, ``distributed``,
        ``devices``: helpers that know nothing of the rest
  1     ``stats``, ``tables``, ``metrics``, ``sampling``, ``thresholds``, ``losses.*``,
        ``data.*`` (readers, transforms, downloads; not ``data.pipeline``): the functional core
  2     ``models.*``: backbones and classifiers
  3     ``methods.*``: ML-GCN, OLTR, BBN, decoupling (the method hooks)
  4     ``config``, ``data.pipeline``: the configuration (which names the methods) and the data
        it builds
  5     ``training.*``: the loop, tuning, health checks
  6     ``apps.*``: predict, export, embed, compare, report, plots, analyses
  7     ``cli.*``, ``__main__``: the command line
  ====  =====================================================================================

A module in no layer fails the test: place it in :data:`LAYERS` (and in the drawing). Imports that
break the layering today are listed in :data:`KNOWN_VIOLATIONS`; the test fails on a new one and on
an entry that no longer occurs, so whoever fixes one removes its entry.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

#: Module patterns per layer, lowest first: a name, or ``pkg.*`` for a package and everything in it. The
#: most specific pattern wins (``dbloss.data.pipeline`` over ``dbloss.data.*``).
LAYERS: tuple[tuple[str, ...], ...] = (
    # dbloss.devices (device, autocast, inputs on the device: imports torch only) is newer than the drawing
    ("dbloss", "dbloss.errors", "dbloss.files", "dbloss.labels", "dbloss.distributed", "dbloss.devices"),
    ("dbloss.stats", "dbloss.tables", "dbloss.metrics", "dbloss.sampling", "dbloss.thresholds", "dbloss.losses.*",
     "dbloss.data.*"),
    ("dbloss.models.*",),
    ("dbloss.methods.*",),
    ("dbloss.config", "dbloss.data.pipeline"),
    ("dbloss.training.*",),
    ("dbloss.apps.*",),
    ("dbloss.cli.*", "dbloss.__main__"),
)

#: The modules of each import cycle there is today (as in :func:`find_cycles`'s groups); same rule as below.
KNOWN_CYCLES: frozenset[frozenset[str]] = frozenset()

#: ``(importer, imported)`` pairs that import upwards today. Each is a debt with an owner: remove the entry
#: in the change that fixes the import (the test then insists that it stays fixed).
KNOWN_VIOLATIONS: frozenset[tuple[str, str]] = frozenset()


def module_files(root: Path, package: str = "dbloss") -> dict[str, Path]:
    """Every module of ``root/package`` by dotted name (a package by its own name, for its ``__init__``)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """``(imported module, line)`` of every import of one module that names a module of ``known``."""

    def __init__(self, module: str, is_package: bool, known: set[str]) -> None:
        self.package = module if is_package else module.rpartition(".")[0]
        self.known = known
        self.found: list[tuple[str, int]] = []

    def _add(self, name: str, line: int) -> None:
        while name and name not in self.known:  # `import dbloss.x.y` names dbloss.x.y; a missing one its package
            name = name.rpartition(".")[0]
        if name:
            self.found.append((name, line))

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # for annotations only: never executed
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:  # relative: from the module's package, one package up per extra dot
            base = self.package.split(".")
            base = base[: len(base) - (node.level - 1)]
            base_name = ".".join(base + ([node.module] if node.module else []))
        else:
            base_name = node.module or ""
        for alias in node.names:
            sub = f"{base_name}.{alias.name}"
            self._add(sub if sub in self.known else base_name, node.lineno)


def import_graph(root: Path = SRC, package: str = "dbloss") -> dict[str, dict[str, int]]:
    """``{module: {imported module: first line}}`` over the modules of ``root/package`` (itself left out)."""
    files = module_files(root, package)
    known = set(files)
    graph: dict[str, dict[str, int]] = {}
    for module, path in files.items():
        visitor = _Imports(module, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), filename=str(path)))
        edges: dict[str, int] = {}
        for target, line in visitor.found:
            if target != module:
                edges.setdefault(target, line)
        graph[module] = edges
    return graph


def strongly_connected(graph: dict[str, dict[str, int]]) -> list[set[str]]:
    """The groups of two or more modules that import each other, directly or not (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def connect(v: str) -> None:  # recursion depth is bounded by the number of modules (< 100)
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, {}):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.add(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(group)

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def find_cycles(graph: dict[str, dict[str, int]]) -> list[list[str]]:
    """One cycle ``[a, b, ..., a]`` through each :func:`strongly_connected` group: the shortest from its first module."""
    cycles = []
    for group in strongly_connected(graph):
        start = min(group)
        paths = {start: [start]}
        frontier = [start]
        cycle = None
        while frontier and cycle is None:
            nxt = []
            for v in frontier:
                for w in sorted(graph[v]):
                    if w == start:
                        cycle = paths[v] + [start]
                        break
                    if w in group and w not in paths:
                        paths[w] = paths[v] + [w]
                        nxt.append(w)
                if cycle:
                    break
            frontier = nxt
        cycles.append(cycle)
    return sorted(cycles)


def layer_of(module: str) -> int | None:
    """The layer of ``module`` in :data:`LAYERS` (the most specific pattern), or None."""
    best: tuple[int, int] | None = None  # (specificity, layer)
    for layer, patterns in enumerate(LAYERS):
        for pattern in patterns:
            if pattern.endswith(".*"):
                prefix = pattern[:-2]
                if module == prefix or module.startswith(prefix + "."):
                    candidate = (len(prefix), layer)
                else:
                    continue
            elif module == pattern:
                candidate = (len(pattern) + 1, layer)  # a name beats a pattern of the same length
            else:
                continue
            best = candidate if best is None or candidate[0] > best[0] else best
    return None if best is None else best[1]


def layering_violations(graph: dict[str, dict[str, int]]) -> dict[tuple[str, str], int]:
    """``{(importer, imported): line}`` for every import of a module in a higher layer."""
    found = {}
    for module, edges in graph.items():
        for target, line in edges.items():
            a, b = layer_of(module), layer_of(target)
            if a is not None and b is not None and b > a:
                found[(module, target)] = line
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, dict[str, int]]:
    return import_graph()


def _where(module: str, target: str, graph: dict[str, dict[str, int]]) -> str:
    path = module_files(SRC)[module].relative_to(SRC.parent)
    return f"{path}:{graph[module][target]}"


def test_every_module_has_a_layer(graph):
    missing = sorted(m for m in graph if layer_of(m) is None)
    assert not missing, f"modules in no layer of tests/test_layout.py's LAYERS (and docs/DESIGN.md): {missing}"


def test_there_are_no_import_cycles(graph):
    groups = {frozenset(group): group for group in strongly_connected(graph)}
    new = [groups[g] for g in groups if g not in KNOWN_CYCLES]
    lines = []
    for cycle in find_cycles({m: graph[m] for group in new for m in group}):
        steps = ", ".join(f"{a} -> {b} ({_where(a, b, graph)})" for a, b in zip(cycle, cycle[1:]))
        lines.append(f"  {' -> '.join(cycle)}: {steps}")
    assert not new, "import cycles (a lazy import inside a function counts; each group's shortest way round):\n" \
        + "\n".join(lines)
    fixed = sorted(sorted(g) for g in KNOWN_CYCLES if g not in groups)
    assert not fixed, f"fixed, so remove them from KNOWN_CYCLES: {fixed}"


def test_modules_import_only_from_their_layer_or_lower(graph):
    found = layering_violations(graph)
    new = sorted(set(found) - KNOWN_VIOLATIONS)
    assert not new, "imports of a higher layer (layers in tests/test_layout.py's docstring):\n" + "\n".join(
        f"  {a} (layer {layer_of(a)}) imports {b} (layer {layer_of(b)}) at {_where(a, b, graph)}" for a, b in new)
    fixed = sorted(KNOWN_VIOLATIONS - set(found))
    assert not fixed, f"fixed, so remove them from KNOWN_VIOLATIONS: {fixed}"


def test_the_graph_sees_every_kind_of_import(tmp_path):
    """The checker on a package made here: relative, lazy, submodule and TYPE_CHECKING imports."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "a.py": "from typing import TYPE_CHECKING\nimport os\nif TYPE_CHECKING:\n    from pkg import c\n"
                "else:\n    from pkg.sub import d\n\ndef f():\n    from . import b\n",
        "b.py": "import pkg.sub.d as d\nfrom .sub import missing_name\n",
        "c.py": "from pkg.a import f\n",
        "sub/__init__.py": "from .d import x\n",
        "sub/d.py": "from ..c import *\nfrom pkg import a\nx = 1\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    g = import_graph(tmp_path, "pkg")
    assert g == {"pkg": {}, "pkg.a": {"pkg.sub.d": 6, "pkg.b": 9}, "pkg.b": {"pkg.sub.d": 1, "pkg.sub": 2},
                 "pkg.c": {"pkg.a": 1}, "pkg.sub": {"pkg.sub.d": 1}, "pkg.sub.d": {"pkg.c": 1, "pkg.a": 2}}
    assert find_cycles(g) == [["pkg.a", "pkg.sub.d", "pkg.a"]]  # the shortest way round {a, b, c, sub.d}
    assert find_cycles({"x": {"y": 1}, "y": {}}) == []


def test_layer_of_prefers_the_most_specific_pattern():
    assert [layer_of(m) for m in ("dbloss", "dbloss.data", "dbloss.data.voc", "dbloss.data.pipeline",
                                  "dbloss.losses.fused", "dbloss.apps.analysis.weights", "dbloss.__main__")] == \
        [0, 1, 1, 4, 1, 6, 7]
    assert layer_of("dbloss.nowhere") is None and layer_of("dbloss.datasets") is None
