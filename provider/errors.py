"""Errors of the provider package.

Tree::

    provider.core.errors.SeamlessDataError    the common root of every package's errors
    └── SeamlessError                  base of every error this package raises on purpose
        ├── CoordinatorError               the coordinator answered with an error, or could not be reached
        │   ├── CoordinatorBadRequestError     400/413: ``field`` names what was wrong
        │   ├── CoordinatorAuthError           401/403: missing, unknown or under-privileged token
        │   ├── CoordinatorNotFoundError       404: unknown job, window or lease id
        │   ├── CoordinatorConflictError       409: the request conflicts with the current state
        │   │   └── LeaseLostError                 the token is not the window's current lease: stop working on it
        │   ├── CoordinatorCapacityError       429: a limit refused the request (``retry_after_s``; nothing changed)
        │   └── CoordinatorUnavailableError    no leader / no node answered before the deadline
        ├── DataUnavailableError           FAIL_FAST: part of the request is not stored (``missing`` ranges)
        ├── BackfillFailedError            a backfill did not complete (``missing`` ranges, ``reason``)
        ├── SeamlessSLAExceeded            an SLA budget ran out (``phase``, ``elapsed_ms``, ``budget_ms``)
        ├── ConformancePipelineError       conformance found blocking problems (``report``)
        ├── SchemaRegistryError            a schema or registry request is invalid (also a ValueError)
        │   ├── SchemaIncompatibleError        a new version breaks its subject's compatibility policy
        │   │                                  (``subject``, ``policy``, ``problems`` as (column, why), ``allowed``);
        │   │                                  nothing was written
        │   └── SchemaRegistryFileError        the registry file is unreadable or corrupt (``path``, ``problem``)
        └── StorageFailedError             the provider's storage failed a read (``series``, ``operation``, ``hint``;
                                           the storage error is the ``__cause__``)

Storage errors live in :mod:`provider.storage.errors`, source errors in :mod:`provider.sources.errors`; their
roots and this one derive from :class:`provider.core.errors.SeamlessDataError`. The coordinator service's own
root is ``coordinator.errors.ApiError``; :class:`CoordinatorError` here is the client's view of its answers.
"""

from __future__ import annotations

from typing import Any

from provider.core import ms_to_iso
from provider.core.errors import SeamlessDataError

__all__ = [
    "BackfillFailedError",
    "ConformancePipelineError",
    "CoordinatorAuthError",
    "CoordinatorBadRequestError",
    "CoordinatorCapacityError",
    "CoordinatorConflictError",
    "CoordinatorError",
    "CoordinatorNotFoundError",
    "CoordinatorUnavailableError",
    "DataUnavailableError",
    "LeaseLostError",
    "SeamlessError",
    "SchemaIncompatibleError",
    "SchemaRegistryError",
    "SchemaRegistryFileError",
    "SeamlessSLAExceeded",
    "StorageFailedError",
]


class SeamlessError(SeamlessDataError):
    """Base class of the provider's errors."""


class CoordinatorError(SeamlessError):
    """The coordinator refused a request; ``status`` and ``code`` come from its error body."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        field: str | None = None,
        url: str | None = None,
    ) -> None:
        self.status = status
        self.code = code
        self.field = field
        self.url = url
        super().__init__(message)


class CoordinatorBadRequestError(CoordinatorError, ValueError):
    """400 or 413: the request was invalid; ``field`` names the offending field when known."""


class CoordinatorAuthError(CoordinatorError):
    """401 or 403: pass a valid token with ``--token-file`` (or ``token=``) that has the needed role."""


class CoordinatorNotFoundError(CoordinatorError, LookupError):
    """404: the job, window or lease id is unknown."""


class CoordinatorConflictError(CoordinatorError):
    """409: the request conflicts with the current state (e.g. a keyed lease held by someone else)."""


class LeaseLostError(CoordinatorConflictError):
    """409 ``lease_lost``: the token is no longer the window's current lease; abandon the window's work."""


class CoordinatorCapacityError(CoordinatorError):
    """429 ``capacity``: a limit of the cluster refused the request and nothing changed (too many running jobs or
    outstanding windows for this client, submissions too fast, the leader shedding load, a full QMTL key table).
    The message names the limit; ``retry_after_s`` is the server's hint."""

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.retry_after_s = retry_after_s


class CoordinatorUnavailableError(CoordinatorError, ConnectionError):
    """No node answered with a leader before the deadline; check ``coordinator status`` and the nodes' logs."""


def _ranges_text(ranges: list[tuple[int, int]], limit: int = 5) -> str:
    shown = ", ".join(f"[{ms_to_iso(s)}, {ms_to_iso(e)})" for s, e in ranges[:limit])
    more = f" and {len(ranges) - limit} more" if len(ranges) > limit else ""
    return shown + more


