"""A stopping worker gives back the windows that sent nothing to their source, and keeps its fetch queue within
what its budget admits (worker/daemon.py rules 4 and 11), against the real lease table in memory, a real
``SourceLimits`` on a manual clock and real storage."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest

from devkit.memory_coordinator import MemoryCoordinator
from provider.sources import AdmissionWatch, RateBudget, SourceLimits, open_source, watch_admissions
from provider.sources._limits import BanGate
from provider.storage import open_storage
from worker.daemon import Worker, WorkerSettings

SERIES = "ohlcv:synthetic:BTC/USDT:1m"
MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01
BARS = 30


class Frozen:
    """A clock that never moves and a sleep that never ends until ``wake``: a budget that admits exactly what its
    bucket holds, with no real time involved."""

    def __init__(self) -> None:
        self.now_s = 100.0
        self._wake = asyncio.Event()

    def clock(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        await self._wake.wait()


class LimitedSource:
    """A source that admits each request through ``limits`` (as the exchange sources do), records what it sent,
    and answers once ``answer`` is set."""

    name = "limited"

    def __init__(self, limits: SourceLimits) -> None:
        self.inner = open_source("synthetic:3")
        self.limits = limits
        self.sent: list[int] = []
        self.answer = asyncio.Event()

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        await self.limits.admit(source=self.name)
        self.sent.append(int(start))
        await self.answer.wait()
        return await self.inner.fetch(series, start, end)

    async def aclose(self) -> None:
        await self.inner.aclose()


def limited(tokens_per_minute: float, frozen: Frozen) -> SourceLimits:
    """Limits whose bucket starts with one request (1 token) and never refills."""
    budget = RateBudget(tokens_per_minute, clock=frozen.clock, sleep=frozen.sleep)
    return SourceLimits(BanGate(clock=frozen.clock, sleep=frozen.sleep), budget)


def settings(**over: Any) -> WorkerSettings:
    base = {"worker_id": "w-stop", "concurrency": 5, "lease_ttl_ms": 60_000, "claim_wait_ms": 10}
    return WorkerSettings(**{**base, "shutdown_grace_ms": 30_000, **over})


@pytest.fixture
async def store():
    storage = await open_storage("memory://")
    yield storage
    await storage.aclose()


async def until(predicate: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.005)


def live(coord: MemoryCoordinator) -> list[Any]:
    return list(coord.table.lease_infos(coord.now_ms))


async def test_admission_watch_counts_only_what_passed_the_limits() -> None:
    """A request waiting at the budget shows as nothing sent; once admitted it counts, and only under the watch."""
    frozen = Frozen()
    limits = limited(60, frozen)
    first, second = AdmissionWatch(), AdmissionWatch()
    with watch_admissions(first):
        await limits.admit()
    assert (first.admitted, first.waiting, first.nothing_sent) == (1, False, False)

    async def second_request() -> None:
        with watch_admissions(second):
            await limits.admit()

    task = asyncio.create_task(second_request())
    await until(lambda: second.waiting)
    assert second.nothing_sent and first.admitted == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert (second.waiting, second.admitted) == (False, 0)


async def test_stop_releases_unsent_windows_at_once_and_finishes_the_one_in_flight(store) -> None:
    """Five windows claimed, one request admitted (the budget holds one token), four waiting at the budget. On
    stop the four are released at once, long before the 30 s grace, and another worker claims them at once; the
    one already sent is finished and written, and in the end every window is stored once, with the source's bars."""
    coord = MemoryCoordinator(ttl_ms=60_000, window_bars=BARS)
    job = coord.submit(SERIES, T0, T0 + 5 * BARS * MINUTE)
    source = LimitedSource(limited(60, Frozen()))
    worker = Worker(settings(), coordinator=coord, source=source, storage=store)
    task = asyncio.create_task(worker.run())
    await until(lambda: len(live(coord)) == 5 and len(source.sent) == 1)
    await asyncio.sleep(0.02)  # the four others are parked at the budget, not sending
    assert len(source.sent) == 1

    worker.stop()
    await until(lambda: coord.job(job["job_id"])["windows"]["pending"] == 4, timeout_s=2.0)
    released = [c for c in coord.calls if c[0] == "release"]
    assert len(released) == 4 and not task.done()
    others = await coord.claim("w-other", max_windows=10)
    assert len(others) == 4 and all(lease.attempt == 1 for lease in others)  # the release counted no attempt
    assert source.sent[0] not in {lease.start for lease in others}

    source.answer.set()  # the window in flight gets its answer: it is written and completed
    await asyncio.wait_for(task, 5)
    assert len(source.sent) == 1
    assert coord.job(job["job_id"])["windows"]["done"] == 1

    rest = LimitedSource(SourceLimits())  # unlimited: the other worker fetches the four it was given
    rest.answer.set()
    for lease in others:
        await coord.release(lease.lease_id)
    other = Worker(settings(worker_id="w-other"), coordinator=coord, source=rest, storage=store)
    runner = asyncio.create_task(other.run())
    await until(lambda: coord.job(job["job_id"])["state"] == "done")
    other.stop()
    await runner
    assert sorted(source.sent + rest.sent) == [T0 + k * BARS * MINUTE for k in range(5)]  # each fetched once
    assert await store.coverage(SERIES) == [(T0, T0 + 5 * BARS * MINUTE)]
    stored = await store.read(SERIES, T0, T0 + 5 * BARS * MINUTE)
    pd.testing.assert_frame_equal(stored, await open_source("synthetic:3").fetch(SERIES, T0, T0 + 5 * BARS * MINUTE))


async def test_the_fetch_queue_follows_the_budget_rate(store) -> None:
    """At 1 request/s admitted and a 2 s horizon the worker holds 2 unfetched windows, not its 10 slots; when the
    share grows to 3/s it claims up to 6 at once; on stop every one of them (none sent) is released."""
    coord = MemoryCoordinator(ttl_ms=60_000, window_bars=BARS)
    job = coord.submit(SERIES, T0, T0 + 20 * BARS * MINUTE)
    frozen = Frozen()
    limits = limited(60, frozen)
    limits.budget.retune(0.0, None)  # nothing admitted: every window waits at the budget
    source = LimitedSource(limits)
    rate = [1.0]
    worker = Worker(
        settings(concurrency=10, queue_horizon_s=2.0),
        coordinator=coord,
        source=source,
        storage=store,
        fetch_rate_per_s=lambda: rate[0],
    )
    task = asyncio.create_task(worker.run())
    await until(lambda: len(live(coord)) == 2)
    await asyncio.sleep(0.05)  # claims keep being possible: the worker must not take more
    assert len(live(coord)) == 2
    rate[0] = 3.0
    worker.budget_changed()
    await until(lambda: len(live(coord)) == 6)
    await asyncio.sleep(0.05)
    assert len(live(coord)) == 6 and source.sent == []
    worker.stop()
    await asyncio.wait_for(task, 2)
    assert live(coord) == [] and coord.job(job["job_id"])["windows"]["pending"] == 20
