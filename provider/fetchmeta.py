"""The per-fetch state the provider carries through a fetch, and the metadata it leaves behind.

Rules:
1. Every fetch has one request id; it is bound to every log line of the fetch and stored in the metadata.
2. Ranges are int-ms half-open tuples. ``requested_range`` is the request snapped outward to the bar grid;
   ``effective_range`` stops at the end of the last closed bar (bars that have not closed are never returned,
   reported as ``not_closed_range``).
3. ``served`` maps each source (cache, storage, backfill, live) to the ranges it supplied; together with
   ``missing_ranges`` they partition the effective range.
"""

from __future__ import annotations

import asyncio
from dataclasses import asdict, dataclass, field
from typing import Any

from provider.core import SeriesKey, covered_ms, interval_ms, merge_ranges, snap_range
from provider.core.obs import new_request_id
from provider.errors import (
    BackfillFailedError,
    ConformancePipelineError,
    DataUnavailableError,
    SeamlessSLAExceeded,
    StorageFailedError,
)
from provider.frames import Piece

__all__ = ["FetchContext", "FetchMetadata", "interval_matches", "outcome_of"]

_OUTCOMES: dict[type[BaseException], str] = {
    DataUnavailableError: "unavailable",
    BackfillFailedError: "failed",
    SeamlessSLAExceeded: "sla",
    ConformancePipelineError: "blocked",
    StorageFailedError: "storage_error",
}


def outcome_of(exc: BaseException) -> str:
    """The ``outcome`` label of a fetch that raised ``exc``."""
    for kind, name in _OUTCOMES.items():
        if isinstance(exc, kind):
            return name
    return "cancelled" if isinstance(exc, asyncio.CancelledError) else "error"


def interval_matches(value: Any, step_ms: int) -> bool:
    """Whether an ``interval`` argument names ``step_ms``: a name, int ms, or QMTL's int seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value * 1000 == step_ms:
        return True
    try:
        return interval_ms(value) == step_ms
    except ValueError:
        return False


@dataclass(slots=True)
class FetchMetadata:
    """What one fetch did (``provider.last_fetch_metadata``)."""

    request_id: str
    node_id: str
    strategy: str
    requested_range: tuple[int, int]
    effective_range: tuple[int, int]
    not_closed_range: tuple[int, int] | None = None
    rows: int = 0
    #: Fraction of the effective range that is materialized in what was returned (1.0 when complete).
    coverage_ratio: float = 1.0
    missing_ranges: list[tuple[int, int]] = field(default_factory=list)
    served: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    #: ``{"mode", "windows", "started", "shared", "waited", "job_ids"}`` when a backfill was involved.
    backfill: dict[str, Any] = field(default_factory=dict)
    downgraded: bool = False
    downgrade_reason: str | None = None
    sla_violation: dict[str, Any] | None = None
    conformance_flags: dict[str, int] = field(default_factory=dict)
    conformance_ok: bool = True
    cache_hit: bool = False
    outcome: str = "ok"
    elapsed_ms: float = 0.0
    phases_ms: dict[str, float] = field(default_factory=dict)
    #: Sources that failed during the fetch and were skipped: ``{"source", "error"}`` (a failing cache).
    skipped_sources: list[dict[str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return asdict(self)


@dataclass(slots=True)
class FetchContext:
    """Mutable state of one fetch in progress."""

    node_id: str
    interval_ms: int
    start_ms: int
    end_ms: int
    meta: FetchMetadata
    #: End of the last closed bar when the fetch began: nothing at or after it is backfilled.
    horizon_ms: int = 0
    pieces: list[Piece] = field(default_factory=list)
    #: Source name of each piece, parallel to ``pieces``.
    origins: list[str] = field(default_factory=list)
    #: This fetch's conformance report (``provider.last_conformance_report`` may be another fetch's by now).
    report: Any = None
    #: Ingest reports of the windows backfilled for this fetch (merged into ``report``).
    ingest: list[Any] = field(default_factory=list)

    @classmethod
    def create(cls, start: Any, end: Any, node_id: str, interval: Any, *, strategy: str, now_ms: int) -> FetchContext:
        """Normalize a request (rule 2): snap it, stop it at the last closed bar, give it a request id."""
        key = SeriesKey.parse(node_id)
        step = key.interval_ms
        if interval is not None and not interval_matches(interval, step):
            raise ValueError(f"interval {interval!r} does not match the interval of node_id {node_id!r}")
        lo, hi = snap_range(start, end, step)
        closed_end = (now_ms // step) * step
        eff_hi = min(hi, max(lo, closed_end))
        meta = FetchMetadata(
            new_request_id(), str(key), strategy, (lo, hi), (lo, eff_hi), (eff_hi, hi) if eff_hi < hi else None
        )
        return cls(str(key), step, lo, eff_hi, meta, horizon_ms=closed_end)

    @property
    def effective(self) -> tuple[int, int]:
        return (self.start_ms, self.end_ms)

    def add(self, origin: str, pieces: list[Piece]) -> None:
        """Record pieces served by ``origin``."""
        for piece in pieces:
            self.pieces.append(piece)
            self.origins.append(origin)
            self.meta.served.setdefault(origin, []).append(piece[0])

    def served_ranges(self, *, exclude: tuple[str, ...] = ()) -> list[tuple[int, int]]:
        """Merged ranges served so far (optionally without some origins)."""
        return merge_ranges([p[0] for p, o in zip(self.pieces, self.origins, strict=True) if o not in exclude])

    def finish_coverage(self, missing: list[tuple[int, int]]) -> None:
        """Store the missing ranges and the coverage ratio."""
        self.meta.missing_ranges = list(missing)
        span = self.end_ms - self.start_ms
        self.meta.coverage_ratio = 1.0 if span <= 0 or not missing else 1.0 - covered_ms(missing) / span
        for origin, ranges in self.meta.served.items():
            if len(ranges) > 1:  # the numpy merge costs more than a whole L1 hit for one range
                self.meta.served[origin] = merge_ranges(ranges)
