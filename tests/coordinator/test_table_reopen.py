"""Windows completed before they closed are re-opened for bars that closed since (rule 6, near "now")."""

from __future__ import annotations

from coordinator.table import Table

SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
TTL = 10_000


def _complete_first(table: Table, now: int) -> dict:
    lease = table.claim(worker_id="w", ttl_ms=TTL, now_ms=now).value["leases"][0]
    assert table.complete(lease_id=lease["lease_id"], token=lease["token"], rows=3, now_ms=now).ok
    return lease


def test_window_completed_before_it_closed_reopens_for_a_later_job():
    """A window done at minute 3 of 10 is pending again when a job at minute 7 needs minutes 3-7."""
    table = Table()
    job = table.submit_job(series=SERIES, start=0, end=3 * MIN, window_bars=10, max_windows=10, now_ms=3 * MIN + 5)
    assert job.ok
    _complete_first(table, now=3 * MIN + 5)
    later = table.submit_job(series=SERIES, start=0, end=7 * MIN, window_bars=10, max_windows=10, now_ms=7 * MIN + 5)
    assert later.value["job"]["windows"] == {"pending": 1, "leased": 0, "done": 0, "failed": 0}
    lease = table.claim(worker_id="w2", ttl_ms=TTL, now_ms=7 * MIN + 6).value["leases"][0]
    assert lease["attempt"] == 1 and lease["token"] == 2


def test_closed_window_is_never_reopened():
    """A window completed after its end stays done for every later job."""
    table = Table()
    table.submit_job(series=SERIES, start=0, end=10 * MIN, window_bars=10, max_windows=10, now_ms=11 * MIN)
    _complete_first(table, now=11 * MIN)
    later = table.submit_job(series=SERIES, start=0, end=5 * MIN, window_bars=10, max_windows=10, now_ms=20 * MIN)
    assert later.value["job"]["windows"]["done"] == 1 and later.value["job"]["state"] == "done"


def test_early_window_is_not_reopened_when_no_new_bar_closed():
    """A job that needs nothing beyond what was stored when the window completed leaves it done."""
    table = Table()
    table.submit_job(series=SERIES, start=0, end=3 * MIN, window_bars=10, max_windows=10, now_ms=3 * MIN + 5)
    _complete_first(table, now=3 * MIN + 5)
    again = table.submit_job(
        series=SERIES, start=MIN, end=3 * MIN, window_bars=10, max_windows=10, now_ms=3 * MIN + 30_000
    )
    assert again.value["job"]["windows"]["done"] == 1
