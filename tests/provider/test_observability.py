"""Metrics of DESIGN.md section 7 and one request id per fetch on every log line."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from datetime import UTC, datetime

import structlog

from provider.core.obs import bind_request, configure_logging, get_logger, new_registry
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


def test_log_lines_are_json_with_level_utc_microsecond_stamp_context_and_secrets_redacted():
    """configure_logging: structlog and stdlib lines alike carry the service, the level, an ISO 8601 UTC stamp with
    microseconds, the bound request id, and no secret value. The direct path (obs rule 5) yields to capture_logs
    and to a configuration of the application's own."""
    out = io.StringIO()
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    configure_logging("svc", stream=out)
    try:
        with bind_request("rid-1", node_id="n"):
            get_logger("t").warning("one", password="hunter2", rows=3)
            get_logger("t").exception("two")
            logging.getLogger("std").warning("three %d", 3)
            get_logger("t").debug("below the level")
        written = out.getvalue()
        with structlog.testing.capture_logs() as captured:  # the installed processors, swapped in place
            get_logger("t").info("captured", n=1)
        other = structlog.testing.LogCapture()
        structlog.configure(processors=[other])  # an application's own configuration takes over
        get_logger("t").warning("theirs", n=2)
    finally:
        structlog.reset_defaults()
        structlog.contextvars.unbind_contextvars("service")  # configure_logging binds it for the process
        root.handlers[:], root.level = handlers, level
    assert out.getvalue() == written  # neither the captured nor the reconfigured line reached the stream
    assert [(e["event"], e["log_level"], e["n"]) for e in captured] == [("captured", "info", 1)]
    assert [(e["event"], e["log_level"], e["n"]) for e in other.entries] == [("theirs", "warning", 2)]
    lines = [json.loads(line) for line in written.splitlines()]
    assert [(x["event"], x["level"]) for x in lines] == [("one", "warning"), ("two", "error"), ("three 3", "warning")]
    for line in lines:
        assert line["service"] == "svc"
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", line["timestamp"]), line["timestamp"]
        stamp = datetime.strptime(line["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
        assert abs((datetime.now(UTC) - stamp).total_seconds()) < 60
    assert lines[0]["request_id"] == lines[1]["request_id"] == "rid-1" and lines[0]["node_id"] == "n"
    assert lines[0]["password"] == "[redacted]" and lines[0]["rows"] == 3
    assert "hunter2" not in out.getvalue()


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
