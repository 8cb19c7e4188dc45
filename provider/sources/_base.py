"""What every source shares: the Source protocol, request normalization, page checks, frame building and the
table that turns HTTP answers into source errors.

Rules:
1. ``fetch(series, start, end)`` returns the bars of ``[start, end)`` snapped outward to the bar grid, as a
   contract frame (provider.frames): sorted, unique ``ts``, every ``ts`` on the grid and inside the range.
   Missing bars (exchange gaps) stay missing; a source never invents rows.
2. ``series`` is a :class:`~provider.core.SeriesKey` or its text; only its symbol and interval matter to a source
   (the source field names the data origin for storage and is not checked here).
3. Pages from an exchange are checked before they are trusted: each row has six numeric fields, timestamps are
   strictly increasing, on the grid, inside the asked range and no more than the asked limit. Anything else is a
   :class:`~provider.sources.BadResponseError` (retryable).
4. HTTP status -> error, in one table (:func:`error_for_status`): 429 -> RateLimitedError, 418 -> BannedError,
   5xx / 403 (Binance WAF) / 408 -> RetryableSourceError, any other non-2xx -> FatalSourceError; Binance's error
   JSON ``{code, msg}`` goes into the message. 429 and 418 close the process's BanGate for the server's
   Retry-After before the error is raised, so every other request of the process to the source waits too
   (Binance bans an IP that keeps going after a 429). Retry-After may be seconds (integer or fractional) or an
   HTTP date; when absent, the defaults below apply.
5. ``X-MBX-USED-WEIGHT-1M`` reports the weight the IP used in the current minute, all processes included. When
   the next request would exceed the IP's limit, the gate closes until the next wall-clock minute.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from provider.core import SeriesKey, snap_range, to_ms
from provider.frames import empty_frame, frame_from_arrays
from provider.sources._limits import SourceLimits
from provider.sources.errors import (
    BadResponseError,
    BannedError,
    FatalSourceError,
    RateLimitedError,
    RetryableSourceError,
    SourceError,
)

__all__ = [
    "DEFAULT_BAN_S",
    "DEFAULT_COOLDOWN_S",
    "FetchRequest",
    "Page",
    "Source",
    "error_for_status",
    "frame_from_pages",
    "normalize_request",
    "note_used_weight",
    "parse_page",
    "retry_after_s",
]


@runtime_checkable
class Source(Protocol):
    """A bar fetcher: the object :func:`provider.sources.open_source` returns."""

    @property
    def name(self) -> str:
        """The source's scheme (``synthetic``, ``binance``, ...), for logs and metrics labels."""
        ...

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The bars of ``[start, end)`` as a contract frame."""
        ...

    async def aclose(self) -> None:
        """Release connections; the source is unusable afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class FetchRequest:
    """A normalized fetch: the series and its grid-snapped, half-open range in epoch ms."""

    series: SeriesKey
    start_ms: int
    end_ms: int
    interval_ms: int

    @property
    def bars(self) -> int:
        """Grid slots in the range (an upper bound on the bars a source can return)."""
        return (self.end_ms - self.start_ms) // self.interval_ms


def normalize_request(series: SeriesKey | str, start: Any, end: Any) -> FetchRequest:
    """Parse the series, normalize the times and snap ``[start, end)`` outward to the grid (ValueError if bad)."""
    key = SeriesKey.parse(series)
    step = key.interval_ms
    start_ms, end_ms = to_ms(start), to_ms(end)
    if start_ms > end_ms:
        raise ValueError(f"start {start!r} ({start_ms} ms) is after end {end!r} ({end_ms} ms)")
    lo, hi = snap_range(start_ms, end_ms, step)
    return FetchRequest(key, lo, hi, step)


@dataclass(frozen=True, slots=True)
class Page:
    """One checked page of bars: int64 open times and a float64 (n, 5) array of open, high, low, close, volume."""

    ts_ms: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.ts_ms)


