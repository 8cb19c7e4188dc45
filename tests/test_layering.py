"""Imports point one way (DESIGN.md section 1), and the pure core stays cheap to import."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

#: (package, forbidden import prefixes)
RULES = [
    ("coordinator", ("worker", "provider.storage", "provider.sources", "provider.client", "pandas")),
    ("worker", ("coordinator",)),
    ("ops", ("coordinator", "worker")),
    ("provider", ("coordinator", "worker")),
    ("provider/core", ("pandas", "asyncpg", "aiohttp", "questdb", "pysyncobj", "provider.storage")),
]
#: The lease state machine may not touch the clock, randomness, I/O or the replication machinery.
PURE_TABLE = ("pysyncobj", "aiohttp", "asyncio", "time", "random", "logging", "structlog", "socket", "os")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def _violations(package: str, forbidden: tuple[str, ...]) -> list[str]:
    found = []
    for path in sorted((ROOT / package).rglob("*.py")):
        for name in _imports(path):
            if any(name == bad or name.startswith(bad + ".") for bad in forbidden):
                found.append(f"{path.relative_to(ROOT)} imports {name}")
    return found


@pytest.mark.parametrize(("package", "forbidden"), RULES, ids=[r[0] for r in RULES])
def test_imports_point_one_way(package, forbidden):
    """No module imports across a forbidden edge of the dependency graph."""
    if not (ROOT / package).exists():
        pytest.fail(f"package {package} is missing")
    assert _violations(package, forbidden) == []


def test_lease_table_is_pure():
    """The lease state machine imports no clock, randomness, logging, I/O or replication module."""
    table = ROOT / "coordinator" / "table.py"
    if not table.exists():
        pytest.fail("coordinator/table.py is missing")
    bad = [name for name in _imports(table) if name.split(".")[0] in PURE_TABLE]
    assert bad == []


def test_importing_the_core_does_not_load_pandas_or_drivers():
    """`import provider.core` (what a coordinator node does) loads neither pandas nor a database driver."""
    code = (
        "import sys, provider.core; "
        "print(','.join(m for m in ('pandas', 'asyncpg', 'questdb', 'aiohttp') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == ""