class DataUnavailableError(SeamlessError, LookupError):
    """FAIL_FAST found uncovered ranges; ``missing`` lists them as (start_ms, end_ms)."""

    def __init__(self, series: str, missing: list[tuple[int, int]]) -> None:
        self.series = series
        self.missing = list(missing)
        super().__init__(
            f"{series}: {len(self.missing)} range(s) not in cache or storage: {_ranges_text(self.missing)}; "
            "use strategy AUTO_BACKFILL or SEAMLESS to fetch them, or run a backfill job first"
        )


class BackfillFailedError(SeamlessError):
    """A backfill did not complete; ``missing`` lists what is still uncovered, ``reason`` says why."""

    def __init__(self, series: str, missing: list[tuple[int, int]], reason: str) -> None:
        self.series = series
        self.missing = list(missing)
        self.reason = reason
        super().__init__(f"{series}: backfill failed ({reason}); still missing: {_ranges_text(self.missing)}")


class SeamlessSLAExceeded(SeamlessError, TimeoutError):
    """An SLA budget ran out: ``phase`` is storage, backfill, live, total, freshness or coverage."""

    def __init__(self, phase: str, elapsed_ms: float, budget_ms: float, detail: str = "") -> None:
        self.phase = phase
        self.elapsed_ms = elapsed_ms
        self.budget_ms = budget_ms
        extra = f"; {detail}" if detail else ""
        super().__init__(
            f"SLA phase {phase!r} exceeded: {elapsed_ms:.0f} ms used of a {budget_ms:.0f} ms budget{extra}"
        )


class ConformancePipelineError(SeamlessError):
    """Conformance found blocking problems; ``report`` holds the full report (pass ``partial_ok=True`` to accept)."""

    def __init__(self, report: Any) -> None:
        self.report = report
        summary_of = getattr(report, "summary", None)
        if summary_of is not None:
            summary = summary_of()
        else:
            flags = getattr(report, "flag_counts", {}) or {}
            summary = ", ".join(f"{k}={v}" for k, v in sorted(flags.items())) or "see report"
        super().__init__(
            f"conformance blocked the frame ({summary}); fix the source or pass partial_ok=True to store/accept "
            "the normalized rest with a report"
        )


class SchemaRegistryError(SeamlessError, ValueError):
    """A schema, subject or policy given to the schema registry is invalid; the message names it."""


class SchemaIncompatibleError(SchemaRegistryError):
    """A candidate schema breaks its subject's policy; ``problems`` lists ``(column, why)``. Nothing was written."""

    def __init__(self, subject: str, policy: str, problems: list[tuple[str, str]], allowed: str) -> None:
        self.subject = subject
        self.policy = policy
        self.problems = problems
        self.allowed = allowed
        columns = ", ".join(dict.fromkeys(c for c, _ in problems))
        details = "; ".join(f"{c}: {why}" for c, why in problems)
        super().__init__(
            f"schema of subject {subject!r} is incompatible under {policy} (columns {columns}): {details}. "
            f"{policy} allows: {allowed}"
        )


class SchemaRegistryFileError(SchemaRegistryError):
    """The registry file cannot be read, parsed or written; the message names the path and what to do."""

    def __init__(self, path: str, problem: str) -> None:
        self.path = path
        self.problem = problem
        super().__init__(
            f"schema registry file {path}: {problem}. Restore it from a backup (or move it away to start an empty "
            "registry: every registered version would be lost)"
        )


#: What to do next, by the storage error's class name (provider.storage.errors; matched by name to keep this
#: module free of the storage package).
_STORAGE_HINTS = {
    "StorageUnavailableError": "the database could not be reached or failed the query: check that it runs and that "
    "the DSN is right; retrying later may succeed",
    "WalApplyTimeoutError": "QuestDB is applying writes slowly: retry later, or raise wal_apply_timeout_ms",
    "WalSuspendedError": "a QuestDB WAL table is suspended: run `ALTER TABLE <table> RESUME WAL` (docs/storage.md)",
    "SchemaMismatchError": "the table exists with other columns: use another table= option or migrate it",
    "StorageClosedError": "the storage was closed (provider.aclose() ran): create a new provider",
    "StorageConfigError": "a DSN option is invalid: fix it as the message says",
}


class StorageFailedError(SeamlessError):
    """The storage failed an operation of a fetch; ``hint`` says what to do next, ``__cause__`` is the storage error."""

    def __init__(self, series: str, operation: str, cause: BaseException) -> None:
        self.series = series
        self.operation = operation
        self.hint = _STORAGE_HINTS.get(type(cause).__name__, "see docs/storage.md for the storage error")
        super().__init__(f"{series}: storage {operation} failed ({type(cause).__name__}: {cause}); {self.hint}")
