"""Temporal stage: order, duplicates, the bar grid, closed bars, finite values, OHLC sanity and gaps.

Rules (applied in this order, each row counted under the first rule that drops it):
1. Rows out of ts order are sorted (stable, so the later of two equal ``ts`` stays later): ``unsorted``.
2. Repeated ``ts``: the last row wins (a re-sent bar corrects an earlier one): ``duplicate_ts``.
3. ``ts`` off the interval grid: dropped, ``off_grid``. Rows outside the request are trimmed (a warning).
4. Bars not closed at ``context.now_ms`` (``ts + interval > now``): dropped, ``future_bar``.
5. NaN/inf in a price or the volume, or a missing ``ts``: dropped, ``non_finite``.
6. ``low <= min(open, close)``, ``max(open, close) <= high`` and ``volume >= 0`` must hold: ``ohlc_violation``
   (rows kept: there is no right fix).
7. Inside each materialized range (``context.covered``) every grid slot without a bar is part of a gap; one
   contiguous run of absent bars is one ``gap`` flag with its range. Outside covered ranges nothing is a gap.
Rules 5 and 6 look at those of ``open high low close volume`` the frame has (a subject of the schema registry may
have others); rule 6 needs all five. The frame is copied only when a row is dropped or reordered.
8. Fast path, never weaker: a frame whose stamps are consecutive grid slots inside the request, closed at
   ``now_ms``, with finite values and no OHLC violation (what storage returns, checked with a handful of numpy
   reductions: on the one price block of a frame our readers built, else on the column arrays) can trip none
   of rules 1-6, and its gaps (rule 7) can only lie before its first bar or after its last, so they follow from
   those two stamps. Any doubt (one of those checks false) sends the frame through the full rules above, which
   decide.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from provider.conformance._report import ConformanceContext, ConformanceReport
from provider.frames import PRICE_COLUMNS, column_arrays, column_names, contract_arrays

__all__ = ["TemporalRollupStage", "find_gaps"]

_NS_PER_MS = 1_000_000
_NAT = np.iinfo(np.int64).min


def find_gaps(
    stamps_ms: np.ndarray, covered: tuple[tuple[int, int], ...] | list[tuple[int, int]], interval_ms: int
) -> list[tuple[int, int]]:
    """The runs of grid slots inside ``covered`` that have no bar in the sorted, unique ``stamps_ms``."""
    gaps: list[tuple[int, int]] = []
    for lo_raw, hi_raw in covered:
        lo = -((-lo_raw) // interval_ms) * interval_ms
        hi = (hi_raw // interval_ms) * interval_ms
        if hi <= lo:
            continue
        i0, i1 = np.searchsorted(stamps_ms, [lo, hi])
        if i1 - i0 == (hi - lo) // interval_ms:
            continue
        bounded = np.concatenate(([lo - interval_ms], stamps_ms[i0:i1], [hi]))
        steps = np.diff(bounded)
        for k in np.flatnonzero(steps > interval_ms).tolist():
            gaps.append((int(bounded[k]) + interval_ms, int(bounded[k + 1])))
    return gaps


def _first(stamps_ns: np.ndarray, mask: np.ndarray) -> int | None:
    hit = np.flatnonzero(mask)
    return int(stamps_ns[hit[0]] // _NS_PER_MS) if hit.size else None


class TemporalRollupStage:
    """Checks and normalizes the time axis and the values of a schema-conforming OHLCV frame."""

    name = "temporal"

    def __init__(self, *, check_ohlc: bool = True) -> None:
        self.check_ohlc = check_ohlc

    def run(self, frame: pd.DataFrame, context: ConformanceContext, report: ConformanceReport) -> pd.DataFrame:
        """Return the cleaned frame; every change and finding goes into ``report``."""
        stamps_ns, prices, values = _arrays(frame)
        if prices is not None and _clean(stamps_ns, prices, context):  # rule 8
            _report_edge_gaps(report, int(stamps_ns[0]) // _NS_PER_MS, int(stamps_ns[-1]) // _NS_PER_MS, context)
            return frame
        if values is None:
            values = dict(zip(PRICE_COLUMNS, prices, strict=True))
        rows = len(frame)
        order: np.ndarray | None = None
        descents = int((np.diff(stamps_ns) < 0).sum()) if rows > 1 else 0
        if descents:
            report.add("unsorted", descents, detail="rows sorted by ts")
            order = np.argsort(stamps_ns, kind="stable")
            stamps_ns = stamps_ns[order]
            values = {c: array[order] for c, array in values.items()}
        keep = np.ones(rows, dtype=bool)
        self._drop(report, "duplicate_ts", keep, stamps_ns, _duplicates(stamps_ns))
        step_ns = context.interval_ms * _NS_PER_MS
        valid_ts = stamps_ns != _NAT
        if not _contiguous(stamps_ns, step_ns):
            self._drop(report, "off_grid", keep, stamps_ns, valid_ts & (stamps_ns % step_ns != 0))
        outside = valid_ts & ((stamps_ns < context.start_ms * _NS_PER_MS) | (stamps_ns >= context.end_ms * _NS_PER_MS))
        if (keep & outside).any():
            report.warnings.append(f"{int((keep & outside).sum())} row(s) outside the request were trimmed")
            keep &= ~outside
        if context.now_ms is not None:
            not_closed = valid_ts & (stamps_ns + step_ns > context.now_ms * _NS_PER_MS)
            self._drop(report, "future_bar", keep, stamps_ns, not_closed)
        self._drop(report, "non_finite", keep, stamps_ns, ~valid_ts | ~_finite_rows(values, rows))
        if self.check_ohlc and len(values) == len(PRICE_COLUMNS):
            bad = _ohlc_violations(values) & keep
            report.add("ohlc_violation", int(bad.sum()), start_ms=_first(stamps_ns, bad))
        if order is not None or not keep.all():
            positions = (np.arange(rows) if order is None else order)[keep]
            stamps_ns = stamps_ns[keep]
            frame = frame.take(positions).reset_index(drop=True)
        self._report_gaps(report, stamps_ns, context)
        return frame

    @staticmethod
    def _report_gaps(report: ConformanceReport, stamps_ns: np.ndarray, context: ConformanceContext) -> None:
        for lo, hi in find_gaps(stamps_ns // _NS_PER_MS, context.covered, context.interval_ms):
            bars = (hi - lo) // context.interval_ms
            report.add("gap", 1, start_ms=lo, end_ms=hi, detail=f"{bars} bar(s) absent")

    @staticmethod
    def _drop(report: ConformanceReport, kind: str, keep: np.ndarray, stamps_ns: np.ndarray, bad: np.ndarray) -> None:
        hit = keep & bad
        count = int(hit.sum())
        if count:
            report.add(kind, count, start_ms=_first(stamps_ns, hit))
            keep &= ~bad


def _arrays(frame: pd.DataFrame) -> tuple[np.ndarray, Any, dict[str, np.ndarray] | None]:
    """The stamps (int64 epoch ns), the prices for rule 8 (the ``(5, N)`` block of a frame our readers built, else
    the five columns when all are float64, else None) and the price columns by name (None for the block)."""
    arrays = contract_arrays(frame)
    if arrays is not None:
        return arrays[0], arrays[1], None
    stamps_ns, values = _columns(frame)
    prices = [values[c] for c in PRICE_COLUMNS] if len(values) == len(PRICE_COLUMNS) else None
    if prices is not None and any(p.dtype != np.float64 for p in prices):
        prices = None
    return stamps_ns, prices, values


def _columns(frame: pd.DataFrame) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The ``ts`` column as int64 epoch ns and the price columns the frame has, as numpy arrays (no copies)."""
    names = column_names(frame)
    arrays = column_arrays(frame) if len(set(names)) == len(names) else None
    present = [c for c in PRICE_COLUMNS if c in names]
    if arrays is None:  # repeated labels: look each up by name
        return np.asarray(frame["ts"].array.asi8, dtype=np.int64), {c: frame[c].to_numpy() for c in present}
    by_name = dict(zip(names, arrays, strict=True))
    stamps_ns = np.asarray(by_name["ts"].asi8, dtype=np.int64)
    values = {c: a if isinstance(a := by_name[c], np.ndarray) else frame[c].to_numpy() for c in present}
    return stamps_ns, values


