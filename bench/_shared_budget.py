"""The shared exchange budget runs of bench_backfill.py: an autoscaling pool, and ban propagation.

1. Autoscaling: the pool grows 2 -> 8 -> 2 during one backfill (a third of the run each), with
   ``worker.shared_requests_per_minute`` = ``SHARED_FRACTION`` of the exchange's per-minute limit. The run lasts
   longer than the exchange's sliding minute, so an overshoot at any transition would be refused. Reported: the
   steady rate's fraction of the bound and the requests the exchange refused; from ``GET /v1/budget`` sampled
   every 0.25 s, how long a joining worker waits from its registration to 90% of its fair share, and how long the
   board takes from the SIGTERMs to two members again.
2. Ban propagation: four busy workers; the exchange bans whichever request comes next (418, ``BAN_S``), several
   times. Per ban, from the exchange's log: the requests that still reached it during the ban and how long after
   the announcing 418 the last one came; from the workers' logs: how long after the first worker saw its 418 the
   last other worker was told by the coordinator. The same-run baseline is the same pool with per-process budgets
   (no shared budget): each worker must earn its own 418.
"""

from __future__ import annotations

import itertools
import json
import secrets
import statistics
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from devkit.cluster import make_cluster
from devkit.launcher import worker_argv
from devkit.polling import http_json, wait_for
from devkit.ports import LOOPBACK, free_port
from devkit.workers import Exchange, WorkerPool, WorkerProc

__all__ = ["run_autoscale", "run_bans"]

MINUTE = 60_000
T0 = 1_577_836_800_000
BARS_PER_WINDOW = 1000
#: The pool's shared limit as a fraction of the exchange's (new buckets start empty: no burst to leave room for).
SHARED_FRACTION = 0.985
#: Windows in flight per worker of the autoscaling run: two workers must carry the whole rate.
AUTOSCALE_CONCURRENCY = 24
BAN_S = 2.0


def _config(rps: float, floor_workers: int, shared: bool, concurrency: int) -> dict[str, Any]:
    worker: dict[str, Any] = {
        "concurrency": concurrency,
        "claim_wait_ms": 200,
        "requests_per_minute": int(rps * 60 * 0.97 / floor_workers),  # the hand split: baseline, or the floor
        "weight_per_minute": 0,
        "shutdown_grace_ms": 10_000,
    }
    if shared:
        worker["shared_requests_per_minute"] = int(rps * 60 * SHARED_FRACTION)
    return {
        "seamless_data_provider": {
            "backfill_config": {"distributed_lease_ttl_ms": 10_000, "window_bars": 1000, "retry_backoff_ms": 100}
        },
        "coordinator": {"reap_interval_ms": 200},
        "worker": worker,
    }


def _spawn(pool: WorkerPool, name: str, concurrency: int) -> WorkerProc:
    """Start a worker without waiting for it (several start at once, as an autoscaler's would)."""
    port = free_port(LOOPBACK)
    args = worker_argv(
        coordinators=pool.coordinators,
        source=pool.source,
        storage=pool.storage,
        worker_id=name,
        concurrency=concurrency,
        config=pool.config,
        metrics_port=port,
    )
    worker = WorkerProc(name, args, pool.root / f"{name}.log", port).start()
    pool.workers.append(worker)
    return worker


