"""The live feed: recent closed bars from a polled live fetcher, on demand and as a stream.

Rules:
1. A bar is closed when ``ts + interval <= now``. Nothing here ever yields or returns a bar that is not closed,
   even when the fetcher returns the forming bar (Binance does).
2. ``subscribe`` keeps a cursor (the next bar it owes). When it has caught up it sleeps exactly until the next bar
   boundary; when the bar due is late at the exchange it polls again after ``poll_delay_ms`` (never past the
   next boundary). Each bar is yielded once, in order; a bar the exchange never publishes is skipped as soon as a
   later bar appears (an exchange gap stays a gap).
3. ``fetch(start, end)`` serves the closed bars of a range no older than ``lookback_bars`` before the last
   closed bar: the zone the SEAMLESS strategy takes from the live feed instead of backfilling.
4. Clock (epoch ms) and sleep are injected; tests never wait for a bar to close.
5. Every polled frame goes through the ingest conformance (:func:`provider.conformance.normalize_bars`) for the
   polled range: lossless shapes are normalized and flagged; bars outside the range (the forming bar) are trimmed
   as rule 1 says; anything else that blocks raises :class:`~provider.errors.ConformancePipelineError` with the
   report. ``last_report`` holds the report of the last poll.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pandas as pd

from provider.conformance import ConformanceReport, normalize_bars
from provider.core import SeriesKey
from provider.core.clock import wall_clock_ms
from provider.errors import ConformancePipelineError
from provider.frames import empty_frame, last_ts_ms, trim
from provider.metrics import ProviderMetrics
from provider.strategies import DataSourcePriority

__all__ = ["PollingLiveFeed"]

#: Ingest bounds of a poll: the whole grid (out-of-range bars are trimmed afterwards, rule 1).
_MIN_MS = -(2**62) // 1_000_000
_MAX_MS = 2**62 // 1_000_000


class PollingLiveFeed:
    """A :class:`~provider.strategies.LiveDataFeed` over any fetcher with ``fetch(series, start, end)``."""

    priority = DataSourcePriority.LIVE
    name = "live"

    def __init__(
        self,
        fetcher: Any,
        *,
        lookback_bars: int = 1000,
        poll_delay_ms: int = 250,
        clock: Callable[[], int] = wall_clock_ms,
        sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        if lookback_bars < 0 or poll_delay_ms <= 0:
            raise ValueError(f"lookback_bars {lookback_bars!r} must be >= 0 and poll_delay_ms {poll_delay_ms!r} > 0")
        self.fetcher = fetcher
        self.lookback_bars = lookback_bars
        self.poll_delay_ms = poll_delay_ms
        self.clock = clock
        self._sleep = sleep
        self.metrics = metrics if metrics is not None else ProviderMetrics()
        #: Calls made to the fetcher, over the feed's life.
        self.polls = 0
        #: The ingest report of the last poll (rule 5).
        self.last_report: ConformanceReport | None = None

    def closed_end_ms(self, interval_ms: int) -> int:
        """The end of the last closed bar now."""
        return (self.clock() // interval_ms) * interval_ms

    def zone(self, node_id: str) -> tuple[int, int]:
        """The range ``fetch`` serves now: ``lookback_bars`` bars up to the last closed bar."""
        step = SeriesKey.parse(node_id).interval_ms
        end = self.closed_end_ms(step)
        return max(0, end - self.lookback_bars * step), end

    async def is_live_available(self, *, node_id: str) -> bool:
        SeriesKey.parse(node_id)
        return self.lookback_bars > 0

    async def _poll(self, series: SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
        self.polls += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            raw = await self.fetcher.fetch(series, start_ms, end_ms)
        finally:
            self.metrics.observe_source("live", loop.time() - started)
        # Bounds are widened to the whole grid so the forming bar (rule 1) is trimmed, not blocked as out_of_range.
        frame, report = normalize_bars(
            raw, series=str(series), interval_ms=series.interval_ms, start_ms=_MIN_MS, end_ms=_MAX_MS
        )
        report.start_ms, report.end_ms, report.source = start_ms, end_ms, "live"
        self.last_report = report
        if report.flags:
            self.metrics.count_flags(report.flag_counts)
        if report.blocking:
            raise ConformancePipelineError(report)
        return trim(frame, start_ms, end_ms)

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        """The closed bars of ``[start, end)`` inside the live zone (rule 3)."""
        series = SeriesKey.parse(node_id)
        zone_lo, zone_hi = self.zone(node_id)
        lo, hi = max(start, zone_lo), min(end, zone_hi)
        if hi <= lo:
            return empty_frame()
        return await self._poll(series, lo, hi)

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        """The live zone (what ``fetch`` may serve; bars may still be absent at the exchange)."""
        lo, hi = self.zone(node_id)
        return [(lo, hi)] if hi > lo else []

    async def subscribe(self, *, node_id: str, start: int | None = None) -> AsyncIterator[pd.DataFrame]:
        """Yield frames of newly closed bars from ``start`` (default: the bar forming now) on, forever (rule 2)."""
        series = SeriesKey.parse(node_id)
        step = series.interval_ms
        now = self.clock()
        cursor = (now // step) * step if start is None else -((-int(start)) // step) * step
        while True:
            now = self.clock()
            closed_end = (now // step) * step
            if cursor >= closed_end:
                await self._sleep((cursor + step - now) / 1000.0)
                continue
            frame = await self._poll(series, cursor, closed_end)
            if len(frame):
                cursor = last_ts_ms(frame) + step
                yield frame
            if cursor < closed_end:
                # The bar due is late at the exchange: look again soon, but never sleep past the next boundary.
                now = self.clock()
                await self._sleep(max(0, min(self.poll_delay_ms, closed_end + step - now)) / 1000.0)
