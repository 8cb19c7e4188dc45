"""The public names of provider.storage are exactly the documented ones."""

from __future__ import annotations

from provider import storage
from provider.storage import errors

EXPECTED = {
    "KINDS", "FrameRejectedError", "LedgerWindow", "MemoryStorage", "SchemaMismatchError", "Storage", "StorageBase",
    "StorageClosedError", "StorageConfigError", "StorageDsn", "StorageError", "StorageRequestError",
    "StorageUnavailableError", "WalApplyTimeoutError", "WalSuspendedError", "open_storage", "parse_dsn",
    "STORAGE_DSN_ENV", "read_dsn_file", "shows_password",
}  # fmt: skip


def test_exported_names():
    """__all__ lists the public API and every name in it exists."""
    assert set(storage.__all__) == EXPECTED
    assert all(hasattr(storage, name) for name in storage.__all__)


def test_every_error_derives_from_storage_error():
    """Each error class of provider.storage.errors is a StorageError, and the ValueError ones are ValueErrors."""
    for name in errors.__all__:
        assert issubclass(getattr(errors, name), errors.StorageError), name
    for name in ("StorageConfigError", "StorageRequestError", "FrameRejectedError"):
        assert issubclass(getattr(errors, name), ValueError), name
