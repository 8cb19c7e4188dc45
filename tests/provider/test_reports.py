"""Report sinks by URL: spec parsing, the bounded file sink, none/memory, cache-hit republication, config wiring."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog

from provider import SeamlessDataProvider
from provider._report_file import FolderBudget
from provider.core import config_from_mapping
from provider.core.obs import new_registry
from provider.metrics import ProviderMetrics
from provider.reports import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_REPORT_ROOT,
    HttpReportSink,
    LocalFolderReportSink,
    MemoryReportSink,
    NullReportSink,
    open_report_sink,
)

from .conftest import SERIES, at, store

ETH = "ohlcv:binance:ETH/USDT:1m"


def _tree(root: Path) -> tuple[int, int, int]:
    """(bytes, files, temp files) of everything under ``root``, read from disk."""
    size = files = temps = 0
    for folder, _, names in os.walk(root):
        for name in names:
            files += 1
            temps += name.startswith(".tmp-")
            size += (Path(folder) / name).stat().st_size
    return size, files, temps


def _report(node_id: str, n: int, pad: int = 0) -> dict[str, Any]:
    return {
        "uri": f"qmtl://observability/seamless/{node_id}",
        "node_id": node_id,
        "n": n,
        "request_id": f"r{n}",
        "created_at_ms": 1_700_000_000_000 + n,
        "pad": "x" * pad,
    }


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("none", NullReportSink),
        ("memory", MemoryReportSink),
        ("http://127.0.0.1:9/reports", HttpReportSink),
        ("https://collector.example/r?token=a", HttpReportSink),
        (None, LocalFolderReportSink),
        ("qmtl://observability/seamless", LocalFolderReportSink),
    ],
)
def test_specs_open_the_sink_they_name(spec, kind):
    """Each accepted form opens its sink; the default is the bounded file sink in the temp dir."""
    sink = open_report_sink(spec)
    assert isinstance(sink, kind)
    if kind is LocalFolderReportSink:
        assert (sink.root, sink.max_bytes, sink.max_files) == (
            DEFAULT_REPORT_ROOT,
            DEFAULT_MAX_BYTES,
            DEFAULT_MAX_FILES,
        )


def test_file_spec_carries_its_bound(tmp_path):
    """file:///dir?max_bytes=&max_files=&keep= sets the folder and the bound."""
    sink = open_report_sink(f"file://{tmp_path}/r%20s?max_bytes=4096&max_files=10&keep=3")
    assert isinstance(sink, LocalFolderReportSink)
    assert (sink.root, sink.max_bytes, sink.max_files, sink.keep) == (tmp_path / "r s", 4096, 10, 3)


@pytest.mark.parametrize(
    ("spec", "base", "needle"),
    [
        ("ftp://host/x", None, "report_sink='ftp://host/x' is not a report sink"),
        ("/tmp/reports", None, "report_sink='/tmp/reports' is not a report sink"),
        ("file://otherhost/x", None, "must name a local folder"),
        ("file:///x?max_bytes=lots", None, "max_bytes='lots' must be a positive integer"),
        ("file:///x?depth=2", None, "unknown option 'depth'"),
        ("file:///x?max_files=1", None, "max_files=1 must be an int >= 2"),
        ("qmtl://observability/other", None, "is not a report sink"),
        ("qmtl://observability/seamless", "memory", "report_base='memory' is not a report base"),
        ("http:///nohost", None, "has no host"),
    ],
)
def test_bad_specs_name_the_field_the_value_and_the_forms(spec, base, needle):
    """A bad spec or base is a ValueError naming the field and value, listing the allowed forms where relevant."""
    with pytest.raises(ValueError, match="report_") as caught:
        open_report_sink(spec, base=base)
    assert needle in str(caught.value)
    if "is not a report sink" in needle:
        assert "file:///dir" in str(caught.value) and "qmtl://observability/seamless" in str(caught.value)


def test_a_sink_object_is_used_as_is_and_gets_metrics_when_it_has_none():
    """A sink object passes through; one of ours without metrics counts on the given metrics."""
    metrics = ProviderMetrics()
    sink = MemoryReportSink()
    assert open_report_sink(sink, metrics=metrics) is sink and sink.metrics is metrics
    with pytest.raises(TypeError, match="no publish"):
        open_report_sink(object())


