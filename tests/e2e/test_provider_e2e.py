"""The provider against the real stack: three coordinators, a worker pool and QuestDB on loopback."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pandas as pd
import pytest

from devkit.stack import start_stack
from provider import EnhancedQuestDBProvider, MemoryReportSink
from provider.client import CoordinatorClient
from provider.core import BackfillConfig, SeriesKey, window_ranges
from provider.core.obs import new_registry
from provider.sources import open_source

ROOT = Path(__file__).resolve().parents[2]
SERIES = "ohlcv:binance:ETH/USDT:1m"
MIN = 60_000
WINDOW_BARS = 120
START = 1_700_000_000_000 // MIN * MIN + 7 * MIN  # not window-aligned on purpose


@pytest.mark.questdb
@pytest.mark.cluster
@pytest.mark.slow
async def test_auto_backfill_of_an_empty_range_returns_the_exact_bars(questdb, tmp_path):
    """AUTO_BACKFILL through 3 coordinators and 2 workers into QuestDB returns exactly the source's bars."""
    table = f"e2e_{secrets.token_hex(4)}"
    dsn = f"{questdb.dsn}&table={table}" if "?" in questdb.dsn else f"{questdb.dsn}?table={table}"
    stack = await asyncio.to_thread(start_stack, tmp_path, size=3, window_bars=WINDOW_BARS)
    client = CoordinatorClient(stack.urls)
    progress: list[float] = []
    provider = EnhancedQuestDBProvider(
        dsn,
        coordinator=client,
        strategy="auto_backfill",
        registry=new_registry(),
        backfill_config=BackfillConfig(window_bars=WINDOW_BARS),
        report_sink=MemoryReportSink(),
        progress=lambda p: progress.append(p.ratio),
    )
    try:
        for _ in range(2):
            stack.start_worker("synthetic:11", dsn, concurrency=4)
        end = START + 1000 * MIN
        try:
            frame = await asyncio.wait_for(provider.fetch(START, end, node_id=SERIES), 120)
        except Exception as exc:
            raise AssertionError(f"{exc!r}\n{stack.logs()}") from exc
        source = open_source("synthetic:11")
        expected = await source.fetch(SeriesKey.parse(SERIES), START, end)
        await source.aclose()
        pd.testing.assert_frame_equal(frame, expected)
        meta = provider.last_fetch_metadata
        assert meta.served == {"backfill": [(START, end)]} and meta.missing_ranges == []
        assert meta.backfill["mode"] == "coordinator"
        windows = window_ranges(START, end, MIN, WINDOW_BARS)
        assert await provider.coverage(node_id=SERIES) == [(windows[0][0], windows[-1][1])]
        assert progress[-1] == 1.0
        assert provider.last_conformance_report.ok
        again = await provider.fetch(START + 100 * MIN, START + 200 * MIN, node_id=SERIES)
        pd.testing.assert_frame_equal(again, expected.iloc[100:200].reset_index(drop=True))
        assert provider.last_fetch_metadata.cache_hit
    finally:
        await provider.aclose()
        await client.aclose()
        await asyncio.to_thread(stack.close)
