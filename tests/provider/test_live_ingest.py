"""The live feed runs the same ingest conformance: user shapes normalized with flags, the forming bar trimmed,
lossy frames refused with ConformancePipelineError."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from provider.conformance import ConformancePipelineError
from provider.frames import ts_ms
from provider.live import PollingLiveFeed

from .conftest import SERIES, ManualClock, at, bars


class ShapedLiveFetcher:
    """Returns the bars of the request plus the forming bar, with epoch-ms int ``ts``; optionally a conflict."""

    def __init__(self, *, conflict: bool = False) -> None:
        self.conflict = conflict

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        frame = await bars(int(start), int(end) + 60_000)  # one bar past the end: the forming one
        raw = frame.assign(ts=ts_ms(frame))
        if self.conflict:
            raw = pd.concat([raw, raw.iloc[:1].assign(close=-1.0)], ignore_index=True)
        return raw


async def test_live_polls_are_normalized_flagged_and_trimmed():
    """Epoch-ms ints become the contract frame (ts_cast), and the forming bar is trimmed, not refused."""
    clock = ManualClock(at(50) + 30_000)
    feed = PollingLiveFeed(ShapedLiveFetcher(), lookback_bars=100, clock=clock)
    frame = await feed.fetch(at(40), at(50), node_id=SERIES)
    pd.testing.assert_frame_equal(frame, await bars(at(40), at(50)))
    assert feed.last_report is not None and feed.last_report.ok and "ts_cast" in feed.last_report.flag_counts


async def test_live_polls_with_conflicting_bars_are_refused_by_name():
    """A poll with two different bars at one ts raises ConformancePipelineError naming conflicting_duplicate."""
    clock = ManualClock(at(50) + 30_000)
    feed = PollingLiveFeed(ShapedLiveFetcher(conflict=True), lookback_bars=100, clock=clock)
    with pytest.raises(ConformancePipelineError) as caught:
        await feed.fetch(at(40), at(50), node_id=SERIES)
    assert caught.value.report.blocking == ("conflicting_duplicate",)
