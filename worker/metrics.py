"""Worker metrics (DESIGN.md section 7), on a registry owned by one worker process."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge

from provider.core.obs import new_registry

__all__ = ["WorkerMetrics"]


@dataclass
class WorkerMetrics:
    """The worker's counters and gauges; one instance per process (or per test)."""

    registry: CollectorRegistry = field(default_factory=new_registry)

    def __post_init__(self) -> None:
        r = self.registry
        self.retries = Counter("backfill_retry", "Source requests retried by this worker.", ["source"], registry=r)
        self.failures = Counter(
            "backfill_failure", "Window attempts that failed on this worker.", ["reason"], registry=r
        )
        self.in_progress = Gauge("backfill_jobs_in_progress", "Windows this worker is working on.", registry=r)
        self.last_timestamp = Gauge(
            "backfill_last_timestamp", "Unix time (s) this worker last completed a window.", registry=r
        )
        self.rows_written = Counter("worker_rows_written", "Bars written to storage by this worker.", registry=r)
        self.windows_done = Counter("worker_windows_completed", "Windows completed by this worker.", registry=r)
        self.leases_lost = Counter("worker_leases_lost", "Windows abandoned because their lease was lost.", registry=r)
        self.completes = Counter(
            "worker_completes", "Completes sent, by how: aboard a claim or alone (daemon rule 12).", ["via"], registry=r
        )
        self.conformance_flags = Counter(
            "worker_conformance_flag",
            "Ingest conformance flags raised on fetched windows, by flag.",
            ["flag"],
            registry=r,
        )
        self.budget_share = Gauge(
            "worker_budget_share_per_minute",
            "This process's share of a source's shared limit it applies now (-1: unlimited).",
            ["source", "quantity"],
            registry=r,
        )
        self.budget_fallback = Gauge(
            "worker_budget_fallback",
            "1 while this process runs a shared source on its per-process floor (coordinator unreachable).",
            ["source"],
            registry=r,
        )
        self.wal_suspended = Gauge(
            "seamless_storage_wal_suspended",
            "1 when a QuestDB WAL table of this worker's storage is suspended (polled), else 0.",
            ["table"],
            registry=r,
        )
