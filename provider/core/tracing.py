"""Traces: OpenTelemetry spans across the provider, the coordinator and the workers, free when not configured.

Rules:
1. Nothing is configured at import. Each process calls :func:`configure_tracing` once (the ``coordinator`` and
   ``worker`` CLIs at start, :class:`~provider.SeamlessDataProvider` when it is built). It installs the SDK only
   when the standard environment asks for traces: ``OTEL_TRACES_EXPORTER`` names ``otlp`` or ``console``, or an
   OTLP endpoint is set (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``), and
   ``OTEL_SDK_DISABLED`` is not true. The SDK reads the rest itself (``OTEL_SERVICE_NAME``,
   ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``, ``OTEL_BSP_*``, ``OTEL_EXPORTER_OTLP_*``). A tracer
   provider the application installed itself is kept, never replaced.
2. :func:`enabled` is true once any real tracer provider is installed. While it is false, :func:`span` returns a
   shared no-op context manager (yielding None) without touching OpenTelemetry, attribute functions are not
   called, and nothing is propagated: tracing costs a function call per span.
3. Context crosses processes as W3C ``traceparent`` (and ``tracestate``) headers: :func:`inject` adds the current
   span's to outgoing headers, :func:`extract` reads them. A job remembers one ``traceparent`` text
   (:func:`current_traceparent`, checked with :func:`valid_traceparent`); a worker's window span is the child of
   its first job's and links to the others (:func:`span` with ``parent`` and ``links``).
4. Export problems never fail work: the SDK's batch processor drops and logs; a misconfiguration (an exporter or
   protocol this build lacks, the SDK not installed) logs one warning and leaves tracing off.
5. Span attributes are namespaced ``seamless.*`` (``seamless.series``, ``seamless.start_ms`` ...), next to the
   standard ``http.*``/``url.*`` ones on request spans.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from provider.core.obs import get_logger

__all__ = [
    "SpanKind",
    "Status",
    "StatusCode",
    "configure_tracing",
    "context_of",
    "current_traceparent",
    "enabled",
    "event",
    "extract",
    "inject",
    "record_error",
    "span",
    "valid_traceparent",
]

_log = get_logger("provider.tracing")
_PROPAGATOR = TraceContextTextMapPropagator()
#: W3C trace context version 00: version-traceid-spanid-flags, lowercase hex, ids not all zero.
_TRACEPARENT = re.compile(r"^00-(?!0{32})[0-9a-f]{32}-(?!0{16})[0-9a-f]{16}-[0-9a-f]{2}$")
_EXPORTERS = ("otlp", "console")
_UNKNOWN = object()
_PROTOCOLS = ("http/protobuf",)


class _Once:
    """Whether :func:`configure_tracing` ran in this process."""

    done = False
    on = False
    tracer: tuple[trace.TracerProvider, trace.Tracer] | None = None


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in ("1", "true", "yes", "on")


def wanted_exporters(environ: Mapping[str, str]) -> list[str]:
    """The exporters the environment asks for (rule 1); empty means tracing stays off."""
    if _truthy(environ.get("OTEL_SDK_DISABLED")):
        return []
    names = [n.strip().lower() for n in environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    if not names:
        endpoint = environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
        return ["otlp"] if endpoint else []
    return [] if names == ["none"] else names


def _problem(environ: Mapping[str, str], exporters: list[str]) -> str | None:
    unknown = [n for n in exporters if n not in _EXPORTERS]
    if unknown:
        return f"OTEL_TRACES_EXPORTER={','.join(exporters)}: {', '.join(unknown)} unknown; use {', '.join(_EXPORTERS)}"
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if "otlp" in exporters and protocol and protocol not in _PROTOCOLS:
        return f"OTLP protocol {protocol!r} is not available here; use http/protobuf (the default)"
    return None


def configure_tracing(service: str, *, instance: str = "", environ: Mapping[str, str] | None = None) -> bool:
    """Install the SDK as the environment asks (rule 1), once per process; True when tracing is on. ``service``
    is the ``service.name`` unless ``OTEL_SERVICE_NAME`` is set; ``instance`` the ``service.instance.id``."""
    env = os.environ if environ is None else environ
    if _Once.done or enabled():
        return enabled()
    _Once.done = True
    exporters = wanted_exporters(env)
    if not exporters:
        return False
    problem = _problem(env, exporters)
    if problem is not None:
        _log.warning("tracing.disabled", reason=problem)
        return False
    try:
        from opentelemetry.sdk.resources import SERVICE_NAME, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        _log.warning("tracing.disabled", reason="the OpenTelemetry SDK is not installed: pip install '.[otel]'")
        return False
    attributes = {} if env.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service}
    if instance:
        attributes["service.instance.id"] = instance
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in exporters:
        exporter: SpanExporter
        if name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            exporter = OTLPSpanExporter()
        else:
            exporter = ConsoleSpanExporter()
        provider.add_span_processor(BatchSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    _log.info("tracing.enabled", service=service, exporters=exporters)
    return True


def _tracer() -> trace.Tracer:
    """The tracer of the installed provider (made once per provider: ``get_tracer`` costs as much as a span)."""
    installed = trace.get_tracer_provider()
    if _Once.tracer is None or _Once.tracer[0] is not installed:
        _Once.tracer = (installed, installed.get_tracer("seamless"))
    return _Once.tracer[1]


def enabled() -> bool:
    """True when a real tracer provider is installed (rule 2). Once true it stays true (OpenTelemetry installs a
    provider once per process), and while false it costs an attribute read, not the API's environment lookup."""
    if _Once.on:
        return True
    installed = getattr(trace, "_TRACER_PROVIDER", _UNKNOWN)  # the API's global; None until a provider is set
    if installed is None:
        return False
    if installed is _UNKNOWN:  # an API version without that global: ask it (slower, same answer)
        installed = trace.get_tracer_provider()
    _Once.on = not isinstance(installed, (trace.ProxyTracerProvider, trace.NoOpTracerProvider))
    return _Once.on


