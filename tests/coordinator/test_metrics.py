"""Per-job metrics are bounded and their public view holds no user data (coordinator/metrics.py rules 3 and 4),
on a real lease table in process; the real-cluster HTTP side is in test_metrics_cluster.py."""

from __future__ import annotations

import pickle
from typing import Any

import pytest

from coordinator.auth import UNAUTHENTICATED, TokenTable
from coordinator.errors import AuthError
from coordinator.metrics import OTHER, ClusterFigures, CoordinatorMetrics
from coordinator.table import Table
from devkit.api import metric
from devkit.cluster import MIN
from provider.core.obs import new_registry

OTHER_LABELS = f'job_id="{OTHER}",series="{OTHER}"'


def series_of(i: int) -> str:
    return f"ohlcv:test:PRIVATE{i}/USDT:1m"


def submit(t: Table, i: int, priority: int = 0, windows: int = 2, now_ms: int = 1) -> str:
    """Job ``i``: ``windows`` windows of 15 bars of its own series."""
    result = t.submit_job(
        series=series_of(i),
        start=0,
        end=windows * 15 * MIN,
        priority=priority,
        window_bars=15,
        max_windows=1000,
        now_ms=now_ms,
    )
    assert result.ok, result
    return str(result.value["job"]["job_id"])


def finish_all(t: Table, now_ms: int = 1) -> None:
    """Claim and complete every pending window."""
    while leases := t.claim(worker_id="w", max_windows=1000, ttl_ms=60_000, now_ms=now_ms).value["leases"]:
        for lease in leases:
            assert t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=15, now_ms=now_ms).ok


def complete_one_window_of(t: Table, job_id: str) -> None:
    """Complete one window of ``job_id`` (a window of its series, so of that job only)."""
    window = t.job_windows(job_id, "pending")
    assert window
    assert t.mark_done(window_id=window[0]["window_id"], reason="test", now_ms=1).ok


def exposition(t: Table, max_jobs: int | None, *, detail: bool) -> str:
    metrics = CoordinatorMetrics(new_registry(), lambda: ClusterFigures(True, 1, 1, t.stats(max_jobs)))
    return metrics.exposition(detail=detail).decode()


def ratio_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("backfill_completion_ratio{")]


def test_stats_lists_the_first_jobs_in_claim_order_and_sums_the_rest() -> None:
    """With a cap of 2, the two running jobs of highest priority (then oldest) are listed one by one with their
    done and total windows; the other running jobs are summed; finished jobs are in neither."""
    t = Table()
    low_old = submit(t, 1, priority=0)
    high_new = submit(t, 2, priority=5)
    low_new = submit(t, 3, priority=0, windows=3)
    low_newest = submit(t, 4, priority=0, windows=4)
    complete_one_window_of(t, low_newest)
    stats = t.stats(2)
    assert stats["jobs_running"] == [(high_new, series_of(2), 0, 2), (low_old, series_of(1), 0, 2)]
    assert stats["jobs_other"] == (2, 1, 7)  # low_new (0 of 3) and low_newest (1 of 4)
    assert [job[0] for job in t.stats()["jobs_running"]] == [high_new, low_old, low_new, low_newest]
    assert t.stats(0)["jobs_other"] == (4, 1, 11) and t.stats(0)["jobs_running"] == []
    finish_all(t)
    submit(t, 5)
    assert [job[0] for job in t.stats(2)["jobs_running"]] == ["job-5"]
    assert t.stats(2)["jobs_other"] == (0, 0, 0)


def test_running_jobs_are_tracked_through_every_way_a_job_stops_or_starts_running() -> None:
    """Cancel, fail (out of attempts), retry, retire and a snapshot restore each keep the figures right."""
    t = Table()
    cancelled = submit(t, 1)
    failing = submit(t, 2, windows=1)
    assert t.cancel_job(job_id=cancelled, now_ms=1).ok
    lease = t.claim(worker_id="w", max_windows=1, ttl_ms=60_000, now_ms=1).value["leases"][0]
    assert lease["series"] == series_of(2)
    fail = {"reason": "x", "retryable": False, "max_attempts": 1, "retry_backoff_ms": 0, "now_ms": 1}
    assert t.fail(lease_id=lease["lease_id"], token=lease["token"], **fail).ok
    assert t.stats(10)["jobs_running"] == [] and t.stats(10)["jobs_other"] == (0, 0, 0)
    assert t.retry_job(job_id=failing, now_ms=1).ok
    assert [job[0] for job in t.stats(10)["jobs_running"]] == [failing]
    assert t.retire(retention_ms=0, now_ms=2).value["retired"] == [cancelled]
    assert t.stats(10)["jobs_retired"] == 1
    restored = Table()
    assert restored.import_state(pickle.loads(pickle.dumps(t.export_state())))
    assert restored.stats(10) == t.stats(10)


