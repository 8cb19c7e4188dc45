"""Table-driven tests of the pure lease table (coordinator/table.py): rules 1-7 of DESIGN.md section 4."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from coordinator.table import Result, Table
from provider.core import Job, Lease, LeaseInfo, parse_window_id, window_id

S1 = "ohlcv:binance:BTC/USDT:1m"
S2 = "ohlcv:binance:ETH/USDT:1m"
SWAP = "ohlcv:binance:BTC/USDT:USDT:1h"
MIN = 60_000
HOUR = 3_600_000
TTL = 1_000


def submit(
    t: Table,
    series: str = S1,
    start: int = 0,
    end: int = 60 * MIN,
    priority: int = 0,
    *,
    bars: int = 15,
    now: int = 1,
    max_windows: int = 10_000,
) -> Result:
    return t.submit_job(
        series=series, start=start, end=end, priority=priority, window_bars=bars, max_windows=max_windows, now_ms=now
    )


def claim(t: Table, n: int = 1, now: int = 10, worker: str = "w1", ttl: int = TTL) -> list[dict[str, Any]]:
    result = t.claim(worker_id=worker, max_windows=n, ttl_ms=ttl, now_ms=now)
    assert result.ok, result
    return list(result.value["leases"])


def fail(
    t: Table, lease: dict[str, Any], *, retryable: bool = True, now: int = 20, max_attempts: int = 3, backoff: int = 100
) -> Result:
    return t.fail(
        lease_id=lease["lease_id"],
        token=lease["token"],
        reason="boom",
        retryable=retryable,
        max_attempts=max_attempts,
        retry_backoff_ms=backoff,
        now_ms=now,
    )


@pytest.mark.parametrize(
    ("series", "start", "end", "bars", "expected"),
    [
        (S1, 0, 60 * MIN, 15, [(0, 15 * MIN), (15 * MIN, 30 * MIN), (30 * MIN, 45 * MIN), (45 * MIN, 60 * MIN)]),
        (S1, 5 * MIN, 20 * MIN, 15, [(0, 15 * MIN), (15 * MIN, 30 * MIN)]),
        (S1, 30_001, 59_999, 1, [(0, MIN)]),
        (SWAP, 0, 5 * HOUR, 2, [(0, 2 * HOUR), (2 * HOUR, 4 * HOUR), (4 * HOUR, 6 * HOUR)]),
        (S1, 7 * MIN, 8 * MIN, 900, [(0, 900 * MIN)]),
    ],
)
def test_submit_splits_the_range_into_aligned_windows(
    series: str, start: int, end: int, bars: int, expected: list[tuple[int, int]]
) -> None:
    """A job covers exactly the aligned windows that intersect its snapped range, all pending."""
    t = Table()
    result = submit(t, series, start, end, bars=bars)
    assert result.ok and result.value["created"]
    job = Job.from_dict(result.value["job"])
    assert job.windows.pending == len(expected) and job.completion_ratio == 0.0
    leases = claim(t, n=100)
    assert [(lease["start"], lease["end"]) for lease in leases] == expected
    for lease in leases:
        Lease.from_dict(lease)
        assert parse_window_id(lease["window_id"]) == (
            parse_window_id(window_id(series, lease["start"]))[0],
            lease["start"],
        )


def test_identical_submission_returns_the_same_job() -> None:
    """The same range and priority twice returns the first job (created=False); another priority is new."""
    t = Table()
    first = submit(t, start=0, end=30 * MIN)
    again = submit(t, start=1, end=30 * MIN)  # snaps to the same bar grid
    other = submit(t, start=0, end=30 * MIN, priority=5)
    assert first.value["created"] and not again.value["created"] and other.value["created"]
    assert again.value["job"]["job_id"] == first.value["job"]["job_id"] != other.value["job"]["job_id"]
    assert t.stats()["windows"]["pending"] == 2


def test_jobs_share_windows_and_count_done_ones() -> None:
    """An overlapping job creates only unknown windows, and sees already-done windows as done (rule 6)."""
    t = Table()
    submit(t, start=0, end=30 * MIN)
    lease = claim(t)[0]
    assert t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=15, now_ms=20).ok
    second = submit(t, start=0, end=60 * MIN, now=30).value["job"]
    assert second["windows"] == {"pending": 3, "leased": 0, "done": 1, "failed": 0}
    assert second["completion_ratio"] == pytest.approx(0.25)
    assert sum(t.stats()["windows"].values()) == 4


def test_window_span_of_a_series_is_fixed_by_its_first_job() -> None:
    """A later job with another window_bars uses the series' existing grid (documented rule 6 detail)."""
    t = Table()
    submit(t, start=0, end=30 * MIN, bars=15)
    job = submit(t, start=0, end=60 * MIN, bars=60, now=2).value["job"]
    assert sum(job["windows"].values()) == 4


