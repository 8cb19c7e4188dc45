"""The provider's read path against QuestDB, and its L1 cache, each against a baseline measured in the same run.

1. Bulk read: 1,000,000 stored 1m bars fetched through ``SeamlessDataProvider`` (FAIL_FAST, cache off, so every
   run reads storage: coverage ledger query + read + conformance on all rows) against a raw asyncpg query of the
   same table and range, turned into the same DataFrame. The baseline is the fastest raw form we know (``ts``
   cast to LONG, rows flattened in C); the obvious form (``ts`` decoded as datetimes) is shown too.
   Target: provider / raw <= 1.25.
2. L1 hit: a 10,000-bar range fetched again from the L1 cache (the whole ``fetch`` call: request id, SLA clock,
   cache lookup, slice copy, metadata, metrics, one log line). Target: median < 1 ms. Baseline: the same range
   read from QuestDB through the storage.

QuestDB: ``--dsn questdb://...`` (a running server) or, by default, one started from its jar by
devkit.services. Logging goes to /dev/null as JSON lines at INFO, as a service would log.

Run: ``.venv/bin/python -m bench.bench_provider [--runs 5] [--bars 1000000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import secrets
import statistics
import time
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from bench._common import emit, table
from provider.core import SeriesKey
from provider.core.obs import configure_logging, new_registry
from provider.frames import frame_from_arrays
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sources import open_source
from provider.storage import open_storage

SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
START = (1_600_000_000_000 // (100_000 * MIN)) * (100_000 * MIN)
WRITE_WINDOW_BARS = 100_000
L1_BARS = 10_000


async def load(storage: Any, bars: int) -> None:
    """Write ``bars`` synthetic bars as windows of 100,000."""
    source = open_source("synthetic:3")
    key = SeriesKey.parse(SERIES)
    for lo in range(START, START + bars * MIN, WRITE_WINDOW_BARS * MIN):
        hi = min(lo + WRITE_WINDOW_BARS * MIN, START + bars * MIN)
        await storage.write_window(key, lo, hi, await source.fetch(key, lo, hi))
    await source.aclose()


async def timed(fn: Any, runs: int) -> tuple[float, list[float]]:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), samples


def naive(ms: int) -> dt.datetime:
    return dt.datetime(1970, 1, 1) + dt.timedelta(milliseconds=ms)


def _sql(table_name: str, ts: str) -> str:
    return (
        f'SELECT {ts}, open, high, low, close, volume FROM "{table_name}" '
        "WHERE series = $1 AND ts >= $2 AND ts < $3 ORDER BY ts"
    )


async def raw_read(conn: asyncpg.Connection, table_name: str, lo: int, hi: int, series: str = SERIES) -> pd.DataFrame:
    """The baseline: one asyncpg query (ts as epoch us, decoded in C), then the frame the provider returns."""
    rows = await conn.fetch(_sql(table_name, "cast(ts AS LONG)"), series, naive(lo), naive(hi))
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * 6)
    matrix = flat.reshape(len(rows), 6)
    return frame_from_arrays(matrix[:, 0].astype(np.int64) // 1000, *matrix[:, 1:].T)


async def raw_read_timestamps(conn: asyncpg.Connection, table_name: str, lo: int, hi: int) -> pd.DataFrame:
    """A second baseline: the obvious query (ts decoded as datetimes by asyncpg), then the same frame."""
    rows = await conn.fetch(_sql(table_name, "ts"), SERIES, naive(lo), naive(hi))
    stamps = np.fromiter((r[0].timestamp() for r in rows), dtype=np.float64, count=len(rows))
    values = np.array([tuple(r)[1:] for r in rows], dtype=np.float64).reshape(len(rows), 5)
    return frame_from_arrays((stamps * 1000).round().astype(np.int64), *values.T)


async def bench(dsn: str, pg_dsn: str, args: argparse.Namespace) -> dict[str, Any]:
    table_name = f"bench_{secrets.token_hex(4)}"
    storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
    conn = await asyncpg.connect(pg_dsn)
    results: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await load(storage, args.bars)
        results["load_s"] = time.perf_counter() - started
        lo, hi = START, START + args.bars * MIN
        clock = lambda: hi + 1000 * MIN  # noqa: E731
        reader = SeamlessDataProvider(
            strategy="fail_fast",
            storage_source=storage,
            cache_source=False,
            report_sink=MemoryReportSink(),
            registry=new_registry(),
            clock=clock,
        )
        check = await reader.fetch(lo, hi, node_id=SERIES)
        baseline = await raw_read(conn, table_name, lo, hi)
        pd.testing.assert_frame_equal(check, baseline)
        assert len(check) == args.bars
        pd.testing.assert_frame_equal(check, await raw_read_timestamps(conn, table_name, lo, hi))
        paths = {
            "provider": lambda: reader.fetch(lo, hi, node_id=SERIES),
            "storage": lambda: storage.read(SERIES, lo, hi),
            "raw": lambda: raw_read(conn, table_name, lo, hi),
            "raw_timestamps": lambda: raw_read_timestamps(conn, table_name, lo, hi),
        }
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.runs):  # interleaved, so load drift on a shared machine hits every path alike
            for name, fn in paths.items():
                samples[name].append((await timed(fn, 1))[0])
        for name, values in samples.items():
            results[f"{name}_s"] = statistics.median(values)

        cached = SeamlessDataProvider(
            strategy="fail_fast",
            storage_source=storage,
            report_sink=MemoryReportSink(),
            registry=new_registry(),
            clock=clock,
        )
        l1_lo, l1_hi = lo + 5_000 * MIN, lo + (5_000 + L1_BARS) * MIN
        await cached.fetch(l1_lo, l1_hi, node_id=SERIES)
        hits = []
        for _ in range(args.l1_runs):
            t0 = time.perf_counter()
            frame = await cached.fetch(l1_lo, l1_hi, node_id=SERIES)
            hits.append(time.perf_counter() - t0)
        metadata = cached.last_fetch_metadata
        assert metadata is not None and metadata.cache_hit and len(frame) == L1_BARS
        results["l1_hit_ms_median"] = statistics.median(hits) * 1000
        results["l1_hit_ms_p99"] = float(np.percentile(hits, 99)) * 1000
        results["storage_10k_ms"], _ = await timed(lambda: storage.read(SERIES, l1_lo, l1_hi), args.runs)
        results["storage_10k_ms"] *= 1000
        await reader.aclose()
        await cached.aclose()
    finally:
        await conn.close()
        await storage.aclose()
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    ratio = results["provider_s"] / results["raw_s"]
    print(f"## 1,000,000-bar read (median of {args.runs} runs; load took {results['load_s']:.1f} s)\n")
    print(
        table(
            ["path", "time (s)", "vs raw asyncpg + DataFrame"],
            [
                ["provider.fetch (ledger + read + conformance)", results["provider_s"], f"{ratio:.2f}x"],
                [
                    "storage.read alone (the provider's read)",
                    results["storage_s"],
                    f"{results['storage_s'] / results['raw_s']:.2f}x",
                ],
                ["raw asyncpg, ts as LONG + DataFrame (baseline)", results["raw_s"], "1.00x"],
                [
                    "raw asyncpg, ts as timestamp + DataFrame",
                    results["raw_timestamps_s"],
                    f"{results['raw_timestamps_s'] / results['raw_s']:.2f}x",
                ],
            ],
        )
    )
    print(f"\ntarget provider / raw <= 1.25 -> {ratio:.2f} ({'met' if ratio <= 1.25 else 'MISSED'})\n")
    print(f"## L1 hit, {L1_BARS:,}-bar frame ({args.l1_runs} fetches)\n")
    print(
        table(
            ["path", "median (ms)", "p99 (ms)"],
            [
                ["provider.fetch, L1 hit", results["l1_hit_ms_median"], results["l1_hit_ms_p99"]],
                ["storage.read of the same range (baseline)", results["storage_10k_ms"], ""],
            ],
        )
    )
    met = results["l1_hit_ms_median"] < 1.0
    print(f"\ntarget median < 1 ms -> {results['l1_hit_ms_median']:.3f} ms ({'met' if met else 'MISSED'})")
    emit("provider", {**results, "ratio": ratio})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each bulk read (median reported)")
    parser.add_argument("--l1-runs", type=int, default=2000, help="timed L1 hits")
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars stored and read")
    parser.add_argument("--dsn", default=None, help="questdb:// DSN of a running server (default: start one)")
    args = parser.parse_args()
    configure_logging("bench", level="INFO", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives for the run)
    if args.dsn:
        from devkit.services import QuestDBEndpoint

        endpoint = QuestDBEndpoint.from_dsn(args.dsn)
        report(asyncio.run(bench(endpoint.dsn, endpoint.pg_dsn, args)), args)
        return
    from devkit.services import QuestDBServer

    with QuestDBServer() as server:
        report(asyncio.run(bench(server.dsn, server.pg_dsn, args)), args)


if __name__ == "__main__":
    main()
