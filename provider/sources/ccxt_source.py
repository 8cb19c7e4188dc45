"""Any ccxt exchange as a source, through async ``fetch_ohlcv`` (ccxt is an optional dependency).

Spec: ``ccxt:EXCHANGE_ID[?base_url=URL&timeout_s=SECONDS&page_bars=N]``, e.g. ``ccxt:binance`` or, against the
loopback fake exchange, ``ccxt:binance?base_url=http://127.0.0.1:8080``.

Rules:
1. ccxt is imported when a spec is opened; without it the spec fails with an error saying how to install it.
2. The exchange object is built on the first fetch, inside the running loop, with ccxt's own throttle off (the
   process's SourceLimits paces requests; two limiters would double-count) and, for Binance, markets loaded
   for spot only (the only klines used; it avoids the futures hosts).
3. ``base_url`` redirects the whole exchange: every URL in ``urls['api']`` keeps its path and gets the scheme
   and host of ``base_url`` (``https://api.binance.com/api/v3`` -> ``http://127.0.0.1:8080/api/v3``).
4. Markets load once per source. An unknown symbol or a timeframe the exchange lacks is a FatalSourceError.
5. Pagination as in :mod:`provider.sources.binance`: ``since`` = last bar + one interval, ``until`` = end - 1,
   until the range is done or a page has no new bar; rows outside ``[since, end)`` are dropped first because
   not every exchange honours ``until``. Exchanges legitimately miss candles: gaps stay gaps.
6. Errors: when the HTTP answer is known (recorded per request by an ``on_rest_response`` hook) it maps by
   status exactly like the binance source (429/418 close the gate with Retry-After); otherwise by ccxt class:
   NetworkError (incl. RateLimitExceeded, DDoSProtection) retryable, BadResponse -> BadResponseError, any other
   ccxt error fatal.
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pandas as pd
from multidict import CIMultiDict

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
from provider.sources.errors import (
    BadResponseError,
    FatalSourceError,
    RateLimitedError,
    RetryableSourceError,
    SourceError,
)

__all__ = ["CcxtSource", "open_ccxt", "redirect_urls"]

#: The HTTP answer of the request running in this task: {"status": int, "headers": CIMultiDict}.
_ANSWER: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar("ccxt_answer", default=None)
_INSTALL_HINT = "pip install 'seamless-data-provider[ccxt]'"


def redirect_urls(api: Any, base_url: str) -> Any:
    """``urls['api']`` with every URL's scheme and host replaced by those of ``base_url`` (paths kept)."""
    if isinstance(api, dict):
        return {key: redirect_urls(value, base_url) for key, value in api.items()}
    if isinstance(api, str) and api.startswith(("http://", "https://")):
        base = urlsplit(base_url)
        parts = urlsplit(api)
        return urlunsplit((base.scheme, base.netloc, base.path.rstrip("/") + parts.path, parts.query, ""))
    return api


def _parse_json(exchange: Any) -> Any:
    parse = type(exchange).parse_json

    def parse_json(text: Any) -> Any:
        # ccxt answers None for undecodable JSON and carries on; remember it so the page is rejected.
        result = parse(exchange, text)
        answer = _ANSWER.get()
        if result is None and answer is not None and isinstance(text, str) and text.strip():
            answer["bad_json"] = True
        return result

    return parse_json


def _on_rest_response(code: Any, reason: Any, url: Any, method: Any, headers: Any, body: Any, *_: Any) -> Any:
    answer = _ANSWER.get()
    if answer is not None:
        answer["status"] = int(code)
        answer["headers"] = CIMultiDict(headers or {})
        answer["body"] = body if isinstance(body, str) else ""
    return body


