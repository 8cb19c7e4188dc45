"""A strategy process for the trace test: one AUTO_BACKFILL fetch through the coordinator, tracing from OTEL_*.

Usage: traced_fetch.py COORDINATOR_URLS STORAGE_DSN SERIES START_MS END_MS WINDOW_BARS; prints the row count.
"""

from __future__ import annotations

import asyncio
import sys

from provider import EnhancedQuestDBProvider, MemoryReportSink
from provider.client import CoordinatorClient
from provider.core import BackfillConfig


async def main(urls: str, dsn: str, series: str, start: int, end: int, window_bars: int) -> int:
    client = CoordinatorClient(urls)
    provider = EnhancedQuestDBProvider(
        dsn,
        coordinator=client,
        strategy="auto_backfill",
        backfill_config=BackfillConfig(window_bars=window_bars),
        report_sink=MemoryReportSink(),
    )
    try:
        frame = await provider.fetch(start, end, node_id=series)
    finally:
        await provider.aclose()
        await client.aclose()
    return len(frame)


if __name__ == "__main__":
    urls, dsn, series, start, end, bars = sys.argv[1:7]
    print(asyncio.run(main(urls, dsn, series, int(start), int(end), int(bars))))
