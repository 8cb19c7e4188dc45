"""Ingest conformance: the one normalization every fetched or written frame goes through before it is stored.

``normalize_bars(frame, series=..., start_ms=..., end_ms=...)`` returns ``(frame, report)``: a frame of the
contract of :mod:`provider.frames` and a :class:`ConformanceReport` whose ``blocking`` names what could not be
normalized without losing or inventing data. Callers: the in-process backfill, the worker, the live feed, the
QMTL adapter (through the backfill) and, in ``strict`` mode, ``write_window`` of every storage backend.

Rules:
1. Lossless reshapes are normalized and flagged, never blocked: ``ts`` of any ``datetime64`` resolution
   (``ts_cast``), naive (= UTC) or in any time zone (``ts_timezone_normalized``), int/float32/nullable/decimal-text
   prices and volume exactly representable as float64 (``dtype_cast``), columns in any order (``column_order``),
   rows out of order (``unsorted``), exact duplicate rows (``duplicate_ts``: same ts and the same five values).
2. Not in ``strict`` mode (ingest) also: integer or integral-float epoch ``ts`` (``ts_cast``; the unit is
   ``ts_unit`` when given, else decided by magnitude of the largest absolute value: below 10**11 seconds, below
   10**14 milliseconds, below 10**17 microseconds, else nanoseconds), ISO-8601 text ``ts`` (``ts_cast``),
   a ``ts`` index (``ts_cast``) and columns outside the schema (dropped, ``extra_column``). In ``strict`` mode
   (storage) those block: an epoch int has no unit, and dropping a column would lose data.
3. Blocking flags (:data:`INGEST_BLOCKING_FLAGS`), frame-level: ``missing_column``, ``dtype_mismatch`` (a column
   that is not numeric / not a time), ``extra_column`` (strict); row-level: ``invalid_timestamp`` (NaT or
   unparseable), ``precision_loss`` (an integer beyond 2**53 that float64 cannot hold), ``conflicting_duplicate``
   (same ts, different values), ``off_grid`` (not a multiple of the interval, checked in ns), ``out_of_range``
   (outside ``[start_ms, end_ms)``), ``non_finite`` (NaN/inf), and, with ``check_ohlc``, ``high_below_low``.
4. ``report.blocking`` lists the blocking flags present. The returned frame is always the normalized rest: rows
   hit by a row-level blocking flag are dropped (of conflicting duplicates the last row is kept, as a re-sent bar
   corrects an earlier one). Callers store it only with ``partial_ok=True``; a frame-level block returns an empty
   frame.
5. An already conforming frame costs a few vectorized passes and is returned as is (no copy).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from provider.conformance._report import ConformanceReport
from provider.frames import FRAME_COLUMNS, PRICE_COLUMNS, TS_DTYPE, empty_frame

__all__ = ["INGEST_BLOCKING_FLAGS", "TS_UNITS", "epoch_unit", "normalize_bars"]

#: Flags that stop a window from being stored unless ``partial_ok``.
INGEST_BLOCKING_FLAGS = frozenset(
    {
        "missing_column",
        "dtype_mismatch",
        "invalid_timestamp",
        "precision_loss",
        "conflicting_duplicate",
        "off_grid",
        "out_of_range",
        "non_finite",
        "high_below_low",
    }
)
TS_UNITS: dict[str, int] = {"s": 1_000_000_000, "ms": 1_000_000, "us": 1_000, "ns": 1}
#: Upper bounds (exclusive) of the largest absolute epoch value for each unit when the unit is guessed.
_MAGNITUDE = (("s", 10**11), ("ms", 10**14), ("us", 10**17))
_NAT = np.iinfo(np.int64).min
_EXACT_INT = 2**53
#: Marks a value that lost precision (dropped as ``precision_loss`` before the finite check sees it).
_LOSSY = np.inf
_NS_PER_MS = 1_000_000


class _Blocked(Exception):
    """Internal: a frame-level block already recorded in the report."""


def epoch_unit(values: np.ndarray, ts_unit: str | None = None) -> str:
    """The unit of integer epoch stamps: ``ts_unit`` when given, else by magnitude (module rule 2)."""
    if ts_unit is not None:
        if ts_unit not in TS_UNITS:
            raise ValueError(f"ts_unit {ts_unit!r} must be one of {', '.join(TS_UNITS)}")
        return ts_unit
    top = float(np.abs(values).max()) if len(values) else 0.0
    for unit, bound in _MAGNITUDE:
        if top < bound:
            return unit
    return "ns"


def normalize_bars(
    frame: Any,
    *,
    series: str,
    interval_ms: int,
    start_ms: int,
    end_ms: int,
    strict: bool = False,
    ts_unit: str | None = None,
    check_ohlc: bool = True,
    created_at_ms: int | None = None,
) -> tuple[pd.DataFrame, ConformanceReport]:
    """Normalize one window's frame (see the module rules); never raises for data problems."""
    report = ConformanceReport(
        node_id=series,
        interval_ms=interval_ms,
        start_ms=start_ms,
        end_ms=end_ms,
        schema="ohlcv@1 ingest",
        rows_in=len(frame) if hasattr(frame, "__len__") else 0,
        created_at_ms=created_at_ms,
    )
    try:
        if not isinstance(frame, pd.DataFrame):
            report.add("dtype_mismatch", 1, detail=f"expected a pandas DataFrame, got {type(frame).__name__}")
            raise _Blocked
        stamps, values = _columns(frame, report, strict=strict, ts_unit=ts_unit)
        out = _rows(frame, stamps, values, report, interval_ms, start_ms, end_ms, check_ohlc)
    except _Blocked:
        out = empty_frame()
    report.rows_out = len(out)
    blocking = INGEST_BLOCKING_FLAGS | ({"extra_column"} if strict else set())
    report.blocking = tuple(sorted(k for k in report.flag_counts if k in blocking))
    return out, report


