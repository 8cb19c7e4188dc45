"""Half-open range algebra on int milliseconds.

Rules:
1. A range is a ``(start, end)`` tuple of ints meaning ``[start, end)``. ``start == end`` is empty and vanishes
   from every result; ``start > end`` is an error naming both values.
2. Every result is a sorted list of disjoint, non-adjacent ranges: ``[a, b) + [b, c) = [a, c)``.
3. Requests are snapped *outward* to the bar grid, so an off-grid bound widens the request rather than dropping
   a bar. A bar partly covered counts as missing.
4. Work is vectorized with numpy (sort + sweep, O(n log n)); nothing here does I/O. Inputs of a few ranges
   (lists or tuples, ``_SMALL`` ranges in all; what a fetch passes) take a pure-Python path with the same
   results: numpy's per-call overhead (~20 us a call) would dominate the fixed cost of a small fetch. One
   ``(int, int)`` range against one (a request against its coverage) is answered by comparisons alone.
5. Large results are a :class:`RangeList`: the documented list of tuples, which also keeps its merged bounds as
   read-only int64 arrays, so ``subtract_ranges(merge_ranges(a), b)`` reads ``a``'s tuples once. Merging sorts
   starts and ends apart (no argsort, no gather); subtract and intersect look each bound of one set up in the
   other (``searchsorted``) and sort the kept bounds. Long lists of tuples are read by
   :func:`provider.core._pairs.read_pairs` when it applies.
"""

from __future__ import annotations

from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from provider.core._pairs import read_pairs
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

_NONE = np.empty(0, dtype=np.int64)
_NONE.flags.writeable = False
#: Inputs of at most this many ranges in all take the pure-Python path (rule 4).
_SMALL = 16
_SEQUENCES = (list, tuple)


def _is_small(*inputs: Any) -> bool:
    count = 0
    for x in inputs:
        if not isinstance(x, _SEQUENCES):
            return False
        count += len(x)
    return count <= _SMALL


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


class RangeList(list[Range]):
    """A merged result: the documented list of ``(start, end)`` tuples that also keeps its bounds as int64 arrays.

    Passing it back to a function here skips reading the tuples and merging again (rule 5). Any change through
    a list method forgets the arrays, so they never disagree with the tuples.
    """

    __slots__ = ("_bounds",)

    def __init__(self, starts: np.ndarray, ends: np.ndarray) -> None:
        super().__init__(zip(starts.tolist(), ends.tolist(), strict=True))
        starts.flags.writeable = False
        ends.flags.writeable = False
        self._bounds: tuple[np.ndarray, np.ndarray] | None = (starts, ends)

    def __reduce__(self) -> tuple[Any, ...]:
        return (list, (list(self),))


def _forgetting(name: str) -> Any:
    method = getattr(list, name)

    def changed(self: RangeList, *args: Any) -> Any:
        self._bounds = None
        return method(self, *args)

    changed.__name__ = name
    changed.__doc__ = method.__doc__
    return changed


for _name in (
    "append", "extend", "insert", "pop", "remove", "clear", "sort", "reverse",
    "__setitem__", "__delitem__", "__iadd__", "__imul__",
):  # fmt: skip
    setattr(RangeList, _name, _forgetting(_name))


def _bounds(ranges: Any) -> tuple[np.ndarray, np.ndarray]:
    """Starts and ends of ``ranges`` as int64 arrays, each range checked (rule 1)."""
    if isinstance(ranges, np.ndarray):
        arr = ranges.astype(np.int64, copy=False).reshape(-1, 2)
        starts, ends = np.ascontiguousarray(arr[:, 0]), np.ascontiguousarray(arr[:, 1])
    else:
        items = ranges if isinstance(ranges, list) else list(ranges)
        pairs = read_pairs(items)
        if pairs is not None:
            starts, ends = pairs
        elif not items:
            return _NONE, _NONE
        else:
            try:  # fromiter over the flattened pairs is several times faster than asarray on a list of tuples
                arr = np.fromiter(chain.from_iterable(items), dtype=np.int64, count=2 * len(items))
            except (TypeError, ValueError):
                arr = np.asarray(items, dtype=np.int64)
            arr = arr.reshape(-1, 2)
            starts, ends = arr[:, 0].copy(), arr[:, 1].copy()
    bad = np.flatnonzero(starts > ends)
    if bad.size:
        start, end = int(starts[bad[0]]), int(ends[bad[0]])
        raise ValueError(f"range start {start} is after its end {end}; ranges are half-open [start, end)")
    return starts, ends


