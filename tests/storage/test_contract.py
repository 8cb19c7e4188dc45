"""The storage contract, run against every backend: memory, SQLite files, real PostgreSQL and real QuestDB."""

from __future__ import annotations

import asyncio
import datetime as dt
import sqlite3
import time
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest

from provider.core import SeriesKey, intersect_ranges
from provider.frames import FRAME_COLUMNS, TS_DTYPE, empty_frame, frame_from_arrays, ts_ms
from provider.storage import (
    FrameRejectedError,
    LedgerWindow,
    Storage,
    StorageClosedError,
    StorageRequestError,
    open_storage,
    parse_dsn,
)

M = 60_000  # one 1m bar
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SERIES = "ohlcv:binance:BTC/USDT:1m"


@pytest.fixture
async def store(storage_dsn: str) -> AsyncIterator[Any]:
    storage = await open_storage(storage_dsn)
    yield storage
    await storage.aclose()


async def snapshot(store: Any, series: str = SERIES) -> tuple[pd.DataFrame, list[tuple[int, int]]]:
    return await store.read(series, 0, T0 + 10_000 * M), await store.coverage(series)


def assert_same_frame(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(FRAME_COLUMNS)
    assert got["ts"].dtype == TS_DTYPE
    assert isinstance(got.index, pd.RangeIndex) and got.index.start == 0
    pd.testing.assert_frame_equal(got, want.reset_index(drop=True), check_exact=True)


async def test_open_storage_returns_a_storage(store):
    """Every backend satisfies the Storage protocol and names its kind."""
    assert isinstance(store, Storage)
    assert store.kind in {"memory", "sqlite", "postgres", "questdb"}


async def test_round_trip_keeps_every_value_and_dtype(store, make_bars):
    """Bars come back bit-for-bit with the contract's dtypes, awkward floats included (-0.0 comes back as 0.0)."""
    frame = make_bars(T0, 60)
    awkward = [5e-324, 1.7976931348623157e308, 0.1 + 0.2, 123456789.123456789, 1e-300, 2.0**53 + 2, -0.0, -1e-310]
    frame.loc[: len(awkward) - 1, "close"] = awkward
    frame.loc[7, "volume"] = 0.0
    await store.write_window(SERIES, T0, T0 + 60 * M, frame)
    got = await store.read(SERIES, T0, T0 + 60 * M)
    assert_same_frame(got, frame)
    frame.loc[6, "close"] = 0.0  # every backend stores a negative zero as 0.0 (SQLite cannot keep the sign)
    for name in ("open", "high", "low", "close", "volume"):
        assert np.array_equal(got[name].to_numpy().view(np.int64), frame[name].to_numpy().view(np.int64))


async def test_empty_results_keep_columns_and_dtypes(store):
    """Reading an unknown series, or an empty range, gives an empty contract frame and no coverage."""
    assert_same_frame(await store.read(SERIES, T0, T0 + M), empty_frame())
    assert_same_frame(await store.read(SERIES, T0, T0), empty_frame())
    assert await store.coverage(SERIES) == []


async def test_write_returns_the_bar_count(store, make_bars):
    """write_window returns how many bars the window now holds."""
    assert await store.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10, skip=(3,))) == 9
    assert await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, empty_frame()) == 0


async def test_rewriting_a_window_is_idempotent(store, make_bars):
    """Writing the same window twice stores each bar once and one covered range."""
    frame = make_bars(T0, 30)
    await store.write_window(SERIES, T0, T0 + 30 * M, frame)
    await store.write_window(SERIES, T0, T0 + 30 * M, frame)
    got, covered = await snapshot(store)
    assert_same_frame(got, frame)
    assert covered == [(T0, T0 + 30 * M)]


