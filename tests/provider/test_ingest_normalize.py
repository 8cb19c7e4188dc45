"""normalize_bars, the one ingest normalization: units of epoch stamps, strict (storage) mode, the fast path."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from provider.conformance import epoch_unit, normalize_bars
from provider.frames import frame_from_arrays

MIN = 60_000
T0 = 1_700_000_040_000 // MIN * MIN


def _bars(count: int = 10) -> pd.DataFrame:
    stamps = T0 + np.arange(count, dtype=np.int64) * MIN
    price = np.linspace(100.0, 110.0, count)
    return frame_from_arrays(stamps, price, price + 1, price - 1, price, np.arange(count, dtype=np.float64))


def _run(frame: object, **kwargs: object) -> tuple[pd.DataFrame, object]:
    return normalize_bars(
        frame, series="ohlcv:x:BTC/USDT:1m", interval_ms=MIN, start_ms=T0, end_ms=T0 + 10 * MIN, **kwargs
    )


@pytest.mark.parametrize(
    ("value", "unit"),
    [(1_700_000_000, "s"), (1_700_000_000_000, "ms"), (1_700_000_000_000_000, "us"), (1_700_000_000_000_000_000, "ns")],
)
def test_epoch_unit_is_decided_by_magnitude(value, unit):
    """Seconds below 10**11, ms below 10**14, us below 10**17, ns above: each era's stamps land in one unit."""
    assert epoch_unit(np.asarray([value, value + 60])) == unit


def test_an_explicit_ts_unit_wins_over_magnitude():
    """Epoch ms of January 1970 look like seconds by magnitude; ``ts_unit='ms'`` reads them right."""
    stamps = np.arange(10, dtype=np.int64) * MIN
    frame = frame_from_arrays(stamps, *(np.full(10, 5.0) for _ in range(5)))
    raw = frame.assign(ts=stamps)
    window = {"series": "ohlcv:x:BTC/USDT:1m", "interval_ms": MIN, "start_ms": 0, "end_ms": 10 * MIN}
    out, report = normalize_bars(raw, ts_unit="ms", **window)
    pd.testing.assert_frame_equal(out, frame)
    assert report.ok and "read as ms" in report.flags[0].detail
    _, guessed = normalize_bars(raw, **window)
    assert guessed.blocking == ("out_of_range",) and "read as s" in guessed.flags[0].detail
    with pytest.raises(ValueError, match="ts_unit 'minutes' must be one of s, ms, us, ns"):
        epoch_unit(np.asarray([1]), "minutes")


def test_a_conformant_frame_comes_back_as_the_same_object_without_flags():
    """The fast path: nothing to do means no copy and an empty report."""
    frame = _bars()
    out, report = _run(frame)
    assert out is frame and not report.flags and report.ok


def test_strict_mode_refuses_what_it_cannot_do_losslessly():
    """Storage's strict mode refuses epoch ints and extra columns but accepts every other lossless shape."""
    frame = _bars()
    assert "dtype_mismatch" in _run(frame.assign(ts=np.arange(10)), strict=True)[1].blocking
    assert "extra_column" in _run(frame.assign(x=1.0), strict=True)[1].blocking
    out, report = _run(frame.assign(ts=frame["ts"].dt.tz_convert("Europe/Paris").dt.as_unit("ms")), strict=True)
    pd.testing.assert_frame_equal(out, frame)
    assert set(report.flag_counts) == {"ts_cast", "ts_timezone_normalized"} and report.ok


def test_a_summary_names_the_flag_its_count_and_the_first_bad_ts():
    """The blocking summary (the worker's fail reason) says what, how many and where."""
    frame = _bars()
    frame.loc[[3, 6], "close"] = np.nan
    _, report = _run(frame)
    assert report.blocking == ("non_finite",)
    assert f"non_finite=2 at {T0 + 3 * MIN}" in report.summary()
