"""Range algebra: table tests for the boundaries and Hypothesis properties against a per-bar model."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.core import (
    covered_ms,
    intersect_ranges,
    merge_ranges,
    missing_ranges,
    snap_range,
    subtract_ranges,
    window_ranges,
)


@pytest.mark.parametrize(
    ("ranges", "expected"),
    [
        ([], []),
        ([(0, 0)], []),
        ([(0, 10), (10, 20)], [(0, 20)]),  # adjacent ranges merge
        ([(10, 20), (0, 5)], [(0, 5), (10, 20)]),
        ([(0, 10), (2, 3), (5, 15)], [(0, 15)]),
        ([(0, 10), (0, 10)], [(0, 10)]),
        ([(5, 6)], [(5, 6)]),
    ],
)
def test_merge_table(ranges, expected):
    """merge_ranges sorts, merges overlaps and adjacency, and drops empty ranges."""
    assert merge_ranges(ranges) == expected


def test_inverted_range_is_an_error_naming_both_values():
    """A range whose start is after its end is refused with both values in the message."""
    with pytest.raises(ValueError, match=r"start 20 is after its end 10"):
        merge_ranges([(20, 10)])
    with pytest.raises(ValueError, match=r"start 20 is after end 10"):
        snap_range(20, 10, 1)


@pytest.mark.parametrize(
    ("a", "b", "inter", "diff"),
    [
        ([(0, 10)], [(10, 20)], [], [(0, 10)]),  # touching ranges do not intersect
        ([(0, 10)], [(9, 10)], [(9, 10)], [(0, 9)]),  # a single-bar range survives
        ([(0, 10)], [(0, 10)], [(0, 10)], []),
        ([(0, 100)], [(10, 20), (30, 40)], [(10, 20), (30, 40)], [(0, 10), (20, 30), (40, 100)]),
        ([(0, 5), (10, 15)], [(3, 12)], [(3, 5), (10, 12)], [(0, 3), (12, 15)]),
        ([], [(0, 1)], [], []),
        ([(0, 1)], [], [], [(0, 1)]),
    ],
)
def test_intersect_and_subtract_table(a, b, inter, diff):
    """intersect and subtract are exact at every boundary of half-open ranges."""
    assert intersect_ranges(a, b) == inter
    assert subtract_ranges(a, b) == diff


@pytest.mark.parametrize(
    ("start", "end", "interval", "expected"),
    [
        (0, 60_000, "1m", (0, 60_000)),
        (1, 60_000, "1m", (0, 60_000)),
        (59_999, 60_001, "1m", (0, 120_000)),  # off-grid bounds widen outward
        (60_000, 60_000, "1m", (60_000, 60_000)),  # empty stays empty
        (86_400_000 + 5, 86_400_000 * 2 - 1, "1d", (86_400_000, 86_400_000 * 2)),
    ],
)
def test_snap_range_table(start, end, interval, expected):
    """snap_range widens both ends outward to the bar grid and keeps empty ranges empty."""
    assert snap_range(start, end, interval) == expected


def test_missing_ranges_counts_partly_covered_bar_as_missing():
    """A bar only partly covered is missing, so results stay on the bar grid."""
    assert missing_ranges(0, 100, [(0, 35)], 10) == [(30, 100)]
    assert missing_ranges(5, 125, [(0, 30), (45, 60)], 10) == [(30, 50), (60, 130)]
    assert missing_ranges(0, 100, [(0, 100)], 10) == []
    assert missing_ranges(0, 0, [], 10) == []


def test_window_ranges_cover_the_snapped_request():
    """window_ranges returns the aligned windows intersecting the snapped request, even off-grid."""
    assert window_ranges(0, 1000, 10, 30) == [(0, 300), (300, 600), (600, 900), (900, 1200)]
    assert window_ranges(299, 301, 10, 30) == [(0, 300), (300, 600)]
    assert window_ranges(300, 300, 10, 30) == []
    with pytest.raises(ValueError, match="window_bars"):
        window_ranges(0, 10, 10, 0)


def _bars(ranges, step):
    return {t for s, e in ranges for t in range(s - s % step, e, step) if t + step > s}


def _exact(ranges):
    return {t for s, e in ranges for t in range(s, e)}


ranges_st = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)).map(lambda p: (p[0], p[0] + p[1])), max_size=12)


small_st = st.lists(st.tuples(st.integers(0, 300), st.integers(0, 40)).map(lambda p: (p[0], p[0] + p[1])), max_size=8)


@settings(max_examples=300, deadline=None)
@given(small_st, small_st)
def test_the_small_input_path_equals_the_numpy_path(a, b):
    """Lists of a few ranges take the pure-Python path; numpy arrays of the same ranges take the vectorized one."""
    arr_a, arr_b = np.array(a, dtype=np.int64).reshape(-1, 2), np.array(b, dtype=np.int64).reshape(-1, 2)
    assert merge_ranges(a) == merge_ranges(arr_a)
    assert intersect_ranges(a, b) == intersect_ranges(arr_a, arr_b)
    assert subtract_ranges(a, b) == subtract_ranges(arr_a, arr_b)
    result = subtract_ranges(a, b) + intersect_ranges(a, b)
    assert all(type(x) is int for pair in result for x in pair)
    with pytest.raises(ValueError, match="range start 5 is after its end 4"):
        subtract_ranges([*a, (5, 4)], b)


one_st = st.tuples(st.integers(0, 60), st.integers(0, 20)).map(lambda p: (p[0], p[0] + p[1]))


@settings(max_examples=500, deadline=None)
@given(one_st, one_st, st.sampled_from([list, tuple]))
def test_one_range_against_one_equals_the_general_paths(a, b, container):
    """The comparisons-only path for one range against one gives what the small and numpy paths give."""
    arr_a, arr_b = np.array([a], dtype=np.int64), np.array([b], dtype=np.int64)
    assert merge_ranges(container([a])) == merge_ranges(arr_a) == merge_ranges([a, a])
    for op in (intersect_ranges, subtract_ranges):
        result = op(container([a]), container([b]))
        assert result == op(arr_a, arr_b) == op([a, a], [b])  # two copies of a: the small path
        assert all(type(x) is int for pair in result for x in pair)
    with pytest.raises(ValueError, match="range start 5 is after its end 4"):
        subtract_ranges([(5, 4)], [b])


@settings(max_examples=300, deadline=None)
@given(ranges_st, ranges_st)
def test_set_operations_match_a_point_model(a, b):
    """merge, intersect and subtract agree with set operations on every integer point."""
    merged = merge_ranges(a)
    assert _exact(merged) == _exact(a)
    assert all(e1 < s2 for (_, e1), (s2, _) in pairwise(merged))  # disjoint, non-adjacent
    assert _exact(intersect_ranges(a, b)) == _exact(a) & _exact(b)
    assert _exact(subtract_ranges(a, b)) == _exact(a) - _exact(b)
    assert covered_ms(a) == len(_exact(a))


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 500), st.integers(0, 200), ranges_st, st.sampled_from([1, 3, 7, 10, 60]))
def test_missing_ranges_match_a_bar_model(start, length, covered, step):
    """missing_ranges equals the requested bars minus the fully covered bars, on the grid."""
    end = start + length
    lo, hi = snap_range(start, end, step)
    assert lo <= start and hi >= end and lo % step == 0 and hi % step == 0
    requested = set(range(lo, hi, step))
    fully_covered = {t for t in requested if set(range(t, t + step)) <= _exact(covered)}
    got = missing_ranges(start, end, covered, step)
    assert {t for s, e in got for t in range(s, e, step)} == requested - fully_covered
    assert all(s % step == 0 and e % step == 0 for s, e in got)


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 3_000), st.sampled_from([1, 5, 60]), st.integers(1, 50))
def test_windows_tile_the_request(start, length, step, window_bars):
    """Windows are aligned, contiguous and cover exactly the windows touching the snapped request."""
    wins = window_ranges(start, start + length, step, window_bars)
    lo, hi = snap_range(start, start + length, step)
    span = step * window_bars
    if lo == hi:
        assert wins == []
        return
    assert all(s % span == 0 and e - s == span for s, e in wins)
    assert all(e1 == s2 for (_, e1), (s2, _) in pairwise(wins))
    assert wins[0][0] <= lo < wins[0][1] and wins[-1][0] < hi <= wins[-1][1]


def test_large_inputs_are_fast_enough_to_run_here():
    """200k ranges merge and subtract without per-bar work (a smoke check; timing lives in bench/)."""
    a = [(i * 10, i * 10 + 7) for i in range(200_000)]
    b = [(i * 10 + 5, i * 10 + 12) for i in range(0, 200_000, 2)]
    merged = merge_ranges(a + b)
    assert merged[0] == (0, 17)
    assert len(subtract_ranges(a, b)) == 200_000
