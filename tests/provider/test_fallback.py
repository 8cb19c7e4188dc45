"""A fallback chain of sources: Binance first, then ccxt's binance driver against a second loopback exchange.

The first exchange answers 500 to every request for one window; after its retries the second source serves that
window, once, and the reports say so. The exchanges are the only stand-ins (devkit/fake_exchange.py).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from aiohttp import web

from provider.core import BackfillConfig
from provider.sources import FallbackSource, open_source

from .conftest import SERIES, at

ATTEMPTS = 3
BROKEN = at(100)  # the window the first exchange cannot serve


def _failing_exchange(base: Any, fail_start_ms: int) -> Any:
    class WindowFailingExchange(base):  # type: ignore[misc, valid-type]
        """Answers 500 to every klines request that starts at ``fail_start_ms``."""

        async def _klines(self, request: web.Request) -> web.Response:
            if request.query.get("startTime") == str(fail_start_ms):
                return web.json_response({"code": -1000, "msg": "internal error"}, status=500)
            response: web.Response = await super()._klines(request)
            return response

    return WindowFailingExchange


def _starts(exchange: Any) -> dict[int, int]:
    counts: dict[int, int] = {}
    for (_, start), n in exchange.by_start.items():
        counts[start] = counts.get(start, 0) + n
    return counts


async def test_fallback_serves_the_window_the_first_source_fails(fake_exchange_cls, make_provider, storage):
    """Every bar is stored; the report and the storage ledger name the second source for the broken window only;
    it is fetched once."""
    retry = BackfillConfig(max_attempts=ATTEMPTS, retry_backoff_ms=0, jitter_ratio=0.0)
    async with _failing_exchange(fake_exchange_cls, BROKEN)(seed=7) as first, fake_exchange_cls(seed=7) as second:
        names = ["binance", "ccxt:binance"]
        chain = FallbackSource(
            [open_source(f"binance:{first.url}"), open_source(f"ccxt:binance?base_url={second.url}")],
            names=names,
            retry=retry,
        )
        provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=chain)
        frame = await provider.fetch(at(0), at(300), node_id=SERIES)
        served = {w["start_ms"]: w for w in provider.last_fetch_metadata.backfill["served_by"]}
        assert {start: w["source"] for start, w in served.items()} == {
            at(0): "binance",
            BROKEN: "ccxt:binance",
            at(200): "binance",
        }
        assert len(served[BROKEN]["failed_sources"]) == 1 and "500" in served[BROKEN]["failed_sources"][0]
        report = provider.last_conformance_report
        assert report is not None and report.ok
        assert {r["start_ms"]: r["source"] for r in report.ingest}[BROKEN] == "ccxt:binance"
        assert _starts(first) == {at(0): 1, BROKEN: ATTEMPTS, at(200): 1}
        assert _starts(second).get(BROKEN) == 1
        assert {s for s in _starts(second) if s is not None} == {BROKEN}
        assert await storage.coverage(SERIES) == [(at(0), at(300))]
        ledger = await storage.windows(SERIES)
        assert [(w.start_ms, w.end_ms, w.source) for w in ledger] == [
            (at(0), at(100), "binance"),
            (BROKEN, at(200), "ccxt:binance"),
            (at(200), at(300), "binance"),
        ]
        await chain.aclose()
        reference = open_source(f"binance:{second.url}")
        try:
            expected = await reference.fetch(SERIES, at(0), at(300))
        finally:
            await reference.aclose()
    pd.testing.assert_frame_equal(frame, expected)
    pd.testing.assert_frame_equal(await storage.read(SERIES, at(0), at(300)), expected)
