"""Seams and edges: adjacent windows, single bars, off-grid requests, cache + storage seams, the closed-bar edge."""

from __future__ import annotations

import pandas as pd
import pytest

from provider.errors import DataUnavailableError
from provider.frames import check_frame, ts_ms

from .conftest import MIN, SERIES, at, bars, store


async def test_adjacent_requests_share_no_bar(storage, source, make_provider):
    """Two adjacent requests across a window boundary join into exactly the bars of their union."""
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=source, cache_source=False)
    left = await provider.fetch(at(60), at(100), node_id=SERIES)
    right = await provider.fetch(at(100), at(160), node_id=SERIES)
    joined = pd.concat([left, right], ignore_index=True)
    pd.testing.assert_frame_equal(joined, await bars(at(60), at(160)))
    assert ts_ms(left)[-1] + MIN == ts_ms(right)[0] == at(100)


@pytest.mark.parametrize(
    ("start", "end", "rows"),
    [
        (at(5), at(6), 1),  # one bar on the grid
        (at(5), at(5) + 1, 1),  # one millisecond snaps outward to one bar
        (at(5) + 30_000, at(6) - 1, 1),  # inside one bar
        (at(5) + 30_000, at(10) + 1, 6),  # off-grid both ends: widened to [5m, 11m)
        (at(99), at(101), 2),  # one bar each side of a window boundary
        (at(5), at(5), 0),  # empty range
    ],
)
async def test_single_bar_and_off_grid_requests(start, end, rows, storage, source, make_provider):
    """Requests snap outward to the bar grid; an empty range gives an empty frame with the contract dtypes."""
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=source)
    frame = await provider.fetch(start, end, node_id=SERIES)
    check_frame(frame, interval_ms=MIN)
    assert len(frame) == rows
    lo = (start // MIN) * MIN
    pd.testing.assert_frame_equal(frame, await bars(lo, lo + rows * MIN))
    assert provider.last_fetch_metadata.requested_range == (lo, -((-end) // MIN) * MIN)


async def test_start_after_end_is_an_error(storage, make_provider):
    """A request with start after end raises ValueError naming both values."""
    provider = make_provider(strategy="fail_fast", storage_source=storage)
    with pytest.raises(ValueError, match=f"{at(10)}.*{at(5)}"):
        await provider.fetch(at(10), at(5), node_id=SERIES)


async def test_cache_and_storage_meet_at_the_seam(storage, source, make_provider):
    """A request half in the L1 cache and half in storage returns each bar once, split exactly at the seam."""
    await store(storage, at(0), at(300))
    provider = make_provider(strategy="fail_fast", storage_source=storage, backfiller=source)
    await provider.fetch(at(0), at(150), node_id=SERIES)  # caches [0, 150m)
    frame = await provider.fetch(at(100), at(250), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(100), at(250)))
    meta = provider.last_fetch_metadata
    assert meta.served == {"cache": [(at(100), at(150))], "storage": [(at(150), at(250))]}
    assert meta.cache_hit is False
    inner = await provider.fetch(at(120), at(140), node_id=SERIES)
    pd.testing.assert_frame_equal(inner, await bars(at(120), at(140)))
    assert provider.last_fetch_metadata.cache_hit is True


async def test_storage_serves_two_ranges_around_a_cached_one_from_one_read(storage, source, make_provider):
    """Storage serves the parts on both sides of a cached range (one ledger question, one read over their hull,
    split into one piece per range); the frame has each bar once, and a hole in storage stays missing."""
    await store(storage, at(0), at(120))
    await store(storage, at(180), at(300))
    provider = make_provider(strategy="fail_fast", storage_source=storage, backfiller=source)
    await provider.fetch(at(100), at(110), node_id=SERIES)  # caches [100m, 110m)
    frame = await provider.fetch(at(50), at(115), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(50), at(115)))
    assert provider.last_fetch_metadata.served == {
        "cache": [(at(100), at(110))],
        "storage": [(at(50), at(100)), (at(110), at(115))],
    }
    with pytest.raises(DataUnavailableError) as info:
        await provider.fetch(at(110), at(200), node_id=SERIES)
    assert info.value.missing == [(at(120), at(180))]
    assert source.calls == []


async def test_bars_not_closed_are_never_returned_nor_covered(storage, source, make_provider, clock):
    """A request into the future stops at the last closed bar; the open part is backfilled once it has closed."""
    clock.now_ms = at(250) + 30_000  # the bar at 250m is forming
    provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=source, cache_source=False)
    frame = await provider.fetch(at(200), at(400), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(200), at(250)))
    meta = provider.last_fetch_metadata
    assert meta.effective_range == (at(200), at(250))
    assert meta.not_closed_range == (at(250), at(400))
    assert await storage.coverage(SERIES) == [(at(200), at(250))]
    clock.now_ms = at(320)
    later = await provider.fetch(at(200), at(400), node_id=SERIES)
    pd.testing.assert_frame_equal(later, await bars(at(200), at(320)))
    assert sorted(source.calls) == [(at(200), at(250)), (at(200), at(300)), (at(300), at(320))]


class RangelessStorage:
    """A storage object of another origin, whose ``coverage(series)`` takes no range."""

    def __init__(self, inner):
        self.inner = inner

    async def read(self, series, start, end):
        return await self.inner.read(series, start, end)

    async def coverage(self, series):
        return await self.inner.coverage(series)

    async def write_window(self, series, start, end, frame):
        return await self.inner.write_window(series, start, end, frame)

    async def aclose(self):
        await self.inner.aclose()


async def test_a_fetch_asks_the_ledger_about_its_own_range_only(storage, make_provider, monkeypatch):
    """The storage is asked for the coverage of the request, not of the series' whole history, and the bars
    served are exact; a storage whose coverage takes no range still serves the same bars."""
    await store(storage, at(0), at(300))
    asked = []
    whole = storage.coverage

    async def spy(series, start=None, end=None):
        asked.append((start, end))
        return await whole(series) if start is None else await whole(series, start, end)

    monkeypatch.setattr(storage, "coverage", spy)
    want = await bars(at(50), at(250))
    provider = make_provider(strategy="fail_fast", storage_source=storage, cache_source=False)
    pd.testing.assert_frame_equal(await provider.fetch(at(50), at(250), node_id=SERIES), want)
    assert asked == [(at(50), at(250))]
    legacy = make_provider(strategy="fail_fast", storage_source=RangelessStorage(storage), cache_source=False)
    pd.testing.assert_frame_equal(await legacy.fetch(at(50), at(250), node_id=SERIES), want)
    assert asked[1:] == [(None, None)]
