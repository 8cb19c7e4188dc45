"""Report sinks: where conformance reports (``qmtl://observability/seamless/<node_id>``) are published, by URL.

Rules:
1. :func:`open_report_sink` turns a spec into a sink. A spec is a sink object (anything with
   ``async publish(uri, report)``, used as is and never closed by the provider), ``None`` (the default,
   ``qmtl://observability/seamless``) or one of these strings:

   - ``file:///dir[?max_bytes=N&max_files=N&keep=N]``: :class:`LocalFolderReportSink` (``provider._report_file``),
     JSON files bounded in bytes and files across every node (16 MiB and 1000 files unless given);
   - ``http://...`` / ``https://...``: :class:`HttpReportSink` (``provider._report_http``), every report POSTed to
     that URL from a bounded background queue, with retries;
   - ``qmtl://observability/seamless``: each report under ``<base>/observability/seamless/<node_id>``, where
     ``base`` (``report_base``) is a ``file://`` or ``http(s)://`` URL, by default the file sink at
     :data:`DEFAULT_REPORT_ROOT`; ``qmtl://observability/seamless/<node_id>`` pins every report to that node's
     address (the report body keeps its own ``uri`` and ``node_id``);
   - ``memory``: :class:`MemoryReportSink`; ``none``: :class:`NullReportSink` (nothing is published; the provider
     still keeps ``last_conformance_report``).

   Any other spec is a ValueError naming the field, the value and these forms.
2. Publishing never blocks or fails a fetch: the provider publishes from a task, the file sink writes in a
   thread, the HTTP sink only enqueues. A report a sink gives up on is counted in
   ``seamless_report_dropped_total{sink, reason}`` and logged; a delivered one in
   ``seamless_report_published_total{sink}`` (:mod:`provider._report_base`).
3. A sink built from a string belongs to whoever called :func:`open_report_sink` (the provider closes it in
   ``aclose()``); ``metrics`` is given to it, and to a sink object of this module that has none yet.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import parse_qsl, unquote, urlsplit

from provider._report_base import DROP_REASONS, REPORT_URI_PREFIX, SinkAccounting, uri_node_id
from provider._report_file import (
    DEFAULT_MAX_BYTES,
    DEFAULT_MAX_FILES,
    DEFAULT_REPORT_ROOT,
    LocalFolderReportSink,
)
from provider._report_http import URI_HEADER, HttpReportSink
from provider.metrics import ProviderMetrics

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_REPORT_ROOT",
    "DEFAULT_REPORT_SINK",
    "DROP_REASONS",
    "URI_HEADER",
    "HttpReportSink",
    "LocalFolderReportSink",
    "MemoryReportSink",
    "NullReportSink",
    "ReportSink",
    "open_report_sink",
    "uri_node_id",
]

#: The spec used when none is given: every report under the report base (rule 1).
DEFAULT_REPORT_SINK = "qmtl://observability/seamless"
_FORMS = (
    "file:///dir[?max_bytes=N&max_files=N&keep=N], http://host/path, https://host/path, "
    "qmtl://observability/seamless[/<node_id>], memory or none"
)
_FILE_OPTIONS = ("max_bytes", "max_files", "keep")


@runtime_checkable
class ReportSink(Protocol):
    """Somewhere reports go."""

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Store one JSON-ready report under ``uri``."""
        ...


class MemoryReportSink:
    """Keeps the published reports in memory, newest last (bounded)."""

    kind = "memory"

    def __init__(self, *, keep: int = 1000, metrics: ProviderMetrics | None = None) -> None:
        self.keep = keep
        self.published: list[tuple[str, dict[str, Any]]] = []
        self.accounting = SinkAccounting(self.kind, metrics)

    @property
    def metrics(self) -> ProviderMetrics | None:
        """Where the published counts go (set by the provider when None)."""
        return self.accounting.metrics

    @metrics.setter
    def metrics(self, value: ProviderMetrics | None) -> None:
        self.accounting.metrics = value

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Append one report (the oldest beyond ``keep`` go)."""
        uri_node_id(uri)
        self.published.append((uri, report))
        del self.published[: max(0, len(self.published) - self.keep)]
        self.accounting.published()

    def latest(self, node_id: str) -> dict[str, Any] | None:
        """The newest report of ``node_id``."""
        found = [report for uri, report in self.published if uri == REPORT_URI_PREFIX + node_id]
        return found[-1] if found else None


class NullReportSink:
    """Publishes nothing (``none``); the provider still keeps ``last_conformance_report``."""

    kind = "none"

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Check the URI and discard the report."""
        uri_node_id(uri)