@pytest.mark.parametrize(
    "second",
    [
        pytest.param({"skip": (0, 5, 6, 29)}, id="fewer-bars"),
        pytest.param({"seed": 7}, id="new-values"),
        pytest.param({"count": 0}, id="empty"),
    ],
)
async def test_rewriting_a_window_replaces_it(store, make_bars, second):
    """A rewrite leaves exactly the new frame's bars in the window, even when bars disappear."""
    await store.write_window(SERIES, T0, T0 + 30 * M, make_bars(T0, 30, skip=(10,)))
    replacement = make_bars(T0, second.pop("count", 30), **second)
    await store.write_window(SERIES, T0, T0 + 30 * M, replacement)
    got, covered = await snapshot(store)
    assert_same_frame(got, replacement)
    assert covered == [(T0, T0 + 30 * M)]


async def test_rewrite_touches_only_its_window(store, make_bars):
    """Rewriting one window leaves the bars of its neighbours alone."""
    left, middle, right = (make_bars(T0 + k * 10 * M, 10, seed=k) for k in range(3))
    for start, frame in ((T0, left), (T0 + 10 * M, middle), (T0 + 20 * M, right)):
        await store.write_window(SERIES, start, start + 10 * M, frame)
    await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, middle.iloc[[2, 4]])
    got, covered = await snapshot(store)
    assert_same_frame(got, pd.concat([left, middle.iloc[[2, 4]], right]))
    assert covered == [(T0, T0 + 30 * M)]


async def test_remove_duplicates_of_a_clean_store_changes_nothing(store, make_bars):
    """A store without duplicates has no stamp to merge, and its bars and coverage stay as written."""
    frame = make_bars(T0, 30, skip=(4,))
    await store.write_window(SERIES, T0, T0 + 30 * M, frame)
    assert await store.remove_duplicates(SERIES, T0, T0 + 30 * M) == 0
    got, covered = await snapshot(store)
    assert_same_frame(got, frame)
    assert covered == [(T0, T0 + 30 * M)]


async def test_adjacent_and_overlapping_reads_are_exact_at_the_boundaries(store, make_bars):
    """Reads return exactly the bars with ts in [start, end): adjacent reads partition, overlaps agree."""
    frame = make_bars(T0, 120)
    await store.write_window(SERIES, T0, T0 + 60 * M, frame.iloc[:60])
    await store.write_window(SERIES, T0 + 60 * M, T0 + 120 * M, frame.iloc[60:])
    whole = await store.read(SERIES, T0, T0 + 120 * M)
    assert_same_frame(whole, frame)
    for cut in (1, 59, 60, 61, 119):
        left = await store.read(SERIES, T0, T0 + cut * M)
        right = await store.read(SERIES, T0 + cut * M, T0 + 120 * M)
        assert_same_frame(left, frame.iloc[:cut])
        assert_same_frame(right, frame.iloc[cut:])
    overlap = await store.read(SERIES, T0 + 50 * M, T0 + 70 * M)
    assert_same_frame(overlap, frame.iloc[50:70])
    off_grid = await store.read(SERIES, T0 + 10 * M + 1, T0 + 12 * M + 1)
    assert_same_frame(off_grid, frame.iloc[11:13])


async def test_reads_accept_datetimes_and_iso_strings(store, make_bars):
    """Bounds may be datetimes, pd.Timestamps or ISO-8601 strings, naive meaning UTC."""
    frame = make_bars(T0, 10)
    await store.write_window(SERIES, "2024-01-01T00:00:00Z", dt.datetime(2024, 1, 1, 0, 10), frame)
    got = await store.read(SERIES, pd.Timestamp("2024-01-01 00:02", tz="UTC"), "2024-01-01T00:05:00")
    assert_same_frame(got, frame.iloc[2:5])


async def test_coverage_after_writes_rewrites_and_empty_windows_is_exact(store, make_bars):
    """Coverage is the merged union of written windows, empty ones included, unchanged by rewrites."""
    await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, make_bars(T0 + 10 * M, 10))
    assert await store.coverage(SERIES) == [(T0 + 10 * M, T0 + 20 * M)]
    await store.write_window(SERIES, T0, T0 + 10 * M, empty_frame())
    assert await store.coverage(SERIES) == [(T0, T0 + 20 * M)]
    await store.write_window(SERIES, T0 + 40 * M, T0 + 50 * M, make_bars(T0 + 40 * M, 10, skip=(0, 9)))
    await store.write_window(SERIES, T0 + 30 * M, T0 + 40 * M, empty_frame())
    await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, empty_frame())
    await store.write_window(SERIES, T0 + 70 * M, T0 + 80 * M, empty_frame())
    assert await store.coverage(SERIES) == [(T0, T0 + 20 * M), (T0 + 30 * M, T0 + 50 * M), (T0 + 70 * M, T0 + 80 * M)]
    assert await store.coverage("ohlcv:binance:BTC/USDT:5m") == []


