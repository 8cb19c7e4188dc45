"""Wire models of the coordinator API: jobs, windows and leases.

Rules:
1. Every model is a frozen dataclass with ``to_dict()`` (JSON-ready) and ``from_dict()`` that validates each
   field and raises :class:`WireFormatError` naming it; ``from_dict(to_dict(x)) == x``.
2. Times are int epoch ms; series are key strings (validated with :class:`SeriesKey`); ids are opaque strings.
3. Request models normalize what they accept (ISO strings and datetimes become ms) so handlers see one shape.
4. A model is the one source of its wire schema: the coordinator's OpenAPI document is generated from the fields
   (names, types, required = not in ``_optional``, defaults) and the JSON Schema keywords a field declares with
   :func:`wire` (bounds, enums, descriptions). An int field's ``minimum``/``maximum`` are also the bounds
   ``from_dict`` enforces (:meth:`_Model._bounded`), so the document and the parser cannot disagree.
5. :data:`WIRE_MODELS` lists every model; a new model is added there and appears in the document.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from provider.core._series import SeriesKey
from provider.core._time import to_ms
from provider.core.errors import WireFormatError

__all__ = [
    "JOB_STATES",
    "MAX_CLAIM_COMPLETIONS",
    "WINDOW_STATES",
    "WIRE_MODELS",
    "BudgetHeartbeatRequest",
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
    "wire",
]

WINDOW_STATES = ("pending", "leased", "done", "failed")
JOB_STATES = ("running", "done", "failed", "cancelled")
_MAX_ID_CHARS = 200
#: A claim completes at most this many leases (``ClaimRequest.complete``).
MAX_CLAIM_COMPLETIONS = 1000
#: A lease names at most this many traced jobs (``Lease.traces``), each a W3C traceparent (55 chars in version 00).
_MAX_TRACES = 8
_MAX_TRACEPARENT_CHARS = 128
INT64_MAX = (1 << 63) - 1
INT64_MIN = -(1 << 63)

M = TypeVar("M", bound="_Model")

#: JSON Schema keywords of an epoch-milliseconds field.
_EPOCH_MS: dict[str, Any] = {"minimum": 0, "description": "epoch milliseconds, UTC"}
#: JSON Schema keywords of a fencing token.
_TOKEN: dict[str, Any] = {"minimum": 1, "description": "fencing token"}
#: A request time: epoch milliseconds or an ISO-8601 text (rule 3).
_TIME: dict[str, Any] = {
    "oneOf": [{"type": "integer", **_EPOCH_MS}, {"type": "string", "format": "date-time"}],
}


def wire(**schema: Any) -> dict[str, Any]:
    """Field metadata declaring JSON Schema keywords for the wire schema (rule 4): ``minimum``, ``maximum``,
    ``enum``, ``description``, ``example``, ``maxItems``; a ``oneOf`` replaces the type derived from the field.
    Use it as ``token: int = field(metadata=wire(minimum=1))``."""
    return {"schema": schema}


#: Memo of :func:`_field_bounds` (fields never change after a class is built).
_BOUNDS: dict[tuple[type, str], tuple[int, int]] = {}


def _field_bounds(model: type, name: str) -> tuple[int, int]:
    """The ``minimum``/``maximum`` an int field declares (rule 4), or the 64-bit range."""
    bounds = _BOUNDS.get((model, name))
    if bounds is None:
        schema = next(f.metadata.get("schema", {}) for f in dataclasses.fields(model) if f.name == name)
        bounds = _BOUNDS[(model, name)] = (int(schema.get("minimum", INT64_MIN)), int(schema.get("maximum", INT64_MAX)))
    return bounds


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

    @classmethod
    def _bounded(cls, name: str, value: Any) -> int:
        """``value`` as the int field ``name``, within the bounds the field declares (rule 4)."""
        lo, hi = _field_bounds(cls, name)
        return _int(name, value, lo=lo, hi=hi)


@dataclass(frozen=True)
class JobRequest(_Model):
    """``POST /v1/jobs`` body: a range of one series to backfill."""

    series: str = field(metadata=wire(example="ohlcv:binance:BTC/USDT:1m"))
    start: int = field(metadata=wire(**_TIME))
    end: int = field(metadata=wire(**_TIME))
    priority: int = field(default=0, metadata=wire(minimum=-1_000_000, maximum=1_000_000))

    _optional: ClassVar[dict[str, Any]] = {"priority": 0}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> JobRequest:
        series = _series("series", _require(data, "series"))
        start = _time("start", _require(data, "start"))
        end = _time("end", _require(data, "end"))
        if start >= end:
            raise WireFormatError("end", data["end"], f"a time after start ({start}); the range [start, end) is empty")
        priority = cls._bounded("priority", data["priority"])
        return cls(series, start, end, priority)


@dataclass(frozen=True)
class ClaimRequest(_Model):
    """``POST /v1/windows/claim`` body. ``complete`` lists leases this worker finished: they are completed in the
    same request, before the claim (one round trip per window instead of two), and a claim that carries any answers
    at once instead of long-polling."""

    worker_id: str
    max_windows: int = field(default=1, metadata=wire(minimum=1, maximum=1000))
    wait_ms: int = field(default=0, metadata=wire(minimum=0, maximum=300_000))
    complete: tuple[CompleteRequest, ...] = field(default=(), metadata=wire(maxItems=MAX_CLAIM_COMPLETIONS))

    _optional: ClassVar[dict[str, Any]] = {"max_windows": 1, "wait_ms": 0, "complete": ()}

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.complete:
            data["complete"] = [done.to_dict() for done in self.complete]
        else:  # never sent empty: coordinators older than the field reject unknown fields
            del data["complete"]
        return data

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> ClaimRequest:
        given = data["complete"]
        if not isinstance(given, (list, tuple)) or len(given) > MAX_CLAIM_COMPLETIONS:
            raise WireFormatError(
                "complete", given, f"a list of at most {MAX_CLAIM_COMPLETIONS} {{lease_id, token, rows}} objects"
            )
        complete = []
        for index, item in enumerate(given):
            try:
                complete.append(item if isinstance(item, CompleteRequest) else CompleteRequest.from_dict(item))
            except WireFormatError as exc:
                inner = "" if exc.field == "(body)" else f".{exc.field}"
                raise WireFormatError(f"complete[{index}]{inner}", exc.value, exc.allowed) from None
        return cls(
            _text("worker_id", _require(data, "worker_id")),
            cls._bounded("max_windows", data["max_windows"]),
            cls._bounded("wait_ms", data["wait_ms"]),
            tuple(complete),
        )


@dataclass(frozen=True)
class WindowCounts(_Model):
    """Windows of a job by state."""

    pending: int = field(default=0, metadata=wire(minimum=0))
    leased: int = field(default=0, metadata=wire(minimum=0))
    done: int = field(default=0, metadata=wire(minimum=0))
    failed: int = field(default=0, metadata=wire(minimum=0))

    @property
    def total(self) -> int:
        return self.pending + self.leased + self.done + self.failed

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> WindowCounts:
        return cls(*(cls._bounded(name, _require(data, name)) for name in WINDOW_STATES))


@dataclass(frozen=True)
class Job(_Model):
    """A backfill job as the API shows it."""

    job_id: str
    series: str
    start: int = field(metadata=wire(**_EPOCH_MS))
    end: int = field(metadata=wire(**_EPOCH_MS))
    state: str = field(metadata=wire(enum=list(JOB_STATES)))
    windows: WindowCounts
    completion_ratio: float = field(metadata=wire(minimum=0, maximum=1))
    priority: int = 0
    #: True once the job's windows left the coordinator's table (``coordinator.job_retention_s``); its counts are
    #: then frozen. The three times below are sent only for retired jobs (0 otherwise).
    retired: bool = False
    submitted_at_ms: int = field(default=0, metadata=wire(**_EPOCH_MS))
    finished_at_ms: int = field(default=0, metadata=wire(**_EPOCH_MS))
    retired_at_ms: int = field(default=0, metadata=wire(**_EPOCH_MS))

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
            cls._bounded("start", _require(data, "start")),
            cls._bounded("end", _require(data, "end")),
            _choice("state", _require(data, "state"), JOB_STATES),
            WindowCounts.from_dict(_require(data, "windows")),
            float(ratio),
            cls._bounded("priority", data["priority"]),
            _bool("retired", data["retired"]),
            cls._bounded("submitted_at_ms", data["submitted_at_ms"]),
            cls._bounded("finished_at_ms", data["finished_at_ms"]),
            cls._bounded("retired_at_ms", data["retired_at_ms"]),
        )


@dataclass(frozen=True)
class Lease(_Model):
    """One window granted to a worker by a claim."""

    lease_id: str
    window_id: str
    token: int = field(metadata=wire(**_TOKEN))
    series: str
    start: int = field(metadata=wire(**_EPOCH_MS))
    end: int = field(metadata=wire(**_EPOCH_MS))
    attempt: int = field(metadata=wire(minimum=1))
    expires_at_ms: int = field(metadata=wire(**_EPOCH_MS))
    #: W3C ``traceparent`` texts of the traced jobs the window serves, the best-ranked first: the worker's window
    #: span is the child of the first and links to the rest. Sent only when a job was traced.
    traces: tuple[str, ...] = field(default=(), metadata=wire(maxItems=_MAX_TRACES))

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
            cls._bounded("token", _require(data, "token")),
            _series("series", _require(data, "series")),
            cls._bounded("start", _require(data, "start")),
            cls._bounded("end", _require(data, "end")),
            cls._bounded("attempt", _require(data, "attempt")),
            cls._bounded("expires_at_ms", _require(data, "expires_at_ms")),
            tuple(_text("traces", t, max_chars=_MAX_TRACEPARENT_CHARS) for t in traces),
        )


@dataclass(frozen=True)
class LeaseInfo(_Model):
    """A live lease as ``GET /v1/leases`` lists it; ``kind`` is ``window`` or ``key`` (QMTL keyed leases)."""

    lease_id: str
    kind: str = field(metadata=wire(enum=["window", "key"]))
    worker_id: str
    token: int = field(metadata=wire(**_TOKEN))
    granted_at_ms: int = field(metadata=wire(**_EPOCH_MS))
    expires_at_ms: int = field(metadata=wire(**_EPOCH_MS))
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
            cls._bounded("token", _require(data, "token")),
            cls._bounded("granted_at_ms", _require(data, "granted_at_ms")),
            cls._bounded("expires_at_ms", _require(data, "expires_at_ms")),
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
    token: int = field(metadata=wire(**_TOKEN))

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> RenewRequest:
        return cls(_text("lease_id", _require(data, "lease_id")), _token("token", _require(data, "token")))


@dataclass(frozen=True)
class CompleteRequest(_Model):
    """``POST /v1/windows/complete`` body; ``rows`` is what the worker wrote (informational)."""

    lease_id: str
    token: int = field(metadata=wire(**_TOKEN))
    rows: int = field(default=0, metadata=wire(minimum=0))

    _optional: ClassVar[dict[str, Any]] = {"rows": 0}

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> CompleteRequest:
        return cls(
            _text("lease_id", _require(data, "lease_id")),
            _token("token", _require(data, "token")),
            cls._bounded("rows", data["rows"]),
        )


@dataclass(frozen=True)
class FailRequest(_Model):
    """``POST /v1/windows/fail`` body; a retryable failure re-queues the window while attempts remain."""

    lease_id: str
    token: int = field(metadata=wire(**_TOKEN))
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
    lease_ms: int = field(metadata=wire(minimum=1, maximum=86_400_000))

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> KeyClaimRequest:
        return cls(
            _text("key", _require(data, "key"), max_chars=1000),
            cls._bounded("lease_ms", _require(data, "lease_ms")),
        )


@dataclass(frozen=True)
class KeyFinishRequest(_Model):
    """QMTL ``POST /v1/leases/complete`` and ``/fail`` bodies (``reason`` only for fail)."""

    key: str
    token: int = field(metadata=wire(oneOf=[{"type": "integer", **_TOKEN}, {"type": "string", "pattern": "^[0-9]+$"}]))
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


#: Why a worker's gate is closed (``provider/sources/_limits.py`` BanGate reasons); "" = open.
BLOCK_REASONS = ("", "banned", "rate_limited", "weight")
_MAX_AMOUNT = 1e9


def _amount(name: str, value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= _MAX_AMOUNT:
        raise WireFormatError(name, value, f"null (unlimited) or a number from 0 to {_MAX_AMOUNT:g}")
    return float(value)


@dataclass(frozen=True)
class BudgetHeartbeatRequest(_Model):
    """``POST /v1/budget/heartbeat`` body: one worker's report for one source (docs/coordinator.md, "Shared
    exchange budgets"). Limits are the source's whole per-minute limits from the worker's config (0 = unlimited);
    ``using_*`` is what the worker applies now (null = unlimited)."""

    worker_id: str
    source: str = field(metadata=wire(description="budget key: the worker's source spec, e.g. binance:URL"))
    requests_per_minute: int = field(default=0, metadata=wire(minimum=0, maximum=10_000_000))
    weight_per_minute: int = field(default=0, metadata=wire(minimum=0, maximum=10_000_000))
    using_requests_per_minute: float | None = None
    using_weight_per_minute: float | None = None
    blocked_ms: int = field(default=0, metadata=wire(minimum=0, maximum=604_800_000))
    blocked_reason: str = field(default="", metadata=wire(enum=list(BLOCK_REASONS)))
    wait_ms: int = field(default=0, metadata=wire(minimum=0, maximum=10_000))
    leave: bool = False

    _optional: ClassVar[dict[str, Any]] = {
        "requests_per_minute": 0,
        "weight_per_minute": 0,
        "using_requests_per_minute": None,
        "using_weight_per_minute": None,
        "blocked_ms": 0,
        "blocked_reason": "",
        "wait_ms": 0,
        "leave": False,
    }

    @classmethod
    def _parse(cls, data: dict[str, Any]) -> BudgetHeartbeatRequest:
        return cls(
            _text("worker_id", _require(data, "worker_id")),
            _text("source", _require(data, "source")),
            cls._bounded("requests_per_minute", data["requests_per_minute"]),
            cls._bounded("weight_per_minute", data["weight_per_minute"]),
            _amount("using_requests_per_minute", data["using_requests_per_minute"]),
            _amount("using_weight_per_minute", data["using_weight_per_minute"]),
            cls._bounded("blocked_ms", data["blocked_ms"]),
            _choice("blocked_reason", data["blocked_reason"], BLOCK_REASONS),
            cls._bounded("wait_ms", data["wait_ms"]),
            _bool("leave", data["leave"]),
        )


#: Every wire model, in the order the OpenAPI document lists their schemas (rule 5).
WIRE_MODELS: tuple[type[_Model], ...] = (
    JobRequest,
    Job,
    WindowCounts,
    ClaimRequest,
    Lease,
    RenewRequest,
    CompleteRequest,
    FailRequest,
    LeaseInfo,
    ReasonRequest,
    KeyClaimRequest,
    KeyFinishRequest,
    BudgetHeartbeatRequest,
)
