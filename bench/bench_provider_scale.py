"""Provider fetch cost from 10^3 to 10^7 bars out of QuestDB, against every raw reader of the same rows, same run.

One series of 1s bars (10^7 of them span 116 days, i.e. 116 DAY partitions; 1m bars would need 6,945) is loaded
with the raw ``questdb`` sender: one ILP/HTTP flush per 10^6 bars and ledger rows of 100,000-bar windows, so the
provider sees the range as covered. Then, for each size, interleaved runs of:

- provider: ``SeamlessDataProvider.fetch`` (FAIL_FAST, cache off: coverage + storage read + conformance);
- each raw reader of bench/_raw_readers.py, each building the same DataFrame: asyncpg ``fetch`` (ts as
  datetimes), asyncpg with ``ts`` cast to LONG, psycopg 3's binary cursor, and QuestDB's HTTP Parquet export
  (``/exp?fmt=parquet&compression_codec=UNCOMPRESSED``) read by pyarrow.

- ``storage.read``: the provider's own storage read alone (our PG wire reader by default), not a baseline: the
  provider's time minus this one is what the fetch adds (coverage, conformance, metadata).

Each run calls every path once, in an order shuffled per run (seeded): a read is slower right after another
reader's work (QuestDB's worker has parked, and the other reader's code has pushed ours out of the CPU caches),
and a fixed order gave each path the same predecessor in every run.

The headline ratio is provider / the fastest raw reader at that size. Times are medians of ``--runs`` runs
(``--large-runs`` at 10^7 bars, where one read takes tens of seconds; at least ``--small-runs`` at 10^3 and 10^4,
where one read takes milliseconds). Memory held while serving, next to the
size of the frame returned (the least any path must hold): the provider's tracemalloc peak of one untimed call
up to ``--trace-max`` bars (tracemalloc is too slow beyond, and blind to pyarrow's buffers), and from
``--rss-min`` bars the peak RSS of a fresh process during one call (VmHWM, reset through /proc/self/clear_refs)
above its RSS before (in-process RSS is useless: freed memory is reused by the next call).

History curve (``--history``): the newest 900 bars of a series whose ledger holds 10^3 ... 10^6 windows; the
request is the same at every size, only the history of the series grows.

QuestDB: ``--dsn questdb://...`` (a running server) or, by default, one started from its jar by
devkit.services. Logging goes to /dev/null as JSON lines at INFO, as a service would log.

Run: ``.venv/bin/python -m bench.bench_provider_scale [--max-exp 6] [--runs 5] [--large-runs 2]`` (10^7 bars
with ``--max-exp 7``: a 10^7-bar load takes minutes and ~15 GB of QuestDB's default 16 MB column pages).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import random
import secrets
import statistics
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
from questdb import Sender

from bench._common import emit, table
from bench._raw_readers import QuestDBRaw
from bench.bench_storage import wait_applied
from provider.core import SeriesKey
from provider.core.obs import configure_logging, new_registry
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sources import open_source
from provider.storage import open_storage, parse_dsn
from provider.storage._questdb_ingest import ilp_frame

SERIES = "ohlcv:binance:BTC/USDT:1s"
SECOND_MS = 1_000
START = 1_577_836_800_000  # 2020-01-01
LOAD_CHUNK_BARS = 1_000_000
LEDGER_WINDOW_BARS = 100_000
PRICES = ("open", "high", "low", "close", "volume")
HISTORY_WINDOW_BARS = 900
FAR_FUTURE_MS = 4_102_444_800_000  # 2100-01-01
RAW_NAMES = ("asyncpg fetch", "asyncpg ts::LONG", "psycopg binary", "/exp parquet")
#: Our storage read alone (``storage.read``): not a baseline, it shows what the provider adds to its own reader.
OURS = "storage.read"


def memory_kib() -> dict[str, int]:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {name: int(fields[name].split()[0]) for name in ("VmRSS", "VmHWM")}


def reset_peak_kib() -> int:
    """Reset VmHWM to the current RSS (Linux clear_refs); returns that RSS in KiB."""
    Path("/proc/self/clear_refs").write_text("5")
    return memory_kib()["VmRSS"]


async def measured(fn: Callable[[], Awaitable[pd.DataFrame]]) -> tuple[float, int, pd.DataFrame]:
    """(seconds, peak RSS above the starting RSS in bytes, frame) of one call."""
    before = reset_peak_kib()
    started = time.perf_counter()
    frame = await fn()
    took = time.perf_counter() - started
    return took, (memory_kib()["VmHWM"] - before) * 1024, frame


async def traced_peak(fn: Callable[[], Awaitable[pd.DataFrame]]) -> int:
    """Bytes allocated at the peak of one call above what was allocated before it (tracemalloc; slow)."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        frame = await fn()
        peak = tracemalloc.get_traced_memory()[1] - before
        del frame
        return peak
    finally:
        tracemalloc.stop()


