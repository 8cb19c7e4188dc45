"""Workers end to end: 3 coordinators, worker processes, QuestDB and the loopback exchange, with faults."""

from __future__ import annotations

import signal
import subprocess
import time
from typing import Any

import pandas as pd
import pytest

from devkit.polling import http_json, wait_for
from devkit.workers import WorkerPool, wait_any_job_done
from provider.core import subtract_ranges, window_ranges
from provider.sources import open_source
from provider.storage import open_storage

pytestmark = [pytest.mark.cluster, pytest.mark.questdb, pytest.mark.slow, pytest.mark.timeout(240)]

MINUTE = 60_000
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT")


def submit(cluster: Any, series: str, start: int, end: int) -> str:
    status, body = http_json("POST", cluster.urls[0] + "/v1/jobs", {"series": series, "start": start, "end": end})
    assert status in (200, 201), body
    return str(body["job"]["job_id"])


async def assert_stored_equals_exchange(dsn: str, series: str, start: int, end: int) -> int:
    """The stored bars of [start, end) equal the exchange's (synthetic seed 7, 1% gaps) exactly."""
    expected = await open_source("synthetic:7?gaps=0.01").fetch(series, start, end)
    storage = await open_storage(dsn)
    try:
        stored = await storage.read(series, start, end)
        coverage = await storage.coverage(series)
    finally:
        await storage.aclose()
    pd.testing.assert_frame_equal(stored, expected)
    assert len(coverage) == 1 and subtract_ranges([(start, end)], coverage) == []  # whole windows, one run
    assert len(expected) < (end - start) // MINUTE  # the exchange's deliberate gaps stay gaps
    return len(stored)


async def test_multi_symbol_job_completes_with_the_exchanges_bars(cluster, pool: WorkerPool, exchange, storage_dsn):
    """Two workers complete a three-symbol backfill; storage holds exactly the exchange's bars, gaps and all."""
    end = T0 + 3000 * MINUTE
    jobs = [submit(cluster, f"ohlcv:binance:{s}:1m", T0, end) for s in SYMBOLS]
    workers = [pool.start("w1"), pool.start("w2")]
    done = wait_any_job_done(cluster.urls, jobs, 120)
    assert [j["state"] for j in done] == ["done"] * 3
    assert all(j["completion_ratio"] == 1.0 for j in done)
    for symbol in SYMBOLS:
        await assert_stored_equals_exchange(storage_dsn, f"ohlcv:binance:{symbol}:1m", T0, end)
    windows = 3 * len(window_ranges(T0, end, "1m", 500))
    assert sum(w.metric_sum("worker_windows_completed_total") for w in workers) == windows
    # Busy workers send most completes aboard the claim that refills the slot (worker/daemon.py rule 12).
    aboard = sum(w.metric_sum('worker_completes_total{via="claim"}') for w in workers)
    assert 0 < aboard <= windows <= aboard + sum(w.metric_sum('worker_completes_total{via="alone"}') for w in workers)
    per_window = [n for _, _, n in exchange.stats()["by_start"]]
    assert len(per_window) == windows and max(per_window) == 1  # one request per window, nothing fetched twice


async def test_faults_are_retried_and_the_ban_is_respected(cluster, pool: WorkerPool, exchange, storage_dsn):
    """With 429s, 5xx, timeouts, bad JSON, short pages and a 418 ban, the job completes exactly; no request of
    the worker process reaches the exchange during the ban or a 429 cooldown, and the retries are counted.

    One process, one window at a time, so no request is already in flight when the ban starts: the ban gate is
    per process (docs/sources.md explains budgets for several processes behind one IP; tests/sources prove the
    gate holds back concurrent requests of one process)."""
    series = "ohlcv:binance:ETH/USDT:1m"
    end = T0 + 5000 * MINUTE
    exchange.admin(
        "faults",
        [
            {"kind": "rate_limit", "count": 3, "retry_after_s": 0.3},
            {"kind": "fail", "count": 2, "status": 503},
            {"kind": "delay", "count": 1, "delay_s": 2.5},
            {"kind": "bad_json", "count": 2},
            {"kind": "short", "count": 2},
            {"kind": "ban", "count": 1, "seconds": 2.0},
            {"kind": "fail", "count": 1, "status": 500},
        ],
    )
    job = submit(cluster, series, T0, end)
    worker = pool.start("w1", concurrency=1)
    (done,) = wait_any_job_done(cluster.urls, [job], 150)
    assert done["state"] == "done"
    await assert_stored_equals_exchange(storage_dsn, series, T0, end)
    stats = exchange.stats()
    assert stats["pending_faults"] == []
    assert stats["bans"] == 1 and stats["during_ban"] == []
    assert {"418", "429", "500", "503"} <= set(stats["statuses"])
    # 10 retryable faults: each is a retry, or, once a window's attempts run out, a failed (re-queued) attempt
    handled = worker.metric_sum("backfill_retry_total") + worker.metric_sum("backfill_failure_total")
    assert handled >= 10 and worker.metric_sum("backfill_retry_total") >= 5