def parse_page(rows: Any, *, start_ms: int, end_ms: int, interval_ms: int, limit: int, source: str) -> Page:
    """Check one exchange page (rows of ``[open_time, open, high, low, close, volume, ...]``) and convert it.

    Rows must have open times strictly increasing, on the grid and inside ``[start_ms, end_ms)``, and there may
    be at most ``limit`` of them. Raises :class:`BadResponseError` naming the first problem.
    """
    if not isinstance(rows, list):
        raise BadResponseError(f"{source}: expected a JSON array of bars, got {type(rows).__name__}", source=source)
    if len(rows) > limit:
        raise BadResponseError(f"{source}: page has {len(rows)} bars, more than the limit {limit}", source=source)
    if not rows:
        return Page(np.empty(0, dtype=np.int64), np.empty((0, 5)))
    try:
        stamps = np.array([int(row[0]) for row in rows], dtype=np.int64)
        values = np.array([[float(x) for x in row[1:6]] for row in rows], dtype=np.float64)
    except (TypeError, ValueError, IndexError, OverflowError) as exc:
        raise BadResponseError(f"{source}: malformed bar row ({exc})", source=source) from None
    if values.shape != (len(rows), 5) or not np.isfinite(values).all():
        raise BadResponseError(f"{source}: bars need five finite numbers after the open time", source=source)
    problem = _page_problem(stamps, start_ms, end_ms, interval_ms)
    if problem:
        raise BadResponseError(f"{source}: {problem}", source=source)
    return Page(stamps, values)


def _page_problem(stamps: np.ndarray, start_ms: int, end_ms: int, interval_ms: int) -> str:
    if (np.diff(stamps) <= 0).any():
        return "bar open times are not strictly increasing"
    if (stamps % interval_ms != 0).any():
        return f"a bar open time is off the {interval_ms} ms grid"
    if stamps[0] < start_ms or stamps[-1] >= end_ms:
        return f"bars {int(stamps[0])}..{int(stamps[-1])} fall outside the asked range [{start_ms}, {end_ms})"
    return ""


def frame_from_pages(pages: Sequence[Page]) -> pd.DataFrame:
    """Concatenate checked, ascending, non-overlapping pages into one contract frame."""
    pages = [p for p in pages if len(p)]
    if not pages:
        return empty_frame()
    stamps = np.concatenate([p.ts_ms for p in pages])
    values = np.concatenate([p.values for p in pages])
    if (np.diff(stamps) <= 0).any():
        # Pages are each checked, but a misbehaving exchange could repeat bars across pages: keep the first.
        stamps, first = np.unique(stamps, return_index=True)
        values = values[first]
    return frame_from_arrays(stamps, *values.T)


#: Wait after a 429 without Retry-After.
DEFAULT_COOLDOWN_S = 1.0
#: Wait after a 418 without Retry-After (Binance bans last minutes to days; this is a floor, not a guess).
DEFAULT_BAN_S = 120.0
#: Statuses worth retrying besides 5xx: 403 is Binance's WAF limit, 408 a request timeout.
_RETRYABLE_4XX = frozenset({403, 408})
#: Binance reports the IP's used request weight of the current minute in this header.
USED_WEIGHT_HEADER = "X-MBX-USED-WEIGHT-1M"


def retry_after_s(value: str | None, *, default_s: float, wall_now_s: float) -> float:
    """Seconds a ``Retry-After`` header asks for (seconds or an HTTP date), or ``default_s``."""
    if not value:
        return default_s
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - wall_now_s)
    except (TypeError, ValueError):
        return default_s


def _detail(body: str) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200].strip()
    if isinstance(data, dict) and "msg" in data:
        return f"code {data.get('code')}: {data['msg']}"
    return body[:200].strip()


def error_for_status(
    status: int, headers: Mapping[str, str], body: str, *, source: str, limits: SourceLimits, what: str
) -> SourceError:
    """The error for a non-2xx answer to ``what`` (closing the gate on 429/418, see the module rules)."""
    detail = _detail(body)
    message = f"{source}: {what} answered HTTP {status}" + (f" ({detail})" if detail else "")
    if status in (418, 429):
        default_s = DEFAULT_BAN_S if status == 418 else DEFAULT_COOLDOWN_S
        wait_s = retry_after_s(headers.get("Retry-After"), default_s=default_s, wall_now_s=limits.wall_clock())
        if status == 418:
            until_s = limits.gate.block(wait_s, "banned")
            return BannedError(message, retry_after_s=wait_s, until_s=until_s, source=source, status=status)
        limits.gate.block(wait_s, "rate_limited")
        return RateLimitedError(message, retry_after_s=wait_s, source=source, status=status)
    if status >= 500 or status in _RETRYABLE_4XX:
        return RetryableSourceError(message, source=source, status=status)
    return FatalSourceError(message, source=source, status=status)


def note_used_weight(
    headers: Mapping[str, str], limits: SourceLimits, *, ip_limit_1m: int, next_weight: float
) -> int | None:
    """Read ``X-MBX-USED-WEIGHT-1M`` and close the gate when the IP's minute is spent; returns the value."""
    raw = headers.get(USED_WEIGHT_HEADER)
    if raw is None:
        return None
    try:
        used = int(raw)
    except ValueError:
        return None
    limits.note_used_weight(used, ip_limit_1m, next_weight)
    return used