def _clean(stamps_ns: np.ndarray, prices: Any, context: ConformanceContext) -> bool:
    """Rule 8: whether rules 1-6 provably find nothing (False means: run them). ``prices``: the ``(5, N)`` block
    or the five arrays, in :data:`PRICE_COLUMNS` order, all float64."""
    rows = len(stamps_ns)
    step_ns = context.interval_ms * _NS_PER_MS
    if not rows:
        return False
    first, last = int(stamps_ns[0]), int(stamps_ns[-1])
    if first < context.start_ms * _NS_PER_MS or last >= context.end_ms * _NS_PER_MS:
        return False
    if context.now_ms is not None and last + step_ns > context.now_ms * _NS_PER_MS:
        return False
    if not _contiguous(stamps_ns, step_ns):
        return False
    with np.errstate(invalid="ignore", over="ignore"):  # a NaN or inf anywhere makes the sum non-finite
        total = prices.sum() if isinstance(prices, np.ndarray) else sum(p.sum() for p in prices)
        if not math.isfinite(total):
            return False
        # Finite from here on: x - y >= 0 exactly when x >= y (an overflow gives inf, of the right sign).
        if isinstance(prices, np.ndarray):  # the block: open and close as one (2, N) view
            o_c, h, lo = prices[0:4:3], prices[1], prices[2]
            return bool((o_c - lo).min() >= 0 and (h - o_c).min() >= 0 and prices[4].min() >= 0)
        o, h, lo, c, v = prices
        return not ((o < lo).any() or (c < lo).any() or (o > h).any() or (c > h).any() or (v < 0).any())


