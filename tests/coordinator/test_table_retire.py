"""Job retention in the pure table (coordinator/_retire.py): finished jobs leave the table, a summary stays."""

from __future__ import annotations

from typing import Any

import pytest

from coordinator.table import Result, Table
from provider.core import Job

S1 = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
TTL = 1_000
RET = 10_000


def submit(t: Table, start: int = 0, end: int = 60 * MIN, *, now: int = 1) -> str:
    result = t.submit_job(series=S1, start=start, end=end, window_bars=15, max_windows=1000, now_ms=now)
    assert result.ok, result
    return str(result.value["job"]["job_id"])


def finish_all(t: Table, now: int, *, failed: bool = False) -> None:
    leases = t.claim(worker_id="w", max_windows=1000, ttl_ms=TTL, now_ms=now).value["leases"]
    for lease in leases:
        if failed:
            args: dict[str, Any] = {"reason": "x", "retryable": False, "max_attempts": 1, "retry_backoff_ms": 0}
            assert t.fail(lease_id=lease["lease_id"], token=lease["token"], now_ms=now, **args).ok
        else:
            assert t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=15, now_ms=now).ok


def retire(t: Table, now: int, retention_ms: int = RET) -> Result:
    result = t.retire(retention_ms=retention_ms, now_ms=now)
    assert result.ok, result
    return result


@pytest.mark.parametrize(
    ("finish", "state"),
    [("done", "done"), ("failed", "failed"), ("cancel", "cancelled")],
)
def test_a_finished_job_retires_after_the_retention_and_keeps_its_summary(finish: str, state: str) -> None:
    """Done, failed and cancelled jobs keep their windows for the retention, then only a summary with counts."""
    t = Table()
    job_id = submit(t)
    if finish == "cancel":
        assert t.cancel_job(job_id=job_id, now_ms=100).ok
    else:
        finish_all(t, 100, failed=finish == "failed")
    counts = t.job(job_id)["windows"]  # type: ignore[index]
    assert retire(t, 200).value == {"stamped": 1, "retired": [], "windows_dropped": 0, "more": False}
    assert not t.retire_due(200 + RET - 1, RET) and t.retire_due(200 + RET, RET)
    assert t.window_info(S1, 0) is not None
    assert retire(t, 200 + RET - 1).value["retired"] == []
    value = retire(t, 200 + RET).value
    assert value == {"stamped": 0, "retired": [job_id], "windows_dropped": 4, "more": False}
    assert t.window_info(S1, 0) is None
    assert t.stats()["windows"] == {"pending": 0, "leased": 0, "done": 0, "failed": 0}
    assert t.stats()["jobs_retired"] == 1
    summary = t.job(job_id)
    assert summary is not None
    assert summary["retired"] is True and summary["state"] == state and summary["windows"] == counts
    assert summary["finished_at_ms"] == 200 and summary["retired_at_ms"] == 200 + RET
    assert summary["submitted_at_ms"] == 1
    parsed = Job.from_dict(summary)  # the provider's client reads the summary
    assert parsed.retired and parsed.retired_at_ms == 200 + RET and parsed.state == state
    assert [j["job_id"] for j in t.jobs()] == [job_id]
    assert not t.retire_due(10**9, RET)


def test_a_running_job_never_retires_and_a_reopened_job_loses_its_stamp() -> None:
    """Only finished jobs retire; a job that runs again (a window re-opened by another job) is stamped afresh."""
    t = Table()
    running = submit(t, 0, 30 * MIN)
    assert retire(t, 10**9, 0).value["retired"] == []
    assert "retired" not in t.job(running)  # type: ignore[operator]
    t2 = Table()
    early = submit(t2, 0, 15 * MIN)
    lease = t2.claim(worker_id="w", max_windows=1, ttl_ms=TTL, now_ms=5 * MIN).value["leases"][0]
    assert t2.complete(lease_id=lease["lease_id"], token=lease["token"], rows=5, now_ms=5 * MIN).ok
    assert retire(t2, 6 * MIN).value["stamped"] == 1
    submit(t2, 0, 15 * MIN + 1, now=20 * MIN)  # needs bars closed since: the shared window re-opens
    assert t2.job(early)["state"] == "running"  # type: ignore[index]
    assert retire(t2, 6 * MIN + RET).value["retired"] == []
    assert "retired" not in t2.job(early)  # type: ignore[operator]


def test_windows_shared_with_a_live_job_stay() -> None:
    """Retiring a job drops only windows no live job covers; the live job's counts and claims are unchanged."""
    t = Table()
    old = submit(t, 0, 30 * MIN)
    finish_all(t, 100)
    live = submit(t, 15 * MIN, 60 * MIN, now=200)
    before = t.job(live)
    value = retire(t, 200, 0).value
    assert value["retired"] == [old] and value["windows_dropped"] == 1
    assert t.window_info(S1, 0) is None
    assert t.window_info(S1, 15 * MIN) is not None and t.window_info(S1, 15 * MIN)["jobs"] == [live]  # type: ignore[index]
    assert t.job(live) == before
    leases = t.claim(worker_id="w", max_windows=10, ttl_ms=TTL, now_ms=300).value["leases"]
    assert sorted(lease["start"] for lease in leases) == [30 * MIN, 45 * MIN]


