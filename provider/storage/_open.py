"""``open_storage``: the factory that opens the backend a storage DSN names.

Rules:
1. Options in the DSN query win over :class:`provider.core.StorageConfig`, which wins over the defaults.
2. Drivers are imported only for the backend asked for, so ``memory://`` and ``sqlite:///`` need neither asyncpg
   nor the questdb client. This is the one module that imports the backends; they import ``_dsn`` and
   ``_contract``, never this module, so the package's imports form no circle.
"""

from __future__ import annotations

from provider.core import StorageConfig
from provider.storage._contract import StorageBase
from provider.storage._dsn import parse_dsn

__all__ = ["open_storage"]


async def open_storage(
    dsn: str | None = None, *, kind: str | None = None, config: StorageConfig | None = None
) -> StorageBase:
    """Open the storage named by ``dsn`` (default: ``config.dsn``), ready to use.

    ``kind="questdb"`` reads a ``postgresql://admin:quest@host:8812/qdb`` DSN as a QuestDB server (ILP over HTTP
    on the same host, port 9000 unless ``http_port`` is given). Raises :class:`StorageConfigError` naming the bad
    field, or :class:`StorageUnavailableError` when the server cannot be reached.
    """
    settings = config or StorageConfig()
    parsed = parse_dsn(settings.dsn if dsn is None else dsn, kind=kind)
    pool_size = parsed.pool_size or settings.pool_size
    storage: StorageBase
    if parsed.kind == "memory":
        from provider.storage._memory import MemoryStorage

        storage = MemoryStorage()
    elif parsed.kind == "sqlite":
        from provider.storage._sqlite import SQLiteStorage

        storage = await SQLiteStorage.open(parsed)
    elif parsed.kind == "postgres":
        from provider.storage._postgres import PostgresStorage

        storage = await PostgresStorage.open(parsed, pool_size=pool_size)
    else:
        from provider.storage._questdb import QuestDBStorage

        timeout_ms = (
            settings.wal_apply_timeout_ms if parsed.wal_apply_timeout_ms is None else parsed.wal_apply_timeout_ms
        )
        storage = await QuestDBStorage.open(parsed, pool_size=pool_size, wal_apply_timeout_ms=timeout_ms)
    return storage
