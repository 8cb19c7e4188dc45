"""Runs provider scenarios under an in-memory OpenTelemetry SDK and prints their spans as JSON (one process per
run: a tracer provider is installed once per process, and the test process stays untraced).

Usage: tracing_probe.py; prints ``{scenario: [span, ...]}``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from provider.core import BackfillConfig, SeriesKey, tracing
from provider.core.obs import configure_logging
from provider.errors import DataUnavailableError
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sla import SLAPolicy
from provider.sources import RetryableSourceError, RetryingSource, open_source
from provider.storage import open_storage

SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
T0 = (1_700_000_000_000 // (100 * MIN)) * (100 * MIN)
NOW = T0 + 100_000 * MIN


class FailsOnce:
    """A source whose first fetch fails with a retryable error."""

    name = "flaky"

    def __init__(self) -> None:
        self.inner = open_source("synthetic:7")
        self.failed = False

    async def fetch(self, series: Any, start: Any, end: Any) -> Any:
        if not self.failed:
            self.failed = True
            raise RetryableSourceError("flaky: 503 once", source=self.name)
        return await self.inner.fetch(series, start, end)

    async def aclose(self) -> None:
        await self.inner.aclose()


def _span(s: Any, names: dict[int, str]) -> dict[str, Any]:
    parent = s.parent.span_id if s.parent is not None else None
    return {
        "name": s.name,
        "parent": names.get(parent, "") if parent else "",
        "status": s.status.status_code.name,
        "events": [e.name for e in s.events],
        "event_attributes": [dict(e.attributes or {}) for e in s.events],
        "attributes": {k: (list(v) if isinstance(v, tuple) else v) for k, v in (s.attributes or {}).items()},
    }


async def scenarios(exporter: InMemorySpanExporter) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}

    def take(name: str) -> None:
        spans = exporter.get_finished_spans()
        names = {s.context.span_id: s.name for s in spans}
        out[name] = [_span(s, names) for s in spans]
        exporter.clear()

    storage = await open_storage("memory://")
    source = open_source("synthetic:7")
    config = BackfillConfig(window_bars=100)

    def provider(strategy: str, **kwargs: Any) -> SeamlessDataProvider:
        return SeamlessDataProvider(
            strategy=strategy,
            storage_source=storage,
            backfiller=source,
            backfill_config=config,
            report_sink=MemoryReportSink(),
            clock=lambda: NOW,
            **kwargs,
        )

    auto = provider("auto_backfill")
    await auto.fetch(T0, T0 + 200 * MIN, node_id=SERIES)
    take("auto_backfill")
    await auto.fetch(T0 + 10 * MIN, T0 + 20 * MIN, node_id=SERIES)
    take("cache_hit")
    await auto.aclose()

    strict = provider("fail_fast")
    with contextlib.suppress(DataUnavailableError):
        await strict.fetch(T0 + 500 * MIN, T0 + 600 * MIN, node_id=SERIES)
    take("fail_fast_missing")
    await strict.aclose()

    partial = provider("partial_fill", sla=SLAPolicy(min_coverage=1.0), enable_background_backfill=False)
    await partial.fetch(T0 + 150 * MIN, T0 + 300 * MIN, node_id=SERIES)
    take("partial_fill_downgrade")
    await partial.aclose()

    async def no_sleep(_: float) -> None:
        return None

    retrying = RetryingSource(FailsOnce(), BackfillConfig(max_attempts=3), sleep=no_sleep)
    with tracing.span("probe"):
        await retrying.fetch(SeriesKey.parse(SERIES), T0, T0 + 10 * MIN)
    take("retry")
    await retrying.aclose()
    await storage.aclose()
    return out


def main() -> None:
    configure_logging("probe", level="WARNING", stream=sys.stderr)
    exporter = InMemorySpanExporter()
    sdk = TracerProvider()
    sdk.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(sdk)
    # The application installed its own provider: configure_tracing keeps it whatever OTEL_* says.
    assert tracing.configure_tracing("probe", environ={"OTEL_TRACES_EXPORTER": "console"})
    assert trace.get_tracer_provider() is sdk
    print(json.dumps(asyncio.run(scenarios(exporter))))


if __name__ == "__main__":
    main()
