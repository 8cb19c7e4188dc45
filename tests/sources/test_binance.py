"""The binance source against the loopback fake exchange: pagination, gaps, symbols, errors, weight header."""

from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from provider.core import snap_range
from provider.frames import check_frame, ts_ms
from provider.sources import (
    BanGate,
    BannedError,
    FatalSourceError,
    RateBudget,
    RateLimitedError,
    RetryableSourceError,
    SourceLimits,
    open_source,
)
from provider.sources._base import error_for_status, retry_after_s
from provider.sources.binance import BinanceSource, binance_symbol
from provider.sources.synthetic import synthetic_bars

T0_MS = 1_700_000_040_000
MINUTE_MS = 60_000
SERIES = "ohlcv:binance:BTC/USDT:1m"


def expected(symbol: str, start_ms: int, end_ms: int, *, gaps: float = 0.0, step: int = MINUTE_MS) -> pd.DataFrame:
    """What synthetic:7 gives for the same bars."""
    return synthetic_bars(symbol, step, start_ms, end_ms, seed=7, gaps=gaps)


async def test_pagination_across_pages_is_exact(exchange: Any, closer: Any) -> None:
    """2500 bars arrive in three requests of at most 1000 and equal synthetic:7 exactly."""
    source = closer(open_source(f"binance:{exchange.url}"))
    end = T0_MS + 2_500 * MINUTE_MS
    frame = await source.fetch(SERIES, T0_MS, end)
    await source.aclose()
    check_frame(frame, interval_ms=MINUTE_MS, start_ms=T0_MS, end_ms=end)
    pd.testing.assert_frame_equal(frame, expected("BTC/USDT", T0_MS, end), check_exact=True)
    starts = {key: n for key, n in exchange.by_start.items()}
    assert starts == {("BTCUSDT", T0_MS + k * 1_000 * MINUTE_MS): 1 for k in range(3)}


async def test_exchange_gaps_stay_gaps(make_exchange: Any, closer: Any) -> None:
    """With 5% of bars missing upstream, the result has exactly those holes and no invented rows."""
    async with make_exchange(seed=7, gaps=0.05) as exchange:
        source = closer(BinanceSource(exchange.url))
        end = T0_MS + 3_000 * MINUTE_MS
        frame = await source.fetch(SERIES, T0_MS, end)
        await source.aclose()
    want = expected("BTC/USDT", T0_MS, end, gaps=0.05)
    pd.testing.assert_frame_equal(frame, want, check_exact=True)
    assert 100 < 3_000 - len(frame) < 200
    assert not frame.isna().any().any()


@pytest.mark.parametrize(("symbol", "wire"), [("BTC/USDT", "BTCUSDT"), ("BTCUSDT", "BTCUSDT"), ("bnb/btc", "BNBBTC")])
async def test_symbols_map_to_binance_ids(exchange: Any, symbol: str, wire: str, closer: Any) -> None:
    """'BTC/USDT' is sent as 'BTCUSDT' (and lower case is upper-cased); bars are those of that market."""
    source = closer(BinanceSource(exchange.url))
    start, end = snap_range(T0_MS, T0_MS + 20 * 3_600_000, "1h")
    frame = await source.fetch(f"ohlcv:binance:{symbol}:1h", T0_MS, T0_MS + 20 * 3_600_000)
    await source.aclose()
    assert {key[0] for key in exchange.by_start} == {wire}
    assert len(frame) == 21
    pd.testing.assert_frame_equal(frame, expected(wire, start, end, step=3_600_000), check_exact=True)


@pytest.mark.parametrize(
    ("series", "fragment"),
    [("ohlcv:binance:BTC/USDT:USDT:1m", "not a spot symbol"), ("ohlcv:binance:BTC/USDT:7000", "interval 7000")],
)
async def test_unsupported_symbols_and_intervals_fail_before_any_request(
    exchange: Any, series: str, fragment: str, closer: Any
) -> None:
    """Derivative symbols and intervals Binance lacks are fatal and never reach the exchange."""
    source = closer(BinanceSource(exchange.url))
    with pytest.raises(FatalSourceError, match=fragment):
        await source.fetch(series, T0_MS, T0_MS + 10 * MINUTE_MS)
    await source.aclose()
    assert exchange.total_requests == 0


