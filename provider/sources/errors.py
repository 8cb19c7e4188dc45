"""Errors raised by the sources package.

Tree::

    provider.core.errors.SeamlessDataError   the common root of every package's errors
    └── SourceError                  base of every error raised by provider.sources
        ├── SourceSpecError          (also a ValueError) a source spec cannot be opened: unknown scheme, bad
        │                            parameter, missing optional dependency; the message names the spec
        ├── FatalSourceError         the request itself is wrong (unknown symbol, HTTP 400, unsupported
        │                            interval): retrying cannot help
        └── RetryableSourceError     a transient failure (HTTP 5xx, timeout, connection reset): retry later
            ├── BadResponseError     the answer was malformed: bad JSON, wrong shape, bars outside the request
            ├── RateLimitedError     HTTP 429: wait at least ``retry_after_s`` before the next request
            └── BannedError          HTTP 418 (or a ban the process already knows): no request to this source
                                     until ``retry_after_s`` has passed

Rule: a source turns every failure of its transport (aiohttp, ccxt) into one of these, so callers and the retry
wrapper (:mod:`provider.sources.retry`) decide on the class alone. Every error carries the source name and, for
HTTP failures, the status.
"""

from __future__ import annotations

from provider.core.errors import SeamlessDataError

__all__ = [
    "BadResponseError",
    "BannedError",
    "FatalSourceError",
    "RateLimitedError",
    "RetryableSourceError",
    "SourceError",
    "SourceSpecError",
]


class SourceError(SeamlessDataError):
    """Base of every error raised by provider.sources; ``source`` names the source, ``status`` the HTTP status."""

    def __init__(self, message: str, *, source: str = "", status: int | None = None) -> None:
        super().__init__(message)
        self.source = source
        self.status = status


class SourceSpecError(SourceError, ValueError):
    """A source spec cannot be opened; ``spec`` is the text as given and the message says what is allowed."""

    def __init__(self, spec: str, problem: str) -> None:
        super().__init__(f"source spec {spec!r}: {problem}", source=spec.partition(":")[0])
        self.spec = spec
        self.problem = problem


class FatalSourceError(SourceError):
    """The request is wrong (bad symbol, HTTP 400, unsupported interval); retrying cannot help."""


class RetryableSourceError(SourceError):
    """A transient failure; the same request may succeed later."""


class BadResponseError(RetryableSourceError):
    """The source answered with something that is not a valid page (bad JSON, wrong shape, bars off the request)."""


class RateLimitedError(RetryableSourceError):
    """HTTP 429: the next request to this source must wait at least ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: float, source: str = "", status: int | None = 429) -> None:
        super().__init__(message, source=source, status=status)
        self.retry_after_s = max(0.0, float(retry_after_s))


class BannedError(RetryableSourceError):
    """HTTP 418: this process is banned from the source for ``retry_after_s`` more seconds.

    ``until_s`` is the end of the ban on the clock of the process's :class:`~provider.sources.BanGate`
    (monotonic seconds by default), or ``None`` when the error did not come through a gate.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after_s: float,
        until_s: float | None = None,
        source: str = "",
        status: int | None = 418,
    ) -> None:
        super().__init__(message, source=source, status=status)
        self.retry_after_s = max(0.0, float(retry_after_s))
        self.until_s = until_s