class _Untouchable(dict[str, Any]):
    """The job dict, refusing to be walked: the figures must not visit every job ever submitted."""

    def _refuse(self, *_: Any) -> Any:
        raise AssertionError("stats() walked every job")

    values = items = keys = __iter__ = _refuse


def test_figures_never_visit_finished_or_retired_jobs() -> None:
    """After 2,000 jobs finished (half of them retired), stats() reads the 3 running jobs without walking the job
    dict, so a scrape costs O(running jobs) however many jobs the table has seen."""
    t = Table()
    for i in range(2000):
        submit(t, i, windows=1)
    finish_all(t)
    assert t.retire(retention_ms=0, now_ms=2).ok
    for i in range(2000, 2003):
        submit(t, i, windows=1, now_ms=3)
    t._jobs = _Untouchable(t._jobs)
    stats = t.stats(2)
    assert [job[1] for job in stats["jobs_running"]] == [series_of(2000), series_of(2001)]
    assert stats["jobs_other"] == (1, 0, 1) and stats["jobs_retired"] == 2000


def test_detailed_view_shows_at_most_the_cap_plus_one_aggregate() -> None:
    """12 running jobs with a cap of 5: 5 per-job series plus one (other) series whose value is the done windows
    over the windows of the 7 others; backfill_jobs_aggregated says 7."""
    t = Table()
    ids = [submit(t, i) for i in range(12)]
    complete_one_window_of(t, ids[-1])  # one of the summed jobs: 1 of 14 windows done
    text = exposition(t, 5, detail=True)
    lines = ratio_lines(text)
    assert len(lines) == 6
    assert [line.split('"')[1] for line in lines[:5]] == ids[:5]
    assert metric(text, "backfill_completion_ratio", OTHER_LABELS) == pytest.approx(1 / 14)
    assert metric(text, "backfill_jobs_aggregated") == 7 and metric(text, "backfill_jobs_running") == 12


def test_no_aggregate_series_while_every_running_job_is_shown() -> None:
    """Under the cap there is no (other) series (a 0 ratio of no jobs would look like a stalled job)."""
    t = Table()
    submit(t, 1)
    text = exposition(t, 5, detail=True)
    assert len(ratio_lines(text)) == 1 and OTHER_LABELS not in text
    assert metric(text, "backfill_jobs_aggregated") == 0
    assert ratio_lines(exposition(Table(), 5, detail=False)) == []


def test_public_view_holds_no_job_id_or_series() -> None:
    """Without detail, no line names a job or a series; every running job is summed into (other), the same
    figures as the detailed view otherwise (windows by state, running jobs)."""
    t = Table()
    ids = [submit(t, i) for i in range(3)]
    complete_one_window_of(t, ids[0])
    public = exposition(t, 5, detail=False)
    detailed = exposition(t, 5, detail=True)
    for i, job_id in enumerate(ids):
        assert f'"{job_id}"' in detailed and series_of(i) in detailed
        assert job_id not in public and f"PRIVATE{i}" not in public
    assert ratio_lines(public) == [f"backfill_completion_ratio{{{OTHER_LABELS}}} {1 / 6}"]
    assert metric(public, "backfill_jobs_aggregated") == 3 and metric(public, "backfill_jobs_running") == 3
    state = 'state="pending"'
    assert metric(public, "backfill_windows", state) == metric(detailed, "backfill_windows", state) == 5


def test_both_views_share_the_node_counters() -> None:
    """A counter incremented once shows in both views (they share every collector but the table's)."""
    t = Table()
    metrics = CoordinatorMetrics(new_registry(), lambda: ClusterFigures(True, 1, 1, t.stats(5)))
    metrics.fenced_rejections.inc()
    for detail in (True, False):
        assert metric(metrics.exposition(detail=detail).decode(), "backfill_fenced_rejections_total") == 1


def test_an_optional_token_identifies_or_is_refused() -> None:
    """No header is UNAUTHENTICATED (no role allows it); a known token is its principal; an unknown one is 401."""
    tokens = TokenTable.parse("reader-token-0123456789 reader grafana\nworker-token-0123456789 worker")
    assert tokens.identify(None) is UNAUTHENTICATED and not UNAUTHENTICATED.allows("reader")
    assert tokens.identify("Bearer reader-token-0123456789").name == "grafana"
    assert tokens.identify("Bearer worker-token-0123456789").allows("reader")
    with pytest.raises(AuthError) as refused:
        tokens.identify("Bearer not-a-known-token-at-all")
    assert refused.value.code == "unauthorized"
