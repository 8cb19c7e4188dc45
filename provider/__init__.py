"""Seamless Data Provider: complete, checked market data on demand.

Public names are exported lazily (PEP 562) so that ``import provider.core`` on a coordinator node never loads
pandas or a database driver. ``provider.__all__`` lists what strategies may import.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it; filled in as the packages land.
_EXPORTS: dict[str, str] = {
    "BackfillConfig": "provider.core",
    "SeriesKey": "provider.core",
    "load_config": "provider.core",
}

__all__ = ["BackfillConfig", "SeriesKey", "load_config"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'provider' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
