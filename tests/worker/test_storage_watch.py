"""The storage watch publishes `seamless_storage_wal_suspended` per table and survives a failing poll."""

from __future__ import annotations

import asyncio

import pytest

from worker.metrics import WorkerMetrics
from worker.storage_watch import poll_once, watch_storage


class FakeWal:
    """A storage whose WAL statuses the test sets; raises while ``error`` is set."""

    def __init__(self) -> None:
        self.statuses: dict[str, bool] = {"ohlcv": False, "ohlcv_windows": False}
        self.error: Exception | None = None
        self.polls = 0

    async def wal_status(self) -> dict[str, bool]:
        self.polls += 1
        if self.error is not None:
            raise self.error
        return dict(self.statuses)


def gauge(metrics: WorkerMetrics, table: str) -> float | None:
    return metrics.registry.get_sample_value("seamless_storage_wal_suspended", {"table": table})


async def test_a_suspended_table_reads_1_and_a_resumed_one_0() -> None:
    """Each poll sets the gauge of every table: 1 while suspended, back to 0 once resumed."""
    storage, metrics = FakeWal(), WorkerMetrics()
    await poll_once(storage, metrics)
    assert (gauge(metrics, "ohlcv"), gauge(metrics, "ohlcv_windows")) == (0.0, 0.0)
    storage.statuses["ohlcv"] = True
    await poll_once(storage, metrics)
    assert (gauge(metrics, "ohlcv"), gauge(metrics, "ohlcv_windows")) == (1.0, 0.0)
    storage.statuses["ohlcv"] = False
    await poll_once(storage, metrics)
    assert gauge(metrics, "ohlcv") == 0.0


async def test_a_backend_without_wal_publishes_nothing() -> None:
    """SQLite and PostgreSQL have no WAL: no series at all, so the alert has nothing to read."""
    storage, metrics = FakeWal(), WorkerMetrics()
    storage.statuses = {}
    await poll_once(storage, metrics)
    assert gauge(metrics, "ohlcv") is None


async def test_the_watch_keeps_polling_after_an_error() -> None:
    """A failing poll is logged and the next period polls again (the gauge updates once the storage answers)."""
    storage, metrics = FakeWal(), WorkerMetrics()
    storage.error = ConnectionError("questdb down")
    task = asyncio.create_task(watch_storage(storage, metrics, interval_s=0.01))
    try:
        async with asyncio.timeout(10):
            while storage.polls < 3:
                await asyncio.sleep(0.01)
            storage.error = None
            storage.statuses["ohlcv_windows"] = True
            while gauge(metrics, "ohlcv_windows") != 1.0:
                await asyncio.sleep(0.01)
    finally:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
