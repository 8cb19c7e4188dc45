"""The synthetic source: determinism, gaps, the frame contract and its spec."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.core import INTERVALS
from provider.frames import FRAME_COLUMNS, TS_DTYPE, check_frame, ts_ms
from provider.sources import open_source
from provider.sources.synthetic import (
    MAX_SYNTHETIC_BARS,
    SyntheticSource,
    market_key,
    synthetic_arrays,
    synthetic_bars,
)

T0_MS = 1_700_000_040_000
MINUTE_MS = 60_000


@pytest.mark.parametrize("interval", ["1s", "1m", "1h", "1d"])
async def test_overlapping_ranges_give_identical_bars(interval: str) -> None:
    """Two overlapping fetches agree bar for bar on their overlap, for every interval size."""
    step = INTERVALS[interval]
    start = (T0_MS // step) * step
    source = SyntheticSource(seed=3)
    series = f"ohlcv:synthetic:ETH/USDT:{interval}"
    wide = await source.fetch(series, start, start + 3000 * step)
    narrow = await source.fetch(series, start + 1234 * step, start + 2500 * step)
    inside = wide[(wide.ts >= narrow.ts.iloc[0]) & (wide.ts <= narrow.ts.iloc[-1])].reset_index(drop=True)
    assert len(narrow) == 1266
    pd.testing.assert_frame_equal(narrow, inside, check_exact=True)


@settings(max_examples=40, deadline=None)
@given(
    offset=st.integers(min_value=0, max_value=5_000),
    length=st.integers(min_value=0, max_value=600),
    gaps=st.sampled_from([0.0, 0.05, 0.5]),
)
def test_any_subrange_is_a_slice_of_a_larger_range(offset: int, length: int, gaps: float) -> None:
    """Whatever sub-range is asked, its bars equal the matching slice of one big computation."""
    whole_ts, whole_values = synthetic_arrays(
        "BTC/USDT", MINUTE_MS, T0_MS, T0_MS + 6_000 * MINUTE_MS, seed=9, gaps=gaps
    )
    lo, hi = T0_MS + offset * MINUTE_MS, T0_MS + (offset + length) * MINUTE_MS
    part_ts, part_values = synthetic_arrays("BTC/USDT", MINUTE_MS, lo, hi, seed=9, gaps=gaps)
    mask = (whole_ts >= lo) & (whole_ts < hi)
    np.testing.assert_array_equal(part_ts, whole_ts[mask])
    np.testing.assert_array_equal(part_values, whole_values[mask])


def test_bars_are_pinned_to_golden_values() -> None:
    """The first bar of BTC/USDT 1m at T0 for seed 7 never changes (stored data and the fake depend on it)."""
    stamps, values = synthetic_arrays("BTC/USDT", MINUTE_MS, T0_MS, T0_MS + 2 * MINUTE_MS, seed=7)
    assert stamps.tolist() == [T0_MS, T0_MS + MINUTE_MS]
    assert values[0].tolist() == [6.56189, 6.56714, 6.55902, 6.56416, 17095.7181]
    assert values[1, 0] == values[0, 3]


def test_frame_contract_and_bar_shape() -> None:
    """Frames pass check_frame, OHLC is consistent, closes chain into the next open and prices are positive."""
    frame = synthetic_bars("SOL/USDT", MINUTE_MS, T0_MS, T0_MS + 5_000 * MINUTE_MS, seed=1)
    check_frame(frame, interval_ms=MINUTE_MS, start_ms=T0_MS, end_ms=T0_MS + 5_000 * MINUTE_MS)
    assert len(frame) == 5_000
    assert (frame.low <= frame[["open", "close"]].min(axis=1)).all()
    assert (frame.high >= frame[["open", "close"]].max(axis=1)).all()
    assert (frame.low > 0).all() and (frame.volume > 0).all()
    np.testing.assert_array_equal(frame.close.to_numpy()[:-1], frame.open.to_numpy()[1:])
    assert frame.close.nunique() > 1000, "prices should move"


def test_prices_survive_binance_text_exactly() -> None:
    """Every price printed with '%.8f' (as the fake exchange does) parses back to the identical float."""
    _, values = synthetic_arrays("BNB/BTC", MINUTE_MS, T0_MS, T0_MS + 2_000 * MINUTE_MS, seed=5)
    flat = values.ravel()
    parsed = np.array([float(f"{x:.8f}") for x in flat])
    np.testing.assert_array_equal(parsed, flat)


def test_gaps_are_deterministic_and_near_the_fraction() -> None:
    """With gaps=0.1 about a tenth of slots are missing, the same ones in every range and every call."""
    lo, hi = T0_MS, T0_MS + 20_000 * MINUTE_MS
    first, _ = synthetic_arrays("BTC/USDT", MINUTE_MS, lo, hi, seed=2, gaps=0.1)
    again, _ = synthetic_arrays("BTC/USDT", MINUTE_MS, lo, hi, seed=2, gaps=0.1)
    later, _ = synthetic_arrays("BTC/USDT", MINUTE_MS, lo + 7_777 * MINUTE_MS, hi, seed=2, gaps=0.1)
    missing = 20_000 - len(first)
    assert 1_700 < missing < 2_300
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(later, first[first >= lo + 7_777 * MINUTE_MS])


def test_gaps_leave_present_bars_unchanged() -> None:
    """Turning gaps on removes bars but never alters the bars that remain."""
    full_ts, full_values = synthetic_arrays("ETH/USDT", MINUTE_MS, T0_MS, T0_MS + 3_000 * MINUTE_MS, seed=4)
    gap_ts, gap_values = synthetic_arrays("ETH/USDT", MINUTE_MS, T0_MS, T0_MS + 3_000 * MINUTE_MS, seed=4, gaps=0.3)
    keep = np.isin(full_ts, gap_ts)
    assert 0 < len(gap_ts) < len(full_ts)
    np.testing.assert_array_equal(full_values[keep], gap_values)


async def test_seed_and_market_select_the_bars_but_source_name_does_not() -> None:
    """Seeds and symbols change the bars; the series' source field and the '/' in the symbol do not."""
    base = await SyntheticSource(seed=7).fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS, T0_MS + 50 * MINUTE_MS)
    same = await SyntheticSource(seed=7).fetch("ohlcv:binance:BTCUSDT:1m", T0_MS, T0_MS + 50 * MINUTE_MS)
    other_seed = await SyntheticSource(seed=8).fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS, T0_MS + 50 * MINUTE_MS)
    other_symbol = await SyntheticSource(seed=7).fetch("ohlcv:synthetic:ETH/USDT:1m", T0_MS, T0_MS + 50 * MINUTE_MS)
    pd.testing.assert_frame_equal(base, same, check_exact=True)
    assert not base.close.equals(other_seed.close)
    assert not base.close.equals(other_symbol.close)
    assert market_key("btc/usdt") == "BTCUSDT"


