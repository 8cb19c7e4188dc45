"""Provider fetch cost from 10^3 to 10^6 bars out of PostgreSQL and SQLite, against their fastest raw readers.

The companion of bench_provider_scale.py (QuestDB) for the other SQL backends. One series of 1s bars is written
through the storage (windows of 100,000 bars), then, for each size, interleaved runs of:

- provider: ``SeamlessDataProvider.fetch`` (FAIL_FAST, cache off: coverage + storage read + conformance);
- PostgreSQL: asyncpg and psycopg 3's binary cursor, ``ts`` as epoch ms (``extract(epoch ...)``), each building
  the same DataFrame (bench/_raw_readers.py); SQLite: the ``sqlite3`` module (in a thread, as the backend).

Times are medians of ``--runs`` runs; the headline is provider / the fastest raw reader at that size.

Run: ``.venv/bin/python -m bench.bench_provider_backends [--backend postgres sqlite] [--max-exp 6] [--runs 5]``.
PostgreSQL comes from devkit.services (a throw-away cluster) unless ``--postgres-dsn`` names a running one.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import secrets
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
import pandas as pd
import psycopg

from bench._common import emit, table
from bench._raw_readers import pg_asyncpg, pg_psycopg, sqlite_raw
from bench.bench_provider_scale import SECOND_MS, SERIES, START, make_reader
from provider.core import SeriesKey
from provider.core.obs import configure_logging
from provider.sources import open_source
from provider.storage import open_storage

WINDOW_BARS = 100_000
_PRICES = "open, high, low, close, volume"


async def load(storage: Any, bars: int) -> None:
    """``bars`` synthetic 1s bars from START through ``write_window``, 100,000 per window."""
    source = open_source("synthetic:3")
    key = SeriesKey.parse(SERIES)
    for lo in range(0, bars, WINDOW_BARS):
        hi = min(lo + WINDOW_BARS, bars)
        first, last = START + lo * SECOND_MS, START + hi * SECOND_MS
        await storage.write_window(key, first, last, await source.fetch(key, first, last))
    await source.aclose()


async def postgres_readers(dsn: str, table_name: str) -> tuple[dict[str, Any], Callable[[], Awaitable[None]]]:
    """Raw PostgreSQL readers of ``table_name`` (the backend's schema), and their closer."""
    a_conn = await asyncpg.connect(dsn)
    p_conn = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    series_id = await a_conn.fetchval(f'SELECT id FROM "{table_name}_series" WHERE series = $1', SERIES)
    select = f'SELECT (extract(epoch FROM ts) * 1000)::bigint, {_PRICES} FROM "{table_name}" '
    dollar = select + "WHERE series_id = $1 AND ts >= to_timestamp($2 / 1000.0) AND ts < to_timestamp($3 / 1000.0) "
    percent = select + "WHERE series_id = %s AND ts >= to_timestamp(%s / 1000.0) AND ts < to_timestamp(%s / 1000.0) "

    async def close() -> None:
        await a_conn.close()
        await p_conn.close()

    readers = {
        "asyncpg": lambda lo, hi: pg_asyncpg(a_conn, dollar + "ORDER BY ts", series_id, lo, hi),
        "psycopg binary": lambda lo, hi: pg_psycopg(p_conn, percent + "ORDER BY ts", series_id, lo, hi),
    }
    return readers, close


async def sqlite_readers(path: str, table_name: str) -> tuple[dict[str, Any], Callable[[], Awaitable[None]]]:
    """The raw ``sqlite3`` reader of ``table_name`` (run in a thread, as the backend runs its queries)."""
    db = sqlite3.connect(path, check_same_thread=False)
    series_id = db.execute(f'SELECT id FROM "{table_name}_series" WHERE series = ?', (SERIES,)).fetchone()[0]
    sql = f'SELECT ts, {_PRICES} FROM "{table_name}" WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts'

    async def close() -> None:
        db.close()

    return {"sqlite3": lambda lo, hi: asyncio.to_thread(sqlite_raw, db, sql, series_id, lo, hi)}, close


async def curve(backend: str, dsn: str, raw_target: str, args: argparse.Namespace) -> dict[str, Any]:
    table_name = f"bench_be_{secrets.token_hex(3)}"
    storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
    sizes = [10**exp for exp in range(3, args.max_exp + 1)]
    points: dict[str, Any] = {}
    try:
        started = time.perf_counter()
        await load(storage, sizes[-1])
        print(f"{backend}: loaded {sizes[-1]:,} bars in {time.perf_counter() - started:.1f} s", flush=True)
        opener = postgres_readers if backend == "postgres" else sqlite_readers
        readers, close = await opener(raw_target, table_name)
        reader = make_reader(storage)
        for bars in sizes:
            lo, hi = START, START + bars * SECOND_MS
            paths: dict[str, Callable[[], Awaitable[pd.DataFrame]]] = {
                "provider": functools.partial(reader.fetch, lo, hi, node_id=SERIES)
            }
            for name, read in readers.items():
                paths[name] = functools.partial(read, lo, hi)
            check = await paths["provider"]()
            for name, fn in paths.items():
                pd.testing.assert_frame_equal(check, await fn(), check_exact=True, obj=name)
            samples: dict[str, list[float]] = {name: [] for name in paths}
            for _ in range(args.runs):
                for name, fn in paths.items():
                    t0 = time.perf_counter()
                    await fn()
                    samples[name].append(time.perf_counter() - t0)
            point = {f"{name}_s": statistics.median(values) for name, values in samples.items()}
            points[str(bars)] = point
            print(f"{backend} {bars:,}: " + ", ".join(f"{k} {v * 1000:.2f} ms" for k, v in point.items()), flush=True)
        await reader.aclose()
        await close()
    finally:
        await storage.aclose()
    return points


def report(results: dict[str, Any]) -> None:
    for backend, points in results.items():
        names = [key[:-2] for key in next(iter(points.values())) if key != "provider_s"]
        print(f"\n## {backend}: provider fetch vs raw readers, ms (medians, same run)\n")
        rows = []
        for bars, p in points.items():
            fastest = min(names, key=lambda n: p[f"{n}_s"])
            ratio = p["provider_s"] / p[f"{fastest}_s"]
            rows.append([f"{int(bars):,}", p["provider_s"] * 1000, *(p[f"{n}_s"] * 1000 for n in names), fastest,
                         f"{ratio:.2f}x"])  # fmt: skip
        print(table(["bars", "provider", *names, "fastest raw", "provider / fastest"], rows))
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine)")
    emit("provider_backends", results)


async def run(args: argparse.Namespace, postgres_dsn: str | None) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for backend in args.backend:
        if backend == "postgres":
            assert postgres_dsn is not None
            results[backend] = await curve(backend, postgres_dsn, postgres_dsn, args)
        else:
            with tempfile.TemporaryDirectory() as folder:
                path = os.path.join(folder, "bench.db")
                results[backend] = await curve(backend, f"sqlite:///{path}", path, args)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", nargs="+", default=["postgres", "sqlite"], choices=["postgres", "sqlite"])
    parser.add_argument("--max-exp", type=int, default=6, choices=range(3, 7), help="largest size is 10^N bars")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path and size (median)")
    parser.add_argument("--postgres-dsn", default=None, help="postgresql:// DSN of a running server")
    args = parser.parse_args()
    configure_logging("bench", level="INFO", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives for the run)
    if args.postgres_dsn or "postgres" not in args.backend:
        report(asyncio.run(run(args, args.postgres_dsn)))
        return
    from devkit.services import PostgresServer

    with PostgresServer() as server:
        report(asyncio.run(run(args, server.dsn)))


if __name__ == "__main__":
    main()
