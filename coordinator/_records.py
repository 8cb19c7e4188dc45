"""Records of the lease table: results, windows, jobs, leases, keyed leases.

Rules:
1. Plain data only: ints, strings, tuples and these slotted classes. Dumps are written in the compact format of
   ``_snapshot.py``; dumps of format 1 (before December 2026) pickled these classes, so renaming a class or a
   field breaks loading those (``_snapshot.py`` migrates them once).
2. Nothing here reads the clock, draws random numbers or does I/O.
3. A :class:`Result` is what every table command returns: ``ok`` with a JSON-ready ``value``, or an error
   ``code`` (see ``ERROR_CODES``), a message and the field it concerns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "DONE",
    "ERROR_CODES",
    "FAILED",
    "LEASED",
    "PENDING",
    "STATE_FORMAT",
    "JobRec",
    "KeyRec",
    "LeaseRec",
    "Result",
    "SeriesRec",
    "WindowRec",
    "lease_id_of",
    "token_of_lease_id",
]

#: Version of the pickled table state of the first release's Raft dumps (format 2 lives in ``_snapshot.py``).
STATE_FORMAT = 1

PENDING, LEASED, DONE, FAILED = "pending", "leased", "done", "failed"

#: Every error code a command can return; the HTTP layer maps each to one status.
ERROR_CODES = ("invalid", "not_found", "conflict", "lease_lost", "internal")

_LEASE_PREFIX = "lease-"


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one table command."""

    ok: bool
    value: Any = None
    code: str = ""
    message: str = ""
    field: str = ""

    @staticmethod
    def success(value: Any = None) -> Result:
        return Result(True, value)

    @staticmethod
    def error(code: str, message: str, field: str = "") -> Result:
        return Result(False, None, code, message, field)


class SeriesRec:
    """Per-series window grid; ``window_bars`` is fixed by the first job of the series (rule 6)."""

    __slots__ = ("interval_ms", "span_ms", "window_bars")

    def __init__(self, interval_ms: int, window_bars: int) -> None:
        self.interval_ms = interval_ms
        self.window_bars = window_bars
        self.span_ms = interval_ms * window_bars


class WindowRec:
    """One window ``[start, end)`` of a series as format-1 dumps pickled it; kept so that those dumps still load.
    The table keeps its windows as columns (``_windows.py``) and works on :class:`coordinator._windows.Window`
    views with these same attribute names."""

    __slots__ = (
        "attempts",
        "done_at_ms",
        "done_token",
        "end",
        "jobs",
        "last_error",
        "lease",
        "not_before_ms",
        "rank",
        "rows",
        "series",
        "start",
        "state",
    )

    def __init__(self, series: str, start: int, end: int) -> None:
        self.series = series
        self.start = start
        self.end = end
        self.state = PENDING
        #: Grants so far; a release does not count, a requeue resets it.
        self.attempts = 0
        #: A pending window is not granted before this (retry backoff).
        self.not_before_ms = 0
        #: Token of the current lease, 0 when none.
        self.lease = 0
        #: Token that completed the window, for idempotent completes; 0 when marked done by an operator.
        self.done_token = 0
        #: Leader time of completion. A window completed before it closed (done_at_ms < end) holds only the bars
        #: that existed then; a later job that needs the rest re-opens it (rule 6).
        self.done_at_ms = 0
        self.rows = -1
        self.last_error = ""
        #: Ids of the live (not cancelled) jobs that cover this window. A tuple, replaced on change, so the windows
        #: of one job share one object (a list per window cost about 100 bytes).
        self.jobs: tuple[str, ...] = ()
        #: Claim order key: (-priority, job seq) of the best live job, or None when no live job covers it.
        self.rank: tuple[int, int] | None = None

    @property
    def key(self) -> tuple[str, int]:
        return (self.series, self.start)


