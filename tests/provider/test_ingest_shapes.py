"""Users' real data through the provider's in-process backfill, on SQLite, PostgreSQL and QuestDB.

Each shape of tests/provider/ingest_shapes.py is what a fetcher returns for the one window of the request: it
ends in the exact bars with its flag in ``last_conformance_report``, or in a ConformancePipelineError naming its
flag with storage unchanged (a FAIL_FAST read afterwards still sees the whole window missing).
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from provider.conformance import ConformancePipelineError
from provider.core import BackfillConfig
from provider.core.obs import new_registry
from provider.errors import DataUnavailableError
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sources import open_source

from .conftest import SERIES, ManualClock, at, bars
from .ingest_shapes import BLOCKED_SHAPES, OK_SHAPES, SHAPES

BACKENDS = [
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("questdb", id="questdb", marks=pytest.mark.questdb),
]
LO, HI = at(0), at(100)  # exactly one window of WINDOW_BARS


class ShapeSource:
    """A fetcher returning the synthetic bars of the request in one shape; counts its calls."""

    name = "shape"

    def __init__(self, shape: str) -> None:
        self.shape = shape
        self.inner = open_source("synthetic:7")
        self.calls = 0

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        self.calls += 1
        raw, _, _ = SHAPES[self.shape](await self.inner.fetch(series, start, end))
        return raw

    async def aclose(self) -> None:
        await self.inner.aclose()


@pytest.fixture(params=BACKENDS)
def dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'bars.db'}"
    server = request.getfixturevalue(request.param)
    return f"{server.dsn}{'&' if '?' in server.dsn else '?'}table=shapes_{secrets.token_hex(4)}"


def _provider(dsn: str, strategy: str, sink: MemoryReportSink, **kwargs: Any) -> SeamlessDataProvider:
    return SeamlessDataProvider(
        strategy=strategy,
        storage_source=dsn,
        cache_source=False,
        clock=ManualClock(),
        registry=new_registry(),
        report_sink=sink,
        backfill_config=BackfillConfig(window_bars=100, retry_backoff_ms=0),
        **kwargs,
    )


@pytest.mark.parametrize("shape", OK_SHAPES)
async def test_lossless_shapes_end_in_the_exact_bars_with_their_flag(dsn, shape):
    """A lossless shape is normalized, stored and returned as the exact bars; its flag is in the report."""
    base = await bars(LO, HI)
    _, expected, flag = SHAPES[shape](base)
    sink = MemoryReportSink()
    async with _provider(dsn, "auto_backfill", sink, backfiller=ShapeSource(shape)) as provider:
        frame = await provider.fetch(LO, HI, node_id=SERIES)
        pd.testing.assert_frame_equal(frame, expected)
        report = provider.last_conformance_report
        assert report is not None and report.ok
        if flag is None:
            assert not report.flag_counts, report.flag_counts
        else:
            assert report.flag_counts.get(flag, 0) > 0, report.flag_counts
            assert [r["source"] for r in report.ingest] == ["shape"]
        await provider.wait_for_backfills()
    async with _provider(dsn, "fail_fast", sink) as reader:
        pd.testing.assert_frame_equal(await reader.fetch(LO, HI, node_id=SERIES), expected)


@pytest.mark.parametrize("shape", BLOCKED_SHAPES)
async def test_lossy_shapes_are_blocked_by_name_and_store_nothing(dsn, shape):
    """A lossy shape raises ConformancePipelineError naming its flag; the report is published; nothing is stored."""
    _, expected, flag = SHAPES[shape](await bars(LO, HI))
    assert expected is None and flag is not None
    sink = MemoryReportSink()
    async with _provider(dsn, "auto_backfill", sink, backfiller=ShapeSource(shape)) as provider:
        with pytest.raises(ConformancePipelineError) as caught:
            await provider.fetch(LO, HI, node_id=SERIES)
        assert flag in caught.value.report.blocking and flag in str(caught.value)
        assert provider.last_conformance_report is caught.value.report
        await provider.wait_for_backfills()
        published = [r for _, r in sink.published]
        assert any(flag in r["blocking"] for r in published)
    async with _provider(dsn, "fail_fast", sink) as reader:
        with pytest.raises(DataUnavailableError) as missing:
            await reader.fetch(LO, HI, node_id=SERIES)
        assert missing.value.missing == [(LO, HI)]


@pytest.mark.parametrize("shape", ["nan_value", "exact_duplicates", "conflicting_duplicate", "outside_window"])
async def test_partial_ok_stores_the_normalized_rest(tmp_path, shape):
    """With partial_ok=True a blocked window stores the rows that pass (the last of conflicting duplicates)."""
    dsn = f"sqlite:///{tmp_path / 'bars.db'}"
    base = await bars(LO, HI)
    sink = MemoryReportSink()
    async with _provider(dsn, "auto_backfill", sink, backfiller=ShapeSource(shape), partial_ok=True) as provider:
        frame = await provider.fetch(LO, HI, node_id=SERIES)
    expected = {
        "nan_value": base.drop(index=5).reset_index(drop=True),
        "exact_duplicates": base,
        "conflicting_duplicate": base.assign(close=base["close"].where(base.index != 3, 1.5)),
        "outside_window": base.iloc[:-1].reset_index(drop=True),
    }[shape]
    pd.testing.assert_frame_equal(frame, expected)