async def test_qmtl_spec_resolves_under_a_file_base_and_a_node_pins_the_address(tmp_path):
    """qmtl://observability/seamless writes under <base>/observability/seamless/<node>; a node pins every report."""
    base = f"file://{tmp_path}"
    per_node = open_report_sink("qmtl://observability/seamless", base=base)
    await per_node.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 1))
    assert per_node.latest(SERIES)["n"] == 1
    assert (tmp_path / "observability" / "seamless" / "ohlcv%3Abinance%3ABTC%2FUSDT%3A1m" / "latest.json").exists()
    pinned = open_report_sink("qmtl://observability/seamless/strategy-7", base=base)
    await pinned.publish(f"qmtl://observability/seamless/{ETH}", _report(ETH, 2))
    assert per_node.latest("strategy-7")["node_id"] == ETH
    assert per_node.latest(ETH) is None


async def test_file_sink_never_exceeds_its_bound_across_nodes(tmp_path):
    """Publishing across several nodes keeps bytes and files under the bound after every write, newest kept."""
    sink = LocalFolderReportSink(tmp_path, max_bytes=6_000, max_files=12, metrics=ProviderMetrics())
    nodes = [f"ohlcv:binance:C{i}/USDT:1m" for i in range(4)]
    for n in range(80):
        node = nodes[n % 3] if n < 60 else nodes[3]
        await sink.publish(f"qmtl://observability/seamless/{node}", _report(node, n, pad=100 + (n * 37) % 400))
        size, files, temps = _tree(tmp_path)
        assert size <= 6_000 and files <= 12 and temps == 0, (n, size, files)
        assert sink.usage() == (size, files)
        assert sink.latest(node)["n"] == n
    kept = sorted(json.loads(p.read_text())["n"] for p in tmp_path.rglob("*.json") if p.name != "latest.json")
    assert kept == list(range(80 - len(kept), 80))  # oldest removed first, across all nodes
    assert all(sink.latest(node) is None for node in nodes[:3])  # their last report went, latest.json with it
    assert sink.metrics.sample("seamless_report_published_total", {"sink": "file"}) == 80


async def test_file_sink_writes_reports_published_together_in_batches_within_its_bound(tmp_path):
    """Reports published while the thread writes go in one batch (rule 6): fewer thread hops than reports, every
    report counted, the bound kept, each node's latest.json its newest report, no orphan left by the batch."""
    metrics = ProviderMetrics()
    sink = LocalFolderReportSink(tmp_path, max_bytes=20_000, max_files=40, keep=5, metrics=metrics)
    batches: list[int] = []
    write_batch = sink._write_batch

    def counted(batch: list[Any]) -> list[Any]:
        batches.append(len(batch))
        return write_batch(batch)

    sink._write_batch = counted  # type: ignore[method-assign]
    nodes = [f"ohlcv:binance:C{i}/USDT:1m" for i in range(6)]
    for start in range(0, 240, 60):  # four rounds of 60 reports published at once
        await asyncio.gather(
            *(
                sink.publish(f"qmtl://observability/seamless/{nodes[n % 6]}", _report(nodes[n % 6], n, pad=n % 500))
                for n in range(start, start + 60)
            )
        )
        size, files, temps = _tree(tmp_path)
        assert size <= 20_000 and files <= 40 and temps == 0 and sink.usage() == (size, files)
    assert sum(batches) == 240 and len(batches) < 240 and max(batches) > 1
    assert metrics.sample("seamless_report_published_total", {"sink": "file"}) == 240
    for i, node in enumerate(nodes):
        folder = sink.folder(f"qmtl://observability/seamless/{node}")
        kept = sorted(json.loads(p.read_text())["n"] for p in folder.glob("*.json") if p.name != "latest.json")
        assert kept and len(kept) <= 5 and kept[-1] == 234 + i
        assert sink.latest(node)["n"] == 234 + i