async def test_overlapping_windows_merge_in_coverage(store, make_bars):
    """Windows that overlap or nest merge into one covered range."""
    await store.write_window(SERIES, T0, T0 + 30 * M, make_bars(T0, 30))
    await store.write_window(SERIES, T0 + 5 * M, T0 + 10 * M, make_bars(T0 + 5 * M, 5))
    await store.write_window(SERIES, T0 + 20 * M, T0 + 45 * M, make_bars(T0 + 20 * M, 25))
    assert await store.coverage(SERIES) == [(T0, T0 + 45 * M)]


async def test_coverage_within_a_range_is_the_whole_coverage_clipped_to_it(store):
    """coverage(series, start, end) equals the whole coverage clipped to [start, end), wherever the range cuts:
    through overlapping, nested and adjacent windows, in a gap, off the grid, empty, or around everything."""
    for lo, hi in [(0, 10), (5, 20), (20, 30), (40, 50), (45, 46), (70, 80)]:
        await store.write_window(SERIES, T0 + lo * M, T0 + hi * M, empty_frame())
    whole = await store.coverage(SERIES)
    assert whole == [(T0, T0 + 30 * M), (T0 + 40 * M, T0 + 50 * M), (T0 + 70 * M, T0 + 80 * M)]
    cuts = [(0, 200), (15, 35), (20, 30), (25, 25), (31, 39), (44, 71), (80, 90), (-5, 1), (79, 80)]
    for lo, hi in cuts:
        start, end = T0 + lo * M, T0 + hi * M
        assert await store.coverage(SERIES, start, end) == intersect_ranges(whole, [(start, end)]), (lo, hi)
    off_grid = (T0 + 3 * M + 1, T0 + 47 * M - 1)
    assert await store.coverage(SERIES, *off_grid) == intersect_ranges(whole, [off_grid])
    assert await store.coverage("ohlcv:binance:BTC/USDT:5m", T0, T0 + 100 * M) == []


async def test_coverage_within_a_range_needs_both_bounds_in_order(store):
    """One bound alone, or start after end, is refused naming the bound."""
    with pytest.raises(StorageRequestError, match="end"):
        await store.coverage(SERIES, T0, None)
    with pytest.raises(StorageRequestError, match="start"):
        await store.coverage(SERIES, T0 + M, T0)


async def test_empty_window_write_is_a_no_op_when_start_equals_end(store):
    """A zero-length window stores nothing and covers nothing."""
    assert await store.write_window(SERIES, T0, T0, empty_frame()) == 0
    assert await store.coverage(SERIES) == []


def _bad_frames(make_bars: Any) -> dict[str, tuple[str, pd.DataFrame | Any]]:
    good = make_bars(T0, 10)
    conflicting = pd.concat([good.iloc[:3], good.iloc[2:3].assign(close=-1.0)], ignore_index=True)
    off_grid = good.copy()
    off_grid.loc[4, "ts"] = off_grid.loc[4, "ts"] + pd.Timedelta(seconds=30)
    sub_ms = good.copy()
    sub_ms.loc[4, "ts"] = sub_ms.loc[4, "ts"] + pd.Timedelta(microseconds=1)
    nan, inf, nat = good.copy(), good.copy(), good.copy()
    nan.loc[3, "high"] = np.nan
    inf.loc[3, "volume"] = -np.inf
    nat.loc[3, "ts"] = pd.NaT
    outside = make_bars(T0 + 5 * M, 10)
    before = make_bars(T0 - M, 3)
    huge = good.assign(volume=np.arange(10, dtype=np.int64) + 2**53 + 1)
    return {
        "conflicting-duplicate": ("conflicting_duplicate", conflicting),
        "off-grid": ("off_grid", off_grid),
        "sub-millisecond": ("off_grid", sub_ms),
        "nan": ("non_finite", nan),
        "inf": ("non_finite", inf),
        "nat": ("invalid_timestamp", nat),
        "after-window": ("out_of_range", outside),
        "before-window": ("out_of_range", before),
        "missing-column": ("missing_column", good.drop(columns=["volume"])),
        "extra-column": ("extra_column", good.assign(trades=1.0)),
        "epoch-int-ts": ("dtype_mismatch", good.assign(ts=ts_ms(good))),
        "bool-prices": ("dtype_mismatch", good.assign(open=True)),
        "int-beyond-2**53": ("precision_loss", huge),
        "not-a-frame": ("type", good.to_dict()),
    }