def send_frame(dsn: str, frame: pd.DataFrame, table_name: str) -> None:
    """One ILP/HTTP flush of ``frame`` with the raw sender (blocking)."""
    with Sender.from_conf(f"{parse_dsn(dsn).ilp_conf()}auto_flush=off;max_buf_size={1 << 30};") as sender:
        sender.dataframe(frame, table_name=table_name, symbols=["series"], at="ts")
        sender.flush()


def ledger_frame(starts: np.ndarray, ends: np.ndarray) -> pd.DataFrame:
    """Ledger rows (the storage's ``T_windows`` schema) for windows ``[starts[i], ends[i])`` of SERIES."""
    return pd.DataFrame({
        "series": pd.Series(np.full(len(starts), SERIES, dtype=object), dtype=object),
        "ts": starts.astype("datetime64[ms]").astype("datetime64[ns]"),
        "start_ms": starts, "end_ms": ends, "row_count": (ends - starts) // SECOND_MS,
        "written_at": np.full(len(starts), np.datetime64("2026-01-01T00:00:00", "ns")),
    })  # fmt: skip


async def load_bars(dsn: str, table_name: str, first_ms: int, bars: int) -> None:
    """``bars`` synthetic 1s bars from ``first_ms``, one flush per 10^6; the next chunk is generated meanwhile."""
    source = open_source("synthetic:3")
    key = SeriesKey.parse(SERIES)
    pending: asyncio.Task[None] | None = None
    for lo in range(0, bars, LOAD_CHUNK_BARS):
        hi = min(lo + LOAD_CHUNK_BARS, bars)
        chunk = await source.fetch(key, first_ms + lo * SECOND_MS, first_ms + hi * SECOND_MS)
        stamps_ms = chunk["ts"].astype("int64").to_numpy() // 1_000_000
        frame = ilp_frame(SERIES, stamps_ms, [chunk[c].to_numpy() for c in PRICES])
        if pending is not None:
            await pending
        pending = asyncio.create_task(asyncio.to_thread(send_frame, dsn, frame, table_name))
    if pending is not None:
        await pending
    await source.aclose()


async def load(dsn: str, conn: asyncpg.Connection, table_name: str, bars: int) -> None:
    """``bars`` synthetic 1s bars from START and ledger rows of 100,000-bar windows, through the raw sender."""
    await load_bars(dsn, table_name, START, bars)
    starts = START + np.arange(0, bars, LEDGER_WINDOW_BARS, dtype=np.int64) * SECOND_MS
    ends = np.minimum(starts + LEDGER_WINDOW_BARS * SECOND_MS, START + bars * SECOND_MS)
    await asyncio.to_thread(send_frame, dsn, ledger_frame(starts, ends), f"{table_name}_windows")
    await wait_applied(conn, table_name)
    await wait_applied(conn, f"{table_name}_windows")


def make_reader(storage: Any) -> SeamlessDataProvider:
    """FAIL_FAST with the cache off: every fetch asks the ledger and reads storage."""
    return SeamlessDataProvider(
        strategy="fail_fast",
        storage_source=storage,
        cache_source=False,
        report_sink=MemoryReportSink(),
        registry=new_registry(),
        clock=lambda: FAR_FUTURE_MS,  # every bar is closed
    )


def fetch_paths(
    reader: SeamlessDataProvider, storage: Any, raw: QuestDBRaw, lo: int, hi: int
) -> dict[str, Callable[[], Awaitable[pd.DataFrame]]]:
    """The measured path, our storage read alone (what the provider adds is the difference) and every raw
    reader, each returning the same frame of ``[lo, hi)``."""
    paths: dict[str, Callable[[], Awaitable[pd.DataFrame]]] = {
        "provider": lambda: reader.fetch(lo, hi, node_id=SERIES),
        OURS: lambda: storage.read(SERIES, lo, hi),
    }
    for name, read in raw.readers().items():
        paths[name] = functools.partial(read, SERIES, lo, hi)
    return paths


