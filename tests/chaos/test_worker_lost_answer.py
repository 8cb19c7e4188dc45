"""A leader killed right after committing a complete: the worker's complete is applied, its answer comes late (the
client retries), and meanwhile the renew loop is told the lease is gone. Found in a chaos run (leader-kill)."""

from __future__ import annotations

import asyncio
from typing import Any

from devkit.memory_coordinator import MemoryCoordinator
from provider.sources import open_source
from provider.storage import open_storage
from worker.daemon import Worker, WorkerSettings

SERIES = "ohlcv:synthetic:BTC/USDT:1m"
T0 = 1_704_067_200_000


class LateAnswerCoordinator(MemoryCoordinator):
    """``complete`` is applied at once, but its answer is held back until ``answer`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.answer = asyncio.Event()

    async def complete(self, lease_id: str, token: int, rows: int) -> Any:
        value = await super().complete(lease_id, token, rows)
        await self.answer.wait()
        return value


async def until(predicate: Any, timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_a_completed_window_is_not_counted_lost_when_a_renew_sees_the_completion():
    """The complete landed, so a renew gets lease_lost while the complete's answer is still on its way: the worker
    waits for that answer and counts the window done, not lost."""
    coord = LateAnswerCoordinator(ttl_ms=300, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 30 * 60_000)
    storage = await open_storage("memory://")
    worker = Worker(
        WorkerSettings("w-late", 1, 300, 10, 2000),
        coordinator=coord,
        source=open_source("synthetic:3"),
        storage=storage,
    )
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: coord.job(job["job_id"])["state"] == "done")
        await until(lambda: ("renew", ("lease-1", False)) in coord.calls)  # the renew loop hears "lease_lost"
        await asyncio.sleep(0.05)
        coord.answer.set()
        await until(lambda: worker.metrics.windows_done._value.get() + worker.metrics.leases_lost._value.get() >= 1)
    finally:
        worker.stop()
        await task
        await storage.aclose()
    assert worker.metrics.windows_done._value.get() == 1
    assert worker.metrics.leases_lost._value.get() == 0
    assert worker.metrics.rows_written._value.get() == 30


async def test_a_refused_complete_still_counts_as_lost():
    """When the complete itself is refused (the lease was reaped first), that attempt is lost and not counted done;
    the window goes back to pending and the next attempt completes it."""
    coord = MemoryCoordinator(ttl_ms=300, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + 30 * 60_000)
    storage = await open_storage("memory://")

    original = storage.write_window
    reaped: list[Any] = []

    async def write_then_reap_once(*args: Any, **kwargs: Any) -> Any:
        result = await original(*args, **kwargs)
        if not reaped:  # the first lease expires and is reaped before its complete arrives
            coord.now_ms += 10_000
            reaped.extend(coord.expire())
        return result

    storage.write_window = write_then_reap_once  # type: ignore[method-assign]
    worker = Worker(
        WorkerSettings("w-reaped", 1, 300, 10, 2000),
        coordinator=coord,
        source=open_source("synthetic:3"),
        storage=storage,
    )
    task = asyncio.create_task(worker.run())
    try:
        await until(lambda: coord.job(job["job_id"])["state"] == "done")
        await until(lambda: worker.metrics.windows_done._value.get() >= 1)
    finally:
        worker.stop()
        await task
        await storage.aclose()
    assert len(reaped) == 1
    assert ("complete", ("lease-1", False)) in coord.calls  # the reaped lease's complete was refused ...
    assert worker.metrics.leases_lost._value.get() == 1  # ... and counted lost,
    assert worker.metrics.windows_done._value.get() == 1  # while only the second attempt counts as done
    assert ("complete", ("lease-2", True)) in coord.calls