class _PinnedSink:
    """Publishes every report under one node's URI (``qmtl://observability/seamless/<node_id>``)."""

    def __init__(self, inner: Any, node_id: str) -> None:
        self.inner = inner
        self.uri = REPORT_URI_PREFIX + node_id
        self.kind: str = inner.kind

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Publish ``report`` under the pinned URI."""
        uri_node_id(uri)
        await self.inner.publish(self.uri, report)

    async def aclose(self) -> None:
        """Close the sink it wraps."""
        closer = getattr(self.inner, "aclose", None)
        if closer is not None:
            await closer()


def open_report_sink(
    spec: Any = None,
    *,
    base: str | None = None,
    metrics: ProviderMetrics | None = None,
    field: str = "report_sink",
    base_field: str = "report_base",
) -> Any:
    """The sink a spec names (rule 1); ``field``/``base_field`` name the setting in errors."""
    if spec is None:
        spec = DEFAULT_REPORT_SINK
    if not isinstance(spec, str):
        if not callable(getattr(spec, "publish", None)):
            raise TypeError(f"{field} {type(spec).__name__} has no publish(uri, report); or give one of {_FORMS}")
        if isinstance(spec, (LocalFolderReportSink, HttpReportSink, MemoryReportSink)) and spec.metrics is None:
            spec.metrics = metrics
        return spec
    text = spec.strip()
    if text.lower() == "none":
        return NullReportSink()
    if text.lower() == "memory":
        return MemoryReportSink(metrics=metrics)
    scheme = urlsplit(text).scheme.lower()
    if scheme == "qmtl":
        return _open_qmtl(text, base, metrics, field, base_field)
    if scheme in ("file", "http", "https"):
        return _open_url(text, metrics, field, per_node=False)
    raise ValueError(f"{field}={spec!r} is not a report sink; use {_FORMS}")


def _open_qmtl(spec: str, base: str | None, metrics: ProviderMetrics | None, field: str, base_field: str) -> Any:
    prefix = DEFAULT_REPORT_SINK
    if spec != prefix and not spec.startswith(prefix + "/"):
        raise ValueError(f"{field}={spec!r} is not a report sink; use {_FORMS}")
    node_id = spec[len(prefix) + 1 :]
    if base is None:
        inner: Any = LocalFolderReportSink(DEFAULT_REPORT_ROOT, metrics=metrics)
    elif urlsplit(base).scheme.lower() in ("file", "http", "https"):
        inner = _open_url(base, metrics, base_field, per_node=True)
    else:
        raise ValueError(
            f"{base_field}={base!r} is not a report base; use file:///dir or http(s)://host/path "
            f"(qmtl://observability/seamless/<node_id> resolves to <base>/observability/seamless/<node_id>)"
        )
    return _PinnedSink(inner, node_id) if node_id else inner


def _open_url(spec: str, metrics: ProviderMetrics | None, field: str, *, per_node: bool) -> Any:
    parts = urlsplit(spec)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https"):
        if not parts.hostname:
            raise ValueError(f"{field}={spec!r} has no host; use {_FORMS}")
        return HttpReportSink(spec, per_node=per_node, metrics=metrics)
    if parts.netloc not in ("", "localhost") or not parts.path:
        raise ValueError(f"{field}={spec!r} must name a local folder (file:///dir); use {_FORMS}")
    options: dict[str, int] = {}
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key not in _FILE_OPTIONS:
            raise ValueError(f"{field}={spec!r}: unknown option {key!r}; file:// takes {', '.join(_FILE_OPTIONS)}")
        if not value.isdigit():
            raise ValueError(f"{field}={spec!r}: {key}={value!r} must be a positive integer")
        options[key] = int(value)
    try:
        return LocalFolderReportSink(Path(unquote(parts.path)), metrics=metrics, **options)
    except ValueError as exc:
        raise ValueError(f"{field}={spec!r}: {exc}") from None
