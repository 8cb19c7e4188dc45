"""One error root per package under one common root, and no two error classes share a name."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from provider.core.errors import SeamlessDataError

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("provider", "coordinator", "worker", "ops")
#: package -> its error root (module, class) and the builtins its root must stay compatible with.
ROOTS = {
    "provider.core": ("provider.core.errors", "CoreError", (ValueError,)),
    "provider": ("provider.errors", "SeamlessError", ()),
    "provider.sources": ("provider.sources.errors", "SourceError", ()),
    "provider.storage": ("provider.storage.errors", "StorageError", ()),
    "coordinator": ("coordinator.errors", "ApiError", ()),
}


@pytest.mark.parametrize("package", sorted(ROOTS))
def test_each_package_root_derives_from_the_common_root(package: str) -> None:
    """Every package's root error is a SeamlessDataError (and keeps its builtin bases)."""
    module, name, builtins = ROOTS[package]
    root = getattr(importlib.import_module(module), name)
    assert issubclass(root, SeamlessDataError)
    for builtin in builtins:
        assert issubclass(root, builtin)


@pytest.mark.parametrize("module", sorted({m for m, _, _ in ROOTS.values()}))
def test_every_public_error_of_an_errors_module_is_under_the_common_root(module: str) -> None:
    """Each public exception class exported by a package's errors.py is a SeamlessDataError."""
    mod = importlib.import_module(module)
    classes = [getattr(mod, n) for n in mod.__all__ if isinstance(getattr(mod, n), type)]
    outside = [c.__name__ for c in classes if issubclass(c, BaseException) and not issubclass(c, SeamlessDataError)]
    assert outside == []


def test_compatibility_bases_are_kept() -> None:
    """Classes keep the builtin bases callers catch today."""
    from provider.errors import (
        CoordinatorNotFoundError,
        CoordinatorUnavailableError,
        DataUnavailableError,
        SeamlessSLAExceeded,
    )
    from provider.frames import FrameContractError
    from provider.sources.errors import SourceSpecError
    from provider.storage.errors import FrameRejectedError, StorageConfigError

    assert issubclass(CoordinatorUnavailableError, ConnectionError)
    assert issubclass(CoordinatorNotFoundError, LookupError)
    assert issubclass(DataUnavailableError, LookupError)
    assert issubclass(SeamlessSLAExceeded, TimeoutError)
    assert issubclass(FrameContractError, ValueError)
    assert issubclass(SourceSpecError, ValueError)
    assert issubclass(StorageConfigError, ValueError)
    assert issubclass(FrameRejectedError, FrameContractError)


def test_error_class_names_are_unique() -> None:
    """No two exception classes of first-party code share a name (the client's CoordinatorError is the only one)."""
    seen: dict[str, list[str]] = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"))
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name.endswith("Error"):
                    seen.setdefault(node.name, []).append(str(path.relative_to(ROOT)))
    assert {name: paths for name, paths in seen.items() if len(paths) > 1} == {}