@pytest.mark.parametrize(
    ("jobs", "expected_starts"),
    [
        # (series, start_min, end_min, priority) in submission order -> order of (series, start) granted
        ([(S1, 0, 30, 0), (S2, 0, 30, 0)], [(S1, 0), (S1, 15), (S2, 0), (S2, 15)]),
        ([(S1, 0, 30, 0), (S2, 0, 30, 9)], [(S2, 0), (S2, 15), (S1, 0), (S1, 15)]),
        ([(S1, 30, 60, 0), (S1, 0, 30, 0)], [(S1, 30), (S1, 45), (S1, 0), (S1, 15)]),
        ([(S1, 0, 45, 0), (S1, 30, 60, 1)], [(S1, 30), (S1, 45), (S1, 0), (S1, 15)]),
    ],
)
def test_claims_follow_priority_then_submission_then_start(
    jobs: list[tuple[str, int, int, int]], expected_starts: list[tuple[str, int]]
) -> None:
    """Claims take windows by job priority desc, then job submission order, then window start (rule 1)."""
    t = Table()
    for series, lo, hi, priority in jobs:
        assert submit(t, series, lo * MIN, hi * MIN, priority).ok
    got = [(lease["series"], lease["start"] // MIN) for lease in claim(t, n=2) + claim(t, n=10)]
    assert got == expected_starts


def test_tokens_strictly_increase_across_grants() -> None:
    """Every grant carries a token greater than all before it, windows and keys alike (rule 2)."""
    t = Table()
    submit(t, start=0, end=120 * MIN)
    tokens = [lease["token"] for lease in claim(t, n=3)]
    tokens.append(t.key_claim(key="n:60:0:1", lease_ms=500, now_ms=11).value["lease"]["token"])
    tokens += [lease["token"] for lease in claim(t, n=2, now=12)]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens) and t.token_floor == tokens[-1]


@pytest.mark.parametrize("op", ["renew", "complete", "fail"])
@pytest.mark.parametrize("stale", ["older_token", "other_lease_token", "reaped"])
def test_stale_tokens_get_lease_lost_and_change_nothing(op: str, stale: str) -> None:
    """renew/complete/fail with a token that is not the current lease answer lease_lost and change nothing (rule 5)."""
    t = Table()
    submit(t, start=0, end=30 * MIN)
    first, second = claim(t, n=2)
    lease_id, token = first["lease_id"], first["token"]
    if stale == "older_token":
        assert t.expire(now_ms=10 + TTL, max_attempts=5).ok
        claim(t, n=2, now=10 + TTL)
    elif stale == "other_lease_token":
        token = second["token"]
    else:
        assert t.expire(now_ms=10 + TTL, max_attempts=5).ok
    before = t.snapshot()
    kwargs: dict[str, Any] = {"lease_id": lease_id, "token": token, "now_ms": 5_000}
    if op == "renew":
        result = t.renew(ttl_ms=TTL, **kwargs)
    elif op == "complete":
        result = t.complete(rows=1, **kwargs)
    else:
        result = t.fail(reason="x", retryable=True, max_attempts=3, retry_backoff_ms=0, **kwargs)
    assert (result.ok, result.code) == (False, "lease_lost")
    assert t.snapshot() == before


def test_complete_is_idempotent_for_the_same_token() -> None:
    """A repeated complete with the same token succeeds with the same answer and changes nothing."""
    t = Table()
    submit(t, start=0, end=30 * MIN)
    lease, other = claim(t, n=2)
    first = t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=7, now_ms=20)
    snap = t.snapshot()
    again = t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=7, now_ms=30)
    assert first.ok and again.ok and again.value == first.value and t.snapshot() == snap
    mixed = t.complete(lease_id=other["lease_id"], token=lease["token"], rows=7, now_ms=50)
    assert mixed.code == "lease_lost" and t.snapshot() == snap
    assert t.complete(lease_id=other["lease_id"], token=other["token"], rows=1, now_ms=60).ok
    assert t.jobs()[0]["state"] == "done" and t.jobs()[0]["completion_ratio"] == 1.0


