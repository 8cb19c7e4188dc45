"""The pipeline: schema, temporal and regression stages over one frame, then the blocking decision.

Rules:
1. Stages run in order; each takes ``(frame, context, report)`` and returns the (possibly new) frame. The
   default order is schema -> temporal -> regression, so the regression stage compares final flag counts;
   ``registry=`` gives the default schema stage a :class:`SchemaRegistry` (e.g. one backed by a file).
2. The pipeline never raises for data problems: it returns the normalized frame and a report whose
   ``blocking`` lists the blocking flags present. The provider raises ``ConformancePipelineError(report)``
   unless ``partial_ok``.
3. ``RegressionReportStage`` remembers the last report of each series (bounded, least recently used out) and
   records what changed: flag deltas, gaps that are new, gaps that went away.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable
from typing import Any, Protocol

import pandas as pd

from provider.conformance._report import (
    DEFAULT_BLOCKING_FLAGS,
    ConformanceContext,
    ConformanceReport,
)
from provider.conformance._schema import SchemaRegistry, SchemaRollupStage
from provider.conformance._temporal import TemporalRollupStage

__all__ = ["ConformancePipeline", "ConformanceStage", "RegressionReportStage"]


class ConformanceStage(Protocol):
    """One step of the pipeline."""

    name: str

    def run(self, frame: Any, context: ConformanceContext, report: ConformanceReport) -> pd.DataFrame:
        """Return the frame to pass on; record findings in ``report``."""
        ...


class RegressionReportStage:
    """Compares each report with the previous report of the same series."""

    name = "regression"

    def __init__(self, *, max_series: int = 4096) -> None:
        self.max_series = max_series
        self._previous: OrderedDict[str, ConformanceReport] = OrderedDict()

    def previous(self, node_id: str) -> ConformanceReport | None:
        """The last report seen for ``node_id``."""
        return self._previous.get(node_id)

    def run(self, frame: pd.DataFrame, context: ConformanceContext, report: ConformanceReport) -> pd.DataFrame:
        """Fill ``report.regression`` and remember the report; the frame passes unchanged."""
        before = self._previous.get(context.node_id)
        if before is not None and not before.flags and not report.flags:  # clean after clean: nothing changed
            report.regression = {
                "previous": before.request_id or None,
                "flag_delta": {},
                "new_gaps": [],
                "resolved_gaps": [],
            }
        elif before is None:
            report.regression = {"previous": None, "flag_delta": {}, "new_gaps": report.gaps, "resolved_gaps": []}
        else:
            kinds = set(before.flag_counts) | set(report.flag_counts)
            delta = {k: report.flag_counts.get(k, 0) - before.flag_counts.get(k, 0) for k in sorted(kinds)}
            delta = {k: v for k, v in delta.items() if v}
            old_gaps, new_gaps = set(before.gaps), set(report.gaps)
            overlap = (max(before.start_ms, report.start_ms), min(before.end_ms, report.end_ms))
            resolved = [g for g in sorted(old_gaps - new_gaps) if overlap[0] <= g[0] and g[1] <= overlap[1]]
            report.regression = {
                "previous": before.request_id or None,
                "flag_delta": delta,
                "new_gaps": sorted(new_gaps - old_gaps),
                "resolved_gaps": resolved,
            }
            worse = [k for k, v in delta.items() if v > 0 and k != "gap"]
            if worse:
                report.warnings.append("more flags than the previous report: " + ", ".join(worse))
                report.add("regression", len(worse), detail=", ".join(worse))
        self._remember(context.node_id, report)
        return frame

    def _remember(self, node_id: str, report: ConformanceReport) -> None:
        self._previous[node_id] = report
        self._previous.move_to_end(node_id)
        while len(self._previous) > self.max_series:
            self._previous.popitem(last=False)


class ConformancePipeline:
    """Runs the stages and decides which flags block."""

    def __init__(
        self,
        stages: Iterable[ConformanceStage] | None = None,
        *,
        blocking_flags: Iterable[str] = DEFAULT_BLOCKING_FLAGS,
        registry: SchemaRegistry | None = None,
    ) -> None:
        self.stages: list[ConformanceStage] = (
            list(stages)
            if stages is not None
            else [SchemaRollupStage(registry), TemporalRollupStage(), RegressionReportStage()]
        )
        self.blocking_flags = frozenset(blocking_flags)

    def run(self, frame: Any, context: ConformanceContext) -> tuple[pd.DataFrame, ConformanceReport]:
        """Normalize ``frame`` and report; never raises for data problems (see the module rules)."""
        report = ConformanceReport(
            node_id=context.node_id,
            interval_ms=context.interval_ms,
            start_ms=context.start_ms,
            end_ms=context.end_ms,
            request_id=context.request_id,
            rows_in=len(frame) if hasattr(frame, "__len__") else 0,
            created_at_ms=context.now_ms,
        )
        for stage in self.stages:
            frame = stage.run(frame, context, report)
        report.rows_out = len(frame)
        report.blocking = self._blocking(report)
        return frame, report

    def _blocking(self, report: ConformanceReport) -> tuple[str, ...]:
        return tuple(sorted(k for k, v in report.flag_counts.items() if v and k in self.blocking_flags))
