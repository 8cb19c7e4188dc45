"""Faults from the fake exchange through RetryingSource(BinanceSource): retried, exact, and bans respected.

Retry-After values here are fractions of a second and the backoff is 1 ms, so real waits stay short.
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import Any

import pandas as pd
import pytest

from provider.core import BackfillConfig
from provider.sources import BanGate, BannedError, RetryEvent, RetryingSource, SourceLimits
from provider.sources.binance import BinanceSource
from provider.sources.synthetic import synthetic_bars

T0_MS = 1_700_000_040_000
MINUTE_MS = 60_000
SERIES = "ohlcv:binance:BTC/USDT:1m"
FAST = BackfillConfig(max_attempts=4, retry_backoff_ms=1, jitter_ratio=0.0)


def expected(symbol: str, bars: int, offset: int = 0) -> pd.DataFrame:
    """synthetic:7 bars of ``symbol`` starting ``offset`` bars after T0."""
    start = T0_MS + offset * MINUTE_MS
    return synthetic_bars(symbol, MINUTE_MS, start, start + bars * MINUTE_MS, seed=7)


class RecordingSleep:
    """Real asyncio sleeps that are also recorded."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(seconds)


@pytest.mark.parametrize(
    ("inject", "faults", "status"),
    [
        (lambda ex: ex.fail_next(2, status=500), 2, 500),
        (lambda ex: ex.fail_next(2, status=503), 2, 503),
        (lambda ex: ex.bad_json_next(2), 2, 200),
        (lambda ex: ex.delay_next(1, delay_s=30.0), 1, None),
    ],
    ids=["http500", "http503", "bad_json", "timeout"],
)
async def test_transient_faults_are_retried_and_the_result_is_exact(
    exchange: Any, inject: Any, faults: int, status: int | None, closer: Any
) -> None:
    """Each failing answer (5xx, bad JSON, a request past its timeout) costs one retry; the frame stays exact."""
    events: list[RetryEvent] = []
    inner = closer(BinanceSource(exchange.url, timeout_s=1.0))
    source = closer(RetryingSource(inner, FAST, on_retry=events.append))
    inject(exchange)
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 1_500 * MINUTE_MS)
    pd.testing.assert_frame_equal(frame, expected("BTC/USDT", 1_500), check_exact=True)
    assert [e.retry for e in events] == list(range(1, faults + 1)) and source.retries == faults
    assert exchange.by_start[("BTCUSDT", T0_MS)] == faults + 1
    if status is not None:
        assert exchange.statuses[status] >= faults


async def test_short_pages_are_absorbed_by_pagination(exchange: Any, closer: Any) -> None:
    """Pages cut short although more bars exist cost extra requests, not holes: the result is exact."""
    exchange.short_pages_next(2, bars=300)
    source = closer(BinanceSource(exchange.url))
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 1_500 * MINUTE_MS)
    await source.aclose()
    pd.testing.assert_frame_equal(frame, expected("BTC/USDT", 1_500), check_exact=True)
    assert sorted(exchange.by_start) == [("BTCUSDT", T0_MS + k * MINUTE_MS) for k in (0, 300, 600)]


async def test_rate_limit_waits_at_least_retry_after(exchange: Any, closer: Any) -> None:
    """A 429 with Retry-After 0.3 s delays the retry by at least 0.3 s, so the exchange never escalates to 418."""
    exchange.rate_limit_next(1, retry_after_s=0.3)
    sleep = RecordingSleep()
    source = closer(RetryingSource(BinanceSource(exchange.url), FAST, sleep=sleep, rng=random.Random(0)))
    began = time.monotonic()
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 100 * MINUTE_MS)
    elapsed = time.monotonic() - began
    await source.aclose()
    pd.testing.assert_frame_equal(frame, expected("BTC/USDT", 100), check_exact=True)
    assert sleep.waits == [pytest.approx(0.3)] and elapsed >= 0.3
    assert exchange.statuses[429] == 1 and exchange.statuses[418] == 0 and exchange.bans == 0


