"""The conformance report: what the pipeline found, changed and compared, as plain data.

Rules:
1. ``flag_counts`` maps a flag to how many times it occurred: rows for row flags (``duplicate_ts``,
   ``non_finite`` ...), runs for ``gap`` (one missing stretch of bars is one gap), columns for schema flags.
2. A flag blocks when it is in the pipeline's blocking set; ``blocking`` lists those present. ``gap``,
   ``extra_column``, ``missing_optional_column`` and ``regression`` never block by default: exchanges legitimately
   miss candles, and an optional column is optional.
3. ``to_dict()`` is JSON-ready (ints, floats, strings, lists, dicts) so a sink can write it as is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_BLOCKING_FLAGS",
    "FLAGS",
    "ConformanceContext",
    "ConformanceFlag",
    "ConformanceReport",
    "report_uri",
]

#: Every flag the built-in stages raise, with what it means.
FLAGS: dict[str, str] = {
    "missing_column": "a column of the schema is absent (filled with NaN)",
    "extra_column": "a column not in the schema was dropped",
    "dtype_cast": "a column had another dtype and was cast to the schema's",
    "missing_optional_column": "a column the schema marks optional is absent (filled with NaN)",
    "schema_incompatible": "the frame declares a schema its subject's active version cannot read, or an unknown one "
    "(nothing passes)",
    "unsorted": "rows were not in ts order (sorted)",
    "duplicate_ts": "rows repeated a ts (the last one kept)",
    "off_grid": "ts not on the interval grid (row dropped)",
    "future_bar": "bar not closed yet at check time (row dropped)",
    "non_finite": "NaN or inf in open/high/low/close/volume (row dropped)",
    "ohlc_violation": "low/high do not bound open and close, or volume < 0 (row kept)",
    "gap": "bars absent inside a materialized range (exchange gap, not re-backfilled)",
    "regression": "a flag occurred more often than in the previous report of the series",
    # Ingest (provider.conformance._ingest): lossless reshapes, normalized and flagged.
    "ts_cast": "ts of another resolution, epoch ints or ISO text converted to datetime64[ns, UTC]",
    "ts_timezone_normalized": "naive ts read as UTC, or ts in another zone converted to UTC",
    "column_order": "columns in another order (reordered)",
    # Ingest blocks: the window is not stored unless partial_ok (then the offending rows are dropped).
    "dtype_mismatch": "a column is neither numeric nor a time (nothing stored)",
    "invalid_timestamp": "ts is NaT or cannot be parsed (row dropped)",
    "precision_loss": "an integer beyond 2**53 that float64 cannot hold exactly (row dropped)",
    "conflicting_duplicate": "rows share a ts with different values (the last one kept)",
    "out_of_range": "bar outside the requested window (row dropped)",
    "high_below_low": "a bar with high < low (row dropped)",
}

#: Flags that block a fetch unless ``partial_ok=True``.
DEFAULT_BLOCKING_FLAGS = frozenset(
    {
        "missing_column",
        "dtype_cast",
        "schema_incompatible",
        "unsorted",
        "duplicate_ts",
        "off_grid",
        "future_bar",
        "non_finite",
        "ohlc_violation",
    }
)

_URI_PREFIX = "qmtl://observability/seamless/"


def report_uri(node_id: str) -> str:
    """The address reports of ``node_id`` are published to."""
    return _URI_PREFIX + node_id


@dataclass(frozen=True, slots=True)
class ConformanceContext:
    """What the stages need to know about the frame they check."""

    node_id: str
    interval_ms: int
    start_ms: int
    end_ms: int
    #: Materialized ranges inside the request: missing bars there are gaps, elsewhere merely not fetched yet.
    covered: tuple[tuple[int, int], ...] = ()
    #: Wall clock at check time; a bar whose end is after it is not closed. None skips the check.
    now_ms: int | None = None
    request_id: str = ""


@dataclass(slots=True)
class ConformanceFlag:
    """One finding; ``start_ms``/``end_ms`` locate it when it has a place in time (gaps, first bad row)."""

    kind: str
    count: int
    start_ms: int | None = None
    end_ms: int | None = None
    detail: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "count": self.count,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "detail": self.detail,
        }


@dataclass(slots=True)
class ConformanceReport:
    """The outcome of one pipeline run over one frame."""

    node_id: str
    interval_ms: int
    start_ms: int
    end_ms: int
    request_id: str = ""
    schema: str = ""
    #: The schema the frame declared (``frame.attrs["schema"]``) when it differs from ``schema``.
    schema_declared: str = ""
    rows_in: int = 0
    rows_out: int = 0
    flags: list[ConformanceFlag] = field(default_factory=list)
    flag_counts: dict[str, int] = field(default_factory=dict)
    #: Values cast per column (``{"volume": 1000}``).
    casts: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Filled by RegressionReportStage: the comparison with the previous report of the series.
    regression: dict[str, Any] = field(default_factory=dict)
    #: Flags present that block (set by the pipeline).
    blocking: tuple[str, ...] = ()
    created_at_ms: int | None = None
    #: Ingest reports: the source that served the window, and the sources that failed it before (fallback chain).
    source: str = ""
    failed_sources: list[str] = field(default_factory=list)
    #: Read reports: the ingest reports of the windows backfilled for this fetch (``to_dict()`` of each).
    ingest: list[dict[str, Any]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when no blocking flag is present."""
        return not self.blocking

    @property
    def uri(self) -> str:
        """Where this report is published."""
        return report_uri(self.node_id)

    @property
    def gaps(self) -> list[tuple[int, int]]:
        """The gap ranges found, in order."""
        return [
            (f.start_ms, f.end_ms)
            for f in self.flags
            if f.kind == "gap" and f.start_ms is not None and f.end_ms is not None
        ]

    def summary(self, limit: int = 6) -> str:
        """One line naming the blocking flags (or all flags) with counts and the first place each occurred."""
        shown = [f for f in self.flags if not self.blocking or f.kind in self.blocking][:limit]
        parts = []
        for flag in shown:
            where = f" at {flag.start_ms}" if flag.start_ms is not None else ""
            detail = f" ({flag.detail})" if flag.detail else ""
            parts.append(f"{flag.kind}={flag.count}{where}{detail}")
        head = "blocked: " if self.blocking else "flags: "
        origin = f" from {self.source}" if self.source else ""
        return f"{self.node_id} [{self.start_ms}, {self.end_ms}){origin} {head}" + ("; ".join(parts) or "none")

    def add(
        self, kind: str, count: int, *, start_ms: int | None = None, end_ms: int | None = None, detail: str = ""
    ) -> None:
        """Record ``count`` occurrences of ``kind`` (nothing when count is 0)."""
        if count <= 0:
            return
        self.flags.append(ConformanceFlag(kind, int(count), start_ms, end_ms, detail))
        self.flag_counts[kind] = self.flag_counts.get(kind, 0) + int(count)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready copy."""
        return {
            "uri": self.uri,
            "node_id": self.node_id,
            "request_id": self.request_id,
            "interval_ms": self.interval_ms,
            "start_ms": self.start_ms,
            "end_ms": self.end_ms,
            "schema": self.schema,
            "schema_declared": self.schema_declared,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "flag_counts": dict(self.flag_counts),
            "flags": [f.to_dict() for f in self.flags],
            "casts": dict(self.casts),
            "warnings": list(self.warnings),
            "regression": dict(self.regression),
            "blocking": list(self.blocking),
            "ok": self.ok,
            "created_at_ms": self.created_at_ms,
            "source": self.source,
            "failed_sources": list(self.failed_sources),
            "ingest": list(self.ingest),
        }

    def merge_ingest(self, ingest: ConformanceReport) -> None:
        """Record a backfilled window's ingest report: its flags join ``flag_counts`` (prefixed details) after
        the blocking decision, so lossless ingest flags never block the read."""
        self.ingest.append(ingest.to_dict())
        for flag in ingest.flags:
            where = f"ingest [{ingest.start_ms}, {ingest.end_ms}) from {ingest.source or 'source'}"
            detail = f"{where}: {flag.detail}"
            self.add(flag.kind, flag.count, start_ms=flag.start_ms, end_ms=flag.end_ms, detail=detail)
