"""Source specs and the plug-in registry.

A spec reads ``SCHEME[:TARGET][?KEY=VALUE&...]``: ``synthetic:7?gaps=0.01``, ``binance:http://127.0.0.1:8080``,
``ccxt:binance?base_url=http://127.0.0.1:8080``.

Rules:
1. The scheme (``[a-z][a-z0-9_-]*``) names an entry point in the group ``seamless.sources``; built-in and
   third-party sources resolve the same way (importlib.metadata), so installing a package adds a scheme.
2. The target is everything between the first ``:`` and the first ``?`` (it may contain ``:``, as URLs do);
   parameters follow ``?`` as URL-encoded ``key=value`` pairs. A base URL with its own query string is therefore
   not supported.
3. A factory is called as ``factory(spec, limits=limits)`` with the parsed :class:`SourceSpec` and returns a
   :class:`~provider.sources.Source`. It reads its target and parameters through the spec's helpers, which
   raise :class:`~provider.sources.SourceSpecError` naming the whole spec, the parameter and what is allowed.
4. ``open_source`` never does I/O: sources connect on their first fetch.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib.metadata import EntryPoint, entry_points
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from provider.sources._base import Source
from provider.sources._limits import SourceLimits
from provider.sources.errors import SourceSpecError

__all__ = ["ENTRY_POINT_GROUP", "SourceSpec", "available_sources", "open_source", "parse_spec"]

#: The entry point group third-party sources register in.
ENTRY_POINT_GROUP = "seamless.sources"

_SCHEME_RE = re.compile(r"[a-z][a-z0-9_-]*")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed source spec; ``text`` is the spec as given (every error names it)."""

    text: str
    scheme: str
    target: str = ""
    params: dict[str, str] = field(default_factory=dict)

    def error(self, problem: str) -> SourceSpecError:
        """A :class:`SourceSpecError` naming this spec."""
        return SourceSpecError(self.text, problem)

    def check_params(self, allowed: Iterable[str]) -> None:
        """Raise naming the first parameter not in ``allowed``."""
        known = sorted(allowed)
        for key in self.params:
            if key not in known:
                hint = ", ".join(known) if known else "none"
                raise self.error(f"unknown parameter {key!r} for source {self.scheme!r}; allowed: {hint}")

    def number(self, key: str, default: float, *, lo: float, hi: float, integer: bool = False) -> float:
        """Parameter ``key`` as a number in ``[lo, hi]``, or ``default`` when absent."""
        raw = self.params.get(key)
        if raw is None:
            return default
        kind = "an integer" if integer else "a number"
        try:
            value = float(int(raw)) if integer else float(raw)
        except ValueError:
            raise self.error(f"parameter {key}={raw!r} must be {kind} from {lo:g} to {hi:g}") from None
        if not lo <= value <= hi:
            raise self.error(f"parameter {key}={raw!r} must be {kind} from {lo:g} to {hi:g}")
        return value

    def url(self, value: str, what: str) -> str:
        """Check that ``value`` is an ``http(s)://host[:port][/path]`` URL and return it without a trailing ``/``."""
        try:
            parts = urlsplit(value)
            _ = parts.port  # urlsplit validates the port only when it is read
        except ValueError as exc:
            raise self.error(f"{what} {value!r} is not a valid URL ({exc})") from None
        if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
            raise self.error(f"{what} {value!r} must look like http(s)://HOST[:PORT][/PATH]")
        return value.rstrip("/")


def parse_spec(text: Any) -> SourceSpec:
    """Parse ``SCHEME[:TARGET][?KEY=VALUE&...]`` or raise :class:`SourceSpecError` naming the text."""
    if not isinstance(text, str) or not text.strip():
        raise SourceSpecError(str(text), "a source spec is a non-empty string like 'synthetic:7' or 'binance'")
    head, _, query = text.strip().partition("?")
    scheme, _, target = head.partition(":")
    if not _SCHEME_RE.fullmatch(scheme):
        raise SourceSpecError(text, f"scheme {scheme!r} must match [a-z][a-z0-9_-]* (e.g. 'synthetic', 'binance')")
    params: dict[str, str] = {}
    if query:
        try:
            pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
        except ValueError:
            raise SourceSpecError(text, f"parameters {query!r} must be key=value pairs joined by '&'") from None
        for key, value in pairs:
            if key in params:
                raise SourceSpecError(text, f"parameter {key!r} is given twice")
            params[key] = value
    return SourceSpec(text, scheme, target, params)


def _entry_points() -> dict[str, EntryPoint]:
    found: dict[str, EntryPoint] = {}
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep)  # the first distribution on sys.path wins, as importlib resolves modules
    return found


def available_sources() -> list[str]:
    """The schemes registered in the ``seamless.sources`` entry point group."""
    return sorted(_entry_points())


def open_source(
    spec: str | SourceSpec,
    *,
    limits: SourceLimits | None = None,
    retry: Any = None,
    on_retry: Callable[..., Any] | None = None,
) -> Source:
    """Open the source a spec names (see the module rules); no I/O happens until the first fetch.

    ``limits`` is this process's :class:`SourceLimits` for the source (a fresh, unlimited one when omitted).
    With ``retry`` (a :class:`~provider.core.BackfillConfig`) the source is wrapped in a
    :class:`~provider.sources.RetryingSource` that reports each retry to ``on_retry``.
    """
    parsed = spec if isinstance(spec, SourceSpec) else parse_spec(spec)
    registered = _entry_points()
    entry = registered.get(parsed.scheme)
    if entry is None:
        raise parsed.error(
            f"unknown source {parsed.scheme!r}; installed: {', '.join(sorted(registered)) or 'none'} "
            f"(plug-ins register in the entry point group {ENTRY_POINT_GROUP!r})"
        )
    try:
        factory = entry.load()
    except (ImportError, AttributeError) as exc:
        raise parsed.error(f"cannot load the plug-in {entry.value!r} ({exc})") from None
    source = factory(parsed, limits=limits if limits is not None else SourceLimits())
    if not isinstance(source, Source):
        raise parsed.error(f"plug-in {entry.value!r} returned {type(source).__name__}, not a Source")
    if retry is not None:
        from provider.sources._retry import RetryingSource

        return RetryingSource(source, retry, on_retry=on_retry)
    return source
