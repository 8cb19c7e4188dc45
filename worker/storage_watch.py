"""The storage watch: a worker polls its storage's WAL status and publishes ``seamless_storage_wal_suspended``.

Rules:
1. Every ``worker.storage_check_interval_ms`` the watch asks the storage for ``wal_status()`` (QuestDB: one
   ``wal_tables()`` query; other backends have no WAL and publish nothing) and sets the gauge per table, 1 for a
   suspended table, 0 otherwise. Polling, not only failed writes, so an idle worker still reports a suspended
   table (QuestDB keeps accepting writes into a suspended WAL; nobody would notice until a read).
2. A failed poll is logged and retried at the next period; it never stops the worker.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from provider.core.obs import get_logger
from worker.metrics import WorkerMetrics

__all__ = ["WalStatusSource", "watch_storage"]

log = get_logger("worker.storage_watch")


class WalStatusSource(Protocol):
    """What the watch needs of a storage."""

    async def wal_status(self) -> dict[str, bool]: ...


async def poll_once(storage: WalStatusSource, metrics: WorkerMetrics) -> dict[str, bool]:
    """One poll: set the gauge of every WAL table and return the statuses."""
    statuses = await storage.wal_status()
    for table, suspended in statuses.items():
        metrics.wal_suspended.labels(table=table).set(1 if suspended else 0)
        if suspended:
            log.error("storage.wal_suspended", table=table, fix=f"ALTER TABLE {table} RESUME WAL")
    return statuses


async def watch_storage(storage: WalStatusSource, metrics: WorkerMetrics, *, interval_s: float) -> None:
    """Poll until cancelled."""
    while True:
        try:
            await poll_once(storage, metrics)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # any storage error: report it, try again next period
            log.warning("storage.wal_poll_failed", error=str(exc))
        await asyncio.sleep(interval_s)
