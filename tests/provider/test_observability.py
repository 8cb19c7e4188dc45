"""Metrics of DESIGN.md section 7 and one request id per fetch on every log line."""

from __future__ import annotations

import asyncio

import structlog

from provider.core.obs import new_registry
from provider.metrics import ProviderMetrics

from .conftest import SERIES, at, store

PROVIDER_METRICS = (
    "seamless_sla_deadline_seconds",
    "seamless_source_latency_seconds",
    "seamless_cache_hit",
    "seamless_cache_miss",
    "seamless_conformance_flag",
)


def test_metric_names_are_the_contract_and_live_on_a_private_registry():
    """The provider registers the section 7 names on its own registry; two providers may share one."""
    registry = new_registry()
    ProviderMetrics(registry)
    ProviderMetrics(registry)  # no duplicate registration error
    names = {metric.name for metric in registry.collect()}
    assert set(PROVIDER_METRICS) <= names
    sla = next(m for m in registry.collect() if m.name == "seamless_sla_deadline_seconds")
    assert sla.type == "histogram"
    other = ProviderMetrics()
    assert other.registry is not registry


async def test_each_fetch_logs_with_one_request_id(storage, source, make_provider):
    """Every log line of a fetch, including its backfill's, carries that fetch's request id and no other."""
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[structlog.contextvars.merge_contextvars, captured])
    try:
        await store(storage, at(0), at(100))
        provider = make_provider(strategy="auto_backfill", storage_source=storage, backfiller=source)
        metas = []

        async def one(lo, hi):
            await provider.fetch(lo, hi, node_id=SERIES)
            metas.append(provider.last_fetch_metadata)

        await asyncio.gather(one(at(0), at(150)), one(at(300), at(450)))
        await provider.fetch(at(0), at(50), node_id=SERIES)
        metas.append(provider.last_fetch_metadata)
    finally:
        structlog.reset_defaults()
    ids = [m.request_id for m in metas]
    assert len(set(ids)) == 3
    by_id: dict[str, list[str]] = {}
    for entry in captured.entries:
        by_id.setdefault(entry["request_id"], []).append(entry["event"])
    assert set(by_id) == set(ids)
    for request_id in ids[:2]:
        assert by_id[request_id] == ["backfill.start", "fetch.done"]
    assert by_id[ids[2]] == ["fetch.done"]
    assert all(e["node_id"] == SERIES for e in captured.entries)
    assert provider.metrics.sample("seamless_fetch_total", {"strategy": "auto_backfill", "outcome": "ok"}) == 3
    assert provider.metrics.sample("seamless_source_latency_seconds_count", {"source": "backfill"}) == 3
