"""Imports point one way, by an allow-list (docs/architecture.md "Imports"), with no circle, and modules stay small.

What counts as an import: every ``import`` and ``from ... import`` statement of a module, wherever it is: at
module level, under ``if TYPE_CHECKING:`` and inside functions. A deferred import still ties the two modules
together (a circle through a type or a factory is still a circle), so the walk sees them all.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
#: The first-party packages whose imports the rules govern.
PACKAGES = ("provider", "coordinator", "worker", "ops")
#: Area -> the first-party areas it may import (besides itself). The most specific area of a module wins.
ALLOWED: dict[str, frozenset[str]] = {
    "provider.core": frozenset(),
    "provider.sources": frozenset({"provider.core", "provider"}),
    "provider.storage": frozenset({"provider.core", "provider", "provider.conformance"}),
    "provider.conformance": frozenset({"provider.core", "provider"}),
    "provider": frozenset({"provider.core", "provider.sources", "provider.storage", "provider.conformance"}),
    "coordinator": frozenset({"provider.core"}),
    "worker": frozenset({"provider.core", "provider", "provider.sources", "provider.storage", "provider.conformance"}),
    "ops": frozenset({"provider.core", "provider", "provider.sources", "provider.storage", "provider.conformance"}),
}
#: Modules of the top-level ``provider`` area that the libraries below it may use: the frame contract and errors.
PROVIDER_LEAVES = {
    "provider.sources": ("provider.frames",),
    "provider.storage": ("provider.frames",),
    "provider.conformance": ("provider.frames", "provider.errors"),
}
#: Third-party packages an area must not import (cheap imports, and the coordinator never handles frames).
FORBIDDEN_THIRD_PARTY = {
    "provider.core": ("pandas", "asyncpg", "aiohttp", "questdb", "pysyncobj"),
    "coordinator": ("pandas",),
}
#: The lease state machine may not touch the clock, randomness, I/O or the replication machinery.
PURE_TABLE = ("pysyncobj", "aiohttp", "asyncio", "time", "random", "logging", "structlog", "socket", "os")
#: Where the size rule applies (STYLE.md: split anything past ~600 lines).
SIZED = ("provider", "coordinator", "worker", "ops", "scripts", "bench", "tools", "tests", "devkit")
MAX_LINES = 600
#: Files still over the limit, with who splits them (delete the entry when it is split).
SIZE_EXCEPTIONS: dict[str, str] = {}


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


@cache
def _imports(path: Path) -> tuple[str, ...]:
    """Every module name ``path`` imports (``from a import b`` gives ``a.b`` and ``a``; relative imports none)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
    return tuple(names)


def _area(module: str) -> str:
    return max((a for a in ALLOWED if module == a or module.startswith(a + ".")), key=len)


def _edges(path: Path) -> set[str]:
    modules = _modules()
    return {name for name in _imports(path) if name in modules}


@pytest.mark.parametrize("area", sorted(ALLOWED))
def test_imports_follow_the_allow_list(area: str) -> None:
    """Every first-party import of an area lands in the area itself or in one it is allowed to use."""
    bad = []
    for name, path in _modules().items():
        if _area(name) != area:
            continue
        for target in sorted(_edges(path)):
            there = _area(target)
            if there == area or there in ALLOWED[area]:
                if there == "provider" and area in PROVIDER_LEAVES and target not in PROVIDER_LEAVES[area]:
                    bad.append(f"{name} imports {target} (only {', '.join(PROVIDER_LEAVES[area])} of provider)")
                continue
            bad.append(f"{name} imports {target}")
    assert bad == []


@pytest.mark.parametrize("area", sorted(FORBIDDEN_THIRD_PARTY))
def test_forbidden_third_party_imports(area: str) -> None:
    """The core imports no pandas, driver, aiohttp or pysyncobj; the coordinator no pandas."""
    forbidden = FORBIDDEN_THIRD_PARTY[area]
    bad = [
        f"{name} imports {imported}"
        for name, path in _modules().items()
        if _area(name) == area
        for imported in _imports(path)
        if imported.split(".")[0] in forbidden
    ]
    assert bad == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_import_cycles() -> None:
    """No two first-party modules import each other, directly or through others (type-only and deferred imports
    included)."""
    graph = {name: _edges(path) - {name} for name, path in _modules().items()}
    assert sum(len(targets) for targets in graph.values()) > 100  # the walk sees the imports
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The walk would fail on a circle: a -> b -> c -> a is found, a tree is not."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_no_module_is_over_the_size_limit() -> None:
    """No Python file of the repository grows past 600 lines (STYLE.md), except the listed ones being split."""
    sizes = {
        str(path.relative_to(ROOT)): len(path.read_text(encoding="utf-8").splitlines())
        for top in SIZED
        for path in (ROOT / top).rglob("*.py")
    }
    assert len(sizes) > 100
    assert {p: n for p, n in sizes.items() if n > MAX_LINES and p not in SIZE_EXCEPTIONS} == {}


def test_lease_table_is_pure() -> None:
    """The lease state machine imports no clock, randomness, logging, I/O or replication module."""
    table = ROOT / "coordinator" / "table.py"
    bad = [name for name in _imports(table) if name.split(".")[0] in PURE_TABLE]
    assert bad == []


def test_importing_the_core_does_not_load_pandas_or_drivers() -> None:
    """`import provider.core` (what a coordinator node does) loads neither pandas nor a database driver."""
    code = (
        "import sys, provider.core; "
        "print(','.join(m for m in ('pandas', 'asyncpg', 'questdb', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