BAD = [
    "conflicting-duplicate", "off-grid", "sub-millisecond", "nan", "inf", "nat", "after-window", "before-window",
    "missing-column", "extra-column", "epoch-int-ts", "bool-prices", "int-beyond-2**53", "not-a-frame",
]  # fmt: skip


@pytest.mark.parametrize("case", BAD)
async def test_bad_frames_are_refused_and_leave_the_store_unchanged(store, make_bars, case):
    """A frame that would lose or invent data raises FrameRejectedError naming the problem; nothing changes."""
    original = make_bars(T0, 10, seed=5)
    await store.write_window(SERIES, T0, T0 + 10 * M, original)
    before = await snapshot(store)
    problem, frame = _bad_frames(make_bars)[case]
    with pytest.raises(FrameRejectedError) as caught:
        await store.write_window(SERIES, T0, T0 + 10 * M, frame)
    assert caught.value.problem == problem
    assert isinstance(caught.value, ValueError)
    assert problem in str(caught.value) and SERIES in str(caught.value)
    after = await snapshot(store)
    assert_same_frame(after[0], before[0])
    assert after[1] == before[1]


def _lossless_frames(make_bars: Any) -> dict[str, pd.DataFrame]:
    """Frames equal to ``make_bars(T0, 10)`` in every bar, in shapes users build (prices integral where cast)."""
    good = make_bars(T0, 10).assign(volume=np.arange(10, dtype=np.float64) * 3, open=np.arange(10) + 100.0)
    naive = good["ts"].dt.tz_localize(None)
    return {
        "ts-us": good.assign(ts=good["ts"].dt.as_unit("us")),
        "ts-ms": good.assign(ts=good["ts"].dt.as_unit("ms")),
        "ts-s": good.assign(ts=good["ts"].dt.as_unit("s")),
        "naive-ts": good.assign(ts=naive),
        "naive-ts-ms": good.assign(ts=naive.dt.as_unit("ms")),
        "tz-tokyo": good.assign(ts=good["ts"].dt.tz_convert("Asia/Tokyo")),
        "tz-new-york-us": good.assign(ts=good["ts"].dt.tz_convert("America/New_York").dt.as_unit("us")),
        "int-volume": good.assign(volume=(np.arange(10) * 3).astype(np.int64)),
        "int32-open": good.assign(open=(np.arange(10) + 100).astype(np.int32)),
        "float32-open": good.assign(open=(np.arange(10) + 100).astype(np.float32)),
        "nullable-int-volume": good.assign(volume=pd.array(np.arange(10) * 3, dtype="Int64")),
        "reordered-columns": good[["volume", "close", "ts", "open", "low", "high"]],
        "unsorted": good.iloc[::-1],
        "exact-duplicates": pd.concat([good, good.iloc[2:5]], ignore_index=True),
        "non-default-index": good.set_index(pd.Index(np.arange(10) * 7)),
    }


LOSSLESS = [
    "ts-us", "ts-ms", "ts-s", "naive-ts", "naive-ts-ms", "tz-tokyo", "tz-new-york-us", "int-volume", "int32-open",
    "float32-open", "nullable-int-volume", "reordered-columns", "unsorted", "exact-duplicates", "non-default-index",
]  # fmt: skip


