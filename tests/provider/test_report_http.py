"""The HTTP report sink against a real loopback collector: delivery, retries, drops, and fetches kept in their SLA.

The collector is an aiohttp server on 127.0.0.1 that records, hangs, or answers with a chosen status; nothing of
the HTTP layer is mocked.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import structlog
from aiohttp import web

from devkit.ports import free_port
from provider.metrics import ProviderMetrics
from provider.reports import URI_HEADER, HttpReportSink, open_report_sink
from provider.sla import SLAPolicy

from .conftest import SERIES, at, store

ETH = "ohlcv:binance:ETH/USDT:1m"


@dataclass
class Collector:
    """A loopback report collector; ``mode`` is ``ok``, ``hang`` or an HTTP status to answer."""

    mode: Any = "ok"
    received: list[tuple[str, dict[str, str], dict[str, Any]]] = field(default_factory=list)
    attempts: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    url: str = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.attempts += 1
        if self.mode == "hang":
            await self.release.wait()
        if isinstance(self.mode, int):
            return web.Response(status=self.mode)
        body = json.loads(await request.read())
        self.received.append((request.raw_path, dict(request.headers), body))
        return web.Response(status=204)


@pytest.fixture
async def collector() -> AsyncIterator[Collector]:
    made = Collector()
    app = web.Application()
    app.router.add_post("/{tail:.*}", made.handle)
    runner = web.AppRunner(app, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    made.url = f"http://127.0.0.1:{port}/collect"
    yield made
    made.release.set()
    await runner.cleanup()


def _dead_url() -> str:
    """A loopback URL where nothing listens (a port just bound and released)."""
    return f"http://127.0.0.1:{free_port()}/collect"


def _report(node_id: str, n: int) -> dict[str, Any]:
    return {"uri": f"qmtl://observability/seamless/{node_id}", "node_id": node_id, "n": n, "flag_counts": {"gap": n}}


async def test_reports_are_posted_as_json_with_their_uri(collector):
    """Each report arrives as the JSON body of one POST, with its URI and the configured headers; counted."""
    metrics = ProviderMetrics()
    sink = HttpReportSink(collector.url, headers={"Authorization": "Bearer s3cret"}, metrics=metrics)
    reports = [(SERIES, _report(SERIES, 1)), (ETH, _report(ETH, 2)), (SERIES, _report(SERIES, 3))]
    for node, report in reports:
        await sink.publish(f"qmtl://observability/seamless/{node}", report)
    await asyncio.wait_for(sink.drain(), 10)
    await sink.aclose()
    got = sorted(collector.received, key=lambda r: r[2]["n"])
    assert [body for _, _, body in got] == [report for _, report in reports]
    assert all(path == "/collect" for path, _, _ in got)
    assert [headers[URI_HEADER] for _, headers, _ in got] == [report["uri"] for _, report in reports]
    assert all(h["Content-Type"] == "application/json" and h["Authorization"] == "Bearer s3cret" for _, h, _ in got)
    assert metrics.sample("seamless_report_published_total", {"sink": "http"}) == 3


async def test_qmtl_spec_under_an_http_base_posts_per_node(collector):
    """qmtl://observability/seamless under an http base POSTs to <base>/observability/seamless/<quoted node>."""
    sink = open_report_sink("qmtl://observability/seamless", base=collector.url + "/")
    await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 1))
    await asyncio.wait_for(sink.drain(), 10)
    await sink.aclose()
    assert [path for path, _, _ in collector.received] == [
        "/collect/observability/seamless/ohlcv:binance:BTC%2FUSDT:1m"
    ]


@pytest.mark.parametrize("fault", ["down", "hang", 500])
async def test_a_failing_collector_never_delays_a_fetch_and_every_drop_is_counted(
    fault, collector, storage, make_provider
):
    """With the collector down, hanging or answering 500, fetches under a 200 ms SLA succeed and return before their
    report's fate is decided; after the retries each report is dropped as failed, counted and logged."""
    collector.mode = fault
    url = _dead_url() if fault == "down" else collector.url
    sink = HttpReportSink(url, timeout_s=0.15, max_attempts=2, retry_backoff_ms=1, concurrency=2)
    await store(storage, at(0), at(400))
    provider = make_provider(
        strategy="fail_fast",
        storage_source=storage,
        cache_source=False,
        report_sink=sink,
        sla=SLAPolicy(total_deadline_ms=200),
    )
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[captured])
    request_ids = set()
    labels = {"sink": "http", "reason": "failed"}
    try:
        for k in range(4):
            frame = await provider.fetch(at(k * 100), at(k * 100 + 100), node_id=SERIES)
            request_ids.add(provider.last_fetch_metadata.request_id)
            assert len(frame) == 100
            assert provider.last_fetch_metadata.outcome == "ok"
            # This fetch's report is still on its way (a fetch that waited for it would find it dropped by now).
            assert provider.metrics.sample("seamless_report_dropped_total", labels) <= k
        await asyncio.wait_for(provider.wait_for_backfills(), 0.1)  # publication never waits on the collector
        await asyncio.wait_for(sink.drain(), 10)
    finally:
        structlog.reset_defaults()
        await sink.aclose()  # passed in, so the provider leaves it open
    assert provider.metrics.sample("seamless_report_dropped_total", labels) == 4
    assert provider.metrics.sample("seamless_report_published_total", {"sink": "http"}) == 0
    drops = [e for e in captured.entries if e["event"] == "report.dropped"]
    assert len(drops) == 4 and {(e["reason"], e["sink"], e["log_level"]) for e in drops} == {
        ("failed", "http", "warning")
    }
    assert {e["request_id"] for e in drops} == request_ids  # each line names its own report's fetch
    if fault == 500:
        assert collector.attempts == 8 and "HTTP 500" in drops[0]["error"]


async def test_a_full_queue_and_a_close_drop_reports_visibly(collector):
    """Over queue_size the new report is dropped (queue_full); what is left at close is dropped (closed)."""
    collector.mode = "hang"
    metrics = ProviderMetrics()
    sink = HttpReportSink(collector.url, queue_size=2, concurrency=1, close_timeout_s=0.1, metrics=metrics)
    for n in range(5):
        await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, n))
    await sink.aclose()
    await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 9))
    assert metrics.sample("seamless_report_dropped_total", {"sink": "http", "reason": "queue_full"}) == 3
    assert metrics.sample("seamless_report_dropped_total", {"sink": "http", "reason": "closed"}) == 3


async def test_a_client_error_answer_is_not_retried(collector):
    """A 400 drops the report at once as rejected (one attempt)."""
    collector.mode = 400
    metrics = ProviderMetrics()
    sink = HttpReportSink(collector.url, max_attempts=5, retry_backoff_ms=1, metrics=metrics)
    await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 1))
    await asyncio.wait_for(sink.drain(), 10)
    await sink.aclose()
    assert collector.attempts == 1
    assert metrics.sample("seamless_report_dropped_total", {"sink": "http", "reason": "rejected"}) == 1


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"url": "ftp://x/"}, "must be an http:// or https:// URL"),
        ({"url": "http://x/", "max_attempts": 0}, "max_attempts=0"),
        ({"url": "http://x/", "timeout_s": 0}, "timeout_s=0"),
        ({"url": "http://x/", "jitter_ratio": 2.0}, "jitter_ratio=2.0"),
    ],
)
def test_bad_http_settings_are_refused(kwargs, needle):
    """Bad constructor values raise ValueError naming the setting."""
    with pytest.raises(ValueError, match="HttpReportSink") as caught:
        HttpReportSink(**kwargs)
    assert needle in str(caught.value)
