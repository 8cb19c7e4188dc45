"""The autoscale policy and the MIN:MAX flag."""

from __future__ import annotations

import pytest

from worker.autoscale import AutoscalePolicy, desired_workers, parse_autoscale

POLICY = AutoscalePolicy(min_workers=1, max_workers=4, windows_per_worker=8)


@pytest.mark.parametrize(
    ("pending", "leased", "current", "low_periods", "want"),
    [
        (0, 0, 1, 0, 1),  # never below MIN
        (100, 0, 1, 0, 4),  # grow at once, capped at MAX
        (17, 0, 1, 0, 3),  # ceil(17 / 8)
        (0, 0, 4, 0, 4),  # a short lull does not shrink
        (0, 0, 4, 3, 3),  # a long lull shrinks one step at a time
        (8, 8, 3, 5, 2),
        (30, 2, 4, 9, 4),
    ],
)
def test_desired_workers(pending, leased, current, low_periods, want):
    """The pool grows immediately under backlog and shrinks one step after a sustained lull, within bounds."""
    assert desired_workers(POLICY, pending, leased, current, low_periods) == want


@pytest.mark.parametrize(("text", "bounds"), [("1:8", (1, 8)), ("0:1", (0, 1)), ("3:3", (3, 3))])
def test_parse_autoscale(text, bounds):
    """MIN:MAX parses to its bounds."""
    assert parse_autoscale(text) == bounds


@pytest.mark.parametrize("text", ["8:1", "1", "a:b", "1:0", "1:999", "-1:2"])
def test_bad_autoscale_names_the_value(text):
    """Bad bounds are refused naming the flag and the value."""
    with pytest.raises(ValueError, match="--autoscale"):
        parse_autoscale(text)
