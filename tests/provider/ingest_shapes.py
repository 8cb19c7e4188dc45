"""The frame shapes a user's fetcher may return, and what the ingest conformance must make of each.

``SHAPES[name](bars)`` takes the contract frame of one window and returns ``(raw, expected, flag)``: what the
fetcher returns, the exact bars that must end up stored (None: the window is blocked, nothing stored) and the
flag that must be reported (None for an already conforming frame). This module imports only numpy and pandas:
the worker test loads it by path inside its loopback source plug-in.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd

Shape = Callable[[pd.DataFrame], tuple[pd.DataFrame, pd.DataFrame | None, str | None]]


def _ms(bars: pd.DataFrame) -> np.ndarray:
    return bars["ts"].to_numpy(dtype="datetime64[ms]").astype(np.int64)


def _int_volume(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(volume=np.round(bars["volume"].to_numpy()))


def _f32(bars: pd.DataFrame) -> pd.DataFrame:
    return bars.assign(**{c: bars[c].astype(np.float32).astype(np.float64) for c in ("open", "high", "low", "close")})


def _ok(raw: pd.DataFrame, expected: pd.DataFrame, flag: str | None) -> tuple[pd.DataFrame, pd.DataFrame, str | None]:
    return raw, expected, flag


def _blocked(raw: pd.DataFrame, flag: str) -> tuple[pd.DataFrame, None, str]:
    return raw, None, flag


def _with(bars: pd.DataFrame, row: int, column: str, value: object) -> pd.DataFrame:
    out = bars.copy()
    out.loc[row, column] = value
    return out


SHAPES: dict[str, Shape] = {
    # normalized and flagged
    "conforming": lambda b: _ok(b, b, None),
    "ts_us": lambda b: _ok(b.assign(ts=b["ts"].dt.as_unit("us")), b, "ts_cast"),
    "ts_s": lambda b: _ok(b.assign(ts=b["ts"].dt.as_unit("s")), b, "ts_cast"),
    "ts_naive_ms": lambda b: _ok(
        b.assign(ts=b["ts"].dt.tz_localize(None).dt.as_unit("ms")), b, "ts_timezone_normalized"
    ),
    "ts_tokyo": lambda b: _ok(b.assign(ts=b["ts"].dt.tz_convert("Asia/Tokyo")), b, "ts_timezone_normalized"),
    "epoch_s": lambda b: _ok(b.assign(ts=_ms(b) // 1000), b, "ts_cast"),
    "epoch_ms": lambda b: _ok(b.assign(ts=_ms(b)), b, "ts_cast"),
    "epoch_us": lambda b: _ok(b.assign(ts=_ms(b) * 1000), b, "ts_cast"),
    "epoch_ns": lambda b: _ok(b.assign(ts=_ms(b) * 1_000_000), b, "ts_cast"),
    "epoch_ms_float": lambda b: _ok(b.assign(ts=_ms(b).astype(np.float64)), b, "ts_cast"),
    "iso_text": lambda b: _ok(b.assign(ts=b["ts"].dt.strftime("%Y-%m-%dT%H:%M:%SZ").astype(object)), b, "ts_cast"),
    "ts_index": lambda b: _ok(b.set_index("ts"), b, "ts_cast"),
    "int_volume": lambda b: _ok(
        _int_volume(b).assign(volume=lambda f: f["volume"].astype(np.int64)), _int_volume(b), "dtype_cast"
    ),
    "float32_prices": lambda b: _ok(
        _f32(b).astype({c: np.float32 for c in ("open", "high", "low", "close")}), _f32(b), "dtype_cast"
    ),
    "decimal_text": lambda b: _ok(b.assign(close=b["close"].map(repr).astype(object)), b, "dtype_cast"),
    "reordered": lambda b: _ok(b[["volume", "close", "low", "high", "open", "ts"]], b, "column_order"),
    "extra_column": lambda b: _ok(b.assign(trades=7, symbol="BTCUSDT"), b, "extra_column"),
    "unsorted": lambda b: _ok(b.iloc[::-1].reset_index(drop=True), b, "unsorted"),
    "exact_duplicates": lambda b: _ok(pd.concat([b, b.iloc[len(b) // 2 :]], ignore_index=True), b, "duplicate_ts"),
    # blocked: nothing stored, the window stays missing
    "conflicting_duplicate": lambda b: _blocked(
        pd.concat([b, _with(b, 3, "close", 1.5).iloc[3:4]], ignore_index=True), "conflicting_duplicate"
    ),
    "nan_value": lambda b: _blocked(_with(b, 5, "high", np.nan), "non_finite"),
    "inf_volume": lambda b: _blocked(_with(b, 5, "volume", np.inf), "non_finite"),
    "missing_column": lambda b: _blocked(b.drop(columns=["volume"]), "missing_column"),
    "off_grid": lambda b: _blocked(_with(b, 2, "ts", b.loc[2, "ts"] + pd.Timedelta(seconds=30)), "off_grid"),
    "outside_window": lambda b: _blocked(
        _with(b, len(b) - 1, "ts", b.loc[len(b) - 1, "ts"] + pd.Timedelta(minutes=1)), "out_of_range"
    ),
    "high_below_low": lambda b: _blocked(_with(b, 4, "high", b.loc[4, "low"] - 1.0), "high_below_low"),
    "nat_ts": lambda b: _blocked(_with(b, 4, "ts", pd.NaT), "invalid_timestamp"),
    "int_beyond_2_53": lambda b: _blocked(
        b.assign(volume=np.arange(len(b), dtype=np.int64) + 2**53 + 1), "precision_loss"
    ),
    "bool_column": lambda b: _blocked(b.assign(open=True), "dtype_mismatch"),
}

OK_SHAPES = [name for name, shape in SHAPES.items() if name in {
    "conforming", "ts_us", "ts_s", "ts_naive_ms", "ts_tokyo", "epoch_s", "epoch_ms", "epoch_us", "epoch_ns",
    "epoch_ms_float", "iso_text", "ts_index", "int_volume", "float32_prices", "decimal_text", "reordered",
    "extra_column", "unsorted", "exact_duplicates",
}]  # fmt: skip
BLOCKED_SHAPES = [name for name in SHAPES if name not in OK_SHAPES]
