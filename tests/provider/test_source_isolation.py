"""Sources of any origin: off-grid coverage is trimmed inward to whole bars, a failing cache is skipped, storage
errors surface as the provider's own StorageFailedError."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from provider.core.obs import new_registry
from provider.errors import DataUnavailableError, StorageFailedError
from provider.frames import frame_from_arrays, ts_ms
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.storage import open_storage
from provider.strategies import DataSourcePriority

from .conftest import ManualClock

SERIES_10MS = "ohlcv:test:SYM:10"
STEP = 10


def _bars(start_ms: int, end_ms: int, *, tag: float = 0.0) -> pd.DataFrame:
    stamps = np.arange(start_ms, end_ms, STEP, dtype=np.int64)
    price = stamps.astype(np.float64) + tag
    return frame_from_arrays(stamps, price, price + 1, price - 1, price, np.ones(len(stamps)))


class RangeSource:
    """A DataSource of another origin: fixed coverage ranges (maybe off the grid), bars tagged by their source."""

    def __init__(self, name: str, priority: DataSourcePriority, coverage: list[tuple[int, int]], tag: float) -> None:
        self.name = name
        self.priority = priority
        self.ranges = coverage
        self.tag = tag
        self.calls: list[tuple[int, int]] = []
        self.error: BaseException | None = None

    async def is_available(self, start: int, end: int, *, node_id: str) -> bool:
        return True

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        if self.error is not None:
            raise self.error
        return list(self.ranges)

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        self.calls.append((start, end))
        lo = -((-start) // STEP) * STEP
        return _bars(lo, end, tag=self.tag)


def _provider(cache: Any, storage: Any, strategy: str = "fail_fast") -> SeamlessDataProvider:
    return SeamlessDataProvider(
        strategy=strategy,
        cache_source=cache,
        storage_source=storage,
        conformance=None,
        clock=ManualClock(10**9),
        registry=new_registry(),
        report_sink=MemoryReportSink(),
    )


@pytest.mark.parametrize(
    ("cache_ranges", "storage_ranges", "from_cache"),
    [
        ([(95, 100)], [(0, 200)], []),  # the case: no whole bar in the cache range
        ([(85, 135)], [(0, 200)], [(90, 130)]),  # both bounds off the grid: the whole bars inside serve
        ([(95, 100)], [(-5, 205)], []),  # storage of another origin with off-grid bounds
        ([(-3, 57), (61, 99)], [(45, 203)], [(0, 50), (70, 90)]),
    ],
)
async def test_off_grid_coverage_is_trimmed_inward_and_every_bar_comes_once(cache_ranges, storage_ranges, from_cache):
    """Cache and storage with off-grid coverage serve their whole bars; the request gets each bar exactly once."""
    cache = RangeSource("custom_cache", DataSourcePriority.CACHE, cache_ranges, tag=0.25)
    storage = RangeSource("custom_storage", DataSourcePriority.STORAGE, storage_ranges, tag=0.5)
    async with _provider(cache, storage) as provider:
        frame = await provider.fetch(0, 200, node_id=SERIES_10MS)
        stamps = ts_ms(frame)
        assert stamps.tolist() == list(range(0, 200, STEP))
        served_by_cache = {int(t) for t, tag in zip(stamps, frame["open"] - stamps, strict=True) if tag == 0.25}
        expected_cache = {t for lo, hi in from_cache for t in range(lo, hi, STEP)}
        assert served_by_cache == expected_cache
        assert provider.last_fetch_metadata is not None
        assert provider.last_fetch_metadata.served.get("custom_cache", []) == from_cache


async def test_a_covered_request_is_not_unavailable_because_of_an_off_grid_cache(tmp_path: Path):
    """The issue's scenario with real SQLite storage: [95, 100) in a custom cache, storage covers [0, 200)."""
    storage = await open_storage(f"sqlite:///{tmp_path / 'bars.db'}")
    await storage.write_window(SERIES_10MS, 0, 200, _bars(0, 200))
    cache = RangeSource("custom_cache", DataSourcePriority.CACHE, [(95, 100)], tag=0.25)
    async with _provider(cache, storage) as provider:
        frame = await provider.fetch(0, 200, node_id=SERIES_10MS)
        pd.testing.assert_frame_equal(frame, _bars(0, 200))
    await storage.aclose()


async def test_a_failing_cache_is_skipped_counted_and_noted(tmp_path: Path):
    """A cache whose coverage raises never fails the fetch: storage serves, the metric and metadata say so."""
    storage = await open_storage(f"sqlite:///{tmp_path / 'bars.db'}")
    await storage.write_window(SERIES_10MS, 0, 200, _bars(0, 200))
    cache = RangeSource("flaky_cache", DataSourcePriority.CACHE, [(0, 200)], tag=0.25)
    cache.error = ConnectionResetError("redis went away")
    async with _provider(cache, storage) as provider:
        frame = await provider.fetch(0, 200, node_id=SERIES_10MS)
        pd.testing.assert_frame_equal(frame, _bars(0, 200))
        meta = provider.last_fetch_metadata
        assert meta is not None and meta.outcome == "ok"
        assert meta.skipped_sources == [{"source": "flaky_cache", "error": "ConnectionResetError: redis went away"}]
        assert provider.metrics.sample("seamless_source_errors_total", {"source": "flaky_cache"}) == 1.0
    await storage.aclose()


async def test_storage_errors_surface_as_the_providers_error_with_a_next_step(tmp_path: Path):
    """A closed storage makes the fetch raise StorageFailedError naming the series and what to do next."""
    storage = await open_storage(f"sqlite:///{tmp_path / 'bars.db'}")
    await storage.aclose()
    async with _provider(False, storage) as provider:
        with pytest.raises(StorageFailedError) as caught:
            await provider.fetch(0, 200, node_id=SERIES_10MS)
        assert caught.value.series == SERIES_10MS and "create a new provider" in str(caught.value)
        assert type(caught.value.__cause__).__name__ == "StorageClosedError"
        assert provider.last_fetch_metadata is not None
        assert provider.last_fetch_metadata.outcome == "storage_error"


async def test_an_uncovered_part_is_still_unavailable(tmp_path: Path):
    """Trimming never invents coverage: a request past what any source holds is still DataUnavailableError."""
    cache = RangeSource("custom_cache", DataSourcePriority.CACHE, [(95, 100)], tag=0.25)
    storage = RangeSource("custom_storage", DataSourcePriority.STORAGE, [(0, 195)], tag=0.5)
    async with _provider(cache, storage) as provider:
        with pytest.raises(DataUnavailableError) as caught:
            await provider.fetch(0, 200, node_id=SERIES_10MS)
        assert caught.value.missing == [(190, 200)]