class JobRec:
    """A submitted range of one series; its windows are the grid cells ``[w_lo, w_hi)`` of the series."""

    __slots__ = (
        "cancelled",
        "counts",
        "end",
        "finished_at_ms",
        "job_id",
        "owner",
        "priority",
        "retired_at_ms",
        "seq",
        "series",
        "start",
        "submitted_at_ms",
        "trace",
        "w_hi",
        "w_lo",
    )

    def __init__(
        self, job_id: str, seq: int, series: str, start: int, end: int, priority: int, w_lo: int, w_hi: int, now_ms: int
    ) -> None:
        self.job_id = job_id
        self.seq = seq
        self.series = series
        self.start = start
        self.end = end
        self.priority = priority
        self.w_lo = w_lo
        self.w_hi = w_hi
        self.submitted_at_ms = now_ms
        #: Who submitted it (the token's name; ``anonymous`` without tokens; "" before owners were recorded):
        #: per-client admission limits count its outstanding windows (``_state.py`` rule 6).
        self.owner = ""
        #: W3C ``traceparent`` of the request that created the job ("" when it was not traced): the workers' window
        #: spans join that trace (``provider.core.tracing`` rule 3).
        self.trace = ""
        self.cancelled = False
        self.counts = {PENDING: 0, LEASED: 0, DONE: 0, FAILED: 0}
        #: Leader time the retention sweep first saw the job finished (done, failed or cancelled); 0 while running.
        self.finished_at_ms = 0
        #: Leader time the job's windows left the table; 0 while they are in it. A retired job is a summary: its
        #: counts are frozen.
        self.retired_at_ms = 0

    @property
    def state(self) -> str:
        if self.cancelled:
            return "cancelled"
        if self.counts[PENDING] or self.counts[LEASED]:
            return "running"
        return "failed" if self.counts[FAILED] else "done"

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def public(self) -> dict[str, Any]:
        """The wire shape of :class:`provider.core.Job`."""
        total = self.total
        value: dict[str, Any] = {
            "job_id": self.job_id,
            "series": self.series,
            "start": self.start,
            "end": self.end,
            "state": self.state,
            "windows": dict(self.counts),
            "completion_ratio": self.counts[DONE] / total if total else 0.0,
            "priority": self.priority,
        }
        if self.retired_at_ms:  # only then, so that clients older than retention parse every running job
            value.update(
                retired=True,
                submitted_at_ms=self.submitted_at_ms,
                finished_at_ms=self.finished_at_ms,
                retired_at_ms=self.retired_at_ms,
            )
        return value


class LeaseRec:
    """A live lease: ``kind`` is ``window`` (target = (series, start)) or ``key`` (target = the key)."""

    __slots__ = ("expires_at_ms", "granted_at_ms", "kind", "target", "token", "worker_id")

    def __init__(
        self, token: int, kind: str, target: Any, worker_id: str, granted_at_ms: int, expires_at_ms: int
    ) -> None:
        self.token = token
        self.kind = kind
        self.target = target
        self.worker_id = worker_id
        self.granted_at_ms = granted_at_ms
        self.expires_at_ms = expires_at_ms


class KeyRec:
    """A QMTL keyed lease slot: ``state`` is leased, done, failed or expired."""

    __slots__ = ("group", "state", "token")

    def __init__(self, group: str) -> None:
        self.group = group
        self.state = "expired"
        self.token = 0


def lease_id_of(token: int) -> str:
    """Lease ids are derived from the (unique) fencing token."""
    return f"{_LEASE_PREFIX}{token}"


def token_of_lease_id(lease_id: Any) -> int:
    """The token a lease id was made from, or 0 when ``lease_id`` is not a lease id."""
    if not isinstance(lease_id, str) or not lease_id.startswith(_LEASE_PREFIX):
        return 0
    digits = lease_id[len(_LEASE_PREFIX) :]
    if not (digits.isascii() and digits.isdigit()) or len(digits) > 18 or digits.startswith("0"):
        return 0
    return int(digits)
