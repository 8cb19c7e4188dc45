"""Coordinator metrics (DESIGN.md section 7; names are contract).

Rules:
1. Each node owns its registries (``provider.core.obs.new_registry``); nothing touches the global registry (every
   metric is made with ``registry=None`` and registered in the node's two views, rule 4).
2. Table figures are read at scrape time from the node's replica by a collector, so they are consistent with the
   replicated state and per-job series vanish by themselves: ``backfill_completion_ratio{job_id,series}`` is only
   emitted for running jobs and disappears when a job ends (done, failed or cancelled).
3. Per-job series are bounded: at most ``coordinator.metrics_max_jobs`` running jobs, the first in claim order
   (priority desc, then submission), get their own ``backfill_completion_ratio``; the other running jobs are summed
   into one series labelled ``job_id="(other)", series="(other)"`` (their done windows / their windows; absent
   while no job is summed), and ``backfill_jobs_aggregated`` counts them. A scrape costs O(running jobs).
4. Two views of the same figures: :meth:`CoordinatorMetrics.exposition` with ``detail=True`` (auth off, or a
   token with the reader role) shows the per-job series of rule 3; with ``detail=False`` (auth on and no token)
   no label carries a job id or a series: every running job is summed into the ``(other)`` series. Every other
   family is the same in both views.
5. Replicated counters (``backfill_stale_claims_total``) have the same value on every replica: aggregate across
   nodes with ``max()``, or select the leader with ``coordinator_is_leader == 1``.
6. ``backfill_fenced_rejections_total`` counts 409 ``lease_lost`` answers given by this node.
7. ``coordinator_raft_rejections_total{reason}`` counts peers and frames this node's Raft port refused
   (``coordinator/_raft_transport.py``); every reason is present from the start, at 0.
8. HTTP connection figures (``coordinator_http_connections*``) are read from the node's connection guard at scrape
   time (``coordinator/_connections.py``); they are this node's own.
7. ``coordinator_disk_free_bytes``, ``coordinator_disk_need_bytes`` and ``coordinator_standing_aside`` are this
   node's own (``coordinator/_disk.py``, ``coordinator/_aside.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from provider.core.obs import metrics_text, new_registry

__all__ = ["OTHER", "ClusterFigures", "ConnectionFigures", "CoordinatorMetrics"]

#: ``job_id`` and ``series`` of the one series that sums the running jobs not shown one by one (rules 3 and 4).
OTHER = "(other)"
_C = TypeVar("_C", bound=Collector)

#: Connection guard events that close a connection (``reason`` of ``coordinator_http_connections_closed_total``).
CLOSE_REASONS = ("header_timeout", "body_timeout", "idle_timeout", "evicted", "refused_per_peer", "refused_total")
#: Events that mean the node could not accept (``kind`` of ``coordinator_http_accept_problems_total``).
ACCEPT_PROBLEMS = ("accept_error", "fd_low")


@dataclass(frozen=True)
class ClusterFigures:
    """What the collector needs at scrape time."""

    is_leader: bool
    term: int
    commit_index: int
    table: dict[str, Any]  # Table.stats(coordinator.metrics_max_jobs)
    raft_rejections: dict[str, int] = field(default_factory=dict)  # RaftNode.transport_rejections()
    disk: dict[str, Any] = field(default_factory=dict)  # RaftNode.disk_report()


@dataclass(frozen=True)
class ConnectionFigures:
    """The connection guard's figures at scrape time."""

    open: int
    max_total: int
    events: dict[str, int]  # totals since start, by event (CLOSE_REASONS and ACCEPT_PROBLEMS)


class _ConnectionCollector(Collector):
    def __init__(self, figures: Callable[[], ConnectionFigures]) -> None:
        self._figures = figures

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        yield GaugeMetricFamily("coordinator_http_connections", "Open HTTP connections of this node", value=f.open)
        yield GaugeMetricFamily(
            "coordinator_http_connections_max", "Cap on open HTTP connections (below the fd limit)", value=f.max_total
        )
        closed = CounterMetricFamily(
            "coordinator_http_connections_closed",
            "HTTP connections closed by the connection guard: timeouts, evictions at the cap, refusals",
            labels=["reason"],
        )
        for reason in CLOSE_REASONS:
            closed.add_metric([reason], f.events.get(reason, 0))
        yield closed
        problems = CounterMetricFamily(
            "coordinator_http_accept_problems",
            "Times this node could not accept: accept() failed for lack of resources, or free fds ran low",
            labels=["kind"],
        )
        for kind in ACCEPT_PROBLEMS:
            problems.add_metric([kind], f.events.get(kind, 0))
        yield problems


def _ratio(done: int, windows: int) -> float:
    return done / windows if windows else 0.0


