"""The ccxt source (ccxt's real binance class) against the loopback fake exchange."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from provider.core import BackfillConfig
from provider.sources import (
    BadResponseError,
    BannedError,
    FatalSourceError,
    RateLimitedError,
    RetryableSourceError,
    RetryingSource,
    SourceLimits,
    open_source,
)
from provider.sources.ccxt_source import CcxtSource, redirect_urls
from provider.sources.synthetic import synthetic_bars

pytest.importorskip("ccxt")

T0_MS = 1_700_000_040_000
MINUTE_MS = 60_000
SERIES = "ohlcv:binance:BTC/USDT:1m"
FAST = BackfillConfig(max_attempts=4, retry_backoff_ms=1, jitter_ratio=0.0)


def open_ccxt(url: str, **kwargs: Any) -> CcxtSource:
    """A ccxt:binance source redirected to the fake exchange."""
    source = open_source(f"ccxt:binance?base_url={url}", **kwargs)
    assert isinstance(source, CcxtSource)
    return source


def test_redirect_keeps_paths_and_swaps_hosts() -> None:
    """Every API URL keeps its path and gets the base URL's scheme and host; non-URLs are untouched."""
    api = {
        "public": "https://api.binance.com/api/v3",
        "nested": {"fapi": "https://fapi.binance.com/fapi/v1"},
        "other": 5,
    }
    assert redirect_urls(api, "http://127.0.0.1:9") == {
        "public": "http://127.0.0.1:9/api/v3",
        "nested": {"fapi": "http://127.0.0.1:9/fapi/v1"},
        "other": 5,
    }


async def test_bars_across_pages_with_gaps_are_exact(make_exchange: Any, closer: Any) -> None:
    """2500 bars with 5% missing arrive through ccxt paginated and equal synthetic:7?gaps=0.05 exactly."""
    async with make_exchange(seed=7, gaps=0.05) as exchange:
        source = closer(open_ccxt(exchange.url))
        end = T0_MS + 2_500 * MINUTE_MS
        frame = await source.fetch(SERIES, T0_MS, end)
        again = await source.fetch(SERIES, T0_MS + 700 * MINUTE_MS, T0_MS + 900 * MINUTE_MS)
        await source.aclose()
        markets_loads = exchange.statuses[200] - sum(exchange.by_start.values())
    want = synthetic_bars("BTC/USDT", MINUTE_MS, T0_MS, end, seed=7, gaps=0.05)
    pd.testing.assert_frame_equal(frame, want, check_exact=True)
    inside = want[(want.ts >= again.ts.iloc[0]) & (want.ts <= again.ts.iloc[-1])].reset_index(drop=True)
    pd.testing.assert_frame_equal(again, inside, check_exact=True)
    assert {sym for sym, _ in exchange.by_start} == {"BTCUSDT"}
    assert markets_loads == 1, "markets load once per source"


async def test_faults_through_ccxt_are_retried_exactly(exchange: Any, closer: Any) -> None:
    """5xx, bad JSON and a 429 on ccxt's requests are retried by RetryingSource; the result is exact."""
    exchange.fail_next(1, status=502)
    exchange.bad_json_next(1)
    exchange.rate_limit_next(1, retry_after_s=0.2)
    retries: list[type] = []
    source = closer(RetryingSource(open_ccxt(exchange.url), FAST, on_retry=lambda e: retries.append(type(e.error))))
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 1_200 * MINUTE_MS)
    await source.aclose()
    want = synthetic_bars("BTC/USDT", MINUTE_MS, T0_MS, T0_MS + 1_200 * MINUTE_MS, seed=7)
    pd.testing.assert_frame_equal(frame, want, check_exact=True)
    assert retries == [RetryableSourceError, BadResponseError, RateLimitedError]
    assert exchange.bans == 0


async def test_status_errors_map_like_the_binance_source(exchange: Any, closer: Any) -> None:
    """429 carries Retry-After, 418 closes the gate, an unknown market and a missing timeframe are fatal."""
    limits = SourceLimits()
    source = closer(open_ccxt(exchange.url, limits=limits))
    exchange.rate_limit_next(1, retry_after_s=0.25)
    with pytest.raises(RateLimitedError) as limited:
        await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    assert limited.value.retry_after_s == pytest.approx(0.25)
    await limits.gate.wait()
    exchange.ban_next(0.2)
    with pytest.raises(BannedError):
        await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    assert limits.gate.reason == "banned" and limits.gate.remaining_s() > 0
    with pytest.raises(FatalSourceError, match="no market 'XRP/USDT'"):
        await source.fetch("ohlcv:binance:XRP/USDT:1m", T0_MS, T0_MS + 10 * MINUTE_MS)
    with pytest.raises(FatalSourceError, match="no timeframe 7000"):
        await source.fetch("ohlcv:binance:BTC/USDT:7000", T0_MS, T0_MS + 70_000)
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    await source.aclose()
    assert len(frame) == 10 and exchange.during_ban == []


async def test_timeouts_are_retryable(exchange: Any, closer: Any) -> None:
    """A request slower than timeout_s raises RetryableSourceError, not a ccxt exception."""
    source = closer(open_source(f"ccxt:binance?base_url={exchange.url}&timeout_s=1"))
    await source.fetch(SERIES, T0_MS, T0_MS + MINUTE_MS)
    exchange.delay_next(1, delay_s=30.0)
    with pytest.raises(RetryableSourceError, match="RequestTimeout"):
        await source.fetch(SERIES, T0_MS, T0_MS + MINUTE_MS)
    await source.aclose()