@pytest.mark.parametrize("case", LOSSLESS)
async def test_lossless_shapes_are_stored_as_the_exact_bars(store, make_bars, case):
    """Every lossless shape is accepted and reads back as the same bars in the contract dtypes (ts in ns, UTC)."""
    expected = make_bars(T0, 10).assign(volume=np.arange(10, dtype=np.float64) * 3, open=np.arange(10) + 100.0)
    frame = _lossless_frames(make_bars)[case]
    assert await store.write_window(SERIES, T0, T0 + 10 * M, frame) == 10
    stored = await store.read(SERIES, T0, T0 + 10 * M)
    assert str(stored["ts"].dtype) == "datetime64[ns, UTC]"
    assert_same_frame(stored, expected)
    assert await store.coverage(SERIES) == [(T0, T0 + 10 * M)]


@pytest.mark.parametrize(
    ("series", "start", "end", "field"),
    [
        pytest.param("BTC/USDT", T0, T0 + M, "series", id="bad-series"),
        pytest.param(SERIES, T0 + M, T0, "start", id="start-after-end"),
        pytest.param(SERIES, T0 + 1, T0 + M, "start", id="start-off-grid"),
        pytest.param(SERIES, T0, T0 + M + 1, "end", id="end-off-grid"),
        pytest.param(SERIES, "yesterday", T0, "start", id="start-not-a-time"),
        pytest.param(SERIES, T0, 1e20, "end", id="end-not-a-time"),
    ],
)
async def test_bad_window_bounds_are_refused(store, series, start, end, field):
    """Bad series keys and window bounds raise StorageRequestError naming the field; nothing is stored."""
    with pytest.raises(StorageRequestError) as caught:
        await store.write_window(series, start, end, empty_frame())
    assert caught.value.field == field
    assert await store.coverage(SERIES) == []


async def test_read_with_start_after_end_is_refused(store):
    """A read range with start > end is an error naming both values."""
    with pytest.raises(StorageRequestError, match=f"{T0 + M}.*{T0}"):
        await store.read(SERIES, T0 + M, T0)


async def test_concurrent_writers_of_different_windows_lose_no_rows(storage_dsn, make_bars):
    """Eight writers (two storage objects) writing different windows of one series at once keep every bar."""
    first, second = await open_storage(storage_dsn), await open_storage(storage_dsn)
    if first.kind == "memory":  # separate memory:// stores share nothing; use one object twice
        await second.aclose()
        second = first
    try:
        frames = [make_bars(T0 + k * 50 * M, 50, seed=k, skip=(k,)) for k in range(8)]
        writers = [
            (first if k % 2 else second).write_window(SERIES, T0 + k * 50 * M, T0 + (k + 1) * 50 * M, frames[k])
            for k in range(8)
        ]
        assert await asyncio.gather(*writers) == [49] * 8
        got = await first.read(SERIES, T0, T0 + 400 * M)
        assert_same_frame(got, pd.concat(frames))
        assert await second.coverage(SERIES) == [(T0, T0 + 400 * M)]
    finally:
        await first.aclose()
        await second.aclose()


SYMBOLS = [
    "BTC/USDT",
    "BTC/USDT:USDT",
    "it's",
    'say "hi"',
    "x'; DROP TABLE ohlcv; --",
    "a\\b, c=d e",
    "ünïcødé/€",
]


async def test_symbols_are_stored_verbatim_and_cannot_inject_sql(store, make_bars):
    """Symbols with '/', ':', quotes, backslashes and SQL text are separate series stored verbatim."""
    for number, symbol in enumerate(SYMBOLS):
        key = SeriesKey("binance", symbol, "1m")
        await store.write_window(key, T0, T0 + 10 * M, make_bars(T0, 10, seed=number))
    for number, symbol in enumerate(SYMBOLS):
        key = SeriesKey("binance", symbol, "1m")
        assert_same_frame(await store.read(str(key), T0, T0 + 10 * M), make_bars(T0, 10, seed=number))
        assert await store.coverage(key) == [(T0, T0 + 10 * M)]
    assert await store.coverage("ohlcv:binance:BTC:1m") == []