class _TableCollector(Collector):
    def __init__(self, figures: Callable[[], ClusterFigures], *, detail: bool) -> None:
        self._figures = figures
        self._detail = detail

    def _jobs(self, stats: dict[str, Any]) -> Iterator[Metric]:
        """The running jobs' progress (rules 3 and 4)."""
        shown = stats["jobs_running"]
        other_jobs, other_done, other_windows = stats.get("jobs_other", (0, 0, 0))
        running = len(shown) + other_jobs
        if not self._detail:
            other_jobs = running
            other_done += sum(done for _, _, done, _ in shown)
            other_windows += sum(windows for _, _, _, windows in shown)
            shown = []
        ratio = GaugeMetricFamily(
            "backfill_completion_ratio",
            f'Done windows / windows of each running job; job_id="{OTHER}" sums the jobs not shown one by one',
            labels=["job_id", "series"],
        )
        for job_id, series, done, windows in shown:
            ratio.add_metric([job_id, series], _ratio(done, windows))
        if other_jobs:
            ratio.add_metric([OTHER, OTHER], _ratio(other_done, other_windows))
        yield ratio
        yield GaugeMetricFamily("backfill_jobs_running", "Running jobs (windows pending or leased)", value=running)
        yield GaugeMetricFamily(
            "backfill_jobs_aggregated",
            f'Running jobs summed into backfill_completion_ratio{{job_id="{OTHER}"}} instead of shown one by one',
            value=other_jobs,
        )

    def collect(self) -> Iterator[Metric]:
        f = self._figures()
        stats = f.table
        yield from self._jobs(stats)
        windows = GaugeMetricFamily("backfill_windows", "Windows by state", labels=["state"])
        for state, count in stats["windows"].items():
            windows.add_metric([state], count)
        yield windows
        yield GaugeMetricFamily(
            "backfill_jobs_retired",
            "Jobs whose windows left the table after coordinator.job_retention_s (summaries kept)",
            value=stats.get("jobs_retired", 0),
        )
        yield GaugeMetricFamily(
            "backfill_leases_active", "Live leases (windows and keys)", value=stats["leases_active"]
        )
        yield CounterMetricFamily(
            "backfill_stale_claims",
            "Leases reaped after their expiry (replicated count)",
            value=stats["stale_claims_total"],
        )
        yield GaugeMetricFamily("coordinator_fencing_token", "Last fencing token granted", value=stats["token"])
        yield GaugeMetricFamily("coordinator_is_leader", "1 on the Raft leader", value=1 if f.is_leader else 0)
        yield GaugeMetricFamily("coordinator_raft_term", "Current Raft term", value=f.term)
        yield GaugeMetricFamily("coordinator_raft_commit_index", "Raft commit index", value=f.commit_index)
        rejections = CounterMetricFamily(
            "coordinator_raft_rejections", "Peers and frames the Raft port refused, by reason", labels=["reason"]
        )
        for reason, count in sorted(f.raft_rejections.items()):
            rejections.add_metric([reason], count)
        yield rejections
        if f.disk.get("free_bytes") is not None:
            yield GaugeMetricFamily(
                "coordinator_disk_free_bytes",
                "Free bytes of the data dir's filesystem at the last check (every 0.25 s)",
                value=f.disk["free_bytes"],
            )
        yield GaugeMetricFamily(
            "coordinator_disk_need_bytes",
            "Free bytes the data dir needs (disk_reserve_mb plus the next dump); below it the node stands aside",
            value=f.disk.get("need_bytes", 0),
        )
        yield GaugeMetricFamily(
            "coordinator_standing_aside",
            "1 while this node stands aside from Raft because its data dir's disk is low",
            value=0 if f.disk.get("raft", "serving") == "serving" else 1,
        )


class CoordinatorMetrics:
    """The node's metrics: its registry is the detailed view, ``public_registry`` the view without job ids or
    series (rule 4). Both hold the same collectors but the table's."""

    def __init__(
        self,
        registry: CollectorRegistry,
        figures: Callable[[], ClusterFigures],
        connections: Callable[[], ConnectionFigures] | None = None,
    ) -> None:
        self.registry = registry
        self.public_registry = new_registry()
        registry.register(_TableCollector(figures, detail=True))
        self.public_registry.register(_TableCollector(figures, detail=False))
        if connections is not None:
            self._shared(_ConnectionCollector(connections))
        self.fenced_rejections = self._shared(
            Counter(
                "backfill_fenced_rejections",
                "Requests rejected with 409 lease_lost (stale fencing token)",
                registry=None,
            )
        )
        self.http_requests = self._shared(
            Counter(
                "coordinator_http_requests", "HTTP requests by route and status", ["route", "status"], registry=None
            )
        )
        self.http_seconds = self._shared(
            Histogram(
                "coordinator_http_request_seconds",
                "HTTP request latency by route",
                ["route"],
                registry=None,
                buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
            )
        )
        self.forwarded = self._shared(
            Counter("coordinator_forwarded_requests", "Writes this follower forwarded to the leader", registry=None)
        )
        self.forward_long_polls = self._shared(
            Gauge(
                "coordinator_forward_long_polls",
                "Long-poll claims this follower forwards: holding a long-poll connection, or queued for one",
                ["state"],
                registry=None,
            )
        )
        self.commit_retries = self._shared(
            Counter(
                "coordinator_commit_retries",
                "Replicated commands re-submitted after a maybe-applied outcome",
                registry=None,
            )
        )

    def register(self, collector: _C) -> _C:
        """Register a collector of another module in both views (it must not label by job id or series)."""
        return self._shared(collector)

    def _shared(self, collector: _C) -> _C:
        """Register ``collector`` in both views."""
        self.registry.register(collector)
        self.public_registry.register(collector)
        return collector

    def exposition(self, *, detail: bool) -> bytes:
        """The Prometheus text of one scrape: the detailed view, or the public one (rule 4)."""
        return metrics_text(self.registry if detail else self.public_registry)
