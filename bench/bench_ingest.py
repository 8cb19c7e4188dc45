"""The ingest conformance on the hot path: normalizing a window that is already conformant must cost little.

Every fetched window passes :func:`provider.conformance.normalize_bars` before it is written (docs/provider.md).
For a frame that already is a contract frame this is a few vectorized passes (order, grid, window bounds,
finite values, ``high >= low``) and no copy. Measured against the fetch of the same bars, in the same run:

1. the synthetic source (``synthetic:7``: numpy generation, no I/O): the cheapest fetch there is, so the
   harshest denominator;
2. the Binance source against the loopback fake exchange (devkit.fake_exchange): HTTP + JSON parsing, 1000
   bars per request, as a worker fetches (``--exchange-bars`` bars, the ratio is per bar).

Target: normalize / fetch <= 0.05 for 10^6 bars. Also shown: a shape that needs work (``ts`` in pandas 3's
default ``us``, int volumes), the normalization cost a user's frame pays.

Run: ``.venv/bin/python -m bench.bench_ingest [--runs 5] [--bars 1000000] [--exchange-bars 100000]``.
"""

from __future__ import annotations

import argparse
import asyncio
import time

import numpy as np
import pandas as pd

from bench._common import emit, median_time_s, table
from provider.conformance import normalize_bars
from provider.core import SeriesKey
from provider.sources import open_source

SERIES = SeriesKey.parse("ohlcv:binance:BTC/USDT:1m")
MIN = 60_000
T0 = 1_600_000_000_000 // MIN * MIN


async def _fetch(spec: str, bars: int) -> pd.DataFrame:
    source = open_source(spec)
    try:
        return await source.fetch(SERIES, T0, T0 + bars * MIN)
    finally:
        await source.aclose()


def _normalize(frame: pd.DataFrame, bars: int) -> pd.DataFrame:
    out, report = normalize_bars(frame, series=str(SERIES), interval_ms=MIN, start_ms=T0, end_ms=T0 + bars * MIN)
    if report.blocking:
        raise AssertionError(report.summary())
    return out


async def _exchange_fetch_s(bars: int, runs: int) -> float:
    from devkit.fake_exchange import FakeExchange

    async with FakeExchange(seed=7) as exchange:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            await _fetch(f"binance:{exchange.url}", bars)
            samples.append(time.perf_counter() - started)
    return float(np.median(samples))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--bars", type=int, default=1_000_000)
    parser.add_argument("--exchange-bars", type=int, default=100_000)
    args = parser.parse_args()

    frame = asyncio.run(_fetch("synthetic:7", args.bars))
    fetch_s, _ = median_time_s(lambda: asyncio.run(_fetch("synthetic:7", args.bars)), args.runs)
    _normalize(frame, args.bars)  # warm-up
    same = _normalize(frame, args.bars)
    if same is not frame:
        raise AssertionError("a conformant frame must come back as the same object")
    norm_s, _ = median_time_s(lambda: _normalize(frame, args.bars), max(args.runs, 5))
    user = frame.assign(ts=frame["ts"].dt.as_unit("us"), volume=np.round(frame["volume"]).astype(np.int64))
    user_s, _ = median_time_s(lambda: _normalize(user, args.bars), args.runs)
    exchange_s = asyncio.run(_exchange_fetch_s(args.exchange_bars, max(1, args.runs // 2)))
    per_bar_exchange_s = exchange_s / args.exchange_bars
    exchange_equiv_s = per_bar_exchange_s * args.bars
    ratio_synthetic = norm_s / fetch_s
    ratio_exchange = norm_s / exchange_equiv_s
    rows = [
        ["normalize, conformant frame", args.bars, norm_s * 1000, "-"],
        ["normalize, us ts + int volume", args.bars, user_s * 1000, "-"],
        ["fetch, synthetic source", args.bars, fetch_s * 1000, f"{ratio_synthetic:.4f}"],
        [
            "fetch, binance source vs loopback exchange (per-bar x bars)",
            args.bars,
            exchange_equiv_s * 1000,
            f"{ratio_exchange:.4f}",
        ],
    ]
    print(table(["what", "bars", "median ms", "normalize / fetch"], rows))
    emit(
        "ingest",
        {
            "bars": args.bars,
            "normalize_conformant_ms": round(norm_s * 1000, 2),
            "normalize_user_shape_ms": round(user_s * 1000, 2),
            "fetch_synthetic_ms": round(fetch_s * 1000, 2),
            "fetch_exchange_equiv_ms": round(exchange_equiv_s * 1000, 2),
            "ratio_synthetic": round(ratio_synthetic, 4),
            "ratio_exchange": round(ratio_exchange, 4),
            "target_met": ratio_synthetic <= 0.05,
        },
    )


if __name__ == "__main__":
    main()