async def test_killed_worker_window_is_completed_by_another(cluster, pool: WorkerPool, exchange, storage_dsn):
    """kill -9 of a worker holding windows: its leases expire and another worker completes them exactly."""
    series = "ohlcv:binance:SOL/USDT:1m"
    end = T0 + 1000 * MINUTE
    exchange.admin("faults", {"kind": "delay", "count": 1000, "delay_s": 30})  # every request of the victim hangs
    job = submit(cluster, series, T0, end)
    victim = pool.start("victim")
    wait_for(lambda: exchange.stats()["klines"] >= 2, 30, "the victim's requests")
    victim.kill()
    exchange.admin("reset", {})
    survivor = pool.start("survivor")
    (done,) = wait_any_job_done(cluster.urls, [job], 90)
    assert done["state"] == "done"
    await assert_stored_equals_exchange(storage_dsn, series, T0, end)
    assert survivor.metric_sum("worker_windows_completed_total") == len(window_ranges(T0, end, "1m", 500))
    assert _coordinator_metric(cluster, "backfill_stale_claims_total") >= 2


async def test_zombie_worker_cannot_complete_after_its_lease_expired(cluster, pool: WorkerPool, exchange, storage_dsn):
    """SIGSTOP a worker past its TTL, let another complete its window, SIGCONT it: its late work is refused
    (lease lost) and the stored bars are still exact."""
    series = "ohlcv:binance:BTC/USDT:1m"
    end = T0 + 500 * MINUTE
    exchange.admin("faults", {"kind": "delay", "count": 1, "delay_s": 0.8})
    job = submit(cluster, series, T0, end)
    zombie = pool.start("zombie", concurrency=1)
    wait_for(lambda: exchange.stats()["klines"] >= 1, 30, "the zombie's request")
    zombie.signal(signal.SIGSTOP)
    try:
        wait_for(lambda: _coordinator_metric(cluster, "backfill_stale_claims_total") >= 1, 30, "the lease to expire")
        rescuer = pool.start("rescuer", concurrency=1)
        (done,) = wait_any_job_done(cluster.urls, [job], 60)
        assert done["state"] == "done"
    finally:
        zombie.signal(signal.SIGCONT)
    wait_for(lambda: zombie.metric_sum("worker_leases_lost_total") >= 1, 30, "the zombie to notice its lost lease")
    assert zombie.metric_sum("worker_windows_completed_total") == 0
    assert rescuer.metric_sum("worker_windows_completed_total") == len(window_ranges(T0, end, "1m", 500))
    await assert_stored_equals_exchange(storage_dsn, series, T0, end)


async def test_sigterm_exits_zero_and_releases_its_windows(cluster, pool: WorkerPool, exchange, storage_dsn):
    """SIGTERM: the worker exits 0 within its grace period and leaves no lease behind; the windows go back."""
    series = "ohlcv:binance:ETH/USDT:1m"
    exchange.admin("faults", {"kind": "delay", "count": 1000, "delay_s": 60})  # the windows cannot finish
    job = submit(cluster, series, T0, T0 + 1000 * MINUTE)
    worker = pool.start("leaving", concurrency=2)
    wait_for(lambda: exchange.stats()["klines"] >= 2, 30, "both windows in progress")
    started = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.proc is not None
    try:
        code = worker.proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        pytest.fail("the worker did not exit within its grace period")
    assert code == 0
    assert time.monotonic() - started < 3 + 5  # shutdown_grace_ms=3000, plus release round trips
    status, body = http_json("GET", cluster.urls[0] + "/v1/leases")
    assert status == 200 and body["leases"] == []
    status, body = http_json("GET", cluster.urls[0] + f"/v1/jobs/{job}")
    assert body["job"]["windows"]["pending"] == len(window_ranges(T0, T0 + 1000 * MINUTE, "1m", 500))


async def test_autoscale_grows_under_backlog_and_shrinks_when_idle(cluster, pool: WorkerPool, exchange):
    """--autoscale 1:3 starts one worker, grows to three under a backlog, and shrinks back when the work is done."""
    exchange.admin("limits", {"rps": 6})  # keep the backlog around long enough to be seen
    jobs = [submit(cluster, f"ohlcv:binance:{s}:1m", T0, T0 + 8000 * MINUTE) for s in SYMBOLS]
    supervisor = pool.start("pool", "--autoscale", "1:3", concurrency=1)
    assert supervisor.proc is not None
    wait_for(lambda: len(_children(supervisor.proc.pid)) == 3, 60, "the pool to grow to 3")
    assert supervisor.metric_sum("worker_pool_size") == 3
    wait_any_job_done(cluster.urls, jobs, 150)
    wait_for(lambda: len(_children(supervisor.proc.pid)) == 1, 60, "the pool to shrink to 1")
    supervisor.signal(signal.SIGTERM)
    assert supervisor.proc.wait(timeout=30) == 0


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


def _coordinator_metric(cluster: Any, name: str) -> float:
    import urllib.request

    best = 0.0
    for url in cluster.urls:
        try:
            with urllib.request.urlopen(url + "/metrics", timeout=3) as answer:
                text = answer.read().decode()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                best = max(best, float(line.rpartition(" ")[2]))
    return best