async def test_series_with_other_intervals_or_sources_are_separate(store, make_bars):
    """The same symbol under another interval or source is a different series."""
    await store.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10, seed=1))
    five = make_bars(T0, 4, step_ms=5 * M, seed=2)
    await store.write_window("ohlcv:binance:BTC/USDT:5m", T0, T0 + 20 * M, five)
    await store.write_window("ohlcv:ccxt_kraken:BTC/USDT:1m", T0, T0 + 10 * M, empty_frame())
    assert_same_frame(await store.read(SERIES, T0, T0 + 20 * M), make_bars(T0, 10, seed=1))
    assert_same_frame(await store.read("ohlcv:binance:BTC/USDT:5m", T0, T0 + 20 * M), five)
    assert len(await store.read("ohlcv:ccxt_kraken:BTC/USDT:1m", T0, T0 + 20 * M)) == 0
    assert await store.coverage("ohlcv:binance:BTC/USDT:5m") == [(T0, T0 + 20 * M)]


async def test_daily_bars_sit_on_midnight_utc(store):
    """1d windows and bars are keyed at 00:00 UTC; a bar at another hour is off the grid."""
    day = 86_400_000
    frame = frame_from_arrays(T0 + np.arange(3) * day, *(np.ones(3) * k for k in range(1, 6)))
    await store.write_window("ohlcv:binance:ETH/USDT:1d", T0, T0 + 3 * day, frame)
    assert_same_frame(await store.read("ohlcv:binance:ETH/USDT:1d", T0, T0 + 3 * day), frame)
    shifted = frame.assign(ts=frame["ts"] + pd.Timedelta(hours=1))
    with pytest.raises(FrameRejectedError, match="off_grid"):
        await store.write_window("ohlcv:binance:ETH/USDT:1d", T0, T0 + 4 * day, shifted)


async def test_a_write_is_visible_to_another_storage_object(shared_dsn, make_bars):
    """When write_window returns, a read through a second connection already sees it."""
    writer, reader = await open_storage(shared_dsn), await open_storage(shared_dsn)
    try:
        for k in range(3):
            frame = make_bars(T0 + k * 10 * M, 10, seed=k)
            await writer.write_window(SERIES, T0 + k * 10 * M, T0 + (k + 1) * 10 * M, frame)
            assert_same_frame(await reader.read(SERIES, T0 + k * 10 * M, T0 + (k + 1) * 10 * M), frame)
            assert await reader.coverage(SERIES) == [(T0, T0 + (k + 1) * 10 * M)]
    finally:
        await writer.aclose()
        await reader.aclose()


async def test_closed_storage_refuses_calls(storage_dsn):
    """After aclose every call raises StorageClosedError, and aclose may be called again."""
    storage = await open_storage(storage_dsn)
    await storage.aclose()
    await storage.aclose()
    with pytest.raises(StorageClosedError):
        await storage.read(SERIES, T0, T0 + M)
    with pytest.raises(StorageClosedError):
        await storage.coverage(SERIES)
    with pytest.raises(StorageClosedError):
        await storage.write_window(SERIES, T0, T0 + M, empty_frame())


async def test_storage_is_an_async_context_manager(storage_dsn, make_bars):
    """``async with`` closes the storage on exit."""
    async with await open_storage(storage_dsn) as storage:
        await storage.write_window(SERIES, T0, T0 + 2 * M, make_bars(T0, 2))
    with pytest.raises(StorageClosedError):
        await storage.coverage(SERIES)


def _rows(windows: list[LedgerWindow]) -> list[tuple[int, int, int, str | None]]:
    return [(w.start_ms - T0, w.end_ms - T0, w.rows, w.source) for w in windows]


