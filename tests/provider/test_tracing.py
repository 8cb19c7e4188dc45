"""Traces (issue 18): configured only by OTEL_*, free when off, and the spans and events a fetch records."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace

from provider.core import tracing

HERE = Path(__file__).resolve().parent
TP = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.mark.parametrize(
    ("environ", "wanted"),
    [
        ({}, []),
        ({"OTEL_TRACES_EXPORTER": "none"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, ["otlp"]),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, ["otlp"]),
        ({"OTEL_TRACES_EXPORTER": "console,otlp"}, ["console", "otlp"]),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, []),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://x:4318", "OTEL_TRACES_EXPORTER": "none"}, []),
    ],
)
def test_the_environment_decides_whether_traces_are_exported(environ: dict[str, str], wanted: list[str]) -> None:
    """Only an exporter or an OTLP endpoint turns tracing on; OTEL_SDK_DISABLED and ``none`` keep it off."""
    assert tracing.wanted_exporters(environ) == wanted


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env}, timeout=60, check=False
    )


@pytest.mark.parametrize(
    ("env", "reason"),
    [
        ({"OTEL_TRACES_EXPORTER": "jaeger"}, "jaeger unknown"),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "'grpc' is not available"),
    ],
)
def test_a_misconfiguration_leaves_tracing_off_with_one_warning(env: dict[str, str], reason: str) -> None:
    """An exporter or protocol this build lacks: a warning naming it, tracing off, the process carries on."""
    code = (
        "from provider.core import tracing; from provider.core.obs import configure_logging; import sys; "
        "configure_logging('t', stream=sys.stdout); print(tracing.configure_tracing('t'), tracing.enabled())"
    )
    out = _run(code, env)
    assert out.returncode == 0, out.stderr
    assert "tracing.disabled" in out.stdout and reason in out.stdout
    assert out.stdout.strip().endswith("False False")


def test_the_console_exporter_prints_the_provider_s_spans_with_its_service_name() -> None:
    """``OTEL_TRACES_EXPORTER=console``: a provider fetch prints ``seamless.fetch`` spans of service
    ``seamless-provider`` (the SDK installed from the environment alone), flushed at exit."""
    code = (
        "import asyncio, sys\n"
        "from provider.core.obs import configure_logging\n"
        "configure_logging('t', level='WARNING', stream=sys.stderr)\n"
        "from provider.seamless import SeamlessDataProvider\n"
        "from provider.reports import MemoryReportSink\n"
        "async def main():\n"
        "    sink = MemoryReportSink()\n"
        "    p = SeamlessDataProvider(strategy='fail_fast', storage_source='memory://', report_sink=sink)\n"
        "    try:\n"
        "        await p.fetch(0, 60_000, node_id='ohlcv:x:A/B:1m')\n"
        "    except Exception as exc:\n"
        "        print(type(exc).__name__, file=sys.stderr)\n"
        "    await p.aclose()\n"
        "asyncio.run(main())\n"
    )
    out = _run(code, {"OTEL_TRACES_EXPORTER": "console"})
    assert out.returncode == 0, out.stderr
    assert '"name": "seamless.fetch"' in out.stdout and '"service.name": "seamless-provider"' in out.stdout
    assert "DataUnavailableError" in out.stderr


def test_while_tracing_is_off_spans_cost_nothing_and_nothing_is_propagated() -> None:
    """This test process installs no SDK: ``span`` yields None, headers stay as they were, no traceparent."""
    assert not tracing.enabled()
    with tracing.span("x", attributes={"a": 1}) as current:
        assert current is None
        assert trace.get_current_span() is trace.INVALID_SPAN
    headers: dict[str, str] = {"X": "1"}
    assert tracing.inject(headers) == {"X": "1"}
    assert tracing.current_traceparent() == "" and tracing.extract({"traceparent": TP}) is None


@pytest.mark.parametrize(
    ("text", "valid"),
    [
        (TP, True),
        (TP.upper(), False),
        ("00-" + "0" * 32 + "-b7ad6b7169203331-01", False),
        ("00-0af7651916cd43dd8448eb211c80319c-" + "0" * 16 + "-01", False),
        ("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", False),
        (TP + "-extra", False),
        (7, False),
    ],
)
def test_only_version_00_traceparents_are_remembered(text: Any, valid: bool) -> None:
    """A stored job trace is a W3C version-00 traceparent; anything else is ignored (W3C: restart the trace)."""
    assert tracing.valid_traceparent(text) is valid
    assert (tracing.context_of(text) is not None) is valid if isinstance(text, str) else True


@pytest.fixture(scope="module")
def probe() -> dict[str, list[dict[str, Any]]]:
    """The spans of tests/provider/tracing_probe.py's scenarios (run in a process of its own)."""
    out = subprocess.run(
        [sys.executable, str(HERE / "tracing_probe.py")], capture_output=True, text=True, timeout=120, check=False
    )
    assert out.returncode == 0, out.stderr[-3000:]
    data: dict[str, list[dict[str, Any]]] = json.loads(out.stdout)
    return data


