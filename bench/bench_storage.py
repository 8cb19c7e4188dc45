"""QuestDB storage backend against the raw clients, measured in the same run.

Per run, on fresh tables of identical schema (runs alternate which side goes first; tables are dropped only at
the end, because QuestDB deletes dropped partitions in the background and that would slow the next writer):

- write: 1,000,000 1s bars of one series as ``--window-bars`` windows. Backend: ``write_window`` per window,
  ``--concurrency`` windows in flight (as a worker pool runs them), each returning only once its bars and its
  ledger row are visible; the same with one window at a time is shown for information. Raw: the questdb
  ``Sender`` with one ``dataframe`` + ``flush`` per window on prebuilt ILP frames, then a wait until QuestDB has
  applied everything, so both sides end with readable data (the raw time without that wait is shown too).
- read: the whole series back. Backend: ``read`` -> contract DataFrame. Raw: ``asyncpg`` ``fetch`` of
  ``SELECT ts, open, high, low, close, volume ... WHERE series = $1 AND ts >= $2 AND ts < $3`` (Records).
- coverage: ``coverage(series)`` with 100,000 ledger windows for the series (and 100,000 of another series in
  the same ledger). The ledger rows are loaded with the raw sender: 100,000 write_window round trips would
  measure QuestDB's WAL latency, not coverage. Baseline: every ledger row of the series fetched with asyncpg
  and merged in Python (what the islands query avoids).
- coverage curve: the same at 10^3, 10^4, 10^5 and 10^6 ledger windows (``--coverage-curve``), one fresh
  ledger each, medians of ``max(--runs, 5)`` calls of each, plus ``coverage(series, start, end)`` of the newest
  four windows (the question a fetch of recent bars asks), interleaved with it; the baseline runs last.

Targets: backend write >= 0.8 x raw, backend read >= 0.8 x raw, coverage under 50 ms. Medians of ``--runs``
runs (coverage: of 8 calls per run), after a warm-up round on throw-away tables.

Run: ``.venv/bin/python -m bench.bench_storage [--runs 5] [--dsn questdb://...]`` (default: a QuestDB started
from its jar with devkit.services, removed afterwards).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from questdb import Sender

from bench._common import emit, table
from provider.core import intersect_ranges, merge_ranges
from provider.frames import frame_from_arrays
from provider.storage import open_storage, parse_dsn
from provider.storage._questdb import _schema
from provider.storage._questdb_ingest import ilp_frame

SERIES = "ohlcv:binance:BTC/USDT:1s"
OTHER = "ohlcv:binance:ETH/USDT:1s"
#: 1s bars: 1,000,000 of them span 12 days, i.e. 12 DAY partitions. (1m bars would span 694 days: 694 partitions
#: of 1,440 rows, which measures file creation more than ingestion and exhausts vm.max_map_count over 5 runs.)
M = 1_000
T0 = 1_577_836_800_000  # 2020-01-01
COVERAGE_WINDOWS = 100_000
COVERAGE_SPAN_MS = 900 * M  # windows of 900 bars


def with_table(dsn: str, table_name: str) -> str:
    return f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}"


def make_frames(bars: int, window_bars: int) -> list[tuple[int, int, Any]]:
    """(start, end, contract frame) per window for ``bars`` bars of ``M`` ms."""
    rng = np.random.default_rng(42)
    ts = T0 + np.arange(bars, dtype=np.int64) * M
    prices = rng.uniform(1.0, 100_000.0, size=(5, bars))
    out = []
    for lo in range(0, bars, window_bars):
        hi = min(lo + window_bars, bars)
        out.append((T0 + lo * M, T0 + hi * M, frame_from_arrays(ts[lo:hi], *prices[:, lo:hi])))
    return out


async def wait_applied(conn: asyncpg.Connection, table_name: str) -> None:
    """Poll wal_tables() until ``table_name`` has applied every committed transaction."""
    while True:
        row = await conn.fetchrow("SELECT writerTxn, sequencerTxn FROM wal_tables() WHERE name = $1", table_name)
        if row["writerTxn"] >= row["sequencerTxn"]:
            return
        await asyncio.sleep(0.002)


async def create_raw_table(conn: asyncpg.Connection, name: str) -> None:
    for statement in _schema(name):
        await conn.execute(statement)


async def backend_write(dsn: str, table_name: str, frames: list[Any], concurrency: int) -> float:
    storage = await open_storage(with_table(dsn, table_name))
    gate = asyncio.Semaphore(concurrency)

    async def one(start: int, end: int, frame: Any) -> None:
        async with gate:
            await storage.write_window(SERIES, start, end, frame)

    try:
        started = time.perf_counter()
        await asyncio.gather(*(one(*item) for item in frames))
        return time.perf_counter() - started
    finally:
        await storage.aclose()


async def raw_write(
    conn: asyncpg.Connection, ilp_conf: str, table_name: str, ilp_frames: list[Any]
) -> tuple[float, float]:
    """Seconds until the last flush returned, and until QuestDB had applied it all."""

    def send() -> None:
        with Sender.from_conf(f"{ilp_conf}auto_flush=off;max_buf_size={1 << 30};") as sender:
            for frame in ilp_frames:
                sender.dataframe(frame, table_name=table_name, symbols=["series"], at="ts")
                sender.flush()

    started = time.perf_counter()
    await asyncio.to_thread(send)
    acked = time.perf_counter() - started
    await wait_applied(conn, table_name)
    return acked, time.perf_counter() - started


async def backend_read(dsn: str, table_name: str, end_ms: int) -> tuple[float, int]:
    storage = await open_storage(with_table(dsn, table_name))
    try:
        started = time.perf_counter()
        frame = await storage.read(SERIES, T0, end_ms)
        return time.perf_counter() - started, len(frame)
    finally:
        await storage.aclose()


async def raw_read(conn: asyncpg.Connection, table_name: str, end_ms: int) -> tuple[float, int]:
    sql = f"SELECT ts, open, high, low, close, volume FROM {table_name} WHERE series = $1 AND ts >= $2 AND ts < $3"
    lo = np.datetime64(T0, "ms").astype(object)
    hi = np.datetime64(end_ms, "ms").astype(object)
    started = time.perf_counter()
    records = await conn.fetch(sql, SERIES, lo, hi)
    return time.perf_counter() - started, len(records)


async def load_ledger(
    conn: asyncpg.Connection, ilp_conf: str, ledger: str, windows: int = COVERAGE_WINDOWS
) -> list[tuple[int, int]]:
    """``windows`` windows of SERIES (every 1000th missing) and as many of OTHER; returns the expected coverage."""
    starts = T0 + np.arange(windows, dtype=np.int64) * COVERAGE_SPAN_MS
    keep = np.arange(windows) % 1000 != 999

    def frame(series: str, chosen: np.ndarray) -> Any:
        n = len(chosen)
        return pd.DataFrame({
            "series": pd.Series(np.full(n, series, dtype=object), dtype=object),
            "ts": chosen.astype("datetime64[ms]").astype("datetime64[ns]"),
            "start_ms": chosen, "end_ms": chosen + COVERAGE_SPAN_MS, "row_count": np.full(n, 900),
            "written_at": np.full(n, np.datetime64("2026-01-01T00:00:00", "ns")),
        })  # fmt: skip

    def send() -> None:
        with Sender.from_conf(f"{ilp_conf}auto_flush=off;max_buf_size={1 << 30};") as sender:
            sender.dataframe(frame(SERIES, starts[keep]), table_name=ledger, symbols=["series"], at="ts")
            sender.dataframe(frame(OTHER, starts), table_name=ledger, symbols=["series"], at="ts")
            sender.flush()

    await asyncio.to_thread(send)
    await wait_applied(conn, ledger)
    gaps = np.flatnonzero(~keep)
    bounds = np.concatenate(([0], gaps + 1))
    ends = np.concatenate((gaps, [windows]))
    return [(int(starts[b]), int(starts[e - 1] + COVERAGE_SPAN_MS)) for b, e in zip(bounds, ends, strict=True) if e > b]


async def bench_coverage(
    dsn: str,
    conn: asyncpg.Connection,
    ilp_conf: str,
    samples: int,
    windows: int = COVERAGE_WINDOWS,
    table_name: str = "bench_cov",
) -> tuple[list[float], list[float], list[float]]:
    """Seconds per ``coverage(SERIES)`` call over ``windows`` ledger windows, after a few warm-up calls; the same
    for the baseline (every ledger row of the series fetched, merged in Python) and for the coverage of the newest
    four windows only (``coverage(SERIES, start, end)``); the baseline runs after the other two."""
    ledger = f"{table_name}_windows"
    await conn.execute(f"DROP TABLE IF EXISTS {ledger}")
    storage = await open_storage(with_table(dsn, table_name))
    naive_sql = f"SELECT start_ms, end_ms FROM {ledger} WHERE series = $1 ORDER BY ts"

    async def naive() -> list[tuple[int, int]]:
        return merge_ranges([(row[0], row[1]) for row in await conn.fetch(naive_sql, SERIES)])

    try:
        expected = await load_ledger(conn, ilp_conf, ledger, windows)
        recent = (T0 + (windows - 4) * COVERAGE_SPAN_MS, T0 + windows * COVERAGE_SPAN_MS)
        for _ in range(3):  # warm-up: QuestDB compiles the query on first use
            if await storage.coverage(SERIES) != expected or await naive() != expected:
                raise SystemExit("coverage does not match the ledger")
            if await storage.coverage(SERIES, *recent) != intersect_ranges(expected, [recent]):
                raise SystemExit("coverage within a range does not match the ledger")
        timings: tuple[list[float], list[float], list[float]] = ([], [], [])
        # The baseline runs after the others: right after it returns a million rows, QuestDB (the JVM) and this
        # process are still cleaning up, which would be charged to whichever query came next.
        calls: list[tuple[Callable[[], Awaitable[list[tuple[int, int]]]], list[float]]] = [
            (lambda: storage.coverage(SERIES), timings[0]),
            (lambda: storage.coverage(SERIES, *recent), timings[2]),
        ]
        for fn, out in [*(calls * samples), *([(naive, timings[1])] * samples)]:
            gc.collect()  # garbage of an earlier call is collected outside the timings
            started = time.perf_counter()
            await fn()
            out.append(time.perf_counter() - started)
        return timings
    finally:
        await storage.aclose()


async def coverage_curve(
    dsn: str, conn: asyncpg.Connection, ilp_conf: str, sizes: list[int], samples: int
) -> list[list[Any]]:
    """coverage() against the fetch-everything baseline as the ledger grows; each size in its own table."""
    rows = []
    for windows in sizes:
        ours, naive, recent = await bench_coverage(dsn, conn, ilp_conf, samples, windows, f"bench_cov_{windows}")
        ours_ms, naive_ms = statistics.median(ours) * 1000, statistics.median(naive) * 1000
        rows.append([windows, ours_ms, ours_ms / windows * 1e6, naive_ms, ours_ms / naive_ms,
                     statistics.median(recent) * 1000])  # fmt: skip
        print(f"coverage over {windows:,} windows: {ours_ms:.1f} ms (baseline {naive_ms:.1f} ms)", flush=True)
    return rows


async def one_run(
    args: argparse.Namespace, dsn: str, conn: asyncpg.Connection, data: Any, run: int, tag: str
) -> dict[str, float]:
    """One write/read round on fresh tables; the order of backend and raw alternates between runs."""
    frames, ilp_frames, ilp_conf = data
    end_ms = T0 + args.bars * M
    raw_name, backend_name, seq_name = f"bench_raw_{tag}", f"bench_backend_{tag}", f"bench_seq_{tag}"
    await create_raw_table(conn, raw_name)
    out: dict[str, float] = {}
    if run % 2:  # neither side always runs on the warmer server
        out["bw"] = await backend_write(dsn, backend_name, frames, args.concurrency)
        out["rw_acked"], out["rw"] = await raw_write(conn, ilp_conf, raw_name, ilp_frames)
    else:
        out["rw_acked"], out["rw"] = await raw_write(conn, ilp_conf, raw_name, ilp_frames)
        out["bw"] = await backend_write(dsn, backend_name, frames, args.concurrency)
    out["bw_seq"] = await backend_write(dsn, seq_name, frames, 1)
    out["rr"], raw_rows = await raw_read(conn, raw_name, end_ms)
    out["br"], backend_rows = await backend_read(dsn, backend_name, end_ms)
    if raw_rows != args.bars or backend_rows != args.bars:
        raise SystemExit(f"row count mismatch: raw {raw_rows}, backend {backend_rows}, want {args.bars}")
    print(
        f"run {tag}: write backend {out['bw']:.2f} s, raw {out['rw']:.2f} s; "
        f"read backend {out['br']:.2f} s, raw {out['rr']:.2f} s",
        flush=True,
    )
    return out


async def main_async(args: argparse.Namespace, dsn: str) -> None:
    parsed = parse_dsn(dsn)
    ilp_conf = parsed.ilp_conf()
    frames = make_frames(args.bars, args.window_bars)
    columns = ("open", "high", "low", "close", "volume")
    ilp_frames = [
        ilp_frame(SERIES, (f["ts"].astype("int64") // 1_000_000).to_numpy(), [f[c].to_numpy() for c in columns])
        for _, _, f in frames
    ]
    conn = await asyncpg.connect(parsed.pg_dsn())
    tags = ["warmup", *(str(run + 1) for run in range(args.runs))]
    tables = ["bench_cov", *(f"bench_{kind}_{tag}" for tag in tags for kind in ("raw", "backend", "seq"))]
    tables += [f"bench_cov_{windows}" for windows in args.coverage_curve]
    runs: list[dict[str, float]] = []
    try:
        if not args.curve_only:
            # Warm-up on throw-away tables, so no measured side pays for the JVM's first use of a code path.
            await one_run(argparse.Namespace(**{**vars(args), "bars": args.window_bars}), dsn, conn,
                          (frames[:1], ilp_frames[:1], ilp_conf), 0, "warmup")  # fmt: skip
            coverage = await bench_coverage(dsn, conn, ilp_conf, max(args.runs, 5) * 8)
            data = (frames, ilp_frames, ilp_conf)
            runs = [await one_run(args, dsn, conn, data, run, str(run + 1)) for run in range(args.runs)]
        curve = await coverage_curve(dsn, conn, ilp_conf, args.coverage_curve, max(args.runs, 5))
    finally:
        # Tables are dropped only at the end: QuestDB deletes dropped partitions in the background, which would
        # slow whichever side runs next.
        for name in tables:
            for table_name in (name, f"{name}_windows"):
                await conn.execute(f'DROP TABLE IF EXISTS "{table_name}"')
        await conn.close()
    if runs:
        report(args, {key: [run[key] for run in runs] for key in runs[0]}, coverage, curve)
    if curve:
        print(f"\n## coverage(series) as the ledger grows (median of {max(args.runs, 5)} calls each)\n")
        heads = ["ledger windows", "coverage() ms", "ns per window", "baseline: fetch all rows + merge, ms",
                 "coverage / baseline", "coverage of the newest 4 windows, ms"]  # fmt: skip
        print(table(heads, [[f"{r[0]:,}", r[1], r[2], r[3], f"{r[4]:.2f}x", r[5]] for r in curve]))
        if not runs:
            emit("storage_coverage_curve", {"coverage_curve_ms": {str(r[0]): round(r[1], 2) for r in curve}})


def report(
    args: argparse.Namespace, results: dict[str, list[float]], coverage: tuple[list[float], ...], curve: Any
) -> None:
    med = {key: statistics.median(values) for key, values in results.items()}
    rate = {key: args.bars / value for key, value in med.items()}
    write_ratio, read_ratio = rate["bw"] / rate["rw"], rate["br"] / rate["rr"]
    coverage_ms = statistics.median(coverage[0]) * 1000
    baseline_ms = statistics.median(coverage[1]) * 1000
    print(f"\n## QuestDB storage, {args.bars:,} bars in windows of {args.window_bars:,}, median of {args.runs} runs\n")
    rows = [
        [f"write: backend write_window, {args.concurrency} in flight", med["bw"], rate["bw"], write_ratio, ">= 0.8"],
        ["write: backend write_window, one at a time", med["bw_seq"], rate["bw_seq"], rate["bw_seq"] / rate["rw"], "-"],
        ["write: raw Sender, until applied", med["rw"], rate["rw"], 1.0, "baseline"],
        [
            "write: raw Sender, flushes acked only",
            med["rw_acked"],
            rate["rw_acked"],
            rate["rw_acked"] / rate["rw"],
            "-",
        ],
        ["read: backend read -> DataFrame", med["br"], rate["br"], read_ratio, ">= 0.8"],
        ["read: raw asyncpg fetch -> Records", med["rr"], rate["rr"], 1.0, "baseline"],
    ]
    print(table(["operation", "seconds", "rows/s", "ratio", "target"], rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine)")
    print(
        f"\ncoverage(series) over {COVERAGE_WINDOWS:,} ledger windows: median {coverage_ms:.1f} ms of "
        f"{len(coverage[0])} calls (min {min(coverage[0]) * 1000:.1f}, max {max(coverage[0]) * 1000:.1f}); "
        f"target < 50 ms; baseline (fetch every ledger row, merge in Python): {baseline_ms:.1f} ms\n"
    )
    emit(
        "storage",
        {
            "bars": args.bars,
            "window_bars": args.window_bars,
            "concurrency": args.concurrency,
            "runs": args.runs,
            "backend_write_rows_per_s": round(rate["bw"]),
            "backend_write_sequential_rows_per_s": round(rate["bw_seq"]),
            "raw_write_rows_per_s": round(rate["rw"]),
            "raw_write_acked_rows_per_s": round(rate["rw_acked"]),
            "write_ratio": round(write_ratio, 3),
            "backend_read_rows_per_s": round(rate["br"]),
            "raw_read_rows_per_s": round(rate["rr"]),
            "read_ratio": round(read_ratio, 3),
            "coverage_windows": COVERAGE_WINDOWS,
            "coverage_ms": round(coverage_ms, 2),
            "coverage_baseline_ms": round(baseline_ms, 2),
            "coverage_curve_ms": {str(row[0]): round(row[1], 2) for row in curve},
            "load_average_1m": round(os.getloadavg()[0], 2),
            "targets_met": write_ratio >= 0.8 and read_ratio >= 0.8 and coverage_ms < 50,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5, help="runs per measurement (median; default 5)")
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars written and read (default 1,000,000)")
    parser.add_argument("--window-bars", type=int, default=100_000, help="bars per window (default 100,000)")
    parser.add_argument("--concurrency", type=int, default=8, help="backend windows in flight (default 8)")
    parser.add_argument("--dsn", help="questdb:// DSN of a running server (default: start one from the jar)")
    parser.add_argument(
        "--coverage-curve",
        type=int,
        nargs="*",
        default=[1_000, 10_000, 100_000, 1_000_000],
        help="ledger sizes of the coverage curve (none: skip it)",
    )
    parser.add_argument("--curve-only", action="store_true", help="only the coverage curve")
    args = parser.parse_args()
    with ExitStack() as stack:
        dsn = args.dsn
        if dsn is None:
            from devkit import services as devservices

            server = stack.enter_context(devservices.QuestDBServer())
            dsn = server.dsn
            print(f"started QuestDB at {dsn}", flush=True)
        asyncio.run(main_async(args, dsn))


if __name__ == "__main__":
    main()