async def test_the_ledger_names_the_source_of_each_window(store, make_bars):
    """windows() returns the ledger rows in start order (bounds, bar count, source, when written); a rewrite
    replaces the row, source included, and a write that names no source records None."""
    before_ms = time.time_ns() // 1_000_000
    await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, make_bars(T0 + 10 * M, 10), source="binance")
    await store.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10, skip=(3,)), source="binance")
    await store.write_window(SERIES, T0 + 30 * M, T0 + 40 * M, empty_frame())
    replacement = make_bars(T0 + 10 * M, 10, seed=1, skip=(0, 4))
    await store.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, replacement, source="ccxt:okx")
    after_ms = time.time_ns() // 1_000_000
    windows = await store.windows(SERIES)
    assert _rows(windows) == [(0, 10 * M, 9, "binance"), (10 * M, 20 * M, 8, "ccxt:okx"), (30 * M, 40 * M, 0, None)]
    assert all(isinstance(w, LedgerWindow) for w in windows)
    # the servers run on this machine: one clock, give or take a second of rounding
    assert all(before_ms - 1000 <= w.written_at_ms <= after_ms + 1000 for w in windows)
    assert_same_frame(await store.read(SERIES, T0 + 10 * M, T0 + 20 * M), replacement)
    assert await store.coverage(SERIES) == [(T0, T0 + 20 * M), (T0 + 30 * M, T0 + 40 * M)]

    await store.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10, skip=(3,)))
    assert _rows(await store.windows(SERIES))[0] == (0, 10 * M, 9, None)


async def test_ledger_windows_within_bounds_are_those_overlapping_them(store):
    """windows(series, start, end) keeps the windows overlapping [start, end), unclipped; either bound may be
    left out; an empty range has none; start after end is refused."""
    for lo, hi, source in [(0, 10, "a"), (10, 20, "b"), (25, 30, "c")]:
        await store.write_window(SERIES, T0 + lo * M, T0 + hi * M, empty_frame(), source=source)

    async def sources(start: Any = None, end: Any = None) -> list[str | None]:
        return [w.source for w in await store.windows(SERIES, start, end)]

    assert await sources(T0 + 5 * M, T0 + 26 * M) == ["a", "b", "c"]
    assert await sources(T0 + 10 * M, T0 + 20 * M) == ["b"]
    assert await sources(T0 + 20 * M, T0 + 25 * M) == []
    assert await sources(T0 + 10 * M) == ["b", "c"]
    assert await sources(end=T0 + 10 * M) == ["a"]
    assert await sources(T0 + 5 * M, T0 + 5 * M) == []
    assert _rows(await store.windows(SERIES, T0 + 12 * M, T0 + 13 * M)) == [(10 * M, 20 * M, 0, "b")]
    assert await store.windows("ohlcv:binance:BTC/USDT:5m") == []
    with pytest.raises(StorageRequestError, match="start"):
        await store.windows(SERIES, T0 + M, T0)
    with pytest.raises(StorageRequestError, match="source"):
        await store.write_window(SERIES, T0, T0 + M, empty_frame(), source=7)


