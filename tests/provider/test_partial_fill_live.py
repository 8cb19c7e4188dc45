"""PARTIAL_FILL in the background, background work lifecycle, the live feed and the SEAMLESS seam."""

from __future__ import annotations

import asyncio

import pandas as pd

from provider.frames import ts_ms
from provider.live import PollingLiveFeed
from provider.sources import open_source

from .conftest import MIN, SERIES, CountingSource, ManualClock, at, bars, store


async def test_partial_fill_returns_before_the_backfill_and_wait_sees_it(storage, make_provider):
    """PARTIAL_FILL answers from storage while its backfill is still blocked; wait_for_backfills() then sees it."""
    gate = asyncio.Event()
    slow = CountingSource(open_source("synthetic:7"), gate=gate)
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="partial_fill", storage_source=storage, backfiller=slow)
    frame = await provider.fetch(at(0), at(300), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(0), at(100)))
    assert provider.backfiller.active == 2 and not gate.is_set()
    assert provider.last_fetch_metadata.backfill["started"] == 2
    again = await provider.fetch(at(50), at(300), node_id=SERIES)  # joins the same flights
    assert len(again) == 50 and provider.last_fetch_metadata.backfill["shared"] == 2
    gate.set()
    await provider.wait_for_backfills()
    assert provider.backfiller.active == 0
    assert sorted(slow.calls) == [(at(100), at(200)), (at(200), at(300))]
    assert await storage.coverage(SERIES) == [(at(0), at(300))]
    complete = await provider.fetch(at(0), at(300), node_id=SERIES)
    pd.testing.assert_frame_equal(complete, await bars(at(0), at(300)))


async def test_aclose_cancels_background_backfills(storage, make_provider):
    """Closing the provider cancels its background backfills and leaves no task running."""
    gate = asyncio.Event()
    slow = CountingSource(open_source("synthetic:7"), gate=gate)
    provider = make_provider(strategy="partial_fill", storage_source=storage, backfiller=slow)
    await provider.fetch(at(0), at(200), node_id=SERIES)
    tickets = list(provider.backfiller.flights._flights.values())
    assert provider.backfiller.active == 2
    await provider.aclose()
    assert provider.backfiller.active == 0
    assert all(f.future.done() for f in tickets)
    assert await storage.coverage(SERIES) == []


def _forming_fetcher(clock, *, lag_ms=0):
    """A live fetcher returning, like Binance, the forming bar too; with ``lag_ms`` a bar appears that long after
    it closed (and the forming bar is not shown)."""
    inner = open_source("synthetic:7")

    class Fetcher:
        def __init__(self):
            self.calls = []

        async def fetch(self, series, start, end):
            self.calls.append((start, end))
            visible_end = ((clock() - lag_ms) // MIN) * MIN + (0 if lag_ms else MIN)
            frame = await inner.fetch(series, start, max(start, min(end + MIN, visible_end)))
            return frame

    return Fetcher()


async def test_subscribe_sleeps_to_bar_boundaries_and_yields_closed_bars_once():
    """subscribe() sleeps exactly to each boundary, yields each closed bar once in order, never the forming bar."""
    clock = ManualClock(at(10) + 20_000)
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)
        clock.advance(round(seconds * 1000))

    feed = PollingLiveFeed(_forming_fetcher(clock), clock=clock, sleep=sleep)
    stream = feed.subscribe(node_id=SERIES)
    got = [await anext(stream) for _ in range(3)]
    await stream.aclose()
    assert [list(ts_ms(f)) for f in got] == [[at(10)], [at(11)], [at(12)]]
    assert sleeps == [40.0, 60.0, 60.0]
    for frame in got:
        pd.testing.assert_frame_equal(frame, await bars(int(ts_ms(frame)[0]), int(ts_ms(frame)[0]) + MIN))


async def test_subscribe_polls_again_when_the_bar_is_late_and_catches_up_from_start():
    """A late bar is polled for every poll_delay_ms; a start in the past first yields the backlog in one frame."""
    clock = ManualClock(at(10))
    sleeps: list[float] = []

    async def sleep(seconds):
        sleeps.append(seconds)
        clock.advance(round(seconds * 1000))

    feed = PollingLiveFeed(_forming_fetcher(clock, lag_ms=600), clock=clock, sleep=sleep, poll_delay_ms=250)
    stream = feed.subscribe(node_id=SERIES, start=at(5))
    backlog = await anext(stream)
    assert list(ts_ms(backlog)) == [at(m) for m in range(5, 9)]  # bar 9 is not visible yet (600 ms lag)
    nxt = await anext(stream)
    await stream.aclose()
    assert list(ts_ms(nxt)) == [at(9)]
    assert sleeps == [0.25, 0.25, 0.25]


async def test_seamless_joins_storage_and_live_at_the_seam(storage, make_provider, clock):
    """SEAMLESS serves history from storage and recent bars from the live feed, no bar missing or doubled."""
    clock.now_ms = at(650) + 30_000
    await store(storage, at(300), at(600))
    backfill = CountingSource(open_source("synthetic:7"))
    live_fetcher = _forming_fetcher(clock)
    feed = PollingLiveFeed(live_fetcher, lookback_bars=100, clock=clock)
    provider = make_provider(strategy="seamless", storage_source=storage, backfiller=backfill, live_feed=feed)
    frame = await provider.fetch(at(400), at(700), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(400), at(650)))
    meta = provider.last_fetch_metadata
    assert meta.served == {"storage": [(at(400), at(600))], "live": [(at(600), at(650))]}
    assert meta.not_closed_range == (at(650), at(700))
    assert backfill.calls == []
    assert "live" in meta.served and len(provider.cache.l1) == 0  # live tails are not cached


async def test_seamless_backfills_what_the_live_feed_lacks(storage, make_provider, clock):
    """Bars the live feed has not published yet are backfilled, and the seam stays exact."""
    clock.now_ms = at(650) + 1_000
    await store(storage, at(300), at(600))
    backfill = CountingSource(open_source("synthetic:7"))
    feed = PollingLiveFeed(_forming_fetcher(clock, lag_ms=2 * MIN), lookback_bars=100, clock=clock)
    provider = make_provider(strategy="seamless", storage_source=storage, backfiller=backfill, live_feed=feed)
    frame = await provider.fetch(at(550), at(650), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(550), at(650)))
    meta = provider.last_fetch_metadata
    assert meta.served["live"] == [(at(600), at(648))]
    assert meta.served["backfill"] == [(at(648), at(650))]
    assert backfill.calls == [(at(600), at(650))]