def valid_traceparent(text: Any) -> bool:
    """True when ``text`` is a W3C version-00 ``traceparent`` value."""
    return isinstance(text, str) and len(text) == 55 and _TRACEPARENT.match(text) is not None


def context_of(traceparent: str) -> Context | None:
    """The context a stored ``traceparent`` names, or None when it is not one."""
    if not valid_traceparent(traceparent):
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})


def current_traceparent() -> str:
    """The ``traceparent`` of the current span, or "" when there is none (or tracing is off)."""
    if not enabled():
        return ""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent", "")


def inject(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's ``traceparent``/``tracestate`` to ``headers`` (rule 3); a no-op when off."""
    if enabled():
        _PROPAGATOR.inject(headers)
    return headers


def extract(headers: Mapping[str, str]) -> Context | None:
    """The remote context of incoming ``headers``, or None when they carry none (or tracing is off)."""
    if not enabled() or "traceparent" not in headers:
        return None
    return _PROPAGATOR.extract(headers)


#: What :func:`span` returns while tracing is off: one shared, reusable no-op context manager yielding None.
_OFF: AbstractContextManager[None] = nullcontext()
Attributes = Mapping[str, Any] | Callable[[], Mapping[str, Any]]


def span(
    name: str,
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    parent: Context | None = None,
    links: Sequence[str] = (),
    start_time_ns: int | None = None,
) -> AbstractContextManager[Span | None]:
    """A span around the block, current inside it; None (and no work) while tracing is off (rule 2).

    ``attributes`` may be a function, called only when tracing is on; ``parent`` overrides the current context;
    ``links`` are ``traceparent`` texts of related traces. An exception leaving the block is recorded on the span
    and sets its status to error.
    """
    if not enabled():
        return _OFF
    values = attributes() if callable(attributes) else attributes
    linked = [Link(trace.get_current_span(ctx).get_span_context()) for ctx in map(context_of, links) if ctx]
    return _tracer().start_as_current_span(
        name,
        context=parent,
        kind=kind,
        attributes=dict(values) if values else None,
        links=linked,
        start_time=start_time_ns,
    )


def event(name: str, attributes: Mapping[str, Any]) -> None:
    """Add an event to the current span (an SLA breach, a downgrade); a no-op when off."""
    if enabled():
        trace.get_current_span().add_event(name, dict(attributes))


def record_error(current: Span | None, error: BaseException) -> None:
    """Mark ``current`` failed with ``error`` (for errors that are answered, not raised through :func:`span`)."""
    if current is not None:
        current.record_exception(error)
        current.set_status(Status(StatusCode.ERROR, f"{type(error).__name__}: {error}"[:300]))