def fastest_raw(point: dict[str, Any]) -> tuple[str, float]:
    """The raw reader with the smallest median at this point, and that median."""
    name = min(RAW_NAMES, key=lambda n: point[f"{n}_s"])
    return name, point[f"{name}_s"]


async def history_curve(
    dsn: str, conn: asyncpg.Connection, http_url: str, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """The newest HISTORY_WINDOW_BARS bars fetched from a series whose ledger holds N windows, N = 10^3 ... 10^6.

    The request is the same at every N; only the history of the series grows. Each N gets its own tables.
    """
    points = []
    for windows in args.history:
        table_name = f"bench_hist_{secrets.token_hex(3)}_{windows}"
        storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
        span_ms = HISTORY_WINDOW_BARS * SECOND_MS
        starts = START + np.arange(windows, dtype=np.int64) * span_ms
        lo, hi = int(starts[-1]), int(starts[-1] + span_ms)
        try:
            await load_bars(dsn, table_name, lo, HISTORY_WINDOW_BARS)
            await asyncio.to_thread(send_frame, dsn, ledger_frame(starts, starts + span_ms), f"{table_name}_windows")
            await wait_applied(conn, table_name)
            await wait_applied(conn, f"{table_name}_windows")
            reader = make_reader(storage)
            raw = await QuestDBRaw(parse_dsn(dsn).pg_dsn(), http_url, table_name).open()
            point = await time_size(args, fetch_paths(reader, storage, raw, lo, hi), HISTORY_WINDOW_BARS)
            await raw.close()
            await reader.aclose()
        finally:
            await storage.aclose()
            await conn.execute(f'DROP TABLE IF EXISTS "{table_name}"')
            await conn.execute(f'DROP TABLE IF EXISTS "{table_name}_windows"')
        point["windows"] = windows
        points.append(point)
        name, best = fastest_raw(point)
        print(f"history of {windows:,} windows: provider {point['provider_s'] * 1000:.1f} ms, "
              f"fastest raw ({name}) {best * 1000:.1f} ms", flush=True)  # fmt: skip
    return points


def same_frames(ours: pd.DataFrame, theirs: pd.DataFrame, bars: int, name: str) -> None:
    if len(ours) != bars or len(theirs) != bars:
        raise SystemExit(f"row counts differ: provider {len(ours)}, {name} {len(theirs)}, stored {bars}")
    if bars <= 1_000_000:
        pd.testing.assert_frame_equal(ours, theirs, check_exact=True)
    elif not (ours["ts"].equals(theirs["ts"]) and np.array_equal(ours["close"].to_numpy(), theirs["close"].to_numpy())):
        raise SystemExit(f"provider and {name} frames differ")


async def rss_probe(dsn: str, http_url: str, table_name: str, path: str, bars: int) -> int:
    """Peak RSS above the starting RSS of a fresh process serving one fetch of ``bars`` bars through ``path``."""
    cmd = [sys.executable, "-m", "bench.bench_provider_scale", "--dsn", dsn, "--http-url", http_url]
    cmd += ["--probe", path, str(bars), table_name]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"memory probe {path} at {bars:,} bars failed ({proc.returncode})")
    return int(out.decode().strip().splitlines()[-1])


async def probe_main(dsn: str, http_url: str, path: str, bars: int, table_name: str) -> None:
    """The child side of :func:`rss_probe`: warm up on 1,000 bars, reset the peak, fetch, print the peak delta."""
    storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
    raw = await QuestDBRaw(parse_dsn(dsn).pg_dsn(), http_url, table_name).open()
    reader = make_reader(storage)
    await fetch_paths(reader, storage, raw, START, START + 1_000 * SECOND_MS)[path]()
    if path == "provider":  # a fresh reader of large ranges warms up the export path too
        await storage.read(SERIES, START, START + 10_000 * SECOND_MS)
    _, peak, frame = await measured(fetch_paths(reader, storage, raw, START, START + bars * SECOND_MS)[path])
    assert len(frame) == bars
    print(peak)
    await reader.aclose()
    await raw.close()
    await storage.aclose()