async def test_range_is_snapped_outward_and_empty_ranges_keep_dtypes() -> None:
    """An off-grid range widens to whole bars; an empty range gives an empty contract frame."""
    source = SyntheticSource()
    frame = await source.fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS + 30_000, T0_MS + 2 * MINUTE_MS + 1)
    assert ts_ms(frame).tolist() == [T0_MS, T0_MS + MINUTE_MS, T0_MS + 2 * MINUTE_MS]
    empty = await source.fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS, T0_MS)
    assert tuple(empty.columns) == FRAME_COLUMNS and len(empty) == 0 and empty.ts.dtype == TS_DTYPE
    with pytest.raises(ValueError, match="after end"):
        await source.fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS + MINUTE_MS, T0_MS)


async def test_spec_sets_seed_and_gaps() -> None:
    """'synthetic:7?gaps=0.05' opens a source whose bars equal synthetic_bars with that seed and gap fraction."""
    source = open_source("synthetic:7?gaps=0.05")
    assert isinstance(source, SyntheticSource) and (source.seed, source.gaps) == (7, 0.05)
    default = open_source("synthetic")
    assert isinstance(default, SyntheticSource) and (default.seed, default.gaps) == (0, 0.0)
    frame = await source.fetch("ohlcv:synthetic:BTC/USDT:1m", T0_MS, T0_MS + 500 * MINUTE_MS)
    expected = synthetic_bars("BTC/USDT", MINUTE_MS, T0_MS, T0_MS + 500 * MINUTE_MS, seed=7, gaps=0.05)
    pd.testing.assert_frame_equal(frame, expected, check_exact=True)
    await source.aclose()


def test_oversized_ranges_and_bad_arguments_are_refused() -> None:
    """A range beyond MAX_SYNTHETIC_BARS and out-of-range seeds or gap fractions raise ValueError naming them."""
    with pytest.raises(ValueError, match="spans"):
        synthetic_arrays("BTC/USDT", 1_000, 0, (MAX_SYNTHETIC_BARS + 1) * 1_000)
    with pytest.raises(ValueError, match="seed"):
        SyntheticSource(seed=-1)
    with pytest.raises(ValueError, match="gaps"):
        SyntheticSource(gaps=1.0)