async def test_file_sink_keeps_at_most_keep_reports_per_node(tmp_path):
    """keep bounds one node's reports even when the total bound has room."""
    sink = LocalFolderReportSink(tmp_path, keep=3)
    for n in range(7):
        await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, n))
    folder = sink.folder(f"qmtl://observability/seamless/{SERIES}")
    names = sorted(p.name for p in folder.iterdir())
    assert len(names) == 4 and names[-1] == "latest.json"
    assert [json.loads((folder / name).read_text())["n"] for name in names[:3]] == [4, 5, 6]


async def test_file_sink_rescans_what_is_on_disk_and_trims_it_to_the_bound(tmp_path):
    """A new sink over an old, larger tree (another process, a lower bound) brings it under its bound at the first
    write, and an orphan latest.json (no report beside it) is removed."""
    big = LocalFolderReportSink(tmp_path)
    for n in range(30):
        node = f"ohlcv:binance:C{n % 6}/USDT:1m"
        await big.publish(f"qmtl://observability/seamless/{node}", _report(node, n, pad=200))
    orphan = big.base / "orphan"
    orphan.mkdir()
    (orphan / "latest.json").write_text("{}")
    small = LocalFolderReportSink(tmp_path, max_bytes=3_000, max_files=8)
    await small.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 99, pad=200))
    size, files, _ = _tree(tmp_path)
    assert size <= 3_000 and files <= 8 and small.usage() == (size, files)
    assert not orphan.exists()
    assert small.latest(SERIES)["n"] == 99


async def test_file_sink_drops_a_report_too_large_for_its_bound_and_counts_write_errors(tmp_path):
    """A report over half the bound is dropped as too_large; a write error as error; both counted and logged."""
    metrics = ProviderMetrics()
    sink = LocalFolderReportSink(tmp_path / "r", max_bytes=1_000, metrics=metrics)
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[captured])
    try:
        await sink.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 1, pad=600))
        (tmp_path / "blocker").write_text("a file where the folder should be")
        blocked = LocalFolderReportSink(tmp_path / "blocker", metrics=metrics)
        await blocked.publish(f"qmtl://observability/seamless/{SERIES}", _report(SERIES, 2))
    finally:
        structlog.reset_defaults()
    assert _tree(tmp_path / "r") == (0, 0, 0)
    assert metrics.sample("seamless_report_dropped_total", {"sink": "file", "reason": "too_large"}) == 1
    assert metrics.sample("seamless_report_dropped_total", {"sink": "file", "reason": "error"}) == 1
    drops = [e for e in captured.entries if e["event"] == "report.dropped"]
    assert [(e["reason"], e["log_level"]) for e in drops] == [("too_large", "warning"), ("error", "warning")]


async def test_none_publishes_nothing_but_the_provider_keeps_the_report(storage, make_provider):
    """report_sink='none' writes nowhere; last_conformance_report is still set."""
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage, report_sink="none")
    assert isinstance(provider.report_sink, NullReportSink)
    await provider.fetch(at(0), at(50), node_id=SERIES)
    await provider.wait_for_backfills()
    assert provider.last_conformance_report is not None and provider.last_conformance_report.node_id == SERIES


@pytest.mark.parametrize("republish", [False, True])
async def test_cache_hits_republish_only_when_asked(storage, make_provider, sink, republish):
    """An L1 hit publishes its cached report again only with republish_cache_hits=True."""
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage, republish_cache_hits=republish)
    await provider.fetch(at(0), at(100), node_id=SERIES)
    await provider.wait_for_backfills()
    assert len(sink.published) == 1
    await provider.fetch(at(10), at(20), node_id=SERIES)
    await provider.wait_for_backfills()
    assert provider.last_fetch_metadata.cache_hit
    assert len(sink.published) == (2 if republish else 1)
    if republish:
        assert sink.published[1] == sink.published[0]
    assert provider.metrics.sample("seamless_report_published_total", {"sink": "memory"}) == len(sink.published)


async def test_a_failing_sink_of_your_own_is_counted_and_logged(storage, make_provider):
    """A custom sink that raises never fails the fetch; the drop is counted (sink=custom) and logged."""

    class Broken:
        async def publish(self, uri: str, report: dict[str, Any]) -> None:
            raise RuntimeError("collector exploded")

    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage, report_sink=Broken())
    captured = structlog.testing.LogCapture()
    structlog.configure(processors=[captured])
    try:
        frame = await provider.fetch(at(0), at(50), node_id=SERIES)
        await provider.wait_for_backfills()
    finally:
        structlog.reset_defaults()
    assert len(frame) == 50
    assert provider.metrics.sample("seamless_report_dropped_total", {"sink": "custom", "reason": "error"}) == 1
    failed = [e for e in captured.entries if e["event"] == "report.publish_failed"]
    assert len(failed) == 1 and "collector exploded" in failed[0]["error"]


