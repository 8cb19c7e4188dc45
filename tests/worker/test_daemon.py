"""The worker loop against the real lease table (in memory) and real storage and sources."""

from __future__ import annotations

import asyncio
from typing import Any

import pandas as pd
import pytest

from devkit.memory_coordinator import MemoryCoordinator
from provider.core import BackfillConfig, WorkerConfig
from provider.sources import open_source
from provider.sources.errors import FatalSourceError, RetryableSourceError
from provider.storage import open_storage
from worker.daemon import Worker, WorkerSettings

SERIES = "ohlcv:synthetic:BTC/USDT:1m"
MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01


def settings(**over: Any) -> WorkerSettings:
    base = {
        "worker_id": "w-test",
        "concurrency": 2,
        "lease_ttl_ms": 600,
        "claim_wait_ms": 10,
        "shutdown_grace_ms": 2000,
    }
    return WorkerSettings(**{**base, **over})


class GatedSource:
    """Wraps a source: each fetch waits for ``gate`` (when set) and may raise a scripted error first."""

    name = "gated"

    def __init__(self, inner: Any, errors: list[BaseException] | None = None) -> None:
        self.inner = inner
        self.errors = list(errors or [])
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.fetches = 0

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        self.fetches += 1
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        if self.errors:
            raise self.errors.pop(0)
        return await self.inner.fetch(series, start, end)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def run_until(worker: Worker, predicate: Any, timeout_s: float = 10.0) -> None:
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(timeout_s):
            while not predicate():
                await asyncio.sleep(0.01)
    finally:
        worker.stop()
        await task


@pytest.fixture
async def store():
    storage = await open_storage("memory://")
    yield storage
    await storage.aclose()


async def test_worker_completes_every_window_with_the_exact_bars(store):
    """A job's windows are all claimed, written and completed, and storage holds exactly the source's bars."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 200 * MINUTE)
    source = open_source("synthetic:3?gaps=0.05")
    worker = Worker(settings(), coordinator=coord, source=source, storage=store)
    await run_until(worker, lambda: coord.job(job["job_id"])["state"] == "done")
    expected = await source.fetch(SERIES, T0, T0 + 210 * MINUTE)  # 7 windows of 30 bars
    stored = await store.read(SERIES, T0, T0 + 210 * MINUTE)
    pd.testing.assert_frame_equal(stored, expected)
    assert await store.coverage(SERIES) == [(T0, T0 + 210 * MINUTE)]
    assert worker.metrics.rows_written._value.get() == len(expected)
    assert coord.job(job["job_id"])["completion_ratio"] == 1.0


async def test_lost_lease_cancels_the_work_and_nothing_is_completed(store):
    """When the lease expires and another worker takes the window, the first worker neither writes nor completes."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    slow = GatedSource(open_source("synthetic:3"))
    slow.gate = asyncio.Event()
    first = Worker(settings(worker_id="slow", concurrency=1), coordinator=coord, source=slow, storage=store)
    task = asyncio.create_task(first.run())
    await asyncio.wait_for(slow.started.wait(), 5)
    coord.now_ms += 10_000  # the lease is long past its TTL
    assert [e["lease_id"] for e in coord.expire()]
    second = Worker(settings(worker_id="fast"), coordinator=coord, source=open_source("synthetic:3"), storage=store)
    await run_until(second, lambda: coord.job(job["job_id"])["state"] == "done")
    async with asyncio.timeout(5):  # the first worker's renew loop notices the loss
        while first.metrics.leases_lost._value.get() < 1:
            await asyncio.sleep(0.01)
    slow.gate.set()
    first.stop()
    await task
    completes = [c for c in coord.calls if c[0] == "complete"]
    assert len(completes) == 1 and completes[0][1][1] is True
    assert first.metrics.windows_done._value.get() == 0


async def test_fatal_source_error_fails_the_window_without_retry(store):
    """A fatal source error marks the window failed at once, with the reason, and the job fails."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30, max_attempts=5)
    job = coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    source = GatedSource(open_source("synthetic:3"), [FatalSourceError("unknown symbol BTC/USDT", source="x")])
    worker = Worker(settings(), coordinator=coord, source=source, storage=store)
    await run_until(worker, lambda: coord.job(job["job_id"])["windows"]["failed"] == 1)
    fails = [c for c in coord.calls if c[0] == "fail"]
    assert len(fails) == 1 and fails[0][1][2] is False and "unknown symbol" in fails[0][1][1]
    assert await store.coverage(SERIES) == []


async def test_retryable_error_requeues_then_succeeds(store):
    """A retryable error fails the attempt as retryable; the window comes back and the next attempt completes."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30, max_attempts=3)
    job = coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    source = GatedSource(open_source("synthetic:3"), [RetryableSourceError("503 from exchange", source="x")])
    worker = Worker(settings(), coordinator=coord, source=source, storage=store)
    await run_until(worker, lambda: coord.job(job["job_id"])["state"] == "done")
    assert [c[1][2] for c in coord.calls if c[0] == "fail"] == [True]
    assert source.fetches == 2
    assert worker.metrics.failures.labels(reason="RetryableSourceError")._value.get() == 1


