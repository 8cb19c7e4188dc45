"""EnhancedQuestDBProvider and the legacy QuestDBLoader against a real QuestDB; the QMTL fetcher adapter."""

from __future__ import annotations

import itertools
import secrets

import pandas as pd
import pytest

from provider.conformance import normalize_bars
from provider.core import window_ranges
from provider.core.obs import new_registry
from provider.frames import ts_ms
from provider.questdb_provider import (
    EnhancedQuestDBProvider,
    QMTLFetcherAdapter,
    QuestDBLoader,
    adapt_fetcher,
    questdb_storage,
)
from provider.reports import MemoryReportSink
from provider.sources import open_source

from .conftest import MIN, NOW, SERIES, CountingSource, ManualClock, at, bars

_TABLES = itertools.count(1)


def _table() -> str:
    return f"prov{next(_TABLES)}_{secrets.token_hex(3)}"


class QMTLStyleFetcher:
    """A QMTL DataFetcher: epoch seconds in, a frame with int-seconds ts out."""

    def __init__(self):
        self.inner = open_source("synthetic:7")
        self.calls = []

    async def fetch(self, start, end, *, node_id, interval):
        self.calls.append((start, end, interval))
        frame = await self.inner.fetch(node_id, start * 1000, end * 1000)
        return frame.assign(ts=ts_ms(frame) // 1000)


async def test_qmtl_fetcher_adapter_converts_seconds():
    """A QMTL fetcher gets epoch seconds; its int-seconds frame passes unchanged to the ingest conformance, which
    turns it into the contract frame with a ts_cast flag."""
    qmtl = QMTLStyleFetcher()
    adapted = adapt_fetcher(qmtl)
    assert isinstance(adapted, QMTLFetcherAdapter)
    source = open_source("synthetic:7")
    assert adapt_fetcher(source) is source
    raw = await adapted.fetch(SERIES, at(0), at(10))
    frame, report = normalize_bars(raw, series=SERIES, interval_ms=MIN, start_ms=at(0), end_ms=at(10))
    pd.testing.assert_frame_equal(frame, await bars(at(0), at(10)))
    assert report.ok and "ts_cast" in report.flag_counts and "as s ->" in report.flags[0].detail
    assert qmtl.calls == [(at(0) // 1000, at(10) // 1000, 60)]


class DuplicatingQMTLFetcher(QMTLStyleFetcher):
    """A QMTL fetcher whose pages overlap: every bar of the answer's second half comes twice."""

    async def fetch(self, start, end, *, node_id, interval):
        frame = await super().fetch(start, end, node_id=node_id, interval=interval)
        return pd.concat([frame, frame.iloc[len(frame) // 2 :]], ignore_index=True)


@pytest.mark.questdb
async def test_qmtl_fetcher_duplicates_are_flagged_not_dropped_silently(questdb):
    """Overlapping pages of a QMTL-style fetcher are stored once and flagged duplicate_ts in the fetch's report."""
    provider = EnhancedQuestDBProvider(
        questdb.dsn,
        fetcher=DuplicatingQMTLFetcher(),
        table=_table(),
        clock=ManualClock(NOW),
        registry=new_registry(),
        report_sink=MemoryReportSink(),
    )
    async with provider:
        frame = await provider.fetch(at(0), at(100), node_id=SERIES)
        pd.testing.assert_frame_equal(frame, await bars(at(0), at(100)))
        report = provider.last_conformance_report
        assert report is not None and report.ok
        assert report.flag_counts["duplicate_ts"] > 0 and report.flag_counts["ts_cast"] > 0
        assert [r["source"] for r in report.ingest] == ["qmtl"]


def test_dsn_must_name_a_questdb():
    """Only questdb:// and postgresql:// DSNs are accepted; the table option is appended."""
    with pytest.raises(ValueError, match="questdb://"):
        questdb_storage("sqlite:///x.db")
    assert questdb_storage("questdb://admin:quest@127.0.0.1:8812/?http_port=9000", table="bars").dsn.endswith(
        "&table=bars"
    )


@pytest.mark.questdb
@pytest.mark.parametrize("dsn_kind", ["questdb", "postgresql"])
async def test_enhanced_provider_backfills_an_empty_range_into_questdb(questdb, dsn_kind):
    """EnhancedQuestDBProvider fetches an empty range through its fetcher, stores it in QuestDB and reads it back."""
    base = questdb.dsn if dsn_kind == "questdb" else f"{questdb.pg_dsn}?http_port={questdb.http_port}"
    table = _table()
    fetcher = CountingSource(open_source("synthetic:7"))
    clock = ManualClock(NOW)
    provider = EnhancedQuestDBProvider(
        base, fetcher=fetcher, table=table, clock=clock, registry=new_registry(), report_sink=MemoryReportSink()
    )
    try:
        frame = await provider.fetch(at(30), at(1030), node_id=SERIES)
        pd.testing.assert_frame_equal(frame, await bars(at(30), at(1030)))
        assert provider.strategy.value == "seamless"
        assert provider.last_conformance_report is not None and provider.last_conformance_report.ok
        assert sorted(fetcher.calls) == window_ranges(at(30), at(1030), MIN, 900)  # default window_bars
    finally:
        await provider.aclose()
    reader = EnhancedQuestDBProvider(
        base, table=table, strategy="fail_fast", clock=clock, registry=new_registry(), report_sink=MemoryReportSink()
    )
    try:
        again = await reader.fetch(at(30), at(1030), node_id=SERIES)
        pd.testing.assert_frame_equal(again, await bars(at(30), at(1030)))
        windows = window_ranges(at(30), at(1030), MIN, 900)
        assert await reader.coverage(node_id=SERIES) == [(windows[0][0], windows[-1][1])]
    finally:
        await reader.aclose()


@pytest.mark.questdb
async def test_legacy_loader_fills_then_fetches(questdb):
    """QuestDBLoader.fetch never backfills; fill_missing materializes the range, then fetch returns it."""
    loader = QuestDBLoader(
        questdb.dsn, fetcher=QMTLStyleFetcher(), table=_table(), clock=ManualClock(NOW), registry=new_registry()
    )
    async with loader:
        assert len(await loader.fetch(at(0), at(60), node_id=SERIES, interval=60)) == 0
        await loader.fill_missing(at(0), at(60), node_id=SERIES, interval=60)
        frame = await loader.fetch(at(0), at(60), node_id=SERIES, interval=60)
        pd.testing.assert_frame_equal(frame, await bars(at(0), at(60)))
        assert await loader.coverage(node_id=SERIES) == window_ranges(at(0), at(60), MIN, 900)
