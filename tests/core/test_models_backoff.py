"""Wire models round-trip through JSON and name bad fields; the retry schedule follows DESIGN.md section 3."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from provider.core import (
    ClaimRequest,
    Job,
    JobRequest,
    Lease,
    LeaseInfo,
    WindowCounts,
    WireFormatError,
    retry_delay_bounds_ms,
    retry_delay_ms,
)

SERIES = "ohlcv:binance:BTC/USDT:USDT:1m"

EXAMPLES = [
    JobRequest(SERIES, 0, 60_000, 3),
    ClaimRequest("worker-1", 4, 1000),
    Job("j1", SERIES, 0, 60_000, "running", WindowCounts(1, 2, 3, 0), 0.5, 1),
    Lease("l1", "w_abc", 7, SERIES, 0, 60_000, 1, 99),
    LeaseInfo("l1", "window", "worker-1", 7, 1, 99, False, window_id="w_abc"),
    LeaseInfo("l2", "key", "worker-1", 8, 1, 99, True, key="ohlcv:binance:BTC/USDT:1m:0:60000"),
]


@pytest.mark.parametrize("model", EXAMPLES, ids=lambda m: type(m).__name__)
def test_models_round_trip_through_json(model):
    """from_dict(json(to_dict(x))) gives x back for every wire model."""
    assert type(model).from_dict(json.loads(json.dumps(model.to_dict()))) == model


def test_job_request_normalizes_times_and_defaults_priority():
    """ISO times become epoch ms and a missing priority is 0."""
    req = JobRequest.from_dict({"series": SERIES, "start": "2024-01-01T00:00:00Z", "end": 1_704_067_260_000})
    assert (req.start, req.end, req.priority) == (1_704_067_200_000, 1_704_067_260_000, 0)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"start": 0, "end": 1}, "series"),
        ({"series": "BTC", "start": 0, "end": 1}, "series"),
        ({"series": SERIES, "start": "soon", "end": 1}, "start"),
        ({"series": SERIES, "start": 10, "end": 5}, "end"),
        ({"series": SERIES, "start": 10, "end": 10}, "end"),
        ({"series": SERIES, "start": 0, "end": 1, "priority": "high"}, "priority"),
        ({"series": SERIES, "start": 0, "end": 1, "colour": "red"}, "colour"),
        ({"series": SERIES, "start": True, "end": 1}, "start"),
        ([], "(body)"),
    ],
)
def test_job_request_errors_name_the_field(body, field):
    """Each invalid job request names the offending field."""
    with pytest.raises(WireFormatError) as info:
        JobRequest.from_dict(body)
    assert info.value.field == field
    assert repr(field) in str(info.value)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({}, "worker_id"),
        ({"worker_id": ""}, "worker_id"),
        ({"worker_id": "w", "max_windows": 0}, "max_windows"),
        ({"worker_id": "w", "wait_ms": -1}, "wait_ms"),
        ({"worker_id": "w", "wait_ms": 1.5}, "wait_ms"),
    ],
)
def test_claim_request_errors_name_the_field(body, field):
    """Each invalid claim names the offending field."""
    with pytest.raises(WireFormatError) as info:
        ClaimRequest.from_dict(body)
    assert info.value.field == field


def test_retry_schedule_matches_the_formula():
    """Retry n waits retry_backoff_ms * 2**(n-1) plus up to jitter_ratio of that."""
    assert retry_delay_bounds_ms(1, 500, 0.25) == (500.0, 625.0)
    assert retry_delay_bounds_ms(3, 500, 0.25) == (2000.0, 2500.0)
    assert retry_delay_ms(2, 500, 0.25, 0.0) == 1000.0
    assert retry_delay_ms(2, 500, 0.25, 1.0) == 1250.0
    assert retry_delay_ms(2, 500, 0.25, 0.5) == 1125.0


@given(st.integers(1, 80), st.integers(0, 10_000), st.floats(0, 1), st.floats(0, 1))
def test_retry_delay_stays_within_bounds(retry, base_ms, jitter, draw):
    """Every delay lies within its bounds, and bounds never exceed one hour plus jitter."""
    low, high = retry_delay_bounds_ms(retry, base_ms, jitter)
    assert low <= retry_delay_ms(retry, base_ms, jitter, draw) <= high <= 3_600_000 * (1 + jitter) + 1e-6


@pytest.mark.parametrize(
    ("args", "match"), [((0, 500, 0.1), "retry"), ((1, -1, 0.1), "retry_backoff_ms"), ((1, 5, 2), "jitter_ratio")]
)
def test_retry_bounds_refuse_bad_arguments(args, match):
    """Bad retry arguments name themselves."""
    with pytest.raises(ValueError, match=match):
        retry_delay_bounds_ms(*args)
