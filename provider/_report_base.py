"""What every report sink shares: the report URI form and the accounting of published and dropped reports.

Rules:
1. A report URI is ``qmtl://observability/seamless/<node_id>``; :func:`uri_node_id` refuses anything else with a
   ValueError naming the URI.
2. A sink never loses a report silently: each report it gives up on is counted in
   ``seamless_report_dropped_total{sink, reason}`` and logged (WARNING ``report.dropped`` with the sink, the
   reason, the URI and the error); each one it stored or delivered is counted in
   ``seamless_report_published_total{sink}``. Without metrics (a sink built in code without ``metrics=``, never
   handed to a provider) the counts are skipped and the log line stays.
3. Drop reasons: ``queue_full`` (the HTTP queue was full), ``failed`` (retries exhausted), ``rejected`` (a 4xx
   answer other than 408/429), ``closed`` (the sink closed before delivery), ``too_large`` (one report larger
   than half the file bound), ``error`` (a write or encoding error, or an exception of a sink of your own).
"""

from __future__ import annotations

from typing import Any

from provider.core.obs import get_logger
from provider.metrics import ProviderMetrics

__all__ = ["DROP_REASONS", "REPORT_URI_PREFIX", "SinkAccounting", "uri_node_id"]

#: The prefix of every report URI; the node id follows it.
REPORT_URI_PREFIX = "qmtl://observability/seamless/"
#: The values of the ``reason`` label of ``seamless_report_dropped_total`` (rule 3).
DROP_REASONS = ("queue_full", "failed", "rejected", "closed", "too_large", "error")

_log = get_logger("provider.reports")


def uri_node_id(uri: str) -> str:
    """The node id a report URI names, or ValueError naming the URI."""
    if not uri.startswith(REPORT_URI_PREFIX) or len(uri) == len(REPORT_URI_PREFIX):
        raise ValueError(f"report URI {uri!r} must look like {REPORT_URI_PREFIX}<node_id>")
    return uri[len(REPORT_URI_PREFIX) :]


class SinkAccounting:
    """Counts and logs the outcome of each report of one sink (rule 2)."""

    def __init__(self, kind: str, metrics: ProviderMetrics | None) -> None:
        #: The ``sink`` label: ``file``, ``http``, ``memory``, ``none`` or ``custom``.
        self.kind = kind
        #: Where the counts go; a provider sets it when it is handed a sink built without one.
        self.metrics = metrics

    def published(self) -> None:
        """Count one stored or delivered report."""
        if self.metrics is not None:
            self.metrics.count_report_published(self.kind)

    def dropped(self, reason: str, uri: str, error: str = "", **fields: Any) -> None:
        """Count and log one report given up on."""
        if self.metrics is not None:
            self.metrics.count_report_dropped(self.kind, reason)
        _log.warning("report.dropped", sink=self.kind, reason=reason, uri=uri, error=error[:500], **fields)
