"""The Binance spot klines source (REST, aiohttp).

Spec: ``binance[:BASE_URL][?timeout_s=SECONDS]`` — ``BASE_URL`` defaults to https://api.binance.com; tests
point it at the loopback fake exchange (devkit/fake_exchange.py).

Rules:
1. One request is ``GET {BASE_URL}/api/v3/klines?symbol=BTCUSDT&interval=1m&startTime=S&endTime=E&limit=L`` with
   ``endTime = end - 1`` (Binance's endTime is inclusive) and ``L = min(1000, slots left)``. Pagination goes
   on from the last bar received + one interval until the range is done or a page comes back empty. So exchange
   gaps stay gaps, and a short page (fewer bars than exist) costs one more request, never a hole.
2. Symbols map ``BTC/USDT`` -> ``BTCUSDT`` (``/`` removed, upper case); a symbol with ``:`` (a derivative) or
   other characters is a FatalSourceError. Intervals are Binance's names; an interval in raw ms that Binance
   does not offer is fatal too.
3. Every request passes the process's SourceLimits first (gate, then budget at weight 2). Answers map to errors
   by :mod:`provider.sources._base`; aiohttp errors and timeouts become RetryableSourceError, undecodable
   JSON and malformed pages BadResponseError. ``X-MBX-USED-WEIGHT-1M`` is kept in ``used_weight_1m``.
4. The aiohttp session is created on the first fetch, inside the running loop, and closed by ``aclose``.
"""

from __future__ import annotations

import json
import re
from typing import Any

import aiohttp
import pandas as pd

from provider.core import SeriesKey, interval_name, tracing
from provider.sources._base import (
    FetchRequest,
    Page,
    error_for_status,
    frame_from_pages,
    normalize_request,
    note_used_weight,
    parse_page,
)
from provider.sources._limits import SourceLimits
from provider.sources._spec import SourceSpec
from provider.sources.errors import BadResponseError, FatalSourceError, RetryableSourceError

__all__ = [
    "BINANCE_INTERVALS",
    "DEFAULT_BASE_URL",
    "KLINES_WEIGHT",
    "PAGE_BARS",
    "BinanceSource",
    "binance_interval",
    "binance_symbol",
    "open_binance",
]

DEFAULT_BASE_URL = "https://api.binance.com"
KLINES_PATH = "/api/v3/klines"
#: Most bars Binance returns per klines request.
PAGE_BARS = 1000
#: Request weight of one klines call (Binance spot, any limit up to 1000).
KLINES_WEIGHT = 2
#: Binance's request weight limit per minute per IP (FACTS.md, Exchanges).
IP_WEIGHT_LIMIT_1M = 6000
#: Interval names Binance spot klines accept.
BINANCE_INTERVALS = frozenset({"1s", "1m", "3m", "5m", "15m", "30m", "1h", "2h", "4h", "6h", "8h", "12h", "1d"})
_SYMBOL_RE = re.compile(r"[A-Z0-9]{2,30}")


def binance_symbol(symbol: str) -> str:
    """``BTC/USDT`` -> ``BTCUSDT``; FatalSourceError for symbols Binance spot cannot have."""
    mapped = symbol.replace("/", "").upper()
    if not _SYMBOL_RE.fullmatch(mapped):
        raise FatalSourceError(
            f"binance: symbol {symbol!r} is not a spot symbol (expected e.g. 'BTC/USDT' or 'BTCUSDT')",
            source="binance",
        )
    return mapped


def binance_interval(interval_ms: int) -> str:
    """The Binance interval name of a bar interval in ms, or FatalSourceError."""
    name = interval_name(interval_ms)
    if name not in BINANCE_INTERVALS:
        raise FatalSourceError(
            f"binance: interval {name} is not offered; use one of {', '.join(sorted(BINANCE_INTERVALS))}",
            source="binance",
        )
    return name