def test_renew_extends_the_expiry_from_the_command_time() -> None:
    """renew sets expires_at_ms to now + ttl, and a renewed lease survives an expire at its old expiry."""
    t = Table()
    submit(t, start=0, end=15 * MIN)
    lease = claim(t, now=10)[0]
    renewed = t.renew(lease_id=lease["lease_id"], token=lease["token"], ttl_ms=TTL, now_ms=500)
    assert renewed.value["expires_at_ms"] == 500 + TTL
    assert t.expire(now_ms=10 + TTL, max_attempts=3).value["expired"] == []
    assert [i["token"] for i in t.expire(now_ms=500 + TTL, max_attempts=3).value["expired"]] == [lease["token"]]


def test_expired_leases_requeue_then_fail_after_max_attempts() -> None:
    """A lease past its expiry re-queues its window, and after max_attempts grants the window fails (rule 4)."""
    t = Table()
    submit(t, start=0, end=15 * MIN)
    now = 10
    for attempt in (1, 2, 3):
        lease = claim(t, now=now)[0]
        assert lease["attempt"] == attempt
        expired = t.expire(now_ms=now + TTL, max_attempts=3).value["expired"]
        assert [(e["token"], e["state"]) for e in expired] == [(lease["token"], "pending" if attempt < 3 else "failed")]
        now += TTL
    assert claim(t, now=now) == []
    assert t.jobs()[0]["state"] == "failed" and t.stats()["stale_claims_total"] == 3


def test_retryable_failure_waits_for_its_backoff() -> None:
    """A retryable failure re-queues the window after retry_backoff_ms * 2**(n-1); a fatal one fails it."""
    t = Table()
    submit(t, start=0, end=30 * MIN)
    first, second = claim(t, n=2, now=10)
    assert fail(t, first, now=20, backoff=100).value["not_before_ms"] == 120
    assert claim(t, now=119) == []
    again = claim(t, now=120)
    assert [lease["window_id"] for lease in again] == [first["window_id"]] and again[0]["attempt"] == 2
    assert fail(t, again[0], now=130, backoff=100).value["not_before_ms"] == 330
    assert fail(t, second, retryable=False, now=140).value["state"] == "failed"
    job = t.jobs()[0]
    assert job["windows"] == {"pending": 1, "leased": 0, "done": 0, "failed": 1} and job["state"] == "running"


def test_retry_job_resets_failed_windows() -> None:
    """POST retry puts a job's failed windows back to pending with attempts cleared."""
    t = Table()
    job_id = submit(t, start=0, end=15 * MIN).value["job"]["job_id"]
    fail(t, claim(t)[0], retryable=False)
    assert t.job(job_id)["state"] == "failed"  # type: ignore[index]
    result = t.retry_job(job_id=job_id, now_ms=30)
    assert result.ok and result.value["requeued"] == 1 and result.value["job"]["state"] == "running"
    assert claim(t, now=31)[0]["attempt"] == 1