# The CREATE statements of the version before the ledger had a source column.
_OLD_SCHEMA = {
    "sqlite": [
        'CREATE TABLE "{t}_series" (id INTEGER PRIMARY KEY, series TEXT NOT NULL UNIQUE, '
        "source TEXT NOT NULL, symbol TEXT NOT NULL, interval TEXT NOT NULL)",
        'CREATE TABLE "{t}" (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, open REAL NOT NULL, '
        "high REAL NOT NULL, low REAL NOT NULL, close REAL NOT NULL, volume REAL NOT NULL, "
        "PRIMARY KEY (series_id, ts)) WITHOUT ROWID",
        'CREATE TABLE "{t}_windows" (series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, '
        "end_ms INTEGER NOT NULL, row_count INTEGER NOT NULL, written_at INTEGER NOT NULL, "
        "PRIMARY KEY (series_id, start_ms)) WITHOUT ROWID",
        """INSERT INTO "{t}_series" VALUES (1, '{s}', 'binance', 'BTC/USDT', '1m')""",
        'INSERT INTO "{t}" VALUES (1, {t0}, 1, 2, 0.5, 1.5, 10)',
        'INSERT INTO "{t}_windows" VALUES (1, {t0}, {t1}, 1, 0)',
    ],
    "postgres": [
        'CREATE TABLE "{t}_series" (id integer GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY, '
        "series text NOT NULL UNIQUE, source text NOT NULL, symbol text NOT NULL, interval text NOT NULL)",
        'CREATE TABLE "{t}" (series_id integer NOT NULL REFERENCES "{t}_series" (id), ts timestamptz NOT NULL, '
        "open double precision NOT NULL, high double precision NOT NULL, low double precision NOT NULL, "
        "close double precision NOT NULL, volume double precision NOT NULL, PRIMARY KEY (series_id, ts))",
        'CREATE TABLE "{t}_windows" (series_id integer NOT NULL REFERENCES "{t}_series" (id), '
        "start_ms bigint NOT NULL, end_ms bigint NOT NULL, row_count integer NOT NULL, "
        "written_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (series_id, start_ms), "
        "CHECK (end_ms > start_ms))",
        """INSERT INTO "{t}_series" (id, series, source, symbol, interval) """
        """VALUES (1, '{s}', 'binance', 'BTC/USDT', '1m')""",
        """INSERT INTO "{t}" VALUES (1, to_timestamp({t0} / 1000.0), 1, 2, 0.5, 1.5, 10)""",
        'INSERT INTO "{t}_windows" (series_id, start_ms, end_ms, row_count) VALUES (1, {t0}, {t1}, 1)',
    ],
    "questdb": [
        'CREATE TABLE "{t}" (series SYMBOL CAPACITY 4096 CACHE, ts TIMESTAMP, open DOUBLE, high DOUBLE, '
        "low DOUBLE, close DOUBLE, volume DOUBLE) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, series)",
        'CREATE TABLE "{t}_windows" (series SYMBOL CAPACITY 4096 CACHE, ts TIMESTAMP, start_ms LONG, '
        "end_ms LONG, row_count LONG, written_at TIMESTAMP) "
        "TIMESTAMP(ts) PARTITION BY YEAR WAL DEDUP UPSERT KEYS(ts, series)",
        """INSERT INTO "{t}" VALUES ('{s}', {t0}000, 1, 2, 0.5, 1.5, 10)""",
        """INSERT INTO "{t}_windows" VALUES ('{s}', {t0}000, {t0}, {t1}, 1, 0)""",
    ],
}


async def _create_old_schema(dsn: str) -> None:
    """The tables of the previous version, holding one bar and its window, made through the backend's driver."""
    parsed = parse_dsn(dsn)
    statements = [sql.format(t=parsed.table, s=SERIES, t0=T0, t1=T0 + 10 * M) for sql in _OLD_SCHEMA[parsed.kind]]
    if parsed.kind == "sqlite":
        with sqlite3.connect(parsed.path or "") as conn:
            for sql in statements:
                conn.execute(sql)
        return
    conn = await asyncpg.connect(parsed.pg_dsn())
    try:
        for sql in statements:
            await conn.execute(sql)
        if parsed.kind == "questdb":  # WAL tables apply asynchronously: wait until both rows are visible
            async with asyncio.timeout(60):
                for table in (parsed.table, f"{parsed.table}_windows"):
                    while not await conn.fetchval(f'SELECT count() FROM "{table}"'):
                        await asyncio.sleep(0.01)
    finally:
        await conn.close()


async def test_a_ledger_of_the_previous_version_gets_its_source_column_at_open(shared_dsn):
    """Tables made by the version without ``source`` are upgraded on open, also by several openers at once (one
    adds the column, the others find it): the old window stays covered with source None, and new writes record
    theirs."""
    await _create_old_schema(shared_dsn)
    storages = await asyncio.gather(*(open_storage(shared_dsn) for _ in range(3)))
    try:
        for storage in storages:
            assert await storage.coverage(SERIES) == [(T0, T0 + 10 * M)]
            assert len(await storage.read(SERIES, T0, T0 + 10 * M)) == 1
            assert _rows(await storage.windows(SERIES, T0, T0 + 10 * M)) == [(0, 10 * M, 1, None)]
    finally:
        for storage in storages:
            await storage.aclose()
    async with await open_storage(shared_dsn) as storage:
        await storage.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, empty_frame(), source="ccxt:okx")
        assert _rows(await storage.windows(SERIES)) == [(0, 10 * M, 1, None), (10 * M, 20 * M, 0, "ccxt:okx")]
        assert await storage.coverage(SERIES) == [(T0, T0 + 20 * M)]