class BinanceSource:
    """Binance spot klines over REST with pagination, error mapping and the process's limits."""

    name = "binance"

    def __init__(
        self,
        base_url: str = DEFAULT_BASE_URL,
        *,
        limits: SourceLimits | None = None,
        timeout_s: float = 10.0,
        page_bars: int = PAGE_BARS,
        ip_weight_limit_1m: int = IP_WEIGHT_LIMIT_1M,
    ) -> None:
        if not 1 <= page_bars <= PAGE_BARS:
            raise ValueError(f"page_bars {page_bars!r} must be from 1 to {PAGE_BARS}")
        if timeout_s <= 0:
            raise ValueError(f"timeout_s {timeout_s!r} must be > 0")
        self.base_url = base_url.rstrip("/")
        self.limits = limits if limits is not None else SourceLimits()
        self.timeout_s = timeout_s
        self.page_bars = page_bars
        self.ip_weight_limit_1m = ip_weight_limit_1m
        self._session: aiohttp.ClientSession | None = None
        self._closed = False
        #: Requests sent, and the last ``X-MBX-USED-WEIGHT-1M`` the exchange reported.
        self.requests = 0
        self.used_weight_1m: int | None = None

    def __repr__(self) -> str:
        return f"BinanceSource({self.base_url!r})"

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The klines of ``[start, end)``, paginated (see the module rules)."""
        request = normalize_request(series, start, end)
        symbol = binance_symbol(request.series.symbol)
        interval = binance_interval(request.interval_ms)
        pages: list[Page] = []
        cursor = request.start_ms
        while cursor < request.end_ms:
            limit = min(self.page_bars, -(-(request.end_ms - cursor) // request.interval_ms))
            page = await self._page(request, symbol, interval, cursor, limit)
            if not len(page):
                break
            pages.append(page)
            cursor = int(page.ts_ms[-1]) + request.interval_ms
        return frame_from_pages(pages)

    async def _page(self, request: FetchRequest, symbol: str, interval: str, cursor: int, limit: int) -> Page:
        params = {
            "symbol": symbol,
            "interval": interval,
            "startTime": str(cursor),
            "endTime": str(request.end_ms - 1),
            "limit": str(limit),
        }
        rows = await self._get_json(KLINES_PATH, params, what=f"klines {symbol} {interval} from {cursor}")
        return parse_page(
            rows,
            start_ms=cursor,
            end_ms=request.end_ms,
            interval_ms=request.interval_ms,
            limit=limit,
            source=self.name,
        )

    def _client(self) -> aiohttp.ClientSession:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session

    async def _get_json(self, path: str, params: dict[str, str], *, what: str) -> Any:
        await self.limits.admit(KLINES_WEIGHT, source=self.name)

        def attributes() -> dict[str, str]:
            return {"http.request.method": "GET", "url.path": path, "seamless.source": self.name, **params}

        with tracing.span(f"exchange GET {path}", kind=tracing.SpanKind.CLIENT, attributes=attributes) as current:
            return await self._send(path, params, what, current)

    async def _send(self, path: str, params: dict[str, str], what: str, current: Any) -> Any:
        session = self._client()
        self.requests += 1
        try:
            async with session.get(self.base_url + path, params=params) as response:
                body = await response.text()
                status, headers = response.status, response.headers
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise RetryableSourceError(
                f"{self.name}: {what} failed: {type(exc).__name__} {exc}".rstrip(), source=self.name
            ) from exc
        if current is not None:
            current.set_attribute("http.response.status_code", status)
        used = note_used_weight(headers, self.limits, ip_limit_1m=self.ip_weight_limit_1m, next_weight=KLINES_WEIGHT)
        if used is not None:
            self.used_weight_1m = used
        if status != 200:
            raise error_for_status(status, headers, body, source=self.name, limits=self.limits, what=what)
        try:
            return json.loads(body)
        except ValueError as exc:
            raise BadResponseError(f"{self.name}: {what} returned invalid JSON ({exc})", source=self.name) from None

    async def aclose(self) -> None:
        """Close the HTTP session."""
        self._closed = True
        if self._session is not None:
            session, self._session = self._session, None
            await session.close()


def open_binance(spec: SourceSpec, *, limits: SourceLimits | None = None) -> BinanceSource:
    """Entry point of ``binance[:BASE_URL][?timeout_s=SECONDS]``."""
    spec.check_params(["timeout_s"])
    base_url = spec.url(spec.target, "base URL") if spec.target else DEFAULT_BASE_URL
    timeout_s = spec.number("timeout_s", 10.0, lo=0.001, hi=600.0)
    return BinanceSource(base_url, limits=limits, timeout_s=timeout_s)
