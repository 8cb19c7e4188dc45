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
from provider.conformance._schema import SchemaRollupStage
from provider.frames import column_arrays, column_names, contract_arrays, frame_from_arrays, frame_from_block, ts_ns

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


def _block(*cells: tuple[int, int, float]) -> Any:
    """Values written straight into the arrays a reader hands ``frame_from_block``: (row, col, value), where col 0
    is ts in ms and 1-5 the prices."""

    def build() -> pd.DataFrame:
        stamps = T0 + np.arange(N, dtype=np.int64) * M
        close = 100.0 + np.arange(N, dtype=np.float64)
        prices = np.vstack([close, close + 1, close - 1, close, np.ones(N)])
        for row, col, value in cells:
            if col == 0:
                stamps[row] = int(value)
            else:
                prices[col - 1, row] = value
        return frame_from_block(stamps, prices)

    return build


BLOCK_DEFECTS = {
    "nan close": (_block((7, 4, np.nan)), "non_finite"),
    "inf volume": (_block((0, 5, np.inf)), "non_finite"),
    "-inf low": (_block((3, 3, -np.inf)), "non_finite"),  # low <= open and close still hold
    "inf high": (_block((N - 1, 2, np.inf)), "non_finite"),  # high >= open and close still hold
    "negative volume": (_block((3, 5, -1.0)), "ohlc_violation"),
    "low above close": (_block((9, 3, 1.7e308)), "ohlc_violation"),
    "high below open": (_block((N - 1, 2, 0.0)), "ohlc_violation"),
    "off grid": (_block((5, 0, T0 + 5 * M + 1)), "off_grid"),
    "duplicate": (_block((5, 0, T0 + 4 * M)), "duplicate_ts"),
    "unsorted": (_block((0, 0, T0 + N * M - 1)), "unsorted"),
    # Finite values whose sum overflows: the fast path doubts, the full rules find nothing.
    "huge but clean": (_block((2, 2, 1.7e308), (3, 5, 1.7e308)), None),
}


@pytest.mark.parametrize("name", sorted(BLOCK_DEFECTS))
def test_frames_our_readers_build_get_the_block_fast_path_and_the_same_flags(name: str) -> None:
    """A frame laid out as ``frame_from_block`` lays it out is checked on its price block at once; every defect
    there is flagged exactly as the full rules flag it."""
    build, kind = BLOCK_DEFECTS[name]
    assert contract_arrays(build()) is not None  # this frame takes the block path
    fast_out, fast = _run(build(), fast=True)
    full_out, full = _run(build(), fast=False)
    assert kind in fast.flag_counts if kind else not fast.flags
    assert _flags(fast) == _flags(full)
    pd.testing.assert_frame_equal(fast_out, full_out, check_exact=True)


@pytest.mark.parametrize(
    "covered", [(), ((T0, T0 + N * M),), ((T0 - 3 * M, T0 + 2 * M), (T0 + N * M - M, T0 + (N + 4) * M + 7))]
)
@pytest.mark.parametrize("rows", [(0, N), (5, N), (0, N - 9), (12, 30)])
def test_gaps_at_the_edges_of_a_clean_block_are_the_gaps_the_full_rules_find(covered: Any, rows: Any) -> None:
    """A clean frame's gaps follow from its first and last bar; they match a pass over every stamp."""
    lo_row, hi_row = rows
    stamps = T0 + np.arange(lo_row, hi_row, dtype=np.int64) * M
    close = np.full(len(stamps), 5.0)
    frame = frame_from_block(stamps, np.vstack([close, close + 1, close - 1, close, close]))
    context = ConformanceContext("ohlcv:binance:BTC/USDT:1m", M, T0 - 3 * M, T0 + (N + 5) * M, covered=covered)
    fast = ConformanceReport(node_id=context.node_id, interval_ms=M, start_ms=context.start_ms, end_ms=context.end_ms)
    assert TemporalRollupStage().run(frame, context, fast) is frame
    expected = temporal.find_gaps(ts_ns(frame) // 1_000_000, covered, M)
    assert [(f.start_ms, f.end_ms) for f in fast.flags if f.kind == "gap"] == expected
    assert fast.flag_counts.get("gap", 0) == len(expected)


def test_a_bar_not_closed_yet_is_dropped_on_the_fast_path_too() -> None:
    now = T0 + (N - 1) * M  # the last bar closes at T0 + N * M
    out, report = _run(_frame(), fast=True, now_ms=now)
    assert report.flag_counts["future_bar"] == 1 and len(out) == N - 1
    assert _flags(report) == _flags(_run(_frame(), fast=False, now_ms=now)[1])


def test_a_clean_frame_is_returned_as_is_with_the_full_rules_report() -> None:
    frame = _frame(lambda f: f.drop(index=[10, 11]).reset_index(drop=True))  # one gap of two bars
    stamps, values = temporal._columns(frame)
    context = ConformanceContext("ohlcv:binance:BTC/USDT:1m", M, T0, T0 + N * M, covered=(), now_ms=None)
    assert not temporal._clean(stamps, list(values.values()), context)  # not consecutive: the full rules decide
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


@pytest.mark.parametrize(
    "derive",
    [
        lambda f: f.astype(dict.fromkeys(("open", "high", "low", "close", "volume"), "float32")),
        lambda f: f.astype({"ts": "datetime64[us, UTC]"}),
        lambda f: f.astype({"volume": "int64"}),
    ],
    ids=["float32 prices", "ts in us", "int volume"],
)
def test_the_schema_stage_trusts_a_readers_layout_only_with_the_contracts_dtypes(derive: Any) -> None:
    """A frame our readers built matches the contract schema by its layout alone (returned as is); a frame derived
    from it with other dtypes keeps the column labels object, and still gets its casts flagged."""
    block = np.vstack([np.full(N, 5.0)] * 5)
    built = frame_from_block(T0 + np.arange(N, dtype=np.int64) * M, block)
    context = ConformanceContext("ohlcv:binance:BTC/USDT:1m", M, T0, T0 + N * M)
    stage = SchemaRollupStage()
    clean = ConformanceReport(node_id=context.node_id, interval_ms=M, start_ms=T0, end_ms=T0 + N * M)
    assert stage.run(built, context, clean) is built and not clean.flags
    derived = derive(built)
    assert derived.columns is built.columns and contract_arrays(derived) is None
    report = ConformanceReport(node_id=context.node_id, interval_ms=M, start_ms=T0, end_ms=T0 + N * M)
    out = stage.run(derived, context, report)
    assert report.flag_counts.get("dtype_cast", 0) >= 1
    assert list(out.dtypes.astype(str)) == ["datetime64[ns, UTC]", *["float64"] * 5]
