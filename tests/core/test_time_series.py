"""Time normalization, intervals, series keys and window ids."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.core import SeriesKey, interval_ms, ms_to_iso, parse_window_id, to_ms, window_id

JAN1 = 1_704_067_200_000


@pytest.mark.parametrize(
    "value",
    [
        JAN1,
        "2024-01-01T00:00:00Z",
        "2024-01-01T00:00:00+00:00",
        "2024-01-01T09:00:00+09:00",
        "2024-01-01",
        dt.datetime(2024, 1, 1),  # naive means UTC
        dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        dt.date(2024, 1, 1),
        pd.Timestamp("2024-01-01"),
        pd.Timestamp("2024-01-01 01:00", tz="Europe/Paris"),
        np.datetime64("2024-01-01T00:00:00"),
        np.int64(JAN1),
    ],
)
def test_to_ms_accepts_every_documented_form(value):
    """Every public time form normalizes to the same epoch milliseconds, naive values as UTC."""
    assert to_ms(value) == JAN1


def test_to_ms_floors_sub_millisecond_precision():
    """Sub-millisecond parts are floored so an instant never moves into the next millisecond."""
    assert to_ms(pd.Timestamp(JAN1 * 1_000_000 + 999_999, unit="ns")) == JAN1
    assert to_ms(dt.datetime(2024, 1, 1, 0, 0, 0, 999)) == JAN1


@pytest.mark.parametrize(
    ("value", "match"),
    [
        ("yesterday", "not an ISO-8601 time"),
        (True, "not a time"),
        (1.5, "not supported"),
        (1_704_067_200, None),  # seconds, not ms: still >= 0 so accepted as 1970 ms
        (-5, "outside 1970"),
        (10**18, "outside 1970"),
    ],
)
def test_to_ms_errors_name_the_value(value, match):
    """Bad times raise ValueError naming the value; plausible ints pass."""
    if match is None:
        assert to_ms(value) == value
        return
    with pytest.raises(ValueError, match=match):
        to_ms(value)


@pytest.mark.parametrize(("name", "ms"), [("1s", 1000), ("1m", 60_000), ("4h", 14_400_000), ("1d", 86_400_000)])
def test_interval_names(name, ms):
    """Interval names map to their milliseconds and ints pass through."""
    assert interval_ms(name) == ms
    assert interval_ms(ms) == ms


@pytest.mark.parametrize("bad", ["2m", "", 0, -60_000, True, "1M", None])
def test_bad_intervals_list_the_allowed_names(bad):
    """A bad interval names itself and what is allowed."""
    with pytest.raises(ValueError, match="interval"):
        interval_ms(bad)


def test_ms_to_iso():
    """ms_to_iso renders UTC with a Z suffix, keeping milliseconds only when present."""
    assert ms_to_iso(JAN1) == "2024-01-01T00:00:00Z"
    assert ms_to_iso(JAN1 + 5) == "2024-01-01T00:00:00.005Z"


@pytest.mark.parametrize(
    ("text", "source", "symbol", "interval"),
    [
        ("ohlcv:binance:BTC/USDT:1m", "binance", "BTC/USDT", "1m"),
        ("ohlcv:binance:BTC/USDT:USDT:1m", "binance", "BTC/USDT:USDT", "1m"),
        ("ohlcv:synthetic:a:b:c:1d", "synthetic", "a:b:c", "1d"),
        ("ohlcv:my-src_2:X'; DROP TABLE t;--:5m", "my-src_2", "X'; DROP TABLE t;--", "5m"),
        ("ohlcv:s:SYM:60000", "s", "SYM", "60000"),
    ],
)
def test_series_keys_are_colon_safe_and_round_trip(text, source, symbol, interval):
    """Keys parse from both ends, so symbols with ':' survive, and str() gives the text back."""
    key = SeriesKey.parse(text)
    assert (key.source, key.symbol, key.interval) == (source, symbol, interval)
    assert str(key) == text
    assert SeriesKey.parse(key) is key


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("binance:BTC/USDT:1m", "must look like"),
        ("ohlcv:binance:1m", "must look like"),
        ("ohlcv:Binance:BTC:1m", "source"),
        ("ohlcv:binance::1m", "symbol"),
        ("ohlcv:binance:BTC:2m", "interval"),
        ("ohlcv:binance:" + "X" * 65 + ":1m", "at most 64"),
        ("ohlcv:binance:BT\nC:1m", "printable"),
        (42, "must be a string"),
    ],
)
def test_bad_series_keys_name_the_problem(text, match):
    """Malformed keys raise ValueError naming the part that is wrong."""
    with pytest.raises(ValueError, match=match):
        SeriesKey.parse(text)


symbols = st.text(
    st.characters(codec="utf-8", categories=["L", "N", "P", "S"], include_characters=" "), min_size=1, max_size=64
)


@given(symbols, st.integers(0, 2**41))
def test_window_ids_are_url_safe_and_reversible(symbol, start):
    """Window ids use URL-safe characters only and decode back to (series, start)."""
    key = SeriesKey("binance", symbol, "1m")
    wid = window_id(key, start)
    assert all(c.isalnum() or c in "-_" for c in wid)
    assert parse_window_id(wid) == (key, start)


@pytest.mark.parametrize("bad", ["", "w_", "x_abc", "w_!!!", "w_" + "YWJj"])
def test_bad_window_ids_are_refused(bad):
    """Strings that are not window ids raise ValueError naming the id."""
    with pytest.raises(ValueError, match="window_id"):
        parse_window_id(bad)