def test_release_returns_the_window_without_counting_the_attempt() -> None:
    """Operator release frees a live lease; the next grant has the same attempt number."""
    t = Table()
    submit(t, start=0, end=15 * MIN)
    lease = claim(t)[0]
    assert t.release(lease_id=lease["lease_id"], now_ms=20).value["state"] == "pending"
    again = claim(t, now=21)[0]
    assert again["attempt"] == 1 and again["token"] > lease["token"]
    assert t.release(lease_id=lease["lease_id"], now_ms=22).code == "lease_lost"


@pytest.mark.parametrize(("op", "state"), [("requeue", "pending"), ("mark_done", "done")])
def test_operator_window_actions_revoke_the_lease(op: str, state: str) -> None:
    """requeue and mark-done set the window's state and revoke its lease, so the holder's complete is lease_lost."""
    t = Table()
    submit(t, start=0, end=15 * MIN)
    lease = claim(t)[0]
    result = getattr(t, op)(window_id=lease["window_id"], reason="operator", now_ms=20)
    assert result.ok and result.value["state"] == state and result.value["attempts"] == 0
    assert (result.value["lease_id"], result.value["worker_id"]) == (lease["lease_id"], "w1")  # what it revoked
    assert t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=1, now_ms=21).code == "lease_lost"
    assert t.lease_infos(21) == []
    again = getattr(t, op)(window_id=lease["window_id"], reason="operator", now_ms=22)
    assert again.ok and "lease_id" not in again.value  # nothing held, nothing revoked


def test_cancelled_job_windows_are_no_longer_offered_unless_shared() -> None:
    """Cancelling a job stops its windows from being claimed, except windows another live job still covers."""
    t = Table()
    a = submit(t, start=0, end=30 * MIN).value["job"]["job_id"]
    submit(t, start=15 * MIN, end=45 * MIN, now=2)
    assert t.cancel_job(job_id=a, now_ms=3).value["job"]["state"] == "cancelled"
    assert [lease["start"] // MIN for lease in claim(t, n=10)] == [15, 30]
    assert t.cancel_job(job_id=a, now_ms=4).ok  # idempotent
    assert t.retry_job(job_id=a, now_ms=5).code == "conflict"


def test_duplicate_request_ids_return_the_first_result() -> None:
    """A command repeated with the same (client_id, request_id) returns the remembered result and grants nothing new."""
    t = Table()
    submit(t, start=0, end=60 * MIN)
    first = t.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=10, client_id="c", request_id="r1")
    snap = t.snapshot()
    again = t.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=99, client_id="c", request_id="r1")
    assert again == first and t.snapshot() == snap
    other = t.renew(lease_id="lease-1", token=1, ttl_ms=TTL, now_ms=99, client_id="c", request_id="r1")
    assert other.code == "conflict" and t.snapshot() == snap
    fresh = t.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=99, client_id="c", request_id="r2")
    assert [lease["token"] for lease in fresh.value["leases"]] == [3, 4]


def test_table_time_never_runs_backwards() -> None:
    """A command stamped earlier than the table clock (a new leader with a slower clock) uses the table clock."""
    t = Table()
    submit(t, start=0, end=30 * MIN, now=5_000)
    lease = claim(t, now=1_000)[0]
    assert lease["expires_at_ms"] == 5_000 + TTL and t.clock_ms == 5_000