async def test_from_config_builds_the_configured_sink_and_aclose_closes_only_what_it_built(tmp_path, storage):
    """report_sink/report_base/republish_cache_hits come from the config block; a sink passed in stays open."""
    config = config_from_mapping(
        {
            "seamless_data_provider": {
                "report_sink": "qmtl://observability/seamless",
                "report_base": f"file://{tmp_path}?max_files=50",
                "republish_cache_hits": True,
            }
        }
    )
    provider = SeamlessDataProvider.from_config(config, storage_source=storage, registry=new_registry())
    assert isinstance(provider.report_sink, LocalFolderReportSink)
    assert (provider.report_sink.root, provider.report_sink.max_files) == (tmp_path, 50)
    assert provider.republish_cache_hits and provider.report_sink.metrics is provider.metrics
    await provider.aclose()

    http = HttpReportSink("http://127.0.0.1:9/")
    mine = SeamlessDataProvider(report_sink=http, registry=new_registry())
    await mine.aclose()
    assert not http._closed
    await http.aclose()
    built = SeamlessDataProvider(report_sink="http://127.0.0.1:9/", registry=new_registry())
    await built.aclose()
    assert built.report_sink._closed


async def test_aclose_lets_a_pending_publication_finish(tmp_path, storage):
    """A provider closed right after a fetch still writes (and counts) that fetch's report instead of cancelling it."""
    await store(storage, at(0), at(100))
    provider = SeamlessDataProvider(
        strategy="fail_fast", storage_source=storage, report_sink=f"file://{tmp_path}", registry=new_registry()
    )
    await provider.fetch(at(0), at(50), node_id=SERIES)
    await provider.aclose()
    assert provider.metrics.sample("seamless_report_published_total", {"sink": "file"}) == 1
    assert provider.report_sink.latest(SERIES)["request_id"] == provider.last_fetch_metadata.request_id


@pytest.mark.parametrize(
    ("writes", "bound", "left"),
    [
        # (folder, size) written in order; (max_bytes, max_files, keep); report files left, oldest first
        ([("a", 10), ("b", 10), ("a", 10)], (1000, 6, 100), ["a0", "b1", "a2"]),
        ([("a", 10), ("b", 10), ("a", 10)], (1000, 5, 100), ["a0", "b1", "a2"]),  # a's latest.json is replaced
        ([("a", 10), ("b", 10), ("a", 10)], (1000, 4, 100), ["b1", "a2"]),  # a0 goes, and its latest with it
        ([("a", 10), ("b", 10), ("c", 10)], (1000, 5, 100), ["b1", "c2"]),  # a's last report goes with its latest
        ([("a", 100), ("a", 100), ("a", 100)], (400, 100, 100), ["a0", "a1", "a2"]),  # 3 reports + latest fit
        ([("a", 100), ("a", 100), ("a", 100)], (350, 100, 100), ["a1", "a2"]),  # bytes: 2 reports + latest
        ([("a", 10), ("a", 10), ("a", 10), ("b", 10)], (1000, 100, 2), ["a1", "a2", "b3"]),  # keep per folder
    ],
)
def test_folder_budget_removes_the_oldest_first_and_never_exceeds_the_bound(writes, bound, left):
    """FolderBudget (the pure part of the file sink) makes room oldest first; the totals never pass the bound."""
    max_bytes, max_files, keep = bound
    budget = FolderBudget(max_bytes=max_bytes, max_files=max_files, keep=keep)
    for n, (name, size) in enumerate(writes):
        folder = Path(name)
        budget.make_room(folder, size)
        budget.add(folder, folder / f"{name}{n}", size)
        budget.set_latest(folder, size)
        assert budget.total_bytes <= max_bytes and budget.total_files <= max_files
        assert budget.total_files == len(budget.reports) + len(budget.latest)
    assert [path.name for path in budget.reports] == left
