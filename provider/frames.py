"""The frame contract of DESIGN.md section 2, shared by storage, sources and the provider.

A bar frame has columns ``ts`` (``datetime64[ns, UTC]``) and ``open high low close volume`` (float64), is sorted
by ``ts`` with unique values on the bar grid, and has a default RangeIndex. An empty frame keeps the columns and
dtypes. :func:`check_frame` names the first problem it finds; :func:`empty_frame` and :func:`frame_from_arrays`
build conforming frames.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

__all__ = [
    "FRAME_COLUMNS",
    "PRICE_COLUMNS",
    "TS_DTYPE",
    "FrameContractError",
    "check_frame",
    "empty_frame",
    "frame_from_arrays",
    "ts_ms",
]

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")
FRAME_COLUMNS = ("ts", *PRICE_COLUMNS)
TS_DTYPE = pd.DatetimeTZDtype("ns", "UTC")


class FrameContractError(ValueError):
    """A frame breaks the contract; ``problem`` is a short machine-readable tag, the message says what to fix."""

    def __init__(self, problem: str, message: str) -> None:
        self.problem = problem
        super().__init__(message)


def empty_frame() -> pd.DataFrame:
    """A frame with no rows and the contract's columns and dtypes."""
    return frame_from_arrays(np.empty(0, dtype=np.int64), *(np.empty(0) for _ in PRICE_COLUMNS))


def frame_from_arrays(ts_ms_values: Any, open_: Any, high: Any, low: Any, close: Any, volume: Any) -> pd.DataFrame:
    """Build a contract frame from epoch-ms timestamps and price arrays (no sorting or checks)."""
    ts = pd.to_datetime(np.asarray(ts_ms_values, dtype=np.int64), unit="ms", utc=True).as_unit("ns")
    return pd.DataFrame(
        {
            "ts": ts,
            "open": np.asarray(open_, dtype=np.float64),
            "high": np.asarray(high, dtype=np.float64),
            "low": np.asarray(low, dtype=np.float64),
            "close": np.asarray(close, dtype=np.float64),
            "volume": np.asarray(volume, dtype=np.float64),
        }
    )


def ts_ms(frame: pd.DataFrame) -> np.ndarray:
    """The ``ts`` column as int64 epoch milliseconds."""
    return frame["ts"].to_numpy(dtype="datetime64[ms]").astype(np.int64)


def check_frame(
    frame: Any, *, interval_ms: int | None = None, start_ms: int | None = None, end_ms: int | None = None
) -> None:
    """Raise :class:`FrameContractError` naming the first way ``frame`` breaks the contract.

    With ``interval_ms`` every ``ts`` must lie on the bar grid; with ``start_ms``/``end_ms`` inside the window.
    """
    _check_schema(frame)
    if len(frame) == 0:
        return
    stamps = ts_ms(frame)
    _check_order(stamps)
    if interval_ms is not None:
        _check_grid(frame["ts"].to_numpy(dtype="datetime64[ns]").view(np.int64), interval_ms)
    _check_bounds(stamps, start_ms, end_ms)
    values = frame[list(PRICE_COLUMNS)].to_numpy()
    if not np.isfinite(values).all():
        raise FrameContractError("non_finite", "open/high/low/close/volume must be finite (no NaN or inf)")


def _check_schema(frame: Any) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise FrameContractError("type", f"expected a pandas DataFrame, got {type(frame).__name__}")
    columns = tuple(frame.columns)
    if columns != FRAME_COLUMNS:
        raise FrameContractError("columns", f"columns must be {list(FRAME_COLUMNS)}, got {list(columns)}")
    if frame["ts"].dtype != TS_DTYPE:
        raise FrameContractError("dtype", f"column 'ts' must be {TS_DTYPE}, got {frame['ts'].dtype}")
    for name in PRICE_COLUMNS:
        if frame[name].dtype != np.float64:
            raise FrameContractError("dtype", f"column {name!r} must be float64, got {frame[name].dtype}")


def _check_order(stamps: np.ndarray) -> None:
    steps = np.diff(stamps)
    if (steps == 0).any():
        dup = int(stamps[1:][steps == 0][0])
        raise FrameContractError("duplicate_ts", f"ts must be unique; {pd.Timestamp(dup, unit='ms')} repeats")
    if (steps < 0).any():
        raise FrameContractError("unsorted", "rows must be sorted by ts ascending")


def _check_grid(stamps_ns: np.ndarray, interval_ms: int) -> None:
    """Checked in nanoseconds: a stamp a few microseconds off the grid is off the grid, not rounded onto it."""
    off = stamps_ns % (interval_ms * 1_000_000) != 0
    if off.any():
        bad = pd.Timestamp(int(stamps_ns[off][0]), unit="ns")
        raise FrameContractError("off_grid", f"ts {bad} is not on the {interval_ms} ms bar grid")


def _check_bounds(stamps: np.ndarray, start_ms: int | None, end_ms: int | None) -> None:
    if start_ms is not None and stamps[0] < start_ms:
        raise FrameContractError("out_of_range", f"ts {int(stamps[0])} is before the window start {start_ms}")
    if end_ms is not None and stamps[-1] >= end_ms:
        raise FrameContractError("out_of_range", f"ts {int(stamps[-1])} is at or after the window end {end_ms}")
