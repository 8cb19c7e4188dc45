"""Errors of the pure core, and the common root of every error the project raises on purpose.

Tree::

    Exception
    └── SeamlessDataError            common root: one ``except SeamlessDataError`` catches any of them
        ├── CoreError                root of provider.core (also a ValueError)
        │   ├── ConfigError          a config key is unknown or its value is not allowed (path, value, allowed)
        │   └── WireFormatError      a wire message field is missing or invalid (field, value, allowed)
        ├── SeamlessError            root of provider (provider.errors), the client's CoordinatorError included
        ├── FrameContractError       a frame breaks the frame contract (provider.frames; also a ValueError)
        ├── SourceError              root of provider.sources (provider.sources.errors)
        ├── StorageError             root of provider.storage (provider.storage.errors)
        └── ApiError                 root of the coordinator service (coordinator.errors): HTTP error bodies

Rules:
1. Each package keeps one ``errors.py`` with one root, derived from :class:`SeamlessDataError` and from nothing
   else of another package, so ``except`` clauses on a package root catch exactly what they caught before.
2. A class keeps its other bases (``ValueError``, ``LookupError``, ``TimeoutError``, ``ConnectionError``) so
   callers that catch the builtin keep working.
3. Time, range and series helpers raise plain ``ValueError`` with a message naming the value.
"""

from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "CoreError", "SeamlessDataError", "WireFormatError"]


class SeamlessDataError(Exception):
    """The common root of every package's errors (rule 1)."""


class CoreError(SeamlessDataError, ValueError):
    """Base class of the core's errors."""


class ConfigError(CoreError):
    """A configuration key is unknown or its value is not allowed."""

    def __init__(self, path: str, value: Any, allowed: str, *, unknown: bool = False) -> None:
        self.path = path
        self.value = value
        self.allowed = allowed
        if unknown:
            message = f"unknown config key {path!r}; expected {allowed}"
        else:
            message = f"config key {path!r} has value {value!r}; allowed: {allowed}"
        super().__init__(message)


def short_repr(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` chars; a huge int is described by its size (its decimal text can be
    thousands of digits, or refused by Python beyond 4,300)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"<an integer of {value.bit_length()} bits>"
    shown = repr(value)
    return shown if len(shown) <= limit else shown[: limit - 3] + "..."


class WireFormatError(CoreError):
    """A field of a wire message is missing or invalid; ``field`` names it for the 400 answer."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"field {field!r} has value {short_repr(value)}; expected {allowed}")
