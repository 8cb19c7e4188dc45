"""Time and interval normalization.

Rules:
1. Every instant inside the system is an ``int`` of epoch milliseconds, UTC.
2. Public inputs may also be ``datetime``, ``pd.Timestamp``, ``numpy.datetime64`` or ISO-8601 strings. A naive
   value means UTC. Sub-millisecond precision is truncated toward negative infinity (floor), so an instant never
   moves into the next millisecond.
3. Intervals are the exchange names below or a positive ``int`` of milliseconds.
4. Bad input raises ``ValueError`` naming the value and what is allowed; nothing here reads the clock.
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from provider.core.errors import short_repr

__all__ = ["INTERVALS", "interval_ms", "ms_to_iso", "to_ms"]

_SECOND_MS = 1_000
_MINUTE_MS = 60 * _SECOND_MS
_HOUR_MS = 60 * _MINUTE_MS
_DAY_MS = 24 * _HOUR_MS

#: The bar intervals the system knows, by name, in milliseconds.
INTERVALS: dict[str, int] = {
    "1s": _SECOND_MS,
    "1m": _MINUTE_MS,
    "3m": 3 * _MINUTE_MS,
    "5m": 5 * _MINUTE_MS,
    "15m": 15 * _MINUTE_MS,
    "30m": 30 * _MINUTE_MS,
    "1h": _HOUR_MS,
    "2h": 2 * _HOUR_MS,
    "4h": 4 * _HOUR_MS,
    "6h": 6 * _HOUR_MS,
    "8h": 8 * _HOUR_MS,
    "12h": 12 * _HOUR_MS,
    "1d": _DAY_MS,
}

_EPOCH = _dt.datetime(1970, 1, 1, tzinfo=_dt.UTC)
#: Instants outside [1970, 2200) are almost always unit mistakes (seconds or ns passed as ms).
_MIN_MS = 0
_MAX_MS = 7_258_118_400_000


def interval_ms(value: Any) -> int:
    """Return the interval in milliseconds for a name such as ``"1m"`` or a positive int of ms."""
    if isinstance(value, bool):
        raise ValueError(f"interval {value!r} is not valid; use one of {', '.join(INTERVALS)} or a positive int of ms")
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"interval {value!r} must be a positive number of milliseconds")
        return value
    if isinstance(value, str) and value in INTERVALS:
        return INTERVALS[value]
    raise ValueError(f"interval {value!r} is not valid; use one of {', '.join(INTERVALS)} or a positive int of ms")


def interval_name(ms: int) -> str:
    """Return the canonical name of an interval in ms (``60000 -> "1m"``), or its decimal ms text."""
    for name, value in INTERVALS.items():
        if value == ms:
            return name
    return str(ms)


def _datetime_to_ms(value: _dt.datetime) -> int:
    if value.tzinfo is None:
        value = value.replace(tzinfo=_dt.UTC)
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1000 + delta.microseconds // 1000


def _checked(ms: int, original: Any) -> int:
    if not _MIN_MS <= ms < _MAX_MS:
        shown = short_repr(original)
        when = f"{shown} ms since the epoch" if shown == short_repr(ms) else f"{shown} ({ms} ms since the epoch)"
        raise ValueError(
            f"time {when} is outside 1970-01-01..2200-01-01; "
            "pass epoch milliseconds (not seconds or nanoseconds), a datetime or an ISO-8601 string"
        )
    return ms


def to_ms(value: Any) -> int:
    """Normalize an instant to int epoch milliseconds UTC, or raise ``ValueError`` naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"time {value!r} is not a time")
    if isinstance(value, int):
        return _checked(value, value)
    if hasattr(value, "as_unit") and isinstance(value, _dt.datetime):  # pd.Timestamp: ns precision
        stamp: Any = value
        if stamp.tzinfo is None:
            stamp = stamp.tz_localize("UTC")
        return _checked(stamp.as_unit("ns").value // 1_000_000, value)
    if isinstance(value, _dt.datetime):
        return _checked(_datetime_to_ms(value), value)
    if isinstance(value, _dt.date):
        return _checked(_datetime_to_ms(_dt.datetime(value.year, value.month, value.day)), value)
    if isinstance(value, str):
        return _checked(_parse_iso(value), value)
    return _checked(_other_to_ms(value), value)


def _parse_iso(text: str) -> int:
    stripped = text.strip()
    if stripped.endswith(("Z", "z")):
        stripped = stripped[:-1] + "+00:00"
    try:
        parsed = _dt.datetime.fromisoformat(stripped)
    except ValueError:
        raise ValueError(
            f"time {text!r} is not an ISO-8601 time; use e.g. '2024-01-01T00:00:00Z' or epoch milliseconds"
        ) from None
    return _datetime_to_ms(parsed)


def _other_to_ms(value: Any) -> int:
    # numpy integers and datetime64 values, without importing numpy here.
    kind = type(value).__name__
    if kind.startswith(("int", "uint")) and hasattr(value, "dtype"):
        return int(value)
    if kind == "datetime64":
        nanos = int(value.astype("datetime64[ns]").astype("int64"))
        return nanos // 1_000_000
    raise ValueError(
        f"time {value!r} of type {type(value).__name__} is not supported; "
        "use int epoch ms, datetime, pd.Timestamp or an ISO-8601 string"
    )


def ms_to_iso(ms: int) -> str:
    """Render epoch ms as an ISO-8601 UTC string with a ``Z`` suffix (for messages and logs)."""
    moment = _EPOCH + _dt.timedelta(milliseconds=ms)
    text = moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return text.replace(".000Z", "Z")
