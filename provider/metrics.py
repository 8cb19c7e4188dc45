"""Prometheus metrics of the provider (DESIGN.md section 7; the names are contract).

Rules:
1. One :class:`ProviderMetrics` per provider, on a registry of its own (:func:`provider.core.obs.new_registry`)
   unless the caller passes one; nothing registers on the global default registry.
2. Two providers may share a registry: the collectors are created once per registry and reused.
3. ``seamless_sla_deadline_seconds`` has buckets up to 600 s, because a backfill phase may legitimately take
   minutes; the others are sized for reads.
4. The labelled children a fetch touches are looked up once and remembered (``labels()`` validates and hashes
   its arguments on every call); at most :data:`_MAX_CHILDREN` of them, then the memo starts afresh (the
   registry keeps the children, so a forgotten one is found again, never recreated).
"""

from __future__ import annotations

import weakref
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram

from provider.core.obs import new_registry

__all__ = ["SLA_BUCKETS_S", "SOURCE_BUCKETS_S", "ProviderMetrics"]

#: Buckets of the SLA phase histogram, in seconds: sub-millisecond cache phases up to ten-minute backfills.
SLA_BUCKETS_S = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
#: Buckets of the per-source latency histogram, in seconds.
SOURCE_BUCKETS_S = (0.0005, 0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)

#: Labelled children one ProviderMetrics remembers (rule 4).
_MAX_CHILDREN = 4096

_SHARED: weakref.WeakKeyDictionary[CollectorRegistry, dict[str, Any]] = weakref.WeakKeyDictionary()


def _collectors(registry: CollectorRegistry) -> dict[str, Any]:
    found = _SHARED.get(registry)
    if found is not None:
        return found
    made: dict[str, Any] = {
        "sla": Histogram(
            "seamless_sla_deadline_seconds",
            "Time spent in each SLA phase of a fetch (storage, backfill, live, total).",
            ["node_id", "phase"],
            buckets=SLA_BUCKETS_S,
            registry=registry,
        ),
        "source": Histogram(
            "seamless_source_latency_seconds",
            "Latency of one read from a data source (cache, storage, backfill, live).",
            ["source"],
            buckets=SOURCE_BUCKETS_S,
            registry=registry,
        ),
        "hit": Counter(
            "seamless_cache_hit_total", "Cache lookups answered by the cache.", ["layer"], registry=registry
        ),
        "miss": Counter(
            "seamless_cache_miss_total", "Cache lookups the cache could not answer.", ["layer"], registry=registry
        ),
        "flag": Counter(
            "seamless_conformance_flag_total",
            "Conformance flags raised, by flag (gap, duplicate_ts, non_finite, ...).",
            ["flag"],
            registry=registry,
        ),
        "fetch": Counter(
            "seamless_fetch_total",
            "Provider fetches by strategy and outcome (ok, partial, unavailable, failed, sla, blocked, error).",
            ["strategy", "outcome"],
            registry=registry,
        ),
        "source_errors": Counter(
            "seamless_source_errors_total",
            "Reads from a source (a cache) that failed and were skipped; the fetch went on without it.",
            ["source"],
            registry=registry,
        ),
        "report_published": Counter(
            "seamless_report_published_total",
            "Conformance reports a report sink stored or delivered, by sink (file, http, memory).",
            ["sink"],
            registry=registry,
        ),
        "report_dropped": Counter(
            "seamless_report_dropped_total",
            "Conformance reports a report sink gave up on, by sink and reason (queue_full, failed, rejected, "
            "closed, too_large, error); each one is also logged as report.dropped.",
            ["sink", "reason"],
            registry=registry,
        ),
        "windows": Counter(
            "seamless_backfill_windows_total",
            "Backfill windows started by this provider, by mode (in_process, coordinator).",
            ["mode"],
            registry=registry,
        ),
    }
    _SHARED[registry] = made
    return made


class ProviderMetrics:
    """The provider's collectors, with small helpers so call sites stay one line."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else new_registry()
        made = _collectors(self.registry)
        self.sla_deadline = made["sla"]
        self.source_latency = made["source"]
        self.cache_hit = made["hit"]
        self.cache_miss = made["miss"]
        self.conformance_flag = made["flag"]
        self.fetch_total = made["fetch"]
        self.backfill_windows = made["windows"]
        self.source_errors = made["source_errors"]
        self.report_published = made["report_published"]
        self.report_dropped = made["report_dropped"]
        #: Labelled children of the per-fetch metrics, by label values: ``labels()`` costs microseconds per call.
        self._children: dict[tuple[Any, ...], Any] = {}

    def _child(self, metric: Any, *values: str) -> Any:
        key = (id(metric), *values)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*values)
        return child

    def observe_phase(self, node_id: str, phase: str, elapsed_s: float) -> None:
        """Record the time one SLA phase took."""
        self._child(self.sla_deadline, node_id, phase).observe(elapsed_s)

    def observe_source(self, source: str, elapsed_s: float) -> None:
        """Record the latency of one source read."""
        self._child(self.source_latency, source).observe(elapsed_s)

    def count_source_error(self, source: str) -> None:
        """Count one failed, skipped source read."""
        self.source_errors.labels(source=source).inc()

    def count_report_published(self, sink: str) -> None:
        """Count one report a sink stored or delivered."""
        self.report_published.labels(sink=sink).inc()

    def count_report_dropped(self, sink: str, reason: str) -> None:
        """Count one report a sink gave up on."""
        self.report_dropped.labels(sink=sink, reason=reason).inc()

    def count_flags(self, flag_counts: dict[str, int]) -> None:
        """Add a report's flag counts."""
        for flag, count in flag_counts.items():
            if count:
                self._child(self.conformance_flag, flag).inc(count)

    def count_fetch(self, strategy: str, outcome: str) -> None:
        """Count one fetch by strategy and outcome."""
        self._child(self.fetch_total, strategy, outcome).inc()

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        """The current value of one sample (0.0 when absent); handy for tests and the demo summary."""
        value = self.registry.get_sample_value(name, labels or {})
        return float(value) if value is not None else 0.0
