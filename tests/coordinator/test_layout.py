"""Package shape: cheap imports (no pandas), a pure lease table, and the exported names of each module."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "coordinator"
PURE = ("table.py", "_state.py", "_keyed.py", "_records.py")
IMPURE_ROOTS = {
    "pysyncobj",
    "aiohttp",
    "asyncio",
    "time",
    "random",
    "logging",
    "structlog",
    "socket",
    "os",
    "threading",
    "datetime",
    "secrets",
    "uuid",
    "pathlib",
    "prometheus_client",
}


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
    return names


def test_importing_the_service_does_not_load_pandas() -> None:
    """A coordinator node imports provider.core only: importing its CLI and server never loads pandas."""
    code = (
        "import sys, coordinator.cli, coordinator.api, coordinator.node, coordinator.raft; "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('pandas', 'asyncpg', 'questdb')))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_only_provider_core_is_imported_from_provider() -> None:
    """coordinator/ depends on provider.core and on nothing else of provider/, worker/ or pandas."""
    bad = [
        f"{p.name}: {name}"
        for p in sorted(PACKAGE.glob("*.py"))
        for name in _imports(p)
        if (name.startswith("provider") and not name.startswith("provider.core"))
        or name.split(".")[0] in ("worker", "pandas")
    ]
    assert bad == []


@pytest.mark.parametrize("module", PURE)
def test_the_lease_table_modules_are_pure(module: str) -> None:
    """The table and its helpers import no clock, randomness, I/O, logging or replication module."""
    bad = [name for name in _imports(PACKAGE / module) if name.split(".")[0] in IMPURE_ROOTS]
    assert bad == []


@pytest.mark.parametrize("path", sorted(p.name for p in PACKAGE.glob("*.py") if p.name != "__main__.py"))
def test_exported_names_exist_and_modules_are_documented(path: str) -> None:
    """Each module opens with a docstring, and every name in its __all__ exists."""
    module = importlib.import_module(f"coordinator.{path[:-3]}" if path != "__init__.py" else "coordinator")
    assert module.__doc__ and len(module.__doc__.strip()) > 20
    for name in getattr(module, "__all__", []):
        assert hasattr(module, name), f"{path} exports missing {name}"


def test_module_sizes_stay_reasonable() -> None:
    """No module grows into a god module (STYLE.md: split anything past ~600 lines)."""
    sizes = {p.name: len(p.read_text(encoding="utf-8").splitlines()) for p in PACKAGE.glob("*.py")}
    assert max(sizes.values()) <= 600, sizes