def _names(spans: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return sorted((s["name"], s["parent"]) for s in spans)


def test_a_backfilling_fetch_has_a_span_per_phase_under_the_fetch_span(probe: dict[str, Any]) -> None:
    """AUTO_BACKFILL over empty storage: cache, storage, backfill (one child per window), storage again (the read
    back), conformance, all children of ``seamless.fetch``, which carries the outcome and the row count."""
    spans = probe["auto_backfill"]
    assert _names(spans) == sorted(
        [
            ("seamless.fetch", ""),
            ("seamless.cache", "seamless.fetch"),
            ("seamless.storage", "seamless.fetch"),
            ("seamless.backfill", "seamless.fetch"),
            ("seamless.backfill_window", "seamless.backfill"),
            ("seamless.backfill_window", "seamless.backfill"),
            ("seamless.storage", "seamless.fetch"),
            ("seamless.conformance", "seamless.fetch"),
        ]
    )
    (fetch,) = [s for s in spans if s["name"] == "seamless.fetch"]
    assert fetch["attributes"]["seamless.rows"] == 200 and fetch["attributes"]["seamless.outcome"] == "ok"
    assert fetch["attributes"]["seamless.strategy"] == "auto_backfill"
    (backfill,) = [s for s in spans if s["name"] == "seamless.backfill"]
    assert backfill["attributes"]["seamless.windows"] == 2


def test_a_cache_hit_is_one_span(probe: dict[str, Any]) -> None:
    """An L1 hit touches no source: one ``seamless.fetch`` span with ``seamless.cache_hit``."""
    (span,) = probe["cache_hit"]
    assert span["name"] == "seamless.fetch" and span["attributes"]["seamless.cache_hit"] is True


def test_a_failed_fetch_is_an_error_span_with_the_exception(probe: dict[str, Any]) -> None:
    """FAIL_FAST over missing bars: the fetch span's status is ERROR and it records DataUnavailableError."""
    (fetch,) = [s for s in probe["fail_fast_missing"] if s["name"] == "seamless.fetch"]
    assert fetch["status"] == "ERROR" and fetch["events"] == ["exception"]
    assert fetch["event_attributes"][0]["exception.type"].endswith("DataUnavailableError")


def test_an_sla_breach_and_the_downgrade_are_span_events(probe: dict[str, Any]) -> None:
    """PARTIAL_FILL under ``min_coverage=1`` with a third missing: ``seamless.sla_exceeded`` (coverage, in per
    mille) then ``seamless.downgraded``, and the fetch still succeeds."""
    (fetch,) = [s for s in probe["partial_fill_downgrade"] if s["name"] == "seamless.fetch"]
    assert fetch["events"] == ["seamless.sla_exceeded", "seamless.downgraded"]
    breach, downgrade = fetch["event_attributes"]
    assert breach["seamless.phase"] == "coverage" and breach["seamless.budget_ms"] == 1000.0
    assert round(breach["seamless.elapsed_ms"]) == 333
    assert downgrade["seamless.reason"] == "sla_coverage" and fetch["status"] == "UNSET"


def test_a_retry_is_an_event_on_the_current_span(probe: dict[str, Any]) -> None:
    """RetryingSource: the retry after a retryable error is a ``seamless.retry`` event naming source and error."""
    (span,) = probe["retry"]
    assert span["events"] == ["seamless.retry"]
    event = span["event_attributes"][0]
    assert event["seamless.source"] == "flaky" and event["seamless.retry"] == 1
    assert event["seamless.error"] == "RetryableSourceError: flaky: 503 once"