def _report_edge_gaps(report: ConformanceReport, first_ms: int, last_ms: int, context: ConformanceContext) -> None:
    """Rule 7 for consecutive bars ``first_ms .. last_ms``: inside each covered range, only the slots before the
    first bar and after the last can be absent (what :func:`find_gaps` finds, without a pass over the stamps)."""
    interval = context.interval_ms
    end_ms = last_ms + interval
    for lo_raw, hi_raw in context.covered:
        lo = -((-lo_raw) // interval) * interval
        hi = (hi_raw // interval) * interval
        for gap_lo, gap_hi in ((lo, min(hi, first_ms)), (max(lo, end_ms), hi)):
            if gap_lo < gap_hi:
                bars = (gap_hi - gap_lo) // interval
                report.add("gap", 1, start_ms=gap_lo, end_ms=gap_hi, detail=f"{bars} bar(s) absent")


def _contiguous(sorted_ns: np.ndarray, step_ns: int) -> bool:
    """Whether the stamps are consecutive grid slots (then none is off the grid): the common, fast case."""
    if len(sorted_ns) == 0:
        return True
    first, last = int(sorted_ns[0]), int(sorted_ns[-1])
    if first == _NAT or first % step_ns or last - first != (len(sorted_ns) - 1) * step_ns:
        return False
    return bool(((sorted_ns[1:] - sorted_ns[:-1]) == step_ns).all())


def _duplicates(sorted_ns: np.ndarray) -> np.ndarray:
    """Rows followed by a row with the same ts (so the last of each run survives)."""
    dup = np.zeros(len(sorted_ns), dtype=bool)
    if len(sorted_ns) > 1:
        dup[:-1] = sorted_ns[:-1] == sorted_ns[1:]
    return dup


def _finite_rows(values: dict[str, np.ndarray], rows: int) -> np.ndarray:
    ok = np.ones(rows, dtype=bool)
    for array in values.values():
        ok &= np.isfinite(array)
    return ok


def _ohlc_violations(values: dict[str, np.ndarray]) -> np.ndarray:
    o, h, lo, c, v = (values[col] for col in PRICE_COLUMNS)
    with np.errstate(invalid="ignore"):
        body_low = np.minimum(o, c)
        body_high = np.maximum(o, c)
        bad = (lo > body_low) | (h < body_high) | (v < 0)
    return np.asarray(bad, dtype=bool)