class CcxtSource:
    """OHLCV from one ccxt exchange (async support), paginated, under the process's limits."""

    name = "ccxt"

    def __init__(
        self,
        ccxt_module: Any,
        exchange_id: str,
        *,
        base_url: str | None = None,
        limits: SourceLimits | None = None,
        timeout_s: float = 10.0,
        page_bars: int = 1000,
    ) -> None:
        self._ccxt = ccxt_module
        self.exchange_id = exchange_id
        self.base_url = base_url
        self.limits = limits if limits is not None else SourceLimits()
        self.timeout_s = timeout_s
        self.page_bars = page_bars
        binance_like = exchange_id.startswith("binance")
        #: Budget weight of one OHLCV request and of loading markets (Binance's weights; 1 elsewhere).
        self.request_weight = 2 if binance_like else 1
        self.markets_weight = 20 if binance_like else 1
        self._exchange: Any = None
        self._markets_lock = asyncio.Lock()
        self._closed = False
        #: Requests sent through ccxt (markets included).
        self.requests = 0

    def __repr__(self) -> str:
        return f"CcxtSource({self.exchange_id!r}, base_url={self.base_url!r})"

    def _build(self) -> Any:
        if self._closed:
            raise RuntimeError(f"{self!r} is closed")
        if self._exchange is None:
            options: dict[str, Any] = {"enableRateLimit": False, "timeout": int(self.timeout_s * 1000)}
            if self.exchange_id == "binance":
                options["options"] = {"fetchMarkets": {"types": ["spot"]}, "fetchCurrencies": False}
            exchange = getattr(self._ccxt, self.exchange_id)(options)
            if self.base_url is not None:
                exchange.urls["api"] = redirect_urls(exchange.urls["api"], self.base_url)
            exchange.on_rest_response = _on_rest_response
            exchange.parse_json = _parse_json(exchange)
            self._exchange = exchange
        return self._exchange

    async def _call(self, weight: float, what: str, method: Any, *args: Any, **kwargs: Any) -> Any:
        await self.limits.admit(weight, source=self.name)
        answer: dict[str, Any] = {}
        token = _ANSWER.set(answer)
        self.requests += 1
        try:
            result = await method(*args, **kwargs)
        except self._ccxt.BaseError as exc:
            raise self._map_error(exc, answer, what) from exc
        except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
            # ccxt parses whatever came back; junk in a 200 answer surfaces as these.
            message = f"{self.name}: {what} returned an unusable answer ({exc!r})"
            raise BadResponseError(message, source=self.name) from exc
        finally:
            _ANSWER.reset(token)
        if answer.get("bad_json"):
            raise BadResponseError(f"{self.name}: {what} returned invalid JSON", source=self.name)
        if "headers" in answer:
            note_used_weight(answer["headers"], self.limits, ip_limit_1m=6000, next_weight=self.request_weight)
        return result

    def _map_error(self, exc: Exception, answer: dict[str, Any], what: str) -> SourceError:
        status = answer.get("status")
        if isinstance(status, int) and status >= 400:
            return error_for_status(
                status,
                answer.get("headers", CIMultiDict()),
                answer.get("body", ""),
                source=self.name,
                limits=self.limits,
                what=what,
            )
        message = f"{self.name}: {what} failed: {type(exc).__name__} {exc}"
        errors = self._ccxt
        if isinstance(exc, errors.RateLimitExceeded):
            return RateLimitedError(message, retry_after_s=1.0, source=self.name, status=status)
        if isinstance(exc, errors.NetworkError):
            return RetryableSourceError(message, source=self.name, status=status)
        if isinstance(exc, errors.BadResponse):
            return BadResponseError(message, source=self.name, status=status)
        return FatalSourceError(message, source=self.name, status=status)

    async def _markets(self) -> Any:
        exchange = self._build()
        async with self._markets_lock:
            if not exchange.markets:
                await self._call(self.markets_weight, "load_markets", exchange.load_markets)
        return exchange

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The OHLCV bars of ``[start, end)`` (see the module rules)."""
        request = normalize_request(series, start, end)
        exchange = await self._markets()
        symbol = request.series.symbol
        if symbol not in exchange.markets and symbol not in (exchange.markets_by_id or {}):
            raise FatalSourceError(
                f"{self.name}: {self.exchange_id} has no market {symbol!r} ({len(exchange.markets)} markets)",
                source=self.name,
            )
        timeframe = interval_name(request.interval_ms)
        if timeframe not in (exchange.timeframes or {}):
            raise FatalSourceError(
                f"{self.name}: {self.exchange_id} has no timeframe {timeframe}; it offers "
                f"{', '.join(exchange.timeframes or {})}",
                source=self.name,
            )
        pages: list[Page] = []
        cursor = request.start_ms
        while cursor < request.end_ms:
            page = await self._page(exchange, request, symbol, timeframe, cursor)
            if not len(page):
                break
            pages.append(page)
            cursor = int(page.ts_ms[-1]) + request.interval_ms
        return frame_from_pages(pages)

    async def _page(self, exchange: Any, request: FetchRequest, symbol: str, timeframe: str, cursor: int) -> Page:
        limit = min(self.page_bars, -(-(request.end_ms - cursor) // request.interval_ms))
        what = f"fetch_ohlcv {symbol} {timeframe} from {cursor}"
        attributes = {"seamless.source": self.name, "symbol": symbol, "timeframe": timeframe, "since": cursor}
        with tracing.span("exchange fetch_ohlcv", kind=tracing.SpanKind.CLIENT, attributes=attributes):
            rows = await self._call(
                self.request_weight,
                what,
                exchange.fetch_ohlcv,
                symbol,
                timeframe,
                cursor,
                limit,
                {"until": request.end_ms - 1},
            )
        if isinstance(rows, list):
            rows = [row for row in rows if not _outside(row, cursor, request.end_ms)]
        return parse_page(
            rows,
            start_ms=cursor,
            end_ms=request.end_ms,
            interval_ms=request.interval_ms,
            limit=limit,
            source=self.name,
        )

    async def aclose(self) -> None:
        """Close the exchange's HTTP session."""
        self._closed = True
        if self._exchange is not None:
            exchange, self._exchange = self._exchange, None
            await exchange.close()


def _outside(row: Any, start_ms: int, end_ms: int) -> bool:
    # Only well-formed rows outside the range are dropped; malformed ones stay so parse_page names them.
    return isinstance(row, list) and bool(row) and isinstance(row[0], int) and not start_ms <= row[0] < end_ms


def open_ccxt(spec: SourceSpec, *, limits: SourceLimits | None = None) -> CcxtSource:
    """Entry point of ``ccxt:EXCHANGE_ID[?base_url=URL&timeout_s=SECONDS&page_bars=N]``."""
    spec.check_params(["base_url", "timeout_s", "page_bars"])
    try:
        import ccxt.async_support as ccxt_async
    except ImportError:
        raise spec.error(f"the ccxt source needs the optional dependency ccxt: {_INSTALL_HINT}") from None
    exchange_id = spec.target
    if not exchange_id:
        raise spec.error("name the exchange, e.g. 'ccxt:binance'")
    if exchange_id not in ccxt_async.exchanges:
        raise spec.error(f"ccxt has no exchange {exchange_id!r} (see ccxt.exchanges)")
    base_url = spec.params.get("base_url")
    return CcxtSource(
        ccxt_async,
        exchange_id,
        base_url=spec.url(base_url, "base_url") if base_url is not None else None,
        limits=limits,
        timeout_s=spec.number("timeout_s", 10.0, lo=0.001, hi=600.0),
        page_bars=int(spec.number("page_bars", 1000, lo=1, hi=10_000, integer=True)),
    )