async def test_unknown_symbol_is_fatal_with_binance_code(exchange: Any, closer: Any) -> None:
    """A symbol the exchange rejects (400, code -1121) becomes FatalSourceError carrying the code and message."""
    source = closer(BinanceSource(exchange.url))
    with pytest.raises(FatalSourceError, match=r"HTTP 400 \(code -1121: Invalid symbol.\)") as caught:
        await source.fetch("ohlcv:binance:XRP/USDT:1m", T0_MS, T0_MS + 10 * MINUTE_MS)
    await source.aclose()
    assert caught.value.status == 400


async def test_empty_and_off_grid_ranges(exchange: Any, closer: Any) -> None:
    """start == end sends no request; an off-grid range is snapped outward to whole bars."""
    source = closer(BinanceSource(exchange.url))
    assert len(await source.fetch(SERIES, T0_MS, T0_MS)) == 0
    assert exchange.total_requests == 0
    frame = await source.fetch(SERIES, T0_MS + 1, T0_MS + 2 * MINUTE_MS - 1)
    await source.aclose()
    assert ts_ms(frame).tolist() == [T0_MS, T0_MS + MINUTE_MS]


async def test_used_weight_header_is_read_and_exhaustion_closes_the_gate(
    exchange: Any, clock: Any, closer: Any
) -> None:
    """X-MBX-USED-WEIGHT-1M is recorded; when the IP's minute is spent the gate closes until the next minute."""
    limits = SourceLimits.create(clock=clock, sleep=clock.sleep, wall_clock=lambda: 1_800_000_020.0)
    source = closer(BinanceSource(exchange.url, limits=limits, ip_weight_limit_1m=5))
    await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    assert source.used_weight_1m == 2 and limits.gate.remaining_s() == 0
    await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    assert source.used_weight_1m == 4
    assert limits.gate.reason == "weight" and limits.gate.remaining_s() == pytest.approx(40.0)
    await source.fetch(SERIES, T0_MS, T0_MS + 10 * MINUTE_MS)
    await source.aclose()
    assert clock.sleeps == [pytest.approx(40.0)]


async def test_closed_source_refuses_to_fetch(exchange: Any, closer: Any) -> None:
    """After aclose the session is gone and a fetch raises instead of opening a new one silently."""
    source = closer(BinanceSource(exchange.url))
    await source.fetch(SERIES, T0_MS, T0_MS + MINUTE_MS)
    await source.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await source.fetch(SERIES, T0_MS, T0_MS + MINUTE_MS)


def test_symbol_mapping_table() -> None:
    """binance_symbol strips '/' and upper-cases; anything else is not a spot symbol."""
    assert binance_symbol("ETH/BTC") == "ETHBTC"
    with pytest.raises(FatalSourceError):
        binance_symbol("BTC-USD")


@pytest.mark.parametrize(
    ("status", "error", "gate_reason"),
    [
        (400, FatalSourceError, ""),
        (404, FatalSourceError, ""),
        (403, RetryableSourceError, ""),
        (408, RetryableSourceError, ""),
        (500, RetryableSourceError, ""),
        (503, RetryableSourceError, ""),
        (429, RateLimitedError, "rate_limited"),
        (418, BannedError, "banned"),
    ],
)
def test_status_table_maps_answers_to_errors(clock: Any, status: int, error: type, gate_reason: str) -> None:
    """Each HTTP status maps to one error class; only 429 and 418 close the gate, for their Retry-After."""
    limits = SourceLimits(BanGate(clock=clock, sleep=clock.sleep), RateBudget())
    found = error_for_status(
        status, {"Retry-After": "2.5"}, '{"code": -1, "msg": "nope"}', source="binance", limits=limits, what="klines"
    )
    assert type(found) is error and found.status == status and "code -1: nope" in str(found)
    assert limits.gate.reason == gate_reason
    assert limits.gate.remaining_s() == (2.5 if gate_reason else 0.0)


@pytest.mark.parametrize(
    ("header", "seconds"),
    [("3", 3.0), ("0.25", 0.25), (None, 9.0), ("", 9.0), ("soon", 9.0), ("Fri, 15 Jan 2027 08:00:30 GMT", 30.0)],
)
def test_retry_after_accepts_seconds_fractions_and_dates(header: str | None, seconds: float) -> None:
    """Retry-After is read as (fractional) seconds or an HTTP date; anything else falls back to the default."""
    wall_now_s = 1_800_000_000.0  # 2027-01-15T08:00:00Z
    assert retry_after_s(header, default_s=9.0, wall_now_s=wall_now_s) == pytest.approx(seconds)