# -- columns -----------------------------------------------------------------------------------------------


def _columns(
    frame: pd.DataFrame, report: ConformanceReport, *, strict: bool, ts_unit: str | None
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if "ts" not in frame.columns and frame.index.name == "ts" and not strict:
        frame = frame.reset_index()
        report.add("ts_cast", 1, detail="ts taken from the index")
    names = [str(c) for c in frame.columns]
    missing = [c for c in FRAME_COLUMNS if c not in names]
    if missing:
        report.add("missing_column", len(missing), detail=f"required columns absent: {', '.join(missing)}")
    extra = [c for c in names if c not in FRAME_COLUMNS]
    if extra:
        note = "storage stores exactly ts open high low close volume" if strict else "dropped"
        report.add("extra_column", len(extra), detail=f"{', '.join(extra)} ({note})")
    if len(set(names)) != len(names):
        report.add("dtype_mismatch", 1, detail=f"column names repeat: {names}")
    if missing or (extra and strict) or "dtype_mismatch" in report.flag_counts:
        raise _Blocked
    if tuple(c for c in names if c in FRAME_COLUMNS) != FRAME_COLUMNS:
        report.add("column_order", 1, detail=f"columns {names} reordered to {list(FRAME_COLUMNS)}")
    stamps = _ts_ns(frame["ts"], report, strict=strict, ts_unit=ts_unit)
    values = {name: _float_values(frame[name], name, report, strict=strict) for name in PRICE_COLUMNS}
    if "dtype_mismatch" in report.flag_counts:
        raise _Blocked
    return stamps, values


def _ts_ns(column: pd.Series, report: ConformanceReport, *, strict: bool, ts_unit: str | None) -> np.ndarray:
    """``ts`` as int64 epoch ns, NaT as int64 min (module rules 1-2)."""
    dtype = column.dtype
    rows = len(column)
    if isinstance(dtype, pd.DatetimeTZDtype):
        if str(dtype.tz) != "UTC":
            report.add("ts_timezone_normalized", rows, detail=f"ts in {dtype.tz} converted to UTC")
            column = column.dt.tz_convert("UTC")
        return _as_ns(column, dtype.unit, report)
    if dtype.kind == "M":
        report.add("ts_timezone_normalized", rows, detail="naive ts read as UTC")
        return _as_ns(column, str(column.dt.unit), report)
    if strict:
        report.add(
            "dtype_mismatch", 1, detail=f"column 'ts' is {dtype}; storage takes datetime64 (any unit, naive = UTC)"
        )
        return np.empty(0, dtype=np.int64)
    if dtype.kind in "iuf" or (pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_bool_dtype(dtype)):
        return _epoch_ns(column, report, ts_unit)
    if dtype.kind == "O" or pd.api.types.is_string_dtype(dtype):
        parsed = pd.to_datetime(column, utc=True, errors="coerce", format="ISO8601")
        report.add("ts_cast", rows, detail=f"ts parsed from {dtype} as ISO-8601")
        return _as_ns(parsed, parsed.dt.unit, report, flag=False)
    report.add("dtype_mismatch", 1, detail=f"column 'ts' is {dtype}; allowed: datetime64, epoch int, ISO-8601 text")
    return np.empty(0, dtype=np.int64)


def _as_ns(column: pd.Series, unit: str, report: ConformanceReport, *, flag: bool = True) -> np.ndarray:
    if unit != "ns":
        if flag:
            report.add("ts_cast", len(column), detail=f"ts datetime64[{unit}] -> datetime64[ns, UTC]")
        try:
            column = column.dt.as_unit("ns")
        except (OverflowError, pd.errors.OutOfBoundsDatetime):
            report.add("dtype_mismatch", 1, detail=f"ts datetime64[{unit}] values fall outside years 1677-2262")
            return np.empty(0, dtype=np.int64)
    return np.asarray(column.array.asi8, dtype=np.int64)


def _epoch_ns(column: pd.Series, report: ConformanceReport, ts_unit: str | None) -> np.ndarray:
    raw = column.to_numpy(dtype=np.float64, na_value=np.nan) if column.dtype.kind not in "iu" else column.to_numpy()
    if raw.dtype.kind == "f":
        valid = np.isfinite(raw) & (raw == np.round(raw))
        ints = np.where(valid, raw, 0).astype(np.int64)
    else:
        valid = np.ones(len(raw), dtype=bool)
        ints = raw.astype(np.int64)
    unit = epoch_unit(ints[valid], ts_unit)
    factor = TS_UNITS[unit]
    valid &= np.abs(ints) < (2**62 // factor)
    report.add("ts_cast", len(raw), detail=f"ts epoch {column.dtype} read as {unit} -> datetime64[ns, UTC]")
    return np.where(valid, ints * factor, _NAT)


def _float_values(column: pd.Series, name: str, report: ConformanceReport, *, strict: bool) -> np.ndarray:
    dtype = column.dtype
    if dtype == np.float64:
        return column.to_numpy()
    if pd.api.types.is_bool_dtype(dtype):
        report.add("dtype_mismatch", 1, detail=f"column {name!r} is {dtype}; allowed: int or float")
        return np.empty(0)
    if pd.api.types.is_numeric_dtype(dtype):
        values = column.to_numpy(dtype=np.float64, na_value=np.nan)
        if dtype.kind in "iu" or str(dtype).lower().startswith(("int", "uint")):
            _check_exact(column, name, report, values)
    elif not strict and (dtype.kind == "O" or pd.api.types.is_string_dtype(dtype)):
        numbers = pd.to_numeric(column, errors="coerce")
        if bool((numbers.isna() & column.notna()).any()):
            report.add("dtype_mismatch", 1, detail=f"column {name!r} holds text that is not a number")
            return np.empty(0)
        values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    else:
        report.add("dtype_mismatch", 1, detail=f"column {name!r} is {dtype}; allowed: int or float")
        return np.empty(0)
    report.add("dtype_cast", 1, detail=f"{name}: {dtype} -> float64")
    report.casts[name] = report.casts.get(name, 0) + len(values)
    return values


def _check_exact(column: pd.Series, name: str, report: ConformanceReport, values: np.ndarray) -> None:
    """Integers beyond 2**53 lose digits as float64: flag them and mark their rows NaN (dropped, never stored)."""
    too_big = np.abs(values) > _EXACT_INT
    if too_big.any():
        shown = column.to_numpy()[too_big][0]
        report.add(
            "precision_loss",
            int(too_big.sum()),
            detail=f"{name}: {shown} is beyond 2**53 and cannot be stored as float64 exactly",
        )
        values[too_big] = _LOSSY


# -- rows --------------------------------------------------------------------------------------------------


def _rows(
    frame: pd.DataFrame,
    stamps: np.ndarray,
    values: dict[str, np.ndarray],
    report: ConformanceReport,
    interval_ms: int,
    start_ms: int,
    end_ms: int,
    check_ohlc: bool,
) -> pd.DataFrame:
    rows = len(stamps)
    changed = bool(report.flag_counts)
    order: np.ndarray | None = None
    steps = np.diff(stamps)
    if rows > 1 and bool((steps < 0).any()):
        order = np.argsort(stamps, kind="stable")
        report.add("unsorted", int((steps < 0).sum()), detail="rows sorted by ts")
        stamps = stamps[order]
        values = {k: v[order] for k, v in values.items()}
        steps = np.diff(stamps)
    keep = np.ones(rows, dtype=bool)
    step_ns = interval_ms * _NS_PER_MS
    lo_ns, hi_ns = start_ms * _NS_PER_MS, end_ms * _NS_PER_MS
    if _contiguous(stamps, steps, step_ns):
        # The common case: consecutive grid slots. No NaT, no duplicate, nothing off the grid; bounds at the ends.
        if rows and (int(stamps[0]) < lo_ns or int(stamps[-1]) >= hi_ns):
            outside = (stamps < lo_ns) | (stamps >= hi_ns)
            _drop(report, "out_of_range", keep, stamps, outside, detail=f"outside the window [{start_ms}, {end_ms})")
    else:
        _check_stamps(report, keep, stamps, steps, values, step_ns, (start_ms, end_ms))
    finite = np.ones(rows, dtype=bool)
    for array in values.values():
        finite &= np.isfinite(array)
    if "precision_loss" in report.flag_counts:
        # The rows were flagged when the column was cast; drop them without counting them again.
        keep &= finite | ~np.any([np.isposinf(v) for v in values.values()], axis=0)
    _drop(report, "non_finite", keep, stamps, ~finite, detail="NaN or inf in open/high/low/close/volume")
    if check_ohlc:
        with np.errstate(invalid="ignore"):
            bad = values["high"] < values["low"]
        _drop(report, "high_below_low", keep, stamps, bad, detail="high < low")
    index = frame.index
    untouched = not changed and order is None and bool(keep.all()) and frame["ts"].dtype == TS_DTYPE
    if untouched and isinstance(index, pd.RangeIndex) and index.start == 0 and index.step == 1:
        return frame
    return _build(stamps[keep], {k: v[keep] for k, v in values.items()})


def _contiguous(stamps: np.ndarray, steps: np.ndarray, step_ns: int) -> bool:
    """Whether the sorted stamps are consecutive slots of the grid (the fast path of rule 5)."""
    if len(stamps) == 0:
        return True
    first = int(stamps[0])
    return first != _NAT and first % step_ns == 0 and bool((steps == step_ns).all())


def _check_stamps(
    report: ConformanceReport,
    keep: np.ndarray,
    stamps: np.ndarray,
    steps: np.ndarray,
    values: dict[str, np.ndarray],
    step_ns: int,
    window_ms: tuple[int, int],
) -> None:
    """NaT, duplicates, the grid and the window, for stamps that are not simply consecutive grid slots."""
    start_ms, end_ms = window_ms
    _drop(report, "invalid_timestamp", keep, stamps, stamps == _NAT)
    if bool((steps == 0).any()):
        exact, conflict = _duplicates(stamps, values)
        _drop(report, "duplicate_ts", keep, stamps, exact, detail="exact duplicate rows dropped")
        _drop(report, "conflicting_duplicate", keep, stamps, conflict, detail="same ts, other values; last kept")
    valid = stamps != _NAT
    grid = f"not on the {step_ns // _NS_PER_MS} ms grid"
    _drop(report, "off_grid", keep, stamps, valid & (stamps % step_ns != 0), detail=grid)
    outside = valid & ((stamps < start_ms * _NS_PER_MS) | (stamps >= end_ms * _NS_PER_MS))
    _drop(report, "out_of_range", keep, stamps, outside, detail=f"outside the window [{start_ms}, {end_ms})")


def _duplicates(stamps: np.ndarray, values: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Rows followed by a row of the same ts: exact repeats, and those whose values differ from the last of the run."""
    rows = len(stamps)
    same_next = np.zeros(rows, dtype=bool)
    same_next[:-1] = stamps[:-1] == stamps[1:]
    # The last row of each run of equal stamps, for every row.
    run_end = np.arange(rows)
    ends = np.flatnonzero(~same_next)
    run_end = ends[np.searchsorted(ends, run_end)]
    equal = np.ones(rows, dtype=bool)
    for array in values.values():
        equal &= (array == array[run_end]) | (np.isnan(array) & np.isnan(array[run_end]))
    return same_next & equal, same_next & ~equal


def _drop(
    report: ConformanceReport, kind: str, keep: np.ndarray, stamps: np.ndarray, bad: np.ndarray, *, detail: str = ""
) -> None:
    hit = keep & bad
    count = int(hit.sum())
    if count:
        first = int(stamps[np.flatnonzero(hit)[0]])
        report.add(kind, count, start_ms=None if first == _NAT else first // _NS_PER_MS, detail=detail)
        keep &= ~bad


def _build(stamps_ns: np.ndarray, values: dict[str, np.ndarray]) -> pd.DataFrame:
    if len(stamps_ns) == 0:
        return empty_frame()
    ts = pd.DatetimeIndex(stamps_ns.view("datetime64[ns]")).tz_localize("UTC")
    data: dict[str, Any] = {"ts": ts}
    data.update({name: np.asarray(values[name], dtype=np.float64) for name in PRICE_COLUMNS})
    return pd.DataFrame(data)