async def test_a_client_ignoring_retry_after_gets_banned(exchange: Any, closer: Any) -> None:
    """The fake escalates to 418 when requests keep coming during a 429 (what the gate exists to prevent)."""
    exchange.rate_limit_next(1, retry_after_s=5.0)
    careless = [closer(BinanceSource(exchange.url)) for _ in range(2)]  # separate gates: nothing holds the second back
    results = await asyncio.gather(
        *(s.fetch(SERIES, T0_MS, T0_MS + MINUTE_MS) for s in careless), return_exceptions=True
    )
    for source in careless:
        await source.aclose()
    assert sorted(type(r).__name__ for r in results) == ["BannedError", "RateLimitedError"]
    assert exchange.bans == 1


async def test_ban_blocks_every_request_of_the_process_until_it_ends(exchange: Any, closer: Any) -> None:
    """After a 418, other fetches of the process wait at the gate: no request reaches the exchange mid-ban."""
    exchange.ban_next(0.6)
    limits = SourceLimits()
    inner = closer(BinanceSource(exchange.url, limits=limits))
    banned = asyncio.Event()

    def on_retry(event: RetryEvent) -> None:
        if isinstance(event.error, BannedError):
            banned.set()

    source = closer(RetryingSource(inner, FAST, on_retry=on_retry))
    began = time.monotonic()
    first = asyncio.create_task(source.fetch(SERIES, T0_MS, T0_MS + 2_500 * MINUTE_MS))
    await asyncio.wait_for(banned.wait(), timeout=5)
    assert limits.gate.remaining_s() > 0.3 and limits.gate.reason == "banned"
    # Plain (un-retried) fetches started during the ban must wait, not fail and not hit the exchange.
    others = [
        inner.fetch(f"ohlcv:binance:{sym}:1m", T0_MS, T0_MS + 1_200 * MINUTE_MS) for sym in ("ETH/USDT", "SOL/USDT")
    ]
    results = await asyncio.gather(first, *others)
    elapsed = time.monotonic() - began
    await source.aclose()
    assert exchange.during_ban == []
    assert exchange.statuses[418] == 1 and elapsed >= 0.6
    pd.testing.assert_frame_equal(results[0], expected("BTC/USDT", 2_500), check_exact=True)
    pd.testing.assert_frame_equal(results[1], expected("ETH/USDT", 1_200), check_exact=True)
    pd.testing.assert_frame_equal(results[2], expected("SOL/USDT", 1_200), check_exact=True)


async def test_server_side_ban_is_waited_out_with_one_retry(exchange: Any, closer: Any) -> None:
    """A ban already in force answers 418 once; the retry waits for Retry-After and then succeeds."""
    exchange.ban(0.4)
    events: list[RetryEvent] = []
    source = closer(RetryingSource(BinanceSource(exchange.url), FAST, on_retry=events.append))
    frame = await source.fetch(SERIES, T0_MS, T0_MS + 50 * MINUTE_MS)
    await source.aclose()
    pd.testing.assert_frame_equal(frame, expected("BTC/USDT", 50), check_exact=True)
    assert [type(e.error) for e in events] == [BannedError]
    # The server said how long the ban still ran when the request arrived (less than 0.4 s on a busy machine);
    # the retry waited at least that long, so no request reached the exchange during the ban.
    banned = events[0].error
    assert isinstance(banned, BannedError) and 0 < banned.retry_after_s <= 0.4
    assert events[0].delay_s >= banned.retry_after_s
    assert exchange.during_ban == [] and exchange.statuses[418] == 1


async def test_long_ban_fails_fast_and_keeps_later_fetches_away(exchange: Any, closer: Any) -> None:
    """A ban beyond max_wait_s surfaces BannedError at once, and later fetches fail at the gate, unsent."""
    exchange.ban(30)
    limits = SourceLimits(gate=BanGate(max_wait_s=5))
    source = closer(RetryingSource(BinanceSource(exchange.url, limits=limits), FAST, max_wait_s=5))
    for _ in range(2):
        with pytest.raises(BannedError) as caught:
            await source.fetch(SERIES, T0_MS, T0_MS + 50 * MINUTE_MS)
        assert caught.value.retry_after_s > 25
    await source.aclose()
    assert exchange.total_requests == 1 and source.retries == 0
