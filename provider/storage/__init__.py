"""Bar storage behind one contract: QuestDB, PostgreSQL, SQLite and in-memory backends, with a window ledger.

``storage = await open_storage(dsn)`` returns a :class:`Storage`::

    await storage.write_window(series, start, end, frame, source="binance")  # atomic, idempotent
    frame = await storage.read(series, start, end)    # bars with ts in [start, end), contract frame
    ranges = await storage.coverage(series)           # merged [start, end) ranges of written windows
    rows = await storage.windows(series, start, end)  # the ledger: a LedgerWindow per window, with its source
    await storage.aclose()

DSNs: ``questdb://USER:PASS@HOST:PGPORT/?http_port=9000``, ``postgresql://...``, ``sqlite:///path.db`` (the
embedded default) and ``memory://``. See docs/storage.md for schemas and guarantees, and
:mod:`provider.storage._contract` for the rules every backend follows.
"""

from provider.storage._contract import LedgerWindow, Storage, StorageBase
from provider.storage._dsn import (
    KINDS,
    STORAGE_DSN_ENV,
    StorageDsn,
    parse_dsn,
    read_dsn_file,
    shows_password,
)
from provider.storage._memory import MemoryStorage
from provider.storage._open import open_storage
from provider.storage.errors import (
    FrameRejectedError,
    SchemaMismatchError,
    StorageClosedError,
    StorageConfigError,
    StorageError,
    StorageRequestError,
    StorageUnavailableError,
    WalApplyTimeoutError,
    WalSuspendedError,
)

__all__ = [
    "KINDS",
    "STORAGE_DSN_ENV",
    "FrameRejectedError",
    "LedgerWindow",
    "MemoryStorage",
    "SchemaMismatchError",
    "Storage",
    "StorageBase",
    "StorageClosedError",
    "StorageConfigError",
    "StorageDsn",
    "StorageError",
    "StorageRequestError",
    "StorageUnavailableError",
    "WalApplyTimeoutError",
    "WalSuspendedError",
    "open_storage",
    "parse_dsn",
    "read_dsn_file",
    "shows_password",
]
