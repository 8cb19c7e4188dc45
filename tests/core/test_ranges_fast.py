"""The fast routes of the range algebra: scattered tuples read from object memory, and array-backed results."""

from __future__ import annotations

import copy
import pickle
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.core import intersect_ranges, merge_ranges, subtract_ranges
from provider.core._pairs import MIN_ITEMS, read_pairs
from provider.core._ranges import RangeList


def _scattered(pairs):
    """Fresh tuples, then the list shuffled, so consecutive items lie far apart in memory."""
    items = [(int(str(s)), int(str(e))) for s, e in pairs]
    random.Random(7).shuffle(items)
    return items


def _reference_merge(ranges):
    out = []
    for lo, hi in sorted(r for r in ranges if r[0] < r[1]):
        if out and lo <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], hi))
        else:
            out.append((lo, hi))
    return out


def _points(ranges):
    return {t for s, e in ranges for t in range(s, e)}


@settings(max_examples=25, deadline=None)
@given(st.integers(0, 2**32), st.sampled_from([1, 2**31, 2**61, 2**62]))
def test_read_pairs_equals_the_interpreter_on_scattered_tuples(seed, scale):
    """Every value, negative and of 1 to 3 digits, comes back exactly as np.array reads it."""
    rng = random.Random(seed)
    items = _scattered((rng.randint(-scale, scale), rng.randint(-scale, scale)) for _ in range(MIN_ITEMS + 100))
    items[rng.randrange(len(items))] = (0, 2**63 - 1)
    got = read_pairs(items)
    assert got is not None
    want = np.array(items, dtype=np.int64)
    assert np.array_equal(got[0], want[:, 0]) and np.array_equal(got[1], want[:, 1])


@pytest.mark.parametrize(
    "odd",
    [(True, 5), (1.0, 5), (np.int64(1), 5), (-(2**63), 0), (0, 2**63), (0, 2**70), [1, 2], (1, 2, 3)],
)
def test_read_pairs_declines_anything_but_exact_int64_pairs(odd):
    """A bool, float, numpy int, out-of-range int, list or 3-tuple sends the input to the ordinary route."""
    items = _scattered((i, i + 1) for i in range(MIN_ITEMS))
    items[MIN_ITEMS // 2] = odd
    assert read_pairs(items) is None


def test_read_pairs_declines_short_inputs():
    """Short lists take the interpreter, which is as fast there."""
    assert read_pairs(_scattered((i, i + 1) for i in range(MIN_ITEMS - 1))) is None


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 2**32))
def test_large_scattered_inputs_match_a_point_model(seed):
    """merge, subtract and intersect on the fast routes agree with a simple reference on every point."""
    rng = random.Random(seed)

    def make():
        return _scattered((s, s + rng.randint(0, 30)) for s in (rng.randint(0, 60_000) for _ in range(MIN_ITEMS)))

    a, b = make(), make()
    merged = merge_ranges(a)
    assert merged == _reference_merge(a)
    assert _points(subtract_ranges(merged, b)) == _points(a) - _points(b)
    assert _points(intersect_ranges(a, merge_ranges(b))) == _points(a) & _points(b)
    assert subtract_ranges(merged, b) == subtract_ranges(list(merged), list(b))


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-50, 300), st.integers(0, 40)).map(lambda p: (p[0], p[0] + p[1])), max_size=40),
    st.lists(st.tuples(st.integers(-50, 300), st.integers(0, 40)).map(lambda p: (p[0], p[0] + p[1])), max_size=40),
)
def test_array_backed_results_equal_plain_lists(a, b):
    """A RangeList passed back gives the same answers as the plain list of its tuples (numpy path forced)."""
    arr_a = np.array(a, dtype=np.int64).reshape(-1, 2)
    merged = merge_ranges(arr_a)
    assert merged == _reference_merge(a)
    plain = np.array(list(merged), dtype=np.int64).reshape(-1, 2)
    arr_b = np.array(b, dtype=np.int64).reshape(-1, 2)
    assert subtract_ranges(merged, arr_b) == subtract_ranges(plain, arr_b)
    assert intersect_ranges(merged, arr_b) == intersect_ranges(plain, arr_b)
    assert _points(subtract_ranges(merged, arr_b)) == _points(a) - _points(b)


def test_a_changed_range_list_forgets_its_arrays():
    """Changing the list through any list method drops the arrays, so later calls read the tuples again."""
    merged = merge_ranges(np.array([(0, 10), (20, 30)] * 10))
    assert type(merged) is RangeList
    merged.append((40, 50))
    assert subtract_ranges(np.array([(0, 100)] * 20), merged) == [(10, 20), (30, 40), (50, 100)]
    merged[0] = (0, 5)
    assert subtract_ranges(np.array([(0, 100)] * 20), merged) == [(5, 20), (30, 40), (50, 100)]
    with pytest.raises(ValueError):  # the arrays are read-only: nothing can change them behind the tuples
        merge_ranges(np.array([(0, 10)] * 20))._bounds[0][0] = 3


def test_range_lists_copy_and_pickle_as_plain_lists():
    """pickle and copy give plain lists of tuples: the arrays are a cache, not state."""
    merged = merge_ranges(np.array([(0, 10), (20, 30)] * 10))
    for clone in (pickle.loads(pickle.dumps(merged)), copy.copy(merged), copy.deepcopy(merged)):
        assert type(clone) is list and clone == [(0, 10), (20, 30)]