def _merge(starts: np.ndarray, ends: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Union of the ranges, sorted, disjoint and non-adjacent (rule 5: starts and ends sorted apart)."""
    if len(starts) == 0:
        return _NONE, _NONE
    if not ((starts[1:] >= starts[:-1]).all() and (ends[1:] >= ends[:-1]).all()):
        starts, ends = np.sort(starts), np.sort(ends)
    # After the k smallest starts and the k smallest ends nothing is open: a gap when the next start is later.
    breaks = np.flatnonzero(starts[1:] > ends[:-1])
    first = np.concatenate(([0], breaks + 1))
    last = np.append(breaks, len(ends) - 1)
    out_starts, out_ends = starts[first], ends[last]
    nonempty = out_starts < out_ends  # empty input ranges may leave empty runs of their own
    if not nonempty.all():
        out_starts, out_ends = out_starts[nonempty], out_ends[nonempty]
    return out_starts, out_ends


def _merged(ranges: Any) -> tuple[np.ndarray, np.ndarray]:
    if type(ranges) is RangeList and ranges._bounds is not None:
        return ranges._bounds
    return _merge(*_bounds(ranges))


def merge_ranges(ranges: Iterable[tuple[Any, Any]]) -> list[Range]:
    """Sort and merge overlapping and adjacent ranges; empty ranges vanish."""
    one = _one(ranges)
    if one is not None:
        return [one] if one[0] < one[1] else []
    if _is_small(ranges):
        return _small_merged(ranges)
    return RangeList(*_merged(ranges))


def _inside(starts: np.ndarray, ends: np.ndarray, points: np.ndarray, side: Any, closed: bool) -> np.ndarray:
    """Whether each point lies in the merged set: at it (``side="right"``) or just before it (``"left"``)."""
    owner = np.searchsorted(starts, points, side=side) - 1
    end = ends[np.maximum(owner, 0)]
    return (owner >= 0) & ((points <= end) if closed else (points < end))


def _union(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Two sorted arrays as one: the stable sort (timsort) only merges the two runs (10x the default sort)."""
    return np.sort(np.concatenate((x, y)), kind="stable")


def _one(ranges: Any) -> Range | None:
    """The range of a list or tuple holding one valid ``(int, int)`` pair, else None (then the general path)."""
    if type(ranges) in _SEQUENCES and len(ranges) == 1:
        pair = ranges[0]
        if type(pair) is tuple and len(pair) == 2:
            lo, hi = pair
            if type(lo) is int and type(hi) is int and lo <= hi:
                return pair
    return None


def _combine_one(a: Range, b: Range, keep_b: bool) -> list[Range]:
    """One range against one: what most fetches ask (the request against its coverage)."""
    lo, hi = a
    b_lo, b_hi = b
    if keep_b:
        start, end = max(lo, b_lo), min(hi, b_hi)
        return [(start, end)] if start < end else []
    if b_lo >= b_hi or b_hi <= lo or b_lo >= hi:  # b empty or beside a: a whole
        return [(lo, hi)] if lo < hi else []
    return [r for r in ((lo, b_lo), (b_hi, hi)) if r[0] < r[1]]


def _combine(a: Iterable[tuple[Any, Any]], b: Iterable[tuple[Any, Any]], keep_b: bool) -> list[Range]:
    one_a = _one(a)
    if one_a is not None:
        one_b = _one(b)
        if one_b is not None:
            return _combine_one(one_a, one_b, keep_b)
    if _is_small(a, b):
        return _small_combine(a, b, keep_b)
    sa, ea = _merged(a)
    if len(sa) == 0:
        return []
    sb, eb = _merged(b)
    if len(sb) == 0:
        return [] if keep_b else RangeList(sa, ea)
    # Each bound of the result is a bound of a or of b (rule 5). A start of a opens a piece when the point is
    # (intersect) or is not (subtract) in b; an end of a closes one by the same test just before it. A bound of
    # b strictly inside a range of a opens or closes one too (one equal to a bound of a is counted there).
    a_start_in_b = _inside(sb, eb, sa, "right", closed=False)
    a_end_in_b = _inside(sb, eb, ea, "left", closed=True)
    b_start_in_a = _inside(sa, ea, sb, "left", closed=False)
    b_end_in_a = _inside(sa, ea, eb, "left", closed=False)
    if keep_b:
        starts = _union(sa[a_start_in_b], sb[b_start_in_a])
        ends = _union(ea[a_end_in_b], eb[b_end_in_a])
    else:
        starts = _union(sa[~a_start_in_b], eb[b_end_in_a])
        ends = _union(ea[~a_end_in_b], sb[b_start_in_a])
    return RangeList(starts, ends)


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
    gap_starts, gap_ends = _merged(subtract_ranges([(lo, hi)], covered))
    if len(gap_starts) == 0:
        return []
    return RangeList(*_merge((gap_starts // step) * step, -((-gap_ends) // step) * step))


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
    starts, ends = _merged(ranges)
    return int((ends - starts).sum())
