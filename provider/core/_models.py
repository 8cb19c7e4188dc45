"""Wire models of the coordinator API: jobs, windows and leases.

Rules:
1. Every model is a frozen dataclass with ``to_dict()`` (JSON-ready) and ``from_dict()`` that validates each
   field and raises :class:`WireFormatError` naming it; ``from_dict(to_dict(x)) == x``.
2. Times are int epoch ms; series are key strings (validated with :class:`SeriesKey`); ids are opaque strings.
3. Request models normalize what they accept (ISO strings and datetimes become ms) so handlers see one shape.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from provider.core._series import SeriesKey
from provider.core._time import to_ms
from provider.core.errors import WireFormatError

__all__ = [
    "JOB_STATES",
    "WINDOW_STATES",
    "ClaimRequest",
    "CompleteRequest",
    "FailRequest",
    "Job",
    "JobRequest",
    "KeyClaimRequest",
    "KeyFinishRequest",
    "Lease",
    "LeaseInfo",
    "ReasonRequest",
    "RenewRequest",
    "WindowCounts",
]

WINDOW_STATES = ("pending", "leased", "done", "failed")
JOB_STATES = ("running", "done", "failed", "cancelled")
_MAX_ID_CHARS = 200
#: A lease names at most this many traced jobs (``Lease.traces``), each a W3C traceparent (55 chars in version 00).
_MAX_TRACES = 8
_MAX_TRACEPARENT_CHARS = 128
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

M = TypeVar("M", bound="_Model")


def _require(data: dict[str, Any], name: str) -> Any:
    if name not in data:
        raise WireFormatError(name, None, "a value (the field is required)")
    return data[name]


def _int(name: str, value: Any, *, lo: int = INT64_MIN, hi: int = INT64_MAX) -> int:
    """An int within ``[lo, hi]``; every wire int is a signed 64-bit value at most (what is stored and replicated
    stays bounded whatever a client sends)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireFormatError(name, value, "an integer")
    if not lo <= value <= hi:
        bounds = f"from {lo} to {hi}" if hi != INT64_MAX else f">= {lo} (and below 2^63)"
        raise WireFormatError(name, value, f"an integer {bounds}")
    return value


def _text(name: str, value: Any, *, max_chars: int = _MAX_ID_CHARS) -> str:
    if not isinstance(value, str) or not value or len(value) > max_chars or not value.isprintable():
        raise WireFormatError(name, value, f"a non-empty printable string of at most {max_chars} chars")
    return value