async def time_size(
    args: argparse.Namespace, paths: dict[str, Callable[[], Awaitable[pd.DataFrame]]], bars: int
) -> dict[str, Any]:
    """Interleaved timed runs of every path (after one warm-up call each), checking the frames agree once."""
    runs = args.large_runs if bars >= 10**7 else max(args.runs, args.small_runs) if bars <= 10**4 else args.runs
    if bars < 10**7:  # warm-up: connections, QuestDB's compiled queries, first uses (the smaller sizes did it)
        for fn in paths.values():
            await fn()
    samples: dict[str, list[float]] = {name: [] for name in paths}
    point: dict[str, Any] = {"runs": runs}
    order = random.Random(bars)
    for run in range(runs):  # interleaved, so load drift on a shared machine hits both paths alike
        frames: dict[str, pd.DataFrame] = {}
        names = list(paths)
        order.shuffle(names)  # see the module docstring: no path always follows the same one
        for name in names:
            fn = paths[name]
            started = time.perf_counter()
            frame = await fn()
            samples[name].append(time.perf_counter() - started)
            point["result_bytes"] = int(frame.memory_usage(deep=True).sum())
            if run == 0:
                frames[name] = frame
            del frame
        if run == 0:
            for name in (OURS, *RAW_NAMES):
                same_frames(frames["provider"], frames[name], bars, name)
        del frames
    for name, values in samples.items():
        point[f"{name}_s"] = statistics.median(values)
    return point


async def bench(dsn: str, http_url: str, args: argparse.Namespace) -> dict[str, Any]:
    table_name = f"bench_scale_{secrets.token_hex(4)}"
    storage = await open_storage(f"{dsn}{'&' if '?' in dsn else '?'}table={table_name}")
    conn = await asyncpg.connect(parse_dsn(dsn).pg_dsn())
    sizes = [10**exp for exp in range(3, args.max_exp + 1)]
    results: dict[str, Any] = {"sizes": {}}
    try:
        if args.history:
            results["history"] = await history_curve(dsn, conn, http_url, args)
        if args.history_only:
            return results
        started = time.perf_counter()
        await load(dsn, conn, table_name, sizes[-1])
        results["load_s"] = time.perf_counter() - started
        print(f"loaded {sizes[-1]:,} bars in {results['load_s']:.1f} s", flush=True)
        reader = make_reader(storage)
        raw = await QuestDBRaw(parse_dsn(dsn).pg_dsn(), http_url, table_name).open()
        for bars in sizes:
            lo, hi = START, START + bars * SECOND_MS
            paths = fetch_paths(reader, storage, raw, lo, hi)
            point = await time_size(args, paths, bars)
            if bars <= args.trace_max:
                point["provider_traced_bytes"] = await traced_peak(paths["provider"])
            if bars >= args.rss_min:
                for name in paths:
                    point[f"{name}_rss_bytes"] = await rss_probe(dsn, http_url, table_name, name, bars)
            results["sizes"][str(bars)] = point
            name, best = fastest_raw(point)
            print(f"{bars:,} bars: provider {point['provider_s'] * 1000:.2f} ms, fastest raw ({name}) "
                  f"{best * 1000:.2f} ms", flush=True)  # fmt: skip
        await raw.close()
        await reader.aclose()
    finally:
        if conn.is_closed():  # QuestDB closes a connection idle for minutes (a 10^7-bar run)
            conn = await asyncpg.connect(parse_dsn(dsn).pg_dsn())
        await conn.execute(f'DROP TABLE IF EXISTS "{table_name}"')
        await conn.execute(f'DROP TABLE IF EXISTS "{table_name}_windows"')
        await conn.close()
        await storage.aclose()
    return results


def mib(value: float | None, frame_bytes: int) -> str:
    return "-" if value is None else f"{value / 2**20:,.1f} ({value / max(frame_bytes, 1):.1f}x)"


def report(results: dict[str, Any], args: argparse.Namespace) -> None:
    if results.get("history"):
        print(f"\n## The newest {HISTORY_WINDOW_BARS} bars, as the series' ledger grows (median of {args.runs} runs)\n")
        first = results["history"][0]
        rows = []
        for p in results["history"]:
            name, best = fastest_raw(p)
            rows.append([f"{p['windows']:,}", p["provider_s"] * 1000, f"{p['provider_s'] / first['provider_s']:.2f}x",
                         f"{best * 1000:.3f} ({name})", f"{p['provider_s'] / best:.2f}x"])  # fmt: skip
        heads = ["ledger windows", "provider ms", "vs smallest", "fastest raw ms (same bars)", "provider / fastest"]
        print(table(heads, rows))
    if results["sizes"]:
        report_sizes(results)
    print(f"\nload average at the end: {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores (shared machine)")
    emit("provider_scale", results)