def _submit(url: str, windows: int) -> list[str]:
    symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/BTC"]
    per_symbol = -(-windows // len(symbols))
    jobs = []
    for symbol in symbols:
        body = {"series": f"ohlcv:binance:{symbol}:1m", "start": T0, "end": T0 + per_symbol * BARS_PER_WINDOW * MINUTE}
        status, answer = http_json("POST", url + "/v1/jobs", body)
        assert status in (200, 201), answer
        jobs.append(answer["job"]["job_id"])
    return jobs


def _done(url: str, jobs: list[str]) -> tuple[int, bool]:
    states = [j for j in http_json("GET", url + "/v1/jobs")[1]["jobs"] if j["job_id"] in jobs]
    return sum(j["windows"]["done"] for j in states), all(s["state"] != "running" for s in states)


def _phase_rates(progress: list[tuple[float, int]], bounds: list[float]) -> list[float]:
    """bars/s between consecutive phase boundaries (seconds since submit)."""
    rates = []
    for lo, hi in itertools.pairwise(bounds):
        inside = [(t, n) for t, n in progress if lo <= t <= hi]
        if len(inside) < 2 or inside[-1][0] <= inside[0][0]:
            rates.append(float("nan"))
            continue
        rates.append((inside[-1][1] - inside[0][1]) / (inside[-1][0] - inside[0][0]) * BARS_PER_WINDOW)
    return rates


class _Board:
    """Samples of ``GET /v1/budget`` during one run (rule 1): joins and leaves as the board saw them."""

    def __init__(self) -> None:
        self.seen: dict[str, float] = {}
        self.granted: dict[str, float] = {}
        self.members: list[tuple[float, int]] = []

    def sample(self, url: str, elapsed: float) -> None:
        for src in http_json("GET", url + "/v1/budget")[1].get("sources", []):
            fair = src["target"][0] or 0.0
            self.members.append((elapsed, len(src["members"])))
            for wid, member in src["members"].items():
                self.seen.setdefault(wid, elapsed)
                if wid not in self.granted and fair > 0 and (member["granted"][0] or 0.0) >= 0.9 * fair:
                    self.granted[wid] = elapsed

    def join_s(self, since: float) -> list[float]:
        """Seconds from registration to 90% of the fair share, for workers first seen after ``since``."""
        return [self.granted[w] - t for w, t in self.seen.items() if t > since and w in self.granted]

    def leave_s(self, since: float, members: int) -> float:
        """Seconds from ``since`` until the board holds ``members`` members again."""
        return next((t - since for t, n in self.members if t > since and n <= members), float("nan"))


def run_autoscale(
    root: Path, storage: str, rps: float, seconds: float, steady: Any, trace: list[Any] | None = None
) -> tuple[float, dict[str, int], list[float], dict[str, float]]:
    """Rule 1: bars/s (steady state), the exchange's non-200 answers, bars/s of each phase of one 2 -> 8 -> 2
    run, and the board's join and leave times (median join, seconds)."""
    cfg = _config(rps, 8, True, AUTOSCALE_CONCURRENCY)
    (root / "cluster").mkdir()
    cluster = make_cluster(root / "cluster", 3, cfg)
    exchange = Exchange.start("--seed", "1", "--rpm", str(int(rps * 60)))
    cfg_path = root / "worker.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    pool = WorkerPool(root, cluster.urls, f"binance:{exchange.url}", storage, cfg_path)
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_leader(30)
        workers = [pool.start(f"as-w{i}", concurrency=AUTOSCALE_CONCURRENCY) for i in range(2)]
        windows = int(rps * seconds)
        started = time.perf_counter()
        jobs = _submit(cluster.urls[0], windows)
        progress: list[tuple[float, int]] = []
        board = _Board()
        phase = 0
        bounds = [0.0]
        while True:
            elapsed = time.perf_counter() - started
            done, finished = _done(cluster.urls[0], jobs)
            progress.append((elapsed, done))
            board.sample(cluster.urls[0], elapsed)
            if trace is not None:
                budget = http_json("GET", cluster.urls[0] + "/v1/budget")[1]
                grants = [m["granted"][0] for src in budget.get("sources", []) for m in src["members"].values()]
                trace.append((round(elapsed, 2), exchange.stats()["statuses"].get("200", 0), len(grants), sum(grants)))
            if finished:
                break
            if phase == 0 and elapsed >= seconds / 3:
                workers += [_spawn(pool, f"as-w{i}", AUTOSCALE_CONCURRENCY) for i in range(2, 8)]
                phase = 1
                bounds.append(elapsed)
            elif phase == 1 and elapsed >= 2 * seconds / 3:
                for worker in workers[2:]:
                    worker.signal(15)  # SIGTERM: drain, then leave the budget
                phase = 2
                bounds.append(elapsed)
            time.sleep(0.25)
        rate = steady(progress, len(jobs) * -(-windows // len(jobs))) * BARS_PER_WINDOW
        statuses = exchange.stats()["statuses"]
        phases = _phase_rates(progress, [*bounds, progress[-1][0]])
        joins = board.join_s(bounds[1]) if len(bounds) > 1 else []
        timing = {
            "join_s": statistics.median(joins) if joins else float("nan"),
            "leave_s": board.leave_s(bounds[2], 2) if len(bounds) > 2 else float("nan"),
        }
        return rate, {k: v for k, v in statuses.items() if k != "200"}, phases, timing
    finally:
        pool.kill_all()
        exchange.stop()
        cluster.kill_all()


def _events(worker: WorkerProc, name: str, since: float) -> list[float]:
    """Wall-clock seconds of the worker's log lines of event ``name`` at or after ``since``."""
    times = []
    for line in worker.log().splitlines():
        if f'"{name}"' not in line:
            continue
        try:
            record = json.loads(line)
        except ValueError:
            continue
        stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00")).timestamp()
        if stamp >= since:
            times.append(stamp)
    return times


def _ban_once(exchange: Exchange, pool: WorkerPool) -> dict[str, float]:
    before = exchange.stats()
    since = time.time()
    exchange.admin("faults", {"kind": "ban", "seconds": BAN_S})
    wait_for(lambda: len(exchange.stats()["ban_notices"]) > len(before["ban_notices"]), 30, "the 418")
    time.sleep(BAN_S + 0.5)
    stats = exchange.stats()
    notice = stats["ban_notices"][-1]
    late = [t - notice for t in stats["during_ban"] if t >= notice]
    seen = sorted(t for w in pool.workers for t in _events(w, "budget.block_seen", since)[:1])
    told = [min(ts) for w in pool.workers if (ts := _events(w, "budget.block_received", since))]
    return {
        "refused_418": stats["statuses"].get("418", 0) - before["statuses"].get("418", 0),
        "last_request_after_s": max(late, default=0.0),
        "told_workers": len(told),
        "propagation_s": max(told) - seen[0] if told and seen else float("nan"),
    }


def run_bans(root: Path, storage: str, rps: float, trials: int, shared: bool) -> list[dict[str, float]]:
    """Rule 2: one record per ban (see :func:`_ban_once`)."""
    cfg = _config(rps, 4, shared, 8)
    (root / "cluster").mkdir()
    cluster = make_cluster(root / "cluster", 3, cfg)
    exchange = Exchange.start("--seed", "1")
    cfg_path = root / "worker.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    pool = WorkerPool(root, cluster.urls, f"binance:{exchange.url}", storage, cfg_path)
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_leader(30)
        for i in range(4):
            pool.start(f"ban-w{i}-{secrets.token_hex(2)}", concurrency=8)
        _submit(cluster.urls[0], int(rps * (trials * (BAN_S + 4) + 60)))
        wait_for(lambda: exchange.stats()["klines"] >= 4 * rps, 60, "the pool at work")
        records = []
        for _ in range(trials):
            records.append(_ban_once(exchange, pool))
            time.sleep(1.0)
        return records
    finally:
        pool.kill_all()
        exchange.stop()
        cluster.kill_all()


def summarize(records: list[dict[str, float]]) -> dict[str, float]:
    """Medians over the bans of one run."""
    keys = ("refused_418", "last_request_after_s", "told_workers", "propagation_s")
    out = {}
    for key in keys:
        values = [r[key] for r in records if r[key] == r[key]]  # NaN-free
        out[key] = statistics.median(values) if values else float("nan")
    return out
