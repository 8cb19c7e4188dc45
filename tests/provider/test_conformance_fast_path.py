"""The temporal stage's fast path (rule 8) is never weaker: every defect it could overlook in a frame that
otherwise looks like storage's output is still flagged exactly as the full rules flag it, and a clean frame gets
the report the full rules give."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest

from provider.conformance import TemporalRollupStage
from provider.conformance import _temporal as temporal
from provider.conformance._report import ConformanceContext, ConformanceReport
from provider.frames import column_arrays, column_names, frame_from_arrays, frame_from_block, ts_ns

M = 60_000
T0 = 1_700_000_000_000 // M * M
N = 50


def _frame(mutate: Any = None) -> pd.DataFrame:
    close = 100.0 + np.arange(N, dtype=np.float64)
    frame = frame_from_arrays(T0 + np.arange(N, dtype=np.int64) * M, close, close + 1, close - 1, close, np.ones(N))
    return frame if mutate is None else mutate(frame)


def _set(column: str, row: int, value: Any) -> Any:
    def mutate(frame: pd.DataFrame) -> pd.DataFrame:
        frame = frame.copy()
        frame.loc[row, column] = value
        return frame

    return mutate


def _run(frame: pd.DataFrame, *, fast: bool, now_ms: int | None = None) -> tuple[pd.DataFrame, ConformanceReport]:
    context = ConformanceContext(
        "ohlcv:binance:BTC/USDT:1m", M, T0, T0 + N * M, covered=((T0, T0 + N * M),), now_ms=now_ms, request_id="r"
    )
    report = ConformanceReport(node_id=context.node_id, interval_ms=M, start_ms=T0, end_ms=T0 + N * M)
    original = temporal._clean
    if not fast:
        temporal._clean = lambda *args: False  # the full rules only
    try:
        out = TemporalRollupStage().run(frame, context, report)
    finally:
        temporal._clean = original
    return out, report


def _flags(report: ConformanceReport) -> list[tuple[str, int, int | None, int | None]]:
    return [(f.kind, f.count, f.start_ms, f.end_ms) for f in report.flags]


DEFECTS = {
    "nan close": (_set("close", 7, np.nan), "non_finite"),
    "inf volume": (_set("volume", 0, np.inf), "non_finite"),
    "negative volume": (_set("volume", 3, -1.0), "ohlc_violation"),
    "low above open": (_set("low", 9, 1e9), "ohlc_violation"),
    "high below close": (_set("high", N - 1, 0.0), "ohlc_violation"),
    "off grid": (_set("ts", 5, pd.Timestamp(T0 + 5 * M + 1, unit="ms", tz="UTC")), "off_grid"),
    "duplicate": (_set("ts", 5, pd.Timestamp(T0 + 4 * M, unit="ms", tz="UTC")), "duplicate_ts"),
    "unsorted": (lambda f: f.iloc[::-1].reset_index(drop=True), "unsorted"),
}


@pytest.mark.parametrize("name", sorted(DEFECTS))
def test_each_defect_is_flagged_as_the_full_rules_flag_it(name: str) -> None:
    mutate, kind = DEFECTS[name]
    frame = _frame(mutate)
    fast_out, fast = _run(frame, fast=True)
    full_out, full = _run(frame, fast=False)
    assert kind in fast.flag_counts
    assert _flags(fast) == _flags(full)
    pd.testing.assert_frame_equal(fast_out, full_out, check_exact=True)


def test_a_bar_not_closed_yet_is_dropped_on_the_fast_path_too() -> None:
    now = T0 + (N - 1) * M  # the last bar closes at T0 + N * M
    out, report = _run(_frame(), fast=True, now_ms=now)
    assert report.flag_counts["future_bar"] == 1 and len(out) == N - 1
    assert _flags(report) == _flags(_run(_frame(), fast=False, now_ms=now)[1])


def test_a_clean_frame_is_returned_as_is_with_the_full_rules_report() -> None:
    frame = _frame(lambda f: f.drop(index=[10, 11]).reset_index(drop=True))  # one gap of two bars
    stamps, values = temporal._columns(frame)
    context = ConformanceContext("ohlcv:binance:BTC/USDT:1m", M, T0, T0 + N * M, covered=(), now_ms=None)
    assert not temporal._clean(stamps, values, context)  # not consecutive: the full rules decide
    clean = _frame()
    fast_out, fast = _run(clean, fast=True)
    _, full = _run(clean, fast=False)
    assert fast_out is clean and _flags(fast) == _flags(full) == []
    _, gap_fast = _run(frame, fast=True)
    assert _flags(gap_fast) == _flags(_run(frame, fast=False)[1]) == [("gap", 1, T0 + 10 * M, T0 + 12 * M)]


def test_frames_built_from_blocks_copy_or_take_over_as_documented() -> None:
    """``frame_from_arrays`` copies (the caller may reuse its arrays); ``frame_from_block`` takes them over; both
    give the contract dtypes, and the helpers read the columns back by position."""
    stamps = T0 + np.arange(3, dtype=np.int64) * M
    prices = [np.array([1.0, 2.0, 3.0]) for _ in range(5)]
    copied = frame_from_arrays(stamps, *prices)
    prices[3][0] = -1.0
    stamps[0] = 0
    assert copied["close"].iloc[0] == 1.0 and copied["ts"].iloc[0] == pd.Timestamp(T0, unit="ms", tz="UTC")
    block = np.vstack([np.array([1.0, 2.0, 3.0])] * 5)
    owned = frame_from_block(T0 + np.arange(3, dtype=np.int64) * M, block)
    assert np.shares_memory(owned["close"].to_numpy(), block)
    assert list(owned.dtypes.astype(str)) == ["datetime64[ns, UTC]", *["float64"] * 5]
    pd.testing.assert_frame_equal(owned, frame_from_arrays(T0 + np.arange(3) * M, *block), check_exact=True)
    assert column_names(owned) == ("ts", "open", "high", "low", "close", "volume")
    assert np.array_equal(column_arrays(owned)[4], block[3])
    assert np.array_equal(ts_ns(owned), (T0 + np.arange(3) * M) * 1_000_000)
    taken = T0 + np.arange(3, dtype=np.int64) * M
    assert np.shares_memory(ts_ns(frame_from_block(taken, block.copy())), taken)  # the ts column is not copied


@pytest.mark.parametrize(
    "reshape",
    [
        lambda f: f,  # as built: two blocks, read from them
        lambda f: f.assign(open=f["open"].to_numpy() + 0.5),  # a column replaced: three blocks
        lambda f: f[["ts", "high", "open", "low", "close", "volume"]],  # columns in another order
        lambda f: f.iloc[1:].reset_index(drop=True),  # a slice
        lambda f: pd.DataFrame({c: f[c] for c in f.columns}),  # one block per column
    ],
    ids=["built", "replaced", "reordered", "sliced", "split"],
)
def test_column_arrays_reads_every_layout_like_pandas(reshape: Any) -> None:
    """The block shortcut of ``column_arrays`` serves only frames laid out as ``frame_from_block`` lays them out;
    any other layout gets the same arrays the column lookups give."""
    block = np.vstack([np.arange(4, dtype=np.float64) + k for k in range(5)])
    frame = reshape(frame_from_block(T0 + np.arange(4, dtype=np.int64) * M, block))
    arrays = column_arrays(frame)
    assert len(arrays) == len(frame.columns)
    for position, name in enumerate(frame.columns):
        assert np.array_equal(np.asarray(arrays[position]), frame[name].to_numpy()), name
