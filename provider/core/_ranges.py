"""Half-open range algebra on int milliseconds.

Rules:
1. A range is a ``(start, end)`` tuple of ints meaning ``[start, end)``. ``start == end`` is empty and vanishes
   from every result; ``start > end`` is an error naming both values.
2. Every result is a sorted list of disjoint, non-adjacent ranges: ``[a, b) + [b, c) = [a, c)``.
3. Requests are snapped *outward* to the bar grid, so an off-grid bound widens the request rather than dropping
   a bar. A bar partly covered counts as missing.
4. Work is vectorized with numpy (sort + sweep, O(n log n)); nothing here does I/O. Inputs of a few ranges
   (lists or tuples, ``_SMALL`` ranges in all; what a fetch passes) take a pure-Python path with the same
   results: numpy's per-call overhead (~20 us a call) would dominate the fixed cost of a small fetch.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from provider.core._time import interval_ms, to_ms

__all__ = [
    "Range",
    "covered_ms",
    "intersect_ranges",
    "merge_ranges",
    "missing_ranges",
    "snap_range",
    "subtract_ranges",
    "window_ranges",
]

Range = tuple[int, int]

_EMPTY = np.empty((0, 2), dtype=np.int64)
#: Inputs of at most this many ranges in all take the pure-Python path (rule 4).
_SMALL = 16


def _is_small(*inputs: Any) -> bool:
    return all(isinstance(x, list | tuple) for x in inputs) and sum(len(x) for x in inputs) <= _SMALL


def _small_merged(ranges: Iterable[tuple[Any, Any]]) -> list[Range]:
    pairs = []
    for start, end in ranges:
        lo, hi = int(start), int(end)
        if lo > hi:
            raise ValueError(f"range start {lo} is after its end {hi}; ranges are half-open [start, end)")
        if lo < hi:
            pairs.append((lo, hi))
    pairs.sort()
    out: list[Range] = []
    for lo, hi in pairs:
        if out and lo <= out[-1][1]:
            if hi > out[-1][1]:
                out[-1] = (out[-1][0], hi)
        else:
            out.append((lo, hi))
    return out


def _small_combine(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]], keep_b: bool) -> list[Range]:
    ma, mb = _small_merged(a), _small_merged(b)
    out: list[Range] = []
    for lo, hi in ma:
        cur = lo
        for b_lo, b_hi in mb:
            if b_hi <= cur:
                continue
            if b_lo >= hi:
                break
            if keep_b:
                out.append((max(cur, b_lo), min(hi, b_hi)))
            elif b_lo > cur:
                out.append((cur, b_lo))
            cur = b_hi
            if cur >= hi:
                break
        if not keep_b and cur < hi:
            out.append((cur, hi))
    return out


def _as_array(ranges: Iterable[tuple[Any, Any]] | np.ndarray) -> np.ndarray:
    if isinstance(ranges, np.ndarray):
        arr = ranges.astype(np.int64, copy=False)
    else:
        items = ranges if isinstance(ranges, list) else list(ranges)
        if not items:
            return _EMPTY
        try:  # fromiter over the flattened pairs is several times faster than asarray on a list of tuples
            arr = np.fromiter(chain.from_iterable(items), dtype=np.int64, count=2 * len(items))
        except (TypeError, ValueError):
            arr = np.asarray(items, dtype=np.int64)
    if arr.size == 0:
        return _EMPTY
    arr = arr.reshape(-1, 2)
    bad = np.flatnonzero(arr[:, 0] > arr[:, 1])
    if bad.size:
        start, end = (int(x) for x in arr[bad[0]])
        raise ValueError(f"range start {start} is after its end {end}; ranges are half-open [start, end)")
    return arr


def _merged(arr: np.ndarray) -> np.ndarray:
    starts, ends = arr[:, 0], arr[:, 1]
    nonempty = starts < ends
    if not nonempty.all():
        starts, ends = starts[nonempty], ends[nonempty]
    if len(starts) <= 1:
        return np.column_stack((starts, ends))
    if not (starts[1:] >= starts[:-1]).all():  # results of this module come sorted: skip the sort for them
        order = np.argsort(starts)  # ties need no order: the running max of ends decides
        starts, ends = starts[order], ends[order]
    run_end = np.maximum.accumulate(ends)
    # A new run begins where a start lies strictly after everything before it; equal means adjacent: merge.
    breaks = np.flatnonzero(starts[1:] > run_end[:-1])
    first = np.concatenate(([0], breaks + 1))
    last = np.concatenate((breaks, [len(starts) - 1]))
    return np.column_stack((starts[first], run_end[last]))


def _to_list(arr: np.ndarray) -> list[Range]:
    return list(zip(arr[:, 0].tolist(), arr[:, 1].tolist(), strict=True))


def merge_ranges(ranges: Iterable[tuple[Any, Any]]) -> list[Range]:
    """Sort and merge overlapping and adjacent ranges; empty ranges vanish."""
    if _is_small(ranges):
        return _small_merged(ranges)
    return _to_list(_merged(_as_array(ranges)))


def _combine(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]], keep_b: bool) -> list[Range]:
    if _is_small(a, b):
        return _small_combine(a, b, keep_b)
    ma, mb = _merged(_as_array(a)), _merged(_as_array(b))
    if len(ma) == 0:
        return []
    if len(mb) == 0:
        return [] if keep_b else _to_list(ma)
    # One sweep over the boundaries of both sets. A merged set's flattened bounds strictly increase, so just
    # after a point p we are inside the set when an odd number of its bounds are <= p. Both halves are sorted:
    # the stable sort (timsort) only merges two runs.
    bounds_a = ma.ravel()
    points = np.concatenate((bounds_a, mb.ravel()))
    order = np.argsort(points, kind="stable")
    points = points[order]
    seen_a = np.cumsum(order < len(bounds_a))
    seen_b = np.arange(1, len(points) + 1) - seen_a
    last = np.flatnonzero(np.append(points[1:] != points[:-1], True))  # the state after all bounds at a point
    inside_a, inside_b = (seen_a[last] & 1).astype(bool), (seen_b[last] & 1).astype(bool)
    keep = inside_a & (inside_b if keep_b else ~inside_b)
    # Runs of kept segments start where keep turns on and end where it turns off; it is off after the last point.
    edges = np.diff(keep.view(np.int8), prepend=np.int8(0))
    points = points[last]
    return _to_list(np.column_stack((points[edges == 1], points[edges == -1])))


def intersect_ranges(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]]) -> list[Range]:
    """The parts of ``a`` that are also in ``b``, merged."""
    return _combine(a, b, keep_b=True)


def subtract_ranges(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]]) -> list[Range]:
    """The parts of ``a`` that are not in ``b``, merged."""
    return _combine(a, b, keep_b=False)


def snap_range(start: Any, end: Any, interval: Any) -> Range:
    """Widen ``[start, end)`` outward to the bar grid of ``interval``; ``start > end`` is an error."""
    start_ms, end_ms, step = to_ms(start), to_ms(end), interval_ms(interval)
    if start_ms > end_ms:
        raise ValueError(f"start {start_ms} is after end {end_ms}; ranges are half-open [start, end)")
    snapped_start = (start_ms // step) * step
    snapped_end = -((-end_ms) // step) * step
    return snapped_start, snapped_end


def missing_ranges(start: Any, end: Any, covered: Iterable[tuple[Any, Any]], interval: Any) -> list[Range]:
    """The snapped request minus ``covered``; a partly covered bar is missing, so results are on the grid."""
    step = interval_ms(interval)
    lo, hi = snap_range(start, end, step)
    gaps = _merged(_as_array(subtract_ranges([(lo, hi)], covered)))
    if len(gaps) == 0:
        return []
    gaps[:, 0] = (gaps[:, 0] // step) * step
    gaps[:, 1] = -((-gaps[:, 1]) // step) * step
    return _to_list(_merged(gaps))


def window_ranges(start: Any, end: Any, interval: Any, window_bars: int) -> list[Range]:
    """The aligned windows ``[k*span, (k+1)*span)`` that intersect the snapped request."""
    if isinstance(window_bars, bool) or not isinstance(window_bars, int) or window_bars <= 0:
        raise ValueError(f"window_bars {window_bars!r} must be a positive int")
    span = interval_ms(interval) * window_bars
    lo, hi = snap_range(start, end, interval)
    if lo == hi:
        return []
    first, last = lo // span, -((-hi) // span)
    ks = np.arange(first, last, dtype=np.int64)
    return list(zip((ks * span).tolist(), ((ks + 1) * span).tolist(), strict=True))


def covered_ms(ranges: Iterable[tuple[Any, Any]]) -> int:
    """Total length of the union of ``ranges`` in ms."""
    merged = _merged(_as_array(ranges))
    return int((merged[:, 1] - merged[:, 0]).sum()) if len(merged) else 0