def _time(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise WireFormatError(name, value, "epoch milliseconds or an ISO-8601 time")
    try:
        return to_ms(value)
    except ValueError as exc:
        raise WireFormatError(name, value, f"epoch milliseconds or an ISO-8601 time ({exc})") from None


def _series(name: str, value: Any) -> str:
    try:
        return str(SeriesKey.parse(value))
    except ValueError as exc:
        raise WireFormatError(name, value, f"a series key like 'ohlcv:binance:BTC/USDT:1m' ({exc})") from None


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise WireFormatError(name, value, "true or false")
    return value


def _choice(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise WireFormatError(name, value, "one of " + ", ".join(choices))
    return str(value)


class _Model:
    """Shared JSON round trip; subclasses define ``_parse``."""

    _optional: ClassVar[dict[str, Any]] = {}

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)  # type: ignore[call-overload]
        return data

    @classmethod
    def from_dict(cls: type[M], data: Any) -> M:
        if not isinstance(data, dict):
            raise WireFormatError("(body)", data, "a JSON object")
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        for key in data:
            if key not in known:
                raise WireFormatError(str(key), data[key], "no such field; known: " + ", ".join(sorted(known)))
        return cls._parse({**cls._optional, **data})

    @classmethod
    def _parse(cls: type[M], data: dict[str, Any]) -> M:  # pragma: no cover - abstract
        raise NotImplementedError


@dataclass(frozen=True)
class JobRequest(_Model):
    """``POST /v1/jobs`` body: a range of one series to backfill."""

    series: str
    start: int
    end: int
    priority: int = 0

    _optional: ClassVar[dict[str, Any]] = {"priority": 0}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> JobRequest:
        series = _series("series", _require(data, "series"))
        start = _time("start", _require(data, "start"))
        end = _time("end", _require(data, "end"))
        if start >= end:
            raise WireFormatError("end", data["end"], f"a time after start ({start}); the range [start, end) is empty")
        priority = _int("priority", data["priority"], lo=-1_000_000, hi=1_000_000)
        return cls(series, start, end, priority)


@dataclass(frozen=True)
class ClaimRequest(_Model):
    """``POST /v1/windows/claim`` body."""

    worker_id: str
    max_windows: int = 1
    wait_ms: int = 0

    _optional: ClassVar[dict[str, Any]] = {"max_windows": 1, "wait_ms": 0}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> ClaimRequest:
        return cls(
            _text("worker_id", _require(data, "worker_id")),
            _int("max_windows", data["max_windows"], lo=1, hi=1000),
            _int("wait_ms", data["wait_ms"], lo=0, hi=300_000),
        )


@dataclass(frozen=True)
class WindowCounts(_Model):
    """Windows of a job by state."""

    pending: int = 0
    leased: int = 0
    done: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        return self.pending + self.leased + self.done + self.failed

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> WindowCounts:
        return cls(*(_int(name, _require(data, name), lo=0) for name in WINDOW_STATES))


@dataclass(frozen=True)
class Job(_Model):
    """A backfill job as the API shows it."""

    job_id: str
    series: str
    start: int
    end: int
    state: str
    windows: WindowCounts
    completion_ratio: float
    priority: int = 0
    #: True once the job's windows left the coordinator's table (``coordinator.job_retention_s``); its counts are
    #: then frozen. The three times below are sent only for retired jobs (0 otherwise).
    retired: bool = False
    submitted_at_ms: int = 0
    finished_at_ms: int = 0
    retired_at_ms: int = 0

    _optional: ClassVar[dict[str, Any]] = {
        "priority": 0,
        "retired": False,
        "submitted_at_ms": 0,
        "finished_at_ms": 0,
        "retired_at_ms": 0,
    }

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> Job:
        ratio = _require(data, "completion_ratio")
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio <= 1.0:
            raise WireFormatError("completion_ratio", ratio, "a number from 0 to 1")
        return cls(
            _text("job_id", _require(data, "job_id")),
            _series("series", _require(data, "series")),
            _int("start", _require(data, "start"), lo=0),
            _int("end", _require(data, "end"), lo=0),
            _choice("state", _require(data, "state"), JOB_STATES),
            WindowCounts.from_dict(_require(data, "windows")),
            float(ratio),
            _int("priority", data["priority"]),
            _bool("retired", data["retired"]),
            _int("submitted_at_ms", data["submitted_at_ms"], lo=0),
            _int("finished_at_ms", data["finished_at_ms"], lo=0),
            _int("retired_at_ms", data["retired_at_ms"], lo=0),
        )


@dataclass(frozen=True)
class Lease(_Model):
    """One window granted to a worker by a claim."""

    lease_id: str
    window_id: str
    token: int
    series: str
    start: int
    end: int
    attempt: int
    expires_at_ms: int
    #: W3C ``traceparent`` texts of the traced jobs the window serves, the best-ranked first: the worker's window
    #: span is the child of the first and links to the rest. Sent only when a job was traced.
    traces: tuple[str, ...] = ()

    _optional: ClassVar[dict[str, Any]] = {"traces": ()}

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if not self.traces:  # never sent empty: clients older than tracing reject unknown fields
            del data["traces"]
        else:
            data["traces"] = list(self.traces)
        return data

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> Lease:
        traces = data["traces"]
        if not isinstance(traces, (list, tuple)) or len(traces) > _MAX_TRACES:
            raise WireFormatError("traces", traces, f"a list of at most {_MAX_TRACES} traceparent strings")
        return cls(
            _text("lease_id", _require(data, "lease_id")),
            _text("window_id", _require(data, "window_id"), max_chars=1000),
            _int("token", _require(data, "token"), lo=1),
            _series("series", _require(data, "series")),
            _int("start", _require(data, "start"), lo=0),
            _int("end", _require(data, "end"), lo=0),
            _int("attempt", _require(data, "attempt"), lo=1),
            _int("expires_at_ms", _require(data, "expires_at_ms"), lo=0),
            tuple(_text("traces", t, max_chars=_MAX_TRACEPARENT_CHARS) for t in traces),
        )


@dataclass(frozen=True)
class LeaseInfo(_Model):
    """A live lease as ``GET /v1/leases`` lists it; ``kind`` is ``window`` or ``key`` (QMTL keyed leases)."""

    lease_id: str
    kind: str
    worker_id: str
    token: int
    granted_at_ms: int
    expires_at_ms: int
    stale: bool
    window_id: str | None = None
    key: str | None = None

    _optional: ClassVar[dict[str, Any]] = {"window_id": None, "key": None}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> LeaseInfo:
        kind = _choice("kind", _require(data, "kind"), ("window", "key"))
        window = data["window_id"]
        key = data["key"]
        if kind == "window":
            window = _text("window_id", window, max_chars=1000)
        else:
            key = _text("key", key, max_chars=1000)
        return cls(
            _text("lease_id", _require(data, "lease_id")),
            kind,
            _text("worker_id", _require(data, "worker_id")),
            _int("token", _require(data, "token"), lo=1),
            _int("granted_at_ms", _require(data, "granted_at_ms"), lo=0),
            _int("expires_at_ms", _require(data, "expires_at_ms"), lo=0),
            _bool("stale", _require(data, "stale")),
            window,
            key,
        )


# -- lease request bodies (coordinator API); kept beside the other wire models so clients can share them --------


def _token(name: str, value: Any) -> int:
    """A fencing token: an int >= 1, or its decimal text (QMTL clients send tokens as strings)."""
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 18:
        value = int(value)
    return _int(name, value, lo=1)


@dataclass(frozen=True)
class RenewRequest(_Model):
    """``POST /v1/windows/renew`` body."""

    lease_id: str
    token: int

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> RenewRequest:
        return cls(_text("lease_id", _require(data, "lease_id")), _token("token", _require(data, "token")))


@dataclass(frozen=True)
class CompleteRequest(_Model):
    """``POST /v1/windows/complete`` body; ``rows`` is what the worker wrote (informational)."""

    lease_id: str
    token: int
    rows: int = 0

    _optional: ClassVar[dict[str, Any]] = {"rows": 0}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> CompleteRequest:
        return cls(
            _text("lease_id", _require(data, "lease_id")),
            _token("token", _require(data, "token")),
            _int("rows", data["rows"], lo=0),
        )


@dataclass(frozen=True)
class FailRequest(_Model):
    """``POST /v1/windows/fail`` body; a retryable failure re-queues the window while attempts remain."""

    lease_id: str
    token: int
    reason: str = ""
    retryable: bool = True

    _optional: ClassVar[dict[str, Any]] = {"reason": "", "retryable": True}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> FailRequest:
        reason = data["reason"]
        if not isinstance(reason, str) or len(reason) > 2000:
            raise WireFormatError("reason", reason, "a string of at most 2000 chars")
        return cls(
            _text("lease_id", _require(data, "lease_id")),
            _token("token", _require(data, "token")),
            reason,
            _bool("retryable", data["retryable"]),
        )


@dataclass(frozen=True)
class ReasonRequest(_Model):
    """Body of the operator actions (release, requeue, mark-done): why."""

    reason: str = ""

    _optional: ClassVar[dict[str, Any]] = {"reason": ""}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> ReasonRequest:
        reason = data["reason"]
        if not isinstance(reason, str) or len(reason) > 2000:
            raise WireFormatError("reason", reason, "a string of at most 2000 chars")
        return cls(reason)


@dataclass(frozen=True)
class KeyClaimRequest(_Model):
    """QMTL ``POST /v1/leases/claim`` body: an opaque key (may contain ``:``) and the lease length."""

    key: str
    lease_ms: int

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> KeyClaimRequest:
        return cls(
            _text("key", _require(data, "key"), max_chars=1000),
            _int("lease_ms", _require(data, "lease_ms"), lo=1, hi=86_400_000),
        )


@dataclass(frozen=True)
class KeyFinishRequest(_Model):
    """QMTL ``POST /v1/leases/complete`` and ``/fail`` bodies (``reason`` only for fail)."""

    key: str
    token: int
    reason: str = ""

    _optional: ClassVar[dict[str, Any]] = {"reason": ""}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> KeyFinishRequest:
        reason = data["reason"]
        if not isinstance(reason, str) or len(reason) > 2000:
            raise WireFormatError("reason", reason, "a string of at most 2000 chars")
        return cls(
            _text("key", _require(data, "key"), max_chars=1000),
            _token("token", _require(data, "token")),
            reason,
        )
