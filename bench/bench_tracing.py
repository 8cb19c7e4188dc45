"""What traces cost a fetch: tracing off (the default) and on, against the same fetch with no tracing code at all.

Three modes, measured in one process on the same provider and data (SQLite storage, so no server is needed):
- ``none``: the baseline. :mod:`provider.core.tracing`'s ``span`` is swapped for a function returning one shared
  ``nullcontext``: the least a ``with`` statement can cost, as if the tracing code had never been written.
- ``off``: the shipped code with no SDK installed (no ``OTEL_*`` variables): what every user pays by default.
- ``on``: the SDK installed with a batch span processor and an exporter that drops what it is given (export
  happens on the SDK's own thread; what a fetch pays is creating, filling and ending its spans).

Two fetches: an L1 cache hit of 1,000 bars (the cheapest fetch: tracing's fixed cost shows most) and a storage
read of 1,000 bars with the cache off (cache, storage and conformance spans). ``none`` and ``off`` are
interleaved run by run; ``on`` comes last (a tracer provider cannot be uninstalled). Medians of ``--runs`` runs
of ``--calls`` fetches each.

Run: ``.venv/bin/python -m bench.bench_tracing [--runs 7] [--calls 500]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from bench._common import emit, table
from provider.core import SeriesKey, tracing
from provider.core.obs import configure_logging, new_registry
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sources import open_source
from provider.storage import open_storage

SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
START = (1_600_000_000_000 // (1000 * MIN)) * (1000 * MIN)
BARS = 1000


class Discard(SpanExporter):
    """Drops every span (counting them)."""

    def __init__(self) -> None:
        self.spans = 0

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        self.spans += len(spans)
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        return None


_NULL = contextlib.nullcontext()


def _bare_span(*_: Any, **__: Any) -> contextlib.nullcontext[None]:
    return _NULL


async def _per_call_us(fetch: Any, calls: int) -> float:
    started = time.perf_counter()
    for _ in range(calls):
        await fetch()
    return (time.perf_counter() - started) / calls * 1e6


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        storage = await open_storage(f"sqlite:///{tmp}/bars.db")
        source = open_source("synthetic:3")
        frame = await source.fetch(SeriesKey.parse(SERIES), START, START + BARS * MIN)
        await storage.write_window(SERIES, START, START + BARS * MIN, frame)
        clock = lambda: START + 10 * BARS * MIN  # noqa: E731

        def provider(**kwargs: Any) -> SeamlessDataProvider:
            return SeamlessDataProvider(
                strategy="fail_fast",
                storage_source=storage,
                report_sink=MemoryReportSink(),
                registry=new_registry(),
                clock=clock,
                **kwargs,
            )

        cached, reader = provider(), provider(cache_source=False)
        await cached.fetch(START, START + BARS * MIN, node_id=SERIES)
        fetches = {
            "l1_hit": lambda: cached.fetch(START, START + BARS * MIN, node_id=SERIES),
            "storage": lambda: reader.fetch(START, START + BARS * MIN, node_id=SERIES),
        }
        samples: dict[tuple[str, str], list[float]] = {}
        shipped = tracing.span
        for _ in range(args.runs):
            for mode in ("none", "off"):
                tracing.span = _bare_span if mode == "none" else shipped
                for name, fetch in fetches.items():
                    samples.setdefault((mode, name), []).append(await _per_call_us(fetch, args.calls))
        tracing.span = shipped
        exporter = Discard()
        sdk = TracerProvider()
        sdk.add_span_processor(BatchSpanProcessor(exporter, max_queue_size=100_000))
        trace.set_tracer_provider(sdk)
        assert tracing.enabled()
        for _ in range(args.runs):
            for name, fetch in fetches.items():
                samples.setdefault(("on", name), []).append(await _per_call_us(fetch, args.calls))
        sdk.shutdown()
        await cached.aclose()
        await reader.aclose()
        await storage.aclose()
    results: dict[str, Any] = {"spans_exported": exporter.spans, "runs": args.runs, "calls": args.calls}
    for (mode, name), values in samples.items():
        results[f"{name}_{mode}_us"] = statistics.median(values)
    for name in fetches:
        base = results[f"{name}_none_us"]
        results[f"{name}_off_ratio"] = results[f"{name}_off_us"] / base
        results[f"{name}_on_ratio"] = results[f"{name}_on_us"] / base
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per mode and fetch (median reported)")
    parser.add_argument("--calls", type=int, default=500, help="fetches per run")
    args = parser.parse_args()
    with open("/dev/null", "w") as sink:  # the JSON log lines go nowhere, as a service would log them
        configure_logging("bench", level="INFO", stream=sink)
        results = asyncio.run(bench(args))
    rows = [
        [
            name,
            results[f"{name}_none_us"],
            results[f"{name}_off_us"],
            results[f"{name}_off_ratio"],
            results[f"{name}_on_us"],
            results[f"{name}_on_ratio"],
        ]
        for name in ("l1_hit", "storage")
    ]
    headers = ["fetch of 1,000 bars", "no tracing code, us", "off, us", "off / none", "on, us", "on / none"]
    print(table(headers, rows))
    print(f"spans exported while on: {results['spans_exported']:,}")
    emit("tracing", results)


if __name__ == "__main__":
    main()
