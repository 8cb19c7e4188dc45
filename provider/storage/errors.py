"""Errors of the storage package.

Tree::

    provider.core.errors.SeamlessDataError   the common root of every package's errors
    └── StorageError                      base of every error raised by provider.storage
        ├── StorageConfigError            a DSN or option is invalid (field, value, allowed); also a ValueError
        ├── StorageRequestError           a series key, time or window bound is invalid (field, value); a ValueError
        ├── FrameRejectedError            a frame breaks the frame contract (problem, series, window); it is also a
        │                                 provider.frames.FrameContractError, hence a ValueError. Nothing was stored.
        ├── SchemaMismatchError           an existing table lacks columns this backend needs (table, missing)
        ├── StorageClosedError            the storage was used after ``aclose()``
        ├── StorageUnavailableError       the database cannot be reached or failed an operation (backend, target);
        │   │                             retrying later may succeed
        │   └── WalApplyTimeoutError      QuestDB accepted a write but did not apply it within the bound (table)
        └── WalSuspendedError             a QuestDB WAL table is suspended: writes are accepted but never become
                                          visible until an operator runs ``fix`` (``ALTER TABLE t RESUME WAL``)

Messages never contain passwords: DSNs are shown redacted.
"""

from __future__ import annotations

from typing import Any

from provider.core.errors import SeamlessDataError
from provider.frames import FrameContractError

__all__ = [
    "FrameRejectedError",
    "SchemaMismatchError",
    "StorageClosedError",
    "StorageConfigError",
    "StorageError",
    "StorageRequestError",
    "StorageUnavailableError",
    "WalApplyTimeoutError",
    "WalSuspendedError",
]


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


class StorageError(SeamlessDataError):
    """Base class of the storage package's errors."""


class StorageConfigError(StorageError, ValueError):
    """A DSN or storage option is invalid; ``field`` names the part to fix."""

    def __init__(self, field: str, value: Any, allowed: str) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        super().__init__(f"storage DSN field {field!r} has value {_shown(value)}; expected {allowed}")


class StorageRequestError(StorageError, ValueError):
    """A call argument (series key, start, end) is invalid; ``field`` names it."""

    def __init__(self, field: str, value: Any, message: str) -> None:
        self.field = field
        self.value = value
        super().__init__(message)


class FrameRejectedError(StorageError, FrameContractError):
    """A frame given to ``write_window`` breaks the frame contract; nothing was stored.

    ``problem`` is the first blocking ingest flag of :func:`provider.conformance.normalize_bars` (``missing_column``,
    ``extra_column``, ``dtype_mismatch``, ``invalid_timestamp``, ``precision_loss``, ``conflicting_duplicate``,
    ``off_grid``, ``out_of_range``, ``non_finite``) or ``type`` (not a DataFrame). Lossless shapes are not refused.
    """

    def __init__(self, problem: str, message: str, *, series: str, start_ms: int, end_ms: int) -> None:
        self.series = series
        self.start_ms = start_ms
        self.end_ms = end_ms
        super().__init__(problem, f"frame for {series} window [{start_ms}, {end_ms}) refused ({problem}): {message}")


class SchemaMismatchError(StorageError):
    """An existing table does not have the columns this backend reads and writes."""

    def __init__(self, table: str, missing: list[str]) -> None:
        self.table = table
        self.missing = missing
        super().__init__(
            f"table {table!r} exists but lacks columns {missing}; it was not created by this storage. "
            "Choose another table name with the DSN option table=NAME"
        )


class StorageClosedError(StorageError):
    """The storage object was used after ``aclose()``."""


class StorageUnavailableError(StorageError):
    """The database could not be reached or failed an operation; ``target`` is the redacted address."""

    def __init__(self, backend: str, target: str, message: str) -> None:
        self.backend = backend
        self.target = target
        super().__init__(f"{backend} storage at {target}: {message}")


class WalApplyTimeoutError(StorageUnavailableError):
    """QuestDB committed a write to its WAL but did not apply it within ``wal_apply_timeout_ms``."""

    def __init__(self, target: str, table: str, timeout_ms: int, writer_txn: int, sequencer_txn: int) -> None:
        self.table = table
        self.timeout_ms = timeout_ms
        self.writer_txn = writer_txn
        self.sequencer_txn = sequencer_txn
        super().__init__(
            "questdb",
            target,
            f"table {table!r} applied WAL txn {writer_txn} of {sequencer_txn} within {timeout_ms} ms; the write is "
            "durable in the WAL but not yet visible. The server is overloaded or wal apply is disabled",
        )


class WalSuspendedError(StorageError):
    """A QuestDB WAL table is suspended: it accepts writes but shows none of them until resumed.

    ``fix`` is the SQL an operator runs after removing the cause (``reason``), e.g. a full disk.
    """

    def __init__(self, table: str, reason: str) -> None:
        self.table = table
        self.reason = reason
        self.fix = f"ALTER TABLE {table} RESUME WAL"
        because = f" ({reason})" if reason else ""
        super().__init__(
            f"QuestDB WAL table {table!r} is suspended{because}: writes are accepted but not applied. "
            f"Fix the cause, then run: {self.fix}"
        )
