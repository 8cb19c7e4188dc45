"""The provider's read path against QuestDB, and its L1 cache, each against a baseline measured in the same run.

1. Bulk read: 1,000,000 stored 1m bars fetched through ``SeamlessDataProvider`` (FAIL_FAST, cache off, so every
   run reads storage: coverage + read + conformance on all rows) against every raw reader of
   bench/_raw_readers.py (asyncpg with ``ts`` as datetimes or cast to LONG, psycopg 3 binary, the HTTP Parquet
   export + pyarrow), each building the same DataFrame. Target: provider / fastest raw <= 1.1.
3. Fixed cost: a 1,000-bar fetch, as above, with the coverage memo and the settled-range WAL skip (what a
   repeated fetch gets) against the same fetch with both forgotten before each call (what every fetch paid
   before them), and against the fastest raw reader.
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
import functools
import itertools
import os
import secrets
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from bench._common import emit, table
from bench._raw_readers import QuestDBRaw
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


def forgetting(storage: Any) -> None:
    """Drop what a storage remembers between fetches (coverage memo, settled ranges): the cost before them."""
    storage.forget_coverage()
    settled = getattr(storage, "_settled", None)
    if settled is not None:
        settled.clear()
        storage._vouched.clear()


async def fixed_cost(
    storage: Any, reader: SeamlessDataProvider, raw: QuestDBRaw, args: argparse.Namespace
) -> dict[str, Any]:
    """Item 3 of the module docstring: medians of interleaved 1,000-bar fetches."""
    lo, hi = START + 7_000 * MIN, START + 8_000 * MIN

    async def forgotten() -> Any:
        forgetting(storage)
        return await reader.fetch(lo, hi, node_id=SERIES)

    paths: dict[str, Callable[[], Awaitable[pd.DataFrame]]] = {
        "remembered": lambda: reader.fetch(lo, hi, node_id=SERIES),
        "forgotten": forgotten,
        **{name: functools.partial(read, SERIES, lo, hi) for name, read in raw.readers().items()},
    }
    samples: dict[str, list[float]] = {name: [] for name in paths}
    for fn in paths.values():
        await fn()
    for _ in range(args.small_runs):
        for name, fn in paths.items():
            samples[name].append((await timed(fn, 1))[0])
    return {name: statistics.median(values) * 1000 for name, values in samples.items()}


async def bench(dsn: str, pg_dsn: str, http_url: str, args: argparse.Namespace) -> dict[str, Any]:
    table_name = f"bench_{secrets.token_hex(4)}"
    storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
    conn = await asyncpg.connect(pg_dsn)
    raw = await QuestDBRaw(pg_dsn, http_url, table_name).open()
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
        paths: dict[str, Callable[[], Awaitable[pd.DataFrame]]] = {
            "provider": lambda: reader.fetch(lo, hi, node_id=SERIES),
            "storage": lambda: storage.read(SERIES, lo, hi),
        }
        for name, read in raw.readers().items():
            pd.testing.assert_frame_equal(check, await read(SERIES, lo, hi), check_exact=True)
            paths[name] = functools.partial(read, SERIES, lo, hi)
        samples: dict[str, list[float]] = {name: [] for name in paths}
        for _ in range(args.runs):  # interleaved, so load drift on a shared machine hits every path alike
            for name, fn in paths.items():
                samples[name].append((await timed(fn, 1))[0])
        for name, values in samples.items():
            results[f"{name}_s"] = statistics.median(values)
        results["fixed_cost_ms"] = await fixed_cost(storage, reader, raw, args)

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
        await raw.close()
        await conn.close()
        await storage.aclose()
    return results


RAW_NAMES = ("asyncpg fetch", "asyncpg ts::LONG", "psycopg binary", "/exp parquet")


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    fastest = min(RAW_NAMES, key=lambda n: results[f"{n}_s"])
    base = results[f"{fastest}_s"]
    ratio = results["provider_s"] / base
    print(f"## {args.bars:,}-bar read (median of {args.runs} runs; load took {results['load_s']:.1f} s)\n")
    rows = [
        ["provider.fetch (coverage + read + conformance)", results["provider_s"], f"{ratio:.2f}x"],
        ["storage.read alone (the provider's read)", results["storage_s"], f"{results['storage_s'] / base:.2f}x"],
        *([f"raw {name}", results[f"{name}_s"], f"{results[f'{name}_s'] / base:.2f}x"] for name in RAW_NAMES),
    ]
    print(table(["path", "time (s)", f"vs fastest raw ({fastest})"], rows))
    print(f"\ntarget provider / fastest raw <= 1.1 -> {ratio:.2f} ({'met' if ratio <= 1.1 else 'MISSED'})\n")
    cost = results["fixed_cost_ms"]
    small = min(RAW_NAMES, key=lambda n: cost[n])
    print(f"## Fixed cost: 1,000-bar fetch (median of {args.small_runs} interleaved runs)\n")
    rows = [
        ["provider, coverage memo + settled WAL skip", cost["remembered"], f"{cost['remembered'] / cost[small]:.2f}x"],
        ["provider, both forgotten before each fetch", cost["forgotten"], f"{cost['forgotten'] / cost[small]:.2f}x"],
        *([f"raw {name}", cost[name], f"{cost[name] / cost[small]:.2f}x"] for name in RAW_NAMES),
    ]
    print(table(["path", "median (ms)", f"vs fastest raw ({small})"], rows))
    print(f"\n## L1 hit, {L1_BARS:,}-bar frame ({args.l1_runs} fetches)\n")
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
    emit("provider", {**results, "ratio": ratio, "fastest_raw": fastest})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each bulk read (median reported)")
    parser.add_argument("--l1-runs", type=int, default=2000, help="timed L1 hits")
    parser.add_argument("--small-runs", type=int, default=30, help="timed 1,000-bar fetches per path (median)")
    parser.add_argument("--bars", type=int, default=1_000_000, help="bars stored and read")
    parser.add_argument("--dsn", default=None, help="questdb:// DSN of a running server (default: start one)")
    args = parser.parse_args()
    configure_logging("bench", level="INFO", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives for the run)
    if args.dsn:
        from devkit.services import QuestDBEndpoint

        endpoint = QuestDBEndpoint.from_dsn(args.dsn)
        report(asyncio.run(bench(endpoint.dsn, endpoint.pg_dsn, endpoint.http_url, args)), args)
        return
    from devkit.services import QuestDBServer

    with QuestDBServer() as server:
        report(asyncio.run(bench(server.dsn, server.pg_dsn, server.http_url, args)), args)


if __name__ == "__main__":
    main()