def report_sizes(results: dict[str, Any]) -> None:
    print(f"\n## Provider fetch vs each raw reader, 1s bars from QuestDB, ms (load of "
          f"{max(map(int, results['sizes'])):,} bars with the raw sender: {results['load_s']:.0f} s)\n")  # fmt: skip
    rows = []
    for bars, p in results["sizes"].items():
        name, best = fastest_raw(p)
        ratio = p["provider_s"] / best
        rows.append([f"{int(bars):,}", p["runs"], p["provider_s"] * 1000, *(p[f"{n}_s"] * 1000 for n in RAW_NAMES),
                     name, f"{ratio:.2f}x", "met" if ratio <= 1.1 else "MISSED", p[f"{OURS}_s"] * 1000,
                     f"{p['provider_s'] / p[f'{OURS}_s']:.2f}x"])  # fmt: skip
    heads = ["bars", "runs", "provider", *RAW_NAMES, "fastest raw", "provider / fastest", "<= 1.1", OURS,
             f"provider / {OURS}"]  # fmt: skip
    print(table(heads, rows))
    print("\n## Memory held while serving one fetch, MiB (x the frame returned)\n")
    print("RSS: peak RSS of a fresh process during one fetch above its RSS before it (after a warm-up); it counts")
    print("pyarrow's buffers, which tracemalloc does not see. tracemalloc: peak Python allocations of one call.\n")
    rows = []
    paths = ("provider", OURS, *RAW_NAMES)
    for bars, p in results["sizes"].items():
        frame_bytes = p["result_bytes"]
        rows.append([f"{int(bars):,}", frame_bytes / 2**20, *(mib(p.get(f"{name}_rss_bytes"), frame_bytes)
                     for name in paths), mib(p.get("provider_traced_bytes"), frame_bytes)])  # fmt: skip
    heads = ["bars", "frame (MiB)", *(f"{name}, RSS" for name in paths), "provider, tracemalloc"]
    print(table(heads, rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--max-exp", type=int, default=6, choices=range(3, 8), help="largest size is 10^N bars")
    parser.add_argument("--runs", type=int, default=5, help="timed runs per path and size (median)")
    parser.add_argument("--large-runs", type=int, default=2, help="timed runs at 10^7 bars (median)")
    parser.add_argument(
        "--small-runs",
        type=int,
        default=100,
        help="timed runs at 10^3 and 10^4 bars, where one read takes milliseconds and 5 samples are noise (median)",
    )
    parser.add_argument(
        "--trace-max", type=int, default=10**6, help="largest size also measured with tracemalloc (one slow call)"
    )
    parser.add_argument(
        "--rss-min", type=int, default=10**6, help="smallest size also measured as peak RSS of a fresh process"
    )
    parser.add_argument(
        "--history",
        type=int,
        nargs="*",
        default=[1_000, 10_000, 100_000, 1_000_000],
        help="ledger sizes of the history curve (none: skip it)",
    )
    parser.add_argument("--history-only", action="store_true", help="only the history curve")
    parser.add_argument("--dsn", default=None, help="questdb:// DSN of a running server (default: start one)")
    parser.add_argument("--http-url", default=None, help="QuestDB HTTP URL with --dsn (default: from the DSN)")
    parser.add_argument("--probe", nargs=3, metavar=("PATH", "BARS", "TABLE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    configure_logging("bench", level="INFO", stream=open(os.devnull, "w"))  # noqa: SIM115 (lives for the run)
    if args.dsn:
        parsed = parse_dsn(args.dsn)
        http_url = args.http_url or f"http://{parsed.http_host or parsed.host}:{parsed.http_port}"
        if args.probe:
            asyncio.run(probe_main(args.dsn, http_url, args.probe[0], int(args.probe[1]), args.probe[2]))
            return
        report(asyncio.run(bench(args.dsn, http_url, args)), args)
        return
    from devkit.services import QuestDBServer

    with QuestDBServer() as server:
        report(asyncio.run(bench(server.dsn, server.http_url, args)), args)


if __name__ == "__main__":
    main()
