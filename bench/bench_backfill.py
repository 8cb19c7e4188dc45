"""Backfill throughput end to end: 3 coordinators, N worker processes, the loopback exchange, storage.

Two curves, each against a baseline measured in the same run. Rates are steady-state: windows completed between
the moments 10% and 90% of the backfill was done (the start, with every token bucket full, and the tail, with
the last windows finishing one by one, would flatter or understate it).

1. Rate-limited: the exchange admits R*60 requests per sliding minute (429 beyond, and a ban for a client that
   ignores a 429), the way Binance counts. Each window is one 1000-bar request, so the bound is R x 1000 bars/s.
   Workers share the exchange's limit: each process gets 97% of R*60/N requests per minute, the headroom
   docs/sources.md asks for. Reported: bars/s, the ratio to the bound and the requests the exchange refused, for
   1, 2, 4 and 8 workers (``--max-workers 4`` stops at 4).
2. Unlimited: bars/s of the same pipeline with no exchange limit, next to the raw storage write rate (the
   backend's ``write_window`` called directly with the same frames, no coordinator, no HTTP).
3. Autoscaling with the shared exchange budget (``bench/_shared_budget.py``): a pool 2 -> 8 -> 2 during one
   backfill longer than the exchange's sliding minute; fraction of the bound and refused requests, next to a fixed
   pool of 4 with the hand split (``limit / 4``) over the same windows.
4. Ban propagation: per ban, requests refused with 418, when the last request reached the exchange after the
   announcing 418, and how long the coordinator took to tell the other workers; medians, next to the same pool
   with per-process budgets.

Run: ``.venv/bin/python -m bench.bench_backfill [--runs 3] [--rps 20] [--storage sqlite|questdb]
[--parts bounded,free,autoscale,bans] [--autoscale-seconds 90] [--ban-trials 5]``.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from bench import _shared_budget
from bench._common import emit, table
from devkit.cluster import make_cluster
from devkit.polling import http_json
from devkit.workers import Exchange, WorkerPool
from provider.sources import open_source
from provider.storage import open_storage

MINUTE = 60_000
T0 = 1_577_836_800_000  # 2020-01-01
BARS_PER_WINDOW = 1000
#: Windows in flight per worker. A worker keeps rate x latency windows busy: ~5 requests/s each taking about a
#: second (fetch, then the QuestDB write waits for the WAL apply) needs more than the default 4.
CONCURRENCY = 8
#: Workers of the unlimited run (the figure compared with raw write_window).
FREE_WORKERS = 4


def config(rps: float | None, workers: int) -> dict[str, Any]:
    per_process_rpm = int(rps * 60 * 0.97 / workers) if rps else 0
    return {
        "seamless_data_provider": {
            "backfill_config": {"distributed_lease_ttl_ms": 10_000, "window_bars": 1000, "retry_backoff_ms": 100}
        },
        "coordinator": {"reap_interval_ms": 200},
        "worker": {
            "concurrency": CONCURRENCY,
            "claim_wait_ms": 200,
            "requests_per_minute": per_process_rpm,
            "weight_per_minute": 0,
        },
    }


def steady_rate(progress: list[tuple[float, int]], total: int) -> float:
    """Windows/s between the samples that first reached 10% and 90% of ``total``: the steady state, without the
    start (full token buckets, workers' first claims) or the tail (the last windows finishing one by one)."""
    first = next((t, n) for t, n in progress if n >= 0.1 * total)
    last = next((t, n) for t, n in progress if n >= 0.9 * total)
    if last[0] <= first[0]:
        raise RuntimeError(f"run too short to measure a steady rate: {progress}")
    return (last[1] - first[1]) / (last[0] - first[0])


def run_backfill(
    root: Path, storage: str, workers: int, windows: int, rps: float | None
) -> tuple[float, dict[str, int]]:
    """Start a cluster, an exchange and N workers; backfill ``windows`` windows.

    Returns bars/s and the exchange's answers by HTTP status (429s and 418s show a budget that overshot).
    """
    cfg = config(rps, workers)
    (root / "cluster").mkdir()
    cluster = make_cluster(root / "cluster", 3, cfg)
    exchange = Exchange.start("--seed", "1", *(["--rpm", str(int(rps * 60))] if rps else []))
    cfg_path = root / "worker.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    pool = WorkerPool(root, cluster.urls, f"binance:{exchange.url}", storage, cfg_path)
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_leader(30)
        for i in range(workers):
            pool.start(f"bench-w{i}", concurrency=CONCURRENCY)
        # one series per 50 windows so storage writes spread like a real multi-symbol backfill
        symbols = ["BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/BTC"]
        per_symbol = -(-windows // len(symbols))
        started = time.perf_counter()
        jobs = []
        for symbol in symbols:
            body = {
                "series": f"ohlcv:binance:{symbol}:1m",
                "start": T0,
                "end": T0 + per_symbol * BARS_PER_WINDOW * MINUTE,
            }
            status, answer = http_json("POST", cluster.urls[0] + "/v1/jobs", body)
            assert status in (200, 201), answer
            jobs.append(answer["job"]["job_id"])
        progress = []  # (seconds since submit, windows done): one GET /v1/jobs every 0.25 s
        while True:
            states = [j for j in http_json("GET", cluster.urls[0] + "/v1/jobs")[1]["jobs"] if j["job_id"] in jobs]
            progress.append((time.perf_counter() - started, sum(j["windows"]["done"] for j in states)))
            if all(s["state"] != "running" for s in states):
                break
            time.sleep(0.25)
        assert all(s["state"] == "done" for s in states), states
        rate = steady_rate(progress, per_symbol * len(symbols)) * BARS_PER_WINDOW
        statuses = http_json("GET", exchange.url + "/_admin/stats")[1]["statuses"]
        return rate, {k: v for k, v in statuses.items() if k != "200"}
    finally:
        pool.kill_all()
        exchange.stop()
        cluster.kill_all()


async def raw_write_rate(storage: str, windows: int) -> float:
    """bars/s of write_window alone for the same frames (the storage baseline)."""
    source = open_source("synthetic:1")
    frames = [
        await source.fetch(
            "ohlcv:binance:BTC/USDT:1m", T0 + k * BARS_PER_WINDOW * MINUTE, T0 + (k + 1) * BARS_PER_WINDOW * MINUTE
        )
        for k in range(windows)
    ]
    store = await open_storage(storage)
    try:
        started = time.perf_counter()
        for k, frame in enumerate(frames):
            await store.write_window(
                "ohlcv:binance:BTC/USDT:1m",
                T0 + k * BARS_PER_WINDOW * MINUTE,
                T0 + (k + 1) * BARS_PER_WINDOW * MINUTE,
                frame,
            )
        return sum(len(f) for f in frames) / (time.perf_counter() - started)
    finally:
        await store.aclose()


def storage_dsn(kind: str, root: Path, questdb: Any) -> str:
    if kind == "questdb":
        return f"{questdb.dsn}&table=bench_{secrets.token_hex(4)}"
    return f"sqlite:///{root / ('bench-' + secrets.token_hex(4) + '.db')}"


def bounded_part(args: argparse.Namespace, tmp: Path, questdb: Any) -> dict[str, Any]:
    """Curve 1: fixed pools with the hand split."""
    counts = [n for n in (1, 2, 4, 8) if n <= args.max_workers]
    bound = args.rps * BARS_PER_WINDOW
    windows = int(args.rps * args.seconds)
    bounded = []
    for n in counts:
        rates, refused = [], []
        for run in range(args.runs):
            root = tmp / f"bounded-{n}-{run}"
            root.mkdir()
            rate, statuses = run_backfill(root, storage_dsn(args.storage, root, questdb), n, windows, args.rps)
            rates.append(rate)
            refused.append(sum(statuses.values()))
        median = statistics.median(rates)
        bounded.append([n, median, bound, median / bound, max(refused)])
    print(f"## Rate-limited exchange ({args.rps:.0f} requests/s x {BARS_PER_WINDOW} bars; median of {args.runs})\n")
    print(table(["workers", "bars/s", "bound bars/s", "ratio", "refused requests (worst run)"], bounded))
    return {"bounded": {str(r[0]): {"bars_per_s": r[1], "ratio": r[3]} for r in bounded}}


def free_part(args: argparse.Namespace, tmp: Path, questdb: Any) -> dict[str, Any]:
    """Curve 2: no exchange limit, against raw write_window."""
    free_rates, raw_rates = [], []
    for run in range(args.runs):
        root = tmp / f"free-{run}"
        root.mkdir()
        free_rates.append(run_backfill(root, storage_dsn(args.storage, root, questdb), FREE_WORKERS, 200, None)[0])
        raw_rates.append(asyncio.run(raw_write_rate(storage_dsn(args.storage, root, questdb), 200)))
    free, raw = statistics.median(free_rates), statistics.median(raw_rates)
    print(f"\n## No exchange limit, {FREE_WORKERS} workers, {args.storage} (median of {args.runs})\n")
    print(table(["pipeline bars/s", "raw write_window bars/s", "ratio"], [[free, raw, free / raw]]))
    return {"unlimited_bars_per_s": free, "raw_write_bars_per_s": raw, "unlimited_ratio": free / raw}


def autoscale_part(args: argparse.Namespace, tmp: Path, questdb: Any) -> dict[str, Any]:
    """Curve 3: the pool 2 -> 8 -> 2 on the shared budget, and the fixed pool of 4 over the same windows."""
    bound = args.rps * BARS_PER_WINDOW
    windows = int(args.rps * args.autoscale_seconds)
    rows: list[list[Any]] = []
    out: dict[str, Any] = {}
    for kind in ("fixed 4, limit/4 each", "autoscale 2-8-2, shared budget"):
        rates, refused, phases, timings = [], [], [], []
        for run in range(args.runs):
            root = tmp / f"as-{len(rows)}-{run}"
            root.mkdir()
            dsn = storage_dsn(args.storage, root, questdb)
            if kind.startswith("fixed"):
                rate, statuses = run_backfill(root, dsn, 4, windows, args.rps)
            else:
                rate, statuses, phase_rates, timing = _shared_budget.run_autoscale(
                    root, dsn, args.rps, args.autoscale_seconds, steady_rate
                )
                phases.append(phase_rates)
                timings.append(timing)
            rates.append(rate)
            refused.append(sum(statuses.values()))
        median = statistics.median(rates)
        by_phase = " / ".join(f"{statistics.median(p):,.0f}" for p in zip(*phases, strict=True)) if phases else "-"
        moves = (
            " / ".join(f"{statistics.median(t[k] for t in timings):.2f}" for k in ("join_s", "leave_s"))
            if timings
            else "-"
        )
        rows.append([kind, median, median / bound, by_phase, max(refused), moves])
        out[kind.split()[0]] = {
            "bars_per_s": median,
            "ratio": median / bound,
            "refused_worst": max(refused),
            "runs": rates,
            "phases": phases,
            "board_timings": timings,
        }
    title = f"## Autoscaling pool on the shared budget ({args.rps:.0f} requests/s, {windows} windows; median of"
    print(f"\n{title} {args.runs})\n")
    header = ["pool", "bars/s", "ratio to bound", "bars/s by phase", "refused (worst run)", "join / leave s"]
    print(table(header, rows))
    return {"autoscale": out}


def bans_part(args: argparse.Namespace, tmp: Path, questdb: Any) -> dict[str, Any]:
    """Curve 4: ban propagation, shared budget against per-process budgets."""
    rows, out = [], {}
    for shared in (False, True):
        root = tmp / f"bans-{shared}"
        root.mkdir()
        records = _shared_budget.run_bans(root, storage_dsn(args.storage, root, questdb), 8.0, args.ban_trials, shared)
        med = _shared_budget.summarize(records)
        name = "shared budget" if shared else "per-process budgets"
        rows.append(
            [
                name,
                med["refused_418"],
                med["last_request_after_s"] * 1000,
                med["told_workers"],
                med["propagation_s"] * 1000,
            ]
        )
        out[name] = {**med, "records": records}
    ban_s = _shared_budget.BAN_S
    print(f"\n## Ban propagation (4 workers, 8 requests/s, {args.ban_trials} bans of {ban_s:g} s; medians)\n")
    headers = ["budgets", "418s per ban", "last request after the 418 (ms)", "workers told", "told within (ms)"]
    print(table(headers, rows))
    return {"bans": out}


PARTS = {"bounded": bounded_part, "free": free_part, "autoscale": autoscale_part, "bans": bans_part}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3, help="runs per figure (median reported)")
    parser.add_argument("--rps", type=float, default=20.0, help="exchange request limit for the bounded curve")
    parser.add_argument("--seconds", type=float, default=15.0, help="target length of one bounded run")
    parser.add_argument("--max-workers", type=int, default=8, choices=(4, 8))
    parser.add_argument("--storage", choices=("sqlite", "questdb"), default="questdb")
    parser.add_argument("--parts", default=",".join(PARTS), help="comma-separated: " + ", ".join(PARTS))
    parser.add_argument("--autoscale-seconds", type=float, default=90.0, help="length of one autoscaling run")
    parser.add_argument("--ban-trials", type=int, default=5, help="bans per ban-propagation run")
    args = parser.parse_args()
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--parts {', '.join(unknown)}: not one of {', '.join(PARTS)}")

    from devkit import services as devservices

    tmp = Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    questdb = devservices.QuestDBServer() if args.storage == "questdb" else None
    try:
        if questdb is not None:
            questdb.start()
        results: dict[str, Any] = {"storage": args.storage, "rps": args.rps}
        for part in parts:
            results.update(PARTS[part](args, tmp, questdb))
        emit("backfill", results)
    finally:
        if questdb is not None:
            questdb.stop()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