def test_a_leased_window_of_a_cancelled_job_stays_until_its_lease_ends() -> None:
    """A live lease keeps its window in the table, so the holder's complete still works."""
    t = Table()
    job_id = submit(t, 0, 15 * MIN)
    lease = t.claim(worker_id="w", max_windows=1, ttl_ms=TTL, now_ms=10).value["leases"][0]
    assert t.cancel_job(job_id=job_id, now_ms=20).ok
    assert retire(t, 30, 0).value == {"stamped": 1, "retired": [job_id], "windows_dropped": 0, "more": False}
    assert t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=1, now_ms=40).ok
    assert t.stats()["windows"]["done"] == 1


def test_a_new_job_over_a_retired_range_is_a_new_job_on_the_same_grid() -> None:
    """An identical submission after retirement creates a new job with fresh windows at the same window ids."""
    t = Table()
    old = submit(t)
    finish_all(t, 100)
    retire(t, 100, 0)
    result = t.submit_job(series=S1, start=0, end=60 * MIN, window_bars=60, max_windows=1000, now_ms=200)
    assert result.ok and result.value["created"] is True and result.value["job"]["job_id"] != old
    assert result.value["job"]["windows"]["pending"] == 4  # the grid of the first job (15 bars), not 60
    assert t.window_info(S1, 45 * MIN)["jobs"] == [result.value["job"]["job_id"]]  # type: ignore[index]
    assert t.job(old)["retired"] is True  # type: ignore[index]


@pytest.mark.parametrize(
    ("command", "code"),
    [("retry_job", "conflict"), ("cancel_job", "conflict")],
)
def test_commands_on_a_retired_job_are_refused_and_change_nothing(command: str, code: str) -> None:
    """retry and cancel of a retired (failed) job answer conflict and leave the state unchanged."""
    t = Table()
    job_id = submit(t)
    finish_all(t, 100, failed=True)
    retire(t, 100, 0)
    before = t.snapshot()
    result = getattr(t, command)(job_id=job_id, now_ms=200)
    assert not result.ok and result.code == code
    assert t.snapshot() == before


@pytest.mark.parametrize("retention", [-1, "7", None, True])
def test_a_bad_retention_is_invalid(retention: Any) -> None:
    """retire validates its argument and never raises."""
    t = Table()
    submit(t)
    before = t.snapshot()
    result = t.retire(retention_ms=retention, now_ms=5)
    assert not result.ok and result.code == "invalid" and result.field == "retention_ms"
    assert t.snapshot() == before


def test_the_window_blocks_go_after_a_large_retirement() -> None:
    """Dropping every window drops the blocks that held them, so their memory goes back at once."""
    t = Table()
    job_id = t.submit_job(series=S1, start=0, end=20_000 * MIN, window_bars=1, max_windows=20_000, now_ms=1)
    assert job_id.ok
    while t.pending_count():
        finish_all(t, 100)
    retire(t, 100, 0)
    assert len(t._windows) == 0 and t._windows.blocks == []
    assert not t._done_tokens  # their windows are gone: nothing to answer idempotently, memory to release


def test_one_command_drops_a_bounded_number_of_windows_and_says_more(monkeypatch: pytest.MonkeyPatch) -> None:
    """A large backlog retires over several commands (each apply holds every node), each answering more: true
    until the last."""
    monkeypatch.setattr("coordinator._retire.MAX_DROPPED_PER_COMMAND", 4)
    t = Table()
    ids = [submit(t, k * 60 * MIN, (k + 1) * 60 * MIN) for k in range(3)]  # 4 windows each
    for job_id in ids:
        assert t.cancel_job(job_id=job_id, now_ms=10).ok
    answers = [retire(t, 20 + k, 0).value for k in range(3)]
    assert [(a["retired"], a["windows_dropped"], a["more"]) for a in answers] == [
        ([ids[0]], 4, True),
        ([ids[1]], 4, True),
        ([ids[2]], 4, False),
    ]
    assert t.stats()["windows"]["pending"] == 0 and not t.retire_due(10**6, 0)


def test_claim_heap_entries_of_dropped_windows_are_forgotten() -> None:
    """A cancelled job's never-claimed windows leave the claim heap with them; the live job's run entry (one for
    its windows) stays and its windows are still granted."""
    t = Table()
    gone = submit(t, 0, 60 * MIN)
    live = submit(t, 120 * MIN, 150 * MIN)
    assert t.cancel_job(job_id=gone, now_ms=5).ok
    assert retire(t, 6, 0).value["windows_dropped"] == 4
    assert [entry[2:] for entry in t._ready] == [(120 * MIN, S1, 150 * MIN)]
    leases = t.claim(worker_id="w", max_windows=10, ttl_ms=TTL, now_ms=7).value["leases"]
    assert [lease["start"] for lease in leases] == [120 * MIN, 135 * MIN]
    assert t.job(live)["windows"]["leased"] == 2  # type: ignore[index]
