"""One trace from a strategy's fetch to each exchange request that served it, across five processes (issue 18).

A strategy process fetches with AUTO_BACKFILL through a 3-node cluster; two workers fetch the windows from the
loopback exchange into QuestDB. Every process exports spans over OTLP/HTTP to a loopback collector, configured
only by the standard ``OTEL_*`` environment.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devkit.cluster import Cluster
from devkit.polling import wait_for
from provider.core import window_ranges

from .otlp_collector import Collector, SpanRecord, start_collector

HERE = Path(__file__).resolve().parent
SERIES = "ohlcv:binance:ETH/USDT:1m"
MIN = 60_000
WINDOW_BARS = 500
START = 1_700_000_000_000 // MIN * MIN + 7 * MIN  # not window-aligned: three windows
END = START + 1000 * MIN
PHASES = {"seamless.fetch", "seamless.storage", "seamless.backfill", "seamless.conformance"}
SPAN_KIND_SERVER, SPAN_KIND_CLIENT, SPAN_KIND_CONSUMER = 2, 3, 5


@pytest.fixture
def collector(monkeypatch: pytest.MonkeyPatch) -> Iterator[Collector]:
    """The loopback collector; its endpoint is in the environment every process started from now on inherits."""
    made = start_collector()
    monkeypatch.delenv("OTEL_SDK_DISABLED", raising=False)
    monkeypatch.delenv("OTEL_TRACES_EXPORTER", raising=False)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", made.endpoint)
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "100")
    try:
        yield made
    finally:
        made.close()


@pytest.fixture
def cluster(collector: Collector, cluster: Cluster) -> Cluster:
    """The e2e cluster, started after the collector's environment is set (so its nodes export spans)."""
    return cluster


def _ancestors(span: SpanRecord, by_id: dict[str, SpanRecord]) -> list[SpanRecord]:
    chain = []
    while span.parent_id and span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


@pytest.mark.questdb
@pytest.mark.cluster
@pytest.mark.slow
async def test_one_trace_covers_the_fetch_the_coordinator_and_every_exchange_request(
    collector, cluster, pool, exchange, storage_dsn
):
    """The fetch's trace holds its phases, the coordinator's client and server spans (forwarding included) and one
    worker.window span per window whose children are the exchange requests, all connected to the fetch span."""
    for name in ("w1", "w2"):
        pool.start(name, concurrency=2)
    windows = len(window_ranges(START, END, MIN, WINDOW_BARS))
    args = [sys.executable, str(HERE / "traced_fetch.py"), ",".join(cluster.urls), storage_dsn, SERIES]
    out = await asyncio.to_thread(
        subprocess.run, [*args, str(START), str(END), str(WINDOW_BARS)], capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.split()[-1]) > 900  # 1,000 bars less the exchange's 1% gaps

    def whole_trace() -> list[SpanRecord] | None:
        spans = collector.received()
        fetches = [s for s in spans if s.name == "seamless.fetch"]
        if len(fetches) != 1:
            return None
        trace = [s for s in spans if s.trace_id == fetches[0].trace_id]
        done = [s for s in trace if s.name == "worker.window"]
        return trace if len(done) == windows else None

    trace = await asyncio.to_thread(wait_for, whole_trace, 30, "every window span in the fetch's trace")
    (fetch,) = [s for s in trace if s.name == "seamless.fetch"]
    by_id = {s.span_id: s for s in trace}
    names = {s.name for s in trace}
    assert names >= PHASES, names
    assert {s.service for s in trace} == {"seamless-provider", "seamless-coordinator", "seamless-worker"}
    assert fetch.parent_id == "" and fetch.attributes["seamless.series"] == SERIES
    assert fetch.attributes["seamless.outcome"] == "ok" and fetch.attributes["seamless.rows"] > 900
    # Every span hangs off the fetch: no orphan anywhere in the five processes.
    orphans = [s.name for s in trace if s is not fetch and fetch not in _ancestors(s, by_id)]
    assert orphans == []

    submits = [s for s in trace if s.name == "POST /v1/jobs" and s.kind == SPAN_KIND_SERVER]
    assert submits and all(s.service == "seamless-coordinator" for s in submits)
    assert any(by_id[s.parent_id].name == "coordinator POST /v1/jobs" for s in submits if s.parent_id in by_id)
    leader_submit = [s for s in submits if not s.attributes["seamless.forwarded"] or len(submits) == 1]
    assert leader_submit

    window_spans = [s for s in trace if s.name == "worker.window"]
    assert {s.kind for s in window_spans} == {SPAN_KIND_CONSUMER}
    assert sorted(s.attributes["seamless.start_ms"] for s in window_spans) == [
        lo for lo, _ in window_ranges(START, END, MIN, WINDOW_BARS)
    ]
    for window in window_spans:
        # The job's trace: the window's parent is the coordinator's span of the request that created the job.
        assert by_id[window.parent_id].name == "POST /v1/jobs"
        below = [s for s in trace if window in _ancestors(s, by_id)]
        requests = [s for s in below if s.name == "exchange GET /api/v3/klines"]
        assert requests and all(r.kind == SPAN_KIND_CLIENT for r in requests)
        assert all(r.attributes["http.response.status_code"] == 200 for r in requests if not r.events)
        assert {"worker.fetch", "worker.write", "coordinator POST /v1/windows/complete"} <= {s.name for s in below}
        completes = [s for s in below if s.name == "POST /v1/windows/complete" and s.kind == SPAN_KIND_SERVER]
        assert completes, "the coordinator's span of the window's complete is in the trace"
