"""Backfills through the coordinator: jobs per contiguous run, polling, progress, failures, and a real cluster."""

from __future__ import annotations

import asyncio
import itertools

import pandas as pd
import pytest

from provider.client import CoordinatorClient
from provider.core import Job, WindowCounts
from provider.errors import BackfillFailedError
from provider.frames import ts_ms

from .conftest import MIN, SERIES, WINDOW_BARS, at, bars, store


class FakeCoordinator:
    """Jobs in memory; the test decides when windows complete (it plays the workers)."""

    def __init__(self, storage):
        self.storage = storage
        self.jobs: dict[str, dict] = {}
        self.ids = itertools.count(1)
        self.submitted: list[tuple[str, int, int]] = []
        self.changed = asyncio.Event()

    async def submit_job(self, series, start, end, *, priority=0):
        job_id = f"j{next(self.ids)}"
        self.submitted.append((series, start, end))
        windows = (end - start) // (WINDOW_BARS * MIN)
        self.jobs[job_id] = {
            "series": series,
            "start": start,
            "end": end,
            "done": 0,
            "total": windows,
            "state": "running",
        }
        self.changed.set()
        return self._job(job_id)

    async def get_job(self, job_id):
        return self._job(job_id)

    def _job(self, job_id):
        j = self.jobs[job_id]
        pending = j["total"] - j["done"]
        return Job(
            job_id,
            j["series"],
            j["start"],
            j["end"],
            j["state"],
            WindowCounts(
                pending=pending if j["state"] == "running" else 0,
                done=j["done"],
                failed=pending if j["state"] == "failed" else 0,
            ),
            j["done"] / j["total"],
        )

    async def work(self, job_id, *, fail=False):
        """Materialize the job's windows one by one (or fail it)."""
        j = self.jobs[job_id]
        if fail:
            j["state"] = "failed"
            return
        for k in range(j["total"]):
            lo = j["start"] + k * WINDOW_BARS * MIN
            await store(self.storage, lo, lo + WINDOW_BARS * MIN)
            j["done"] += 1
            await asyncio.sleep(0)
        j["state"] = "done"


async def _wait_for_jobs(fake, count):
    while len(fake.jobs) < count:
        fake.changed.clear()
        await asyncio.wait_for(fake.changed.wait(), 10)


async def test_missing_ranges_become_jobs_and_progress_is_reported(storage, make_provider):
    """Each contiguous run of missing windows is one job; the fetch waits for it and reports progress."""
    fake = FakeCoordinator(storage)
    seen = []
    await store(storage, at(100), at(200))
    provider = make_provider(strategy="auto_backfill", storage_source=storage, coordinator=fake, progress=seen.append)
    provider.backfiller.poll_interval_s = 0.001
    fetch = asyncio.ensure_future(provider.fetch(at(0), at(400), node_id=SERIES))
    await _wait_for_jobs(fake, 2)
    assert fake.submitted == [(SERIES, at(0), at(100)), (SERIES, at(200), at(400))]
    for job_id in list(fake.jobs):
        await fake.work(job_id)
    frame = await fetch
    pd.testing.assert_frame_equal(frame, await bars(at(0), at(400)))
    ratios = [p.ratio for p in seen]
    assert ratios == sorted(ratios) and ratios[0] == 0.0 and ratios[-1] == 1.0
    assert seen[-1].windows_total == 3 and set(seen[-1].job_ids) == {"j1", "j2"}
    assert provider.last_fetch_metadata.backfill["mode"] == "coordinator"


async def test_a_failed_job_raises_with_the_missing_ranges(storage, make_provider):
    """A job that ends failed makes AUTO_BACKFILL raise BackfillFailedError naming the ranges and the job."""
    fake = FakeCoordinator(storage)
    provider = make_provider(strategy="auto_backfill", storage_source=storage, coordinator=fake)
    provider.backfiller.poll_interval_s = 0.001
    fetch = asyncio.ensure_future(provider.fetch(at(50), at(150), node_id=SERIES))
    await _wait_for_jobs(fake, 1)
    await fake.work("j1", fail=True)
    with pytest.raises(BackfillFailedError) as info:
        await fetch
    assert info.value.missing == [(at(50), at(150))]
    assert "j1" in info.value.reason and "failed" in info.value.reason


async def test_partial_fill_submits_and_does_not_wait(storage, make_provider):
    """PARTIAL_FILL submits the job and returns at once; wait_for_backfills() waits for the job to end."""
    fake = FakeCoordinator(storage)
    provider = make_provider(strategy="partial_fill", storage_source=storage, coordinator=fake)
    provider.backfiller.poll_interval_s = 0.001
    frame = await provider.fetch(at(0), at(100), node_id=SERIES)
    assert len(frame) == 0 and provider.last_fetch_metadata.backfill["started"] == 1
    await _wait_for_jobs(fake, 1)
    assert fake.submitted == [(SERIES, at(0), at(100))]
    waiter = asyncio.ensure_future(provider.wait_for_backfills())
    for _ in range(20):  # let the poller run a few rounds
        await asyncio.sleep(0.001)
    assert not waiter.done() and fake.jobs["j1"]["state"] == "running"
    await fake.work("j1")
    await waiter
    assert await storage.coverage(SERIES) == [(at(0), at(100))]


@pytest.mark.cluster
@pytest.mark.slow
async def test_hundred_concurrent_fetches_through_a_real_cluster(tmp_path, fake_exchange_cls, make_provider):
    """100 concurrent fetches through coordinators and a worker send one exchange request per window."""
    from devkit.stack import start_stack
    from provider.storage import open_storage

    dsn = f"sqlite:///{tmp_path / 'bars.db'}"
    stack = await asyncio.to_thread(start_stack, tmp_path, size=1, window_bars=WINDOW_BARS)
    storage = await open_storage(dsn)
    client = CoordinatorClient(stack.urls)
    try:
        async with fake_exchange_cls(seed=7) as exchange:
            stack.start_worker(f"binance:{exchange.url}", dsn)
            provider = make_provider(strategy="auto_backfill", storage_source=storage, coordinator=client)
            requests = [(at(17 * (i % 9)), at(300 + 41 * (i % 7))) for i in range(100)]
            try:
                frames = await asyncio.wait_for(
                    asyncio.gather(*(provider.fetch(lo, hi, node_id=SERIES) for lo, hi in requests)), 90
                )
            except (TimeoutError, BackfillFailedError) as exc:
                raise AssertionError(f"{exc}\n{stack.logs()}") from exc
            for (lo, hi), frame in zip(requests, frames, strict=True):
                assert len(frame) == (hi - lo) // MIN and ts_ms(frame)[0] == lo
            pd.testing.assert_frame_equal(frames[0], await bars(*requests[0]))
            starts = sorted(start for (_, start) in exchange.by_start)
            assert starts == [at(k * WINDOW_BARS) for k in range(6)]
            assert set(exchange.by_start.values()) == {1}
            assert provider.backfiller.jobs_submitted <= 6
    finally:
        await client.aclose()
        await storage.aclose()
        await asyncio.to_thread(stack.close)