BAD_COMMANDS: list[tuple[str, dict[str, Any], str, str]] = [
    ("submit_job", {"series": "ohlcv:binance", "start": 0, "end": 1}, "series", "invalid"),
    ("submit_job", {"series": S1, "start": 10 * MIN, "end": MIN}, "end", "invalid"),
    ("submit_job", {"series": S1, "start": MIN, "end": MIN}, "end", "invalid"),
    ("submit_job", {"series": S1, "start": "0", "end": MIN}, "start", "invalid"),
    ("submit_job", {"series": S1, "start": -5, "end": MIN}, "start", "invalid"),
    ("submit_job", {"series": S1, "start": 0, "end": 10_000 * HOUR, "max_windows": 3}, "end", "invalid"),
    ("claim", {"worker_id": "", "max_windows": 1, "ttl_ms": TTL}, "worker_id", "invalid"),
    ("claim", {"worker_id": "w", "max_windows": 0, "ttl_ms": TTL}, "max_windows", "invalid"),
    ("claim", {"worker_id": "w", "max_windows": 1, "ttl_ms": True}, "ttl_ms", "invalid"),
    ("renew", {"lease_id": "lease-1", "token": "1", "ttl_ms": TTL}, "token", "invalid"),
    ("renew", {"lease_id": "lease-999", "token": 999, "ttl_ms": TTL}, "lease_id", "not_found"),
    ("renew", {"lease_id": "nope", "token": 1, "ttl_ms": TTL}, "lease_id", "not_found"),
    ("complete", {"lease_id": "lease-1", "token": 1, "rows": -1}, "rows", "invalid"),
    (
        "fail",
        {
            "lease_id": "lease-1",
            "token": 1,
            "reason": "x",
            "retryable": "yes",
            "max_attempts": 3,
            "retry_backoff_ms": 0,
        },
        "retryable",
        "invalid",
    ),
    ("cancel_job", {"job_id": "job-404"}, "job_id", "not_found"),
    ("retry_job", {"job_id": 7}, "job_id", "not_found"),
    ("requeue", {"window_id": "w_garbage", "reason": "x"}, "window_id", "not_found"),
    ("mark_done", {"window_id": window_id(S2, 0), "reason": "x"}, "window_id", "not_found"),
    ("release", {"lease_id": "lease-0"}, "lease_id", "not_found"),
    ("key_claim", {"key": "", "lease_ms": 100}, "key", "invalid"),
    ("key_complete", {"key": "unknown", "token": 1}, "key", "not_found"),
    ("expire", {"max_attempts": 0}, "max_attempts", "invalid"),
    ("claim", {"worker_id": "w", "max_windows": 1, "ttl_ms": TTL, "now_ms": -1}, "now_ms", "invalid"),
]


@pytest.mark.parametrize(("op", "kwargs", "field", "code"), BAD_COMMANDS)
def test_illegal_commands_return_errors_and_leave_the_state_unchanged(
    op: str, kwargs: dict[str, Any], field: str, code: str
) -> None:
    """Each illegal command returns an error naming the field, and the table is exactly as before (rule 7)."""
    t = Table()
    submit(t, start=0, end=30 * MIN)
    claim(t)
    before = t.snapshot()
    args = {"now_ms": 50, **kwargs}
    if op == "submit_job":
        args = {"priority": 0, "window_bars": 15, "max_windows": 1000, **args}
    result = getattr(t, op)(**args)
    assert (result.ok, result.code, result.field) == (False, code, field)
    assert field in result.message
    assert t.snapshot() == before and t.clock_ms == 10


def test_keyed_leases_follow_the_qmtl_contract() -> None:
    """A held key conflicts; complete gives the group ratio; a stale token is lease_lost; expiry frees it."""
    t = Table()
    a = t.key_claim(key="node:60:0:100", lease_ms=500, now_ms=10).value
    assert a["completion_ratio"] == 0.0
    assert t.key_claim(key="node:60:0:100", lease_ms=500, now_ms=20).code == "conflict"
    b = t.key_claim(key="node:60:100:200", lease_ms=500, now_ms=30).value
    assert t.key_complete(key="node:60:0:100", token=a["lease"]["token"], now_ms=40).value == {"completion_ratio": 0.5}
    assert t.key_complete(key="node:60:0:100", token=a["lease"]["token"], now_ms=41).ok  # idempotent
    assert t.key_complete(key="node:60:100:200", token=a["lease"]["token"], now_ms=42).code == "lease_lost"
    expired = t.expire(now_ms=30 + 500, max_attempts=3).value["expired"]
    assert [e["key"] for e in expired] == ["node:60:100:200"]
    assert t.key_fail(key="node:60:100:200", token=b["lease"]["token"], reason="x", now_ms=600).code == "lease_lost"
    again = t.key_claim(key="node:60:100:200", lease_ms=500, now_ms=700).value
    assert again["lease"]["token"] > b["lease"]["token"]
    info = [LeaseInfo.from_dict(i) for i in t.lease_infos(800)]
    assert [(i.kind, i.key, i.stale) for i in info] == [("key", "node:60:100:200", False)]