async def test_stop_releases_unfinished_windows_after_the_grace_period(store):
    """On stop, a window that cannot finish within the grace period is released (attempt not counted)."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    stuck = GatedSource(open_source("synthetic:3"))
    stuck.gate = asyncio.Event()
    worker = Worker(settings(shutdown_grace_ms=100), coordinator=coord, source=stuck, storage=store)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(stuck.started.wait(), 5)
    worker.stop()
    await asyncio.wait_for(task, 5)
    assert coord.calls[-1][0] == "release"
    assert coord.job(job["job_id"])["windows"]["pending"] == 1
    assert coord.table.lease_infos(coord.now_ms) == []


async def test_stop_lets_windows_finish_within_the_grace_period(store):
    """On stop, a window that finishes within the grace period is completed, not released."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    gated = GatedSource(open_source("synthetic:3"))
    gated.gate = asyncio.Event()
    worker = Worker(settings(shutdown_grace_ms=5000), coordinator=coord, source=gated, storage=store)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(gated.started.wait(), 5)
    worker.stop()
    asyncio.get_running_loop().call_later(0.05, gated.gate.set)
    await asyncio.wait_for(task, 5)
    assert coord.job(job["job_id"])["state"] == "done"
    assert not [c for c in coord.calls if c[0] == "release"]


def test_settings_follow_the_config():
    """Worker settings take the lease TTL from backfill_config and pacing from the worker section."""
    s = WorkerSettings.from_config("w", WorkerConfig(concurrency=7), BackfillConfig(distributed_lease_ttl_ms=9000))
    assert (s.concurrency, s.lease_ttl_ms, s.worker_id) == (7, 9000, "w")


async def test_only_closed_bars_are_stored_for_a_window_reaching_past_now(store):
    """A window that ends in the future is stored up to the last closed bar, so coverage claims nothing more."""
    now_ms = T0 + 12 * MINUTE + 30_000  # 12.5 bars into a 30-bar window
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30, now_ms=now_ms)
    job = coord.submit(SERIES, T0, T0 + 12 * MINUTE)
    source = open_source("synthetic:3")
    worker = Worker(settings(), coordinator=coord, source=source, storage=store, wall_clock_ms=lambda: now_ms)
    await run_until(worker, lambda: coord.job(job["job_id"])["state"] == "done")
    assert await store.coverage(SERIES) == [(T0, T0 + 12 * MINUTE)]
    stored = await store.read(SERIES, T0, T0 + 30 * MINUTE)
    pd.testing.assert_frame_equal(stored, await source.fetch(SERIES, T0, T0 + 12 * MINUTE))


class GatedStore:
    """Wraps a storage: each write waits for ``gate``."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.gate = asyncio.Event()
        self.writing = asyncio.Event()

    async def write_window(self, series: Any, start: Any, end: Any, frame: pd.DataFrame) -> Any:
        self.writing.set()
        await self.gate.wait()
        return await self.inner.write_window(series, start, end, frame)


async def test_source_done_comes_when_fetches_end_not_when_writes_drain(store):
    """A stopping worker whose window is still fetching is not done with its source; once the fetch returned it is,
    though the window's write still waits (a shared budget is handed back then, not after the drain)."""
    coord = MemoryCoordinator(ttl_ms=60_000, window_bars=30)
    coord.submit(SERIES, T0, T0 + 30 * MINUTE)
    source = GatedSource(open_source("synthetic:3"))
    source.gate = asyncio.Event()
    gated = GatedStore(store)
    worker = Worker(settings(concurrency=1), coordinator=coord, source=source, storage=gated)
    task = asyncio.create_task(worker.run())
    await asyncio.wait_for(source.started.wait(), 5)
    done = asyncio.ensure_future(worker.source_done())
    worker.stop()
    await asyncio.sleep(0.05)
    assert not done.done()  # its fetch is still running
    source.gate.set()
    await asyncio.wait_for(gated.writing.wait(), 5)
    await asyncio.wait_for(done, 5)
    assert not task.done()  # the write still drains
    gated.gate.set()
    await asyncio.wait_for(task, 5)