def test_an_expired_but_unreaped_key_lease_is_taken_over() -> None:
    """Claiming a key whose lease ran out before the reaper saw it grants a new lease and counts a stale claim."""
    t = Table()
    t.key_claim(key="k:1", lease_ms=100, now_ms=0)
    result = t.key_claim(key="k:1", lease_ms=100, now_ms=100)
    assert result.ok and t.stats()["stale_claims_total"] == 1 and len(t.lease_infos(100)) == 1


def test_export_import_round_trip_through_pickle() -> None:
    """The dump format restores an equal table (pickle protocol 2, as pysyncobj writes it) and rejects foreign data."""
    t = Table()
    submit(t, start=0, end=60 * MIN)
    t.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=10, client_id="c", request_id="r")
    t.key_claim(key="a:b:c", lease_ms=100, now_ms=11)
    restored = Table()
    assert restored.import_state(pickle.loads(pickle.dumps(t.export_state(), protocol=2)))
    assert restored.snapshot() == t.snapshot()
    again = restored.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=12, client_id="c", request_id="r")
    assert again.value["leases"][0]["token"] == 1  # the dedup memory survived too
    assert not Table().import_state({"format": 99, "state": {}}) and not Table().import_state(None)


def test_two_replicas_applying_the_same_commands_agree() -> None:
    """Determinism: the same command sequence yields identical snapshots on two tables."""
    tables = [Table(), Table()]
    for t in tables:
        submit(t, start=0, end=120 * MIN)
        submit(t, S2, 0, 60 * MIN, 3, now=2)
        leases = claim(t, n=5)
        fail(t, leases[0])
        t.complete(lease_id=leases[1]["lease_id"], token=leases[1]["token"], rows=3, now_ms=30)
        t.expire(now_ms=5_000, max_attempts=2)
        claim(t, n=3, now=5_001)
    assert tables[0].snapshot() == tables[1].snapshot()


def test_job_windows_lists_a_jobs_windows_in_order_and_filters_by_state() -> None:
    """job_windows: the job's own windows in start order (not another job's), with state, attempts and last
    error; a state filter keeps only those; an unknown job is None."""
    t = Table()
    job = submit(t, S1, 0, 60 * MIN).value["job"]["job_id"]
    submit(t, S2, 0, 30 * MIN)
    lease = claim(t)[0]
    assert fail(t, lease, retryable=False).ok
    windows = t.job_windows(job)
    assert windows is not None
    assert [w["start"] for w in windows] == [0, 15 * MIN, 30 * MIN, 45 * MIN]
    assert {w["series"] for w in windows} == {S1}
    failed = t.job_windows(job, "failed")
    assert failed is not None
    assert [(w["window_id"], w["state"], w["attempts"], w["last_error"]) for w in failed] == [
        (window_id(S1, 0), "failed", 1, "boom")
    ]
    assert t.job_windows(job, "done") == []
    assert t.job_windows("job-404") is None


def test_the_read_barrier_changes_nothing_not_even_the_clock() -> None:
    """``barrier`` (the no-op a linearizable read commits) succeeds with any stamped arguments and leaves the whole
    replicated state, the table clock included, exactly as it was."""
    t = Table()
    submit(t)
    claim(t)
    before = pickle.dumps(t.export_state())
    result = t.barrier(now_ms=10**12, client_id="", request_id="barrier")
    assert result.ok and result.value == {}
    assert pickle.dumps(t.export_state()) == before
