"""A loopback exchange that speaks the Binance spot klines API, serves synthetic bars and injects faults.

Use it in tests (``async with FakeExchange(seed=7) as ex: ex.url``; devkit.workers.Exchange runs it in a process of
its own) or run it from the repository root (``python -m devkit.fake_exchange --port 0 --rpm 600 --seed 7`` prints
its URL, then serves until SIGINT/SIGTERM).

Rules:
1. Bars: ``GET /api/v3/klines`` answers exactly the bars ``synthetic:SEED?gaps=G`` gives for the symbol (the
   synthetic market of ``BTCUSDT`` is the one of ``BTC/USDT``), open times in ``[startTime, endTime]``, at most
   ``limit`` (default 500, max 1000), in Binance's row format (strings for prices, closeTime, ...). Bad
   parameters answer 400 with Binance's ``{"code", "msg"}``. ``/api/v3/exchangeInfo``, ``/ping`` and ``/time``
   exist for ccxt.
2. Limits apply to every API request: during a ban -> 418; a request that arrives during a 429 cooldown (the
   client did not honour Retry-After) gets another 429 ``tolerance`` times (default 0), then starts a ban of
   ``ban_s`` -> 418; beyond ``rpm`` / ``rps`` in the
   sliding window -> 429. Retry-After is fractional seconds (rounded up to the ms) unless
   ``integer_retry_after``. ``X-MBX-USED-WEIGHT-1M`` reports the weight used this wall-clock minute.
3. Faults are queued and each is consumed by one klines request, in order: ``fail`` (5xx), ``delay`` (sleep, for
   client timeouts), ``bad_json``, ``short`` (fewer bars than exist), ``rate_limit`` (a forced 429 with
   Retry-After), ``ban`` (this request starts a ban of ``seconds``). ``ban(seconds)`` starts a ban at once.
   Python methods and ``POST /_admin/faults`` (``{"kind", "count", ...}``) do the same; also
   ``POST /_admin/ban``, ``POST /_admin/limits``, ``POST /_admin/reset``, ``GET /_admin/stats``.
4. Accounting: every API request is counted (total, per status, klines per (symbol, startTime)). The first 418
   of a ban tells the client; any request arriving after that and before the ban ends is recorded in
   ``during_ban`` (monotonic seconds): a well-behaved client leaves it empty. ``ban_notices`` holds the time of
   each 418 that announced a ban, so ``max(during_ban) - ban_notices[-1]`` is how long the clients went on.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import signal
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from aiohttp import web

from provider.core import INTERVALS
from provider.sources.synthetic import synthetic_arrays

__all__ = ["DEFAULT_SYMBOLS", "FAULT_KINDS", "FakeExchange", "Fault"]

DEFAULT_SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/BTC")
FAULT_KINDS = ("fail", "delay", "bad_json", "short", "rate_limit", "ban")
_WEIGHTS = {"/api/v3/klines": 2, "/api/v3/exchangeInfo": 20}
_MAX_LIMIT = 1000


@dataclass
class Fault:
    """One queued fault; only the fields of its kind matter."""

    kind: str
    status: int = 500  #: fail: the 5xx status
    delay_s: float = 1.0  #: delay: seconds before answering
    bars: int | None = None  #: short: bars to serve (default: half of what exists)
    retry_after_s: float = 0.2  #: rate_limit: the Retry-After of the forced 429
    seconds: float = 1.0  #: ban: length of the ban this request starts


class _BinanceError(Exception):
    def __init__(self, code: int, msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg = code, msg


def _json(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(text=json.dumps(data), status=status, content_type="application/json", headers=headers)


class FakeExchange:
    """The loopback Binance-like exchange of the module rules."""

    def __init__(
        self,
        *,
        seed: int = 0,
        gaps: float = 0.0,
        rpm: int | None = None,
        rps: int | None = None,
        ban_s: float = 1.0,
        tolerance: int = 0,
        integer_retry_after: bool = False,
        symbols: Iterable[str] = DEFAULT_SYMBOLS,
        host: str = "127.0.0.1",
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.seed, self.gaps, self.ban_s, self.tolerance = seed, gaps, ban_s, tolerance
        self.integer_retry_after = integer_retry_after
        self.pairs = {s.replace("/", ""): tuple(s.split("/", 1)) for s in symbols}
        self.host, self.port = host, port
        self._clock, self._wall_clock = clock, wall_clock
        self.set_rate_limit(rpm=rpm, rps=rps)
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.reset()

    # -- control ---------------------------------------------------------------------------------------------
    def set_rate_limit(
        self, *, rpm: int | None = None, rps: int | None = None, limit: int | None = None, window_s: float | None = None
    ) -> None:
        """Limit API requests per minute, per second, or ``limit`` per ``window_s`` seconds (sliding window; a short
        window lets a test see a per-minute budget's overshoot in seconds); all None = unlimited."""
        if limit is not None and window_s is not None:
            self._limit: int | None = limit
            self._window_s = float(window_s)
        else:
            self._limit = rps or rpm or None
            self._window_s = 1.0 if rps else 60.0
        self._recent: deque[float] = deque()

    def reset(self) -> None:
        """Forget faults, bans, cooldowns and counters."""
        self.faults: deque[Fault] = deque()
        self._ban_until = self._cooldown_until = -math.inf
        self._strikes = 0
        self._ban_announced = False
        self.total_requests = 0
        self.statuses: Counter[int] = Counter()
        self.by_start: Counter[tuple[str, int | None]] = Counter()
        self.during_ban: list[float] = []
        #: Monotonic seconds of each 418 that told a client of a new ban (the first 418 of each ban).
        self.ban_notices: list[float] = []
        self.bans = 0
        self._weight_minute, self._weight_used = -1, 0

    def inject(self, kind: str, count: int = 1, **params: Any) -> None:
        """Queue ``count`` faults of ``kind`` (one of FAULT_KINDS) with the given Fault fields."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"fault kind {kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if not isinstance(count, int) or count < 1:
            raise ValueError(f"fault count {count!r} must be an int >= 1")
        self.faults.extend(Fault(kind, **params) for _ in range(count))

    def fail_next(self, n: int = 1, status: int = 500) -> None:
        """The next ``n`` klines requests answer ``status``."""
        self.inject("fail", n, status=status)

    def delay_next(self, n: int = 1, delay_s: float = 1.0) -> None:
        """The next ``n`` klines requests wait ``delay_s`` before answering."""
        self.inject("delay", n, delay_s=delay_s)

    def bad_json_next(self, n: int = 1) -> None:
        """The next ``n`` klines requests answer truncated JSON."""
        self.inject("bad_json", n)

    def short_pages_next(self, n: int = 1, bars: int | None = None) -> None:
        """The next ``n`` klines requests serve fewer bars than exist."""
        self.inject("short", n, bars=bars)

    def rate_limit_next(self, n: int = 1, retry_after_s: float = 0.2) -> None:
        """The next ``n`` klines requests answer 429 with ``retry_after_s``."""
        self.inject("rate_limit", n, retry_after_s=retry_after_s)

    def ban_next(self, seconds: float = 1.0) -> None:
        """The next klines request starts a ban of ``seconds`` and answers 418."""
        self.inject("ban", 1, seconds=seconds)

    def ban(self, seconds: float) -> None:
        """Ban now for ``seconds``: every API request answers 418 until it ends."""
        self._start_ban(self._clock(), seconds, announced=False)

    def banned_s(self) -> float:
        """Seconds the current ban still lasts (0 when none)."""
        return max(0.0, self._ban_until - self._clock())

    def stats(self) -> dict[str, Any]:
        """Counters as JSON-friendly data (also ``GET /_admin/stats``)."""
        return {
            "total": self.total_requests,
            "klines": sum(self.by_start.values()),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "by_start": [[s, t, n] for (s, t), n in sorted(self.by_start.items(), key=str)],
            "during_ban": list(self.during_ban),
            "ban_notices": list(self.ban_notices),
            "bans": self.bans,
            "pending_faults": [asdict(f) for f in self.faults],
        }

    # -- lifecycle -------------------------------------------------------------------------------------------
    def app(self) -> web.Application:
        """The aiohttp application (API routes and admin routes)."""
        app = web.Application(client_max_size=64 * 1024)
        app.router.add_get("/api/v3/klines", self._api(self._klines))
        app.router.add_get("/api/v3/exchangeInfo", self._api(self._exchange_info))
        app.router.add_get("/api/v3/ping", self._api(self._ping))
        app.router.add_get("/api/v3/time", self._api(self._time))
        app.router.add_post("/_admin/faults", self._admin_faults)
        app.router.add_post("/_admin/ban", self._admin_ban)
        app.router.add_post("/_admin/limits", self._admin_limits)
        app.router.add_post("/_admin/reset", self._admin_reset)
        app.router.add_get("/_admin/stats", self._admin_stats)
        return app

    async def start(self) -> str:
        """Bind (port 0 = a free port) and serve; returns the base URL."""
        self._runner = web.AppRunner(self.app(), handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        host, port = self._runner.addresses[0][:2]
        self.port = port
        self.url = f"http://{host}:{port}"
        return self.url

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            runner, self._runner = self._runner, None
            await runner.cleanup()

    async def __aenter__(self) -> FakeExchange:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    # -- API -------------------------------------------------------------------------------------------------
    def _now_ms(self) -> int:
        return int(self._wall_clock() * 1000)

    def _retry_after(self, seconds: float) -> str:
        return str(math.ceil(seconds)) if self.integer_retry_after else f"{math.ceil(seconds * 1000) / 1000:.3f}"

    def _start_ban(self, now: float, seconds: float, *, announced: bool) -> None:
        self._ban_until = max(self._ban_until, now + seconds)
        self._ban_announced = announced
        self.bans += 1

    def _limited(self, status: int, seconds: float, msg: str) -> web.Response:
        headers = {"Retry-After": self._retry_after(seconds)}
        return _json({"code": -1003, "msg": msg}, status, headers)

    def _gatekeep(self, now: float) -> web.Response | None:
        if now < self._ban_until:
            if self._ban_announced:
                self.during_ban.append(now)
            else:
                self.ban_notices.append(now)
            self._ban_announced = True
            return self._limited(418, self._ban_until - now, "Way too many requests; IP banned.")
        if now < self._cooldown_until:
            self._strikes += 1
            if self._strikes <= self.tolerance:
                return self._limited(429, self._cooldown_until - now, "Too many requests; still cooling down.")
            self._start_ban(now, self.ban_s, announced=True)
            self.ban_notices.append(now)
            return self._limited(418, self.ban_s, "Way too many requests during a 429; IP banned.")
        self._strikes = 0
        while self._recent and self._recent[0] <= now - self._window_s:
            self._recent.popleft()
        if self._limit is not None and len(self._recent) >= self._limit:
            wait_s = self._recent[0] + self._window_s - now
            self._cooldown_until = now + wait_s
            return self._limited(429, wait_s, "Too many requests; please use the Retry-After header.")
        self._recent.append(now)
        return None

    def _api(self, handler: Callable[[web.Request], Any]) -> Callable[[web.Request], Any]:
        async def wrapped(request: web.Request) -> web.StreamResponse:
            self.total_requests += 1
            minute = int(self._wall_clock() // 60)
            if minute != self._weight_minute:
                self._weight_minute, self._weight_used = minute, 0
            self._weight_used += _WEIGHTS.get(request.path, 1)
            if request.path == "/api/v3/klines":
                start = request.query.get("startTime", "")
                self.by_start[(request.query.get("symbol", ""), int(start) if start.isdigit() else None)] += 1
            response = self._gatekeep(self._clock())
            if response is None:
                try:
                    response = await handler(request)
                except _BinanceError as exc:
                    response = _json({"code": exc.code, "msg": exc.msg}, 400)
            response.headers["X-MBX-USED-WEIGHT-1M"] = str(self._weight_used)
            self.statuses[response.status] += 1
            return response

        return wrapped

    async def _klines(self, request: web.Request) -> web.Response:
        query = request.query
        symbol = query.get("symbol", "")
        start = _int_param(query, "startTime")
        fault = self.faults.popleft() if self.faults else None
        if fault is not None:
            early = await self._early_fault(fault)
            if early is not None:
                return early
        rows = self._rows(symbol, query.get("interval"), start, _int_param(query, "endTime"), query.get("limit"))
        if fault is not None and fault.kind == "short" and len(rows) > 1:
            rows = rows[: max(1, min(fault.bars or len(rows) // 2, len(rows) - 1))]
        text = json.dumps(rows)
        if fault is not None and fault.kind == "bad_json":
            text = text[: len(text) // 2]
        return web.Response(text=text, content_type="application/json")

    async def _early_fault(self, fault: Fault) -> web.Response | None:
        now = self._clock()
        if fault.kind == "fail":
            return _json(
                {"code": -1000, "msg": "An unknown error occurred while processing the request."}, fault.status
            )
        if fault.kind == "rate_limit":
            self._cooldown_until = now + fault.retry_after_s
            return self._limited(429, fault.retry_after_s, "Too many requests (injected).")
        if fault.kind == "ban":
            self._start_ban(now, fault.seconds, announced=True)
            self.ban_notices.append(now)
            return self._limited(418, fault.seconds, "IP banned (injected).")
        if fault.kind == "delay":
            await asyncio.sleep(fault.delay_s)
        return None

    def _rows(
        self, symbol: str, interval: str | None, start: int | None, end: int | None, limit: str | None
    ) -> list[list[Any]]:
        if symbol not in self.pairs:
            raise _BinanceError(-1121, "Invalid symbol.")
        if interval not in INTERVALS:
            raise _BinanceError(-1120, "Invalid interval.")
        step = INTERVALS[interval]
        count = int(limit) if limit is not None and limit.isdigit() else -1 if limit is not None else 500
        if not 1 <= count <= _MAX_LIMIT:
            raise _BinanceError(-1130, "Invalid data sent for a parameter: limit must be from 1 to 1000.")
        end = self._now_ms() if end is None else end
        start = max(0, end - count * step + 1) if start is None else start
        if start > end:
            raise _BinanceError(-1023, "Start time is greater than end time.")
        stamps, values = self._bars(symbol, step, start, end, count)
        return [_kline(int(t), v, step) for t, v in zip(stamps, values, strict=True)]

    def _bars(self, symbol: str, step: int, start: int, end: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        stamps: list[np.ndarray] = []
        values: list[np.ndarray] = []
        lo, found = start, 0
        while lo <= end and found < count:
            hi = min(end + 1, lo + (count + 16) * step)
            chunk_ts, chunk_values = synthetic_arrays(symbol, step, lo, hi, seed=self.seed, gaps=self.gaps)
            stamps.append(chunk_ts)
            values.append(chunk_values)
            found, lo = found + len(chunk_ts), hi
        return np.concatenate(stamps)[:count], np.concatenate(values)[:count]

    async def _ping(self, _: web.Request) -> web.Response:
        return _json({})

    async def _time(self, _: web.Request) -> web.Response:
        return _json({"serverTime": self._now_ms()})

    async def _exchange_info(self, _: web.Request) -> web.Response:
        symbols = [
            {
                "symbol": sid,
                "status": "TRADING",
                "baseAsset": base,
                "quoteAsset": quote,
                "baseAssetPrecision": 8,
                "quoteAssetPrecision": 8,
                "quotePrecision": 8,
                "orderTypes": ["LIMIT", "MARKET"],
                "isSpotTradingAllowed": True,
                "isMarginTradingAllowed": False,
                "filters": [],
                "permissions": ["SPOT"],
            }
            for sid, (base, quote) in self.pairs.items()
        ]
        limits = [{"rateLimitType": "REQUEST_WEIGHT", "interval": "MINUTE", "intervalNum": 1, "limit": 6000}]
        return _json(
            {
                "timezone": "UTC",
                "serverTime": self._now_ms(),
                "rateLimits": limits,
                "exchangeFilters": [],
                "symbols": symbols,
            }
        )

    # -- admin -----------------------------------------------------------------------------------------------
    def _stats_response(self) -> web.Response:
        return _json(self.stats())

    async def _admin_faults(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            for item in body if isinstance(body, list) else [body]:
                params = dict(item)
                self.inject(params.pop("kind", None), params.pop("count", 1), **params)
        except (ValueError, TypeError) as exc:
            return _json({"error": {"code": "bad_fault", "message": str(exc)}}, 400)
        return self._stats_response()

    async def _admin_ban(self, request: web.Request) -> web.Response:
        try:
            self.ban(float((await request.json())["seconds"]))
        except (ValueError, TypeError, KeyError) as exc:
            return _json({"error": {"code": "bad_ban", "message": f"need {{'seconds': number}} ({exc})"}}, 400)
        return self._stats_response()

    async def _admin_limits(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            self.set_rate_limit(
                rpm=body.get("rpm"), rps=body.get("rps"), limit=body.get("limit"), window_s=body.get("window_s")
            )
        except (ValueError, TypeError, AttributeError) as exc:
            return _json({"error": {"code": "bad_limits", "message": str(exc)}}, 400)
        return self._stats_response()

    async def _admin_stats(self, _: web.Request) -> web.Response:
        return self._stats_response()

    async def _admin_reset(self, _: web.Request) -> web.Response:
        self.reset()
        return self._stats_response()


def _int_param(query: Any, name: str) -> int | None:
    raw = query.get(name)
    if raw is None:
        return None
    if not raw.isdigit() or len(raw) > 20:
        raise _BinanceError(-1100, f"Illegal characters found in parameter '{name}'; legal range is '^[0-9]{{1,20}}$'.")
    return int(raw)


def _kline(open_ms: int, v: np.ndarray, step: int) -> list[Any]:
    o, h, low, c, vol = (float(x) for x in v)
    return [
        open_ms,
        f"{o:.8f}",
        f"{h:.8f}",
        f"{low:.8f}",
        f"{c:.8f}",
        f"{vol:.8f}",
        open_ms + step - 1,
        f"{vol * c:.8f}",
        int(vol) % 997 + 1,
        f"{vol / 2:.8f}",
        f"{vol * c / 2:.8f}",
        "0",
    ]


async def _serve(args: argparse.Namespace) -> None:
    exchange = FakeExchange(
        seed=args.seed,
        gaps=args.gaps,
        rpm=args.rpm,
        rps=args.rps,
        ban_s=args.ban_s,
        tolerance=args.tolerance,
        integer_retry_after=args.integer_retry_after,
        host=args.host,
        port=args.port,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with exchange:
        print(exchange.url, flush=True)
        await stop.wait()


def main(argv: list[str] | None = None) -> None:
    """Command line: serve until SIGINT/SIGTERM, printing the base URL first."""
    parser = argparse.ArgumentParser(description="Loopback Binance-like klines exchange with fault injection.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--seed", type=int, default=0, help="synthetic seed (bars equal synthetic:SEED)")
    parser.add_argument("--gaps", type=float, default=0.0, help="fraction of missing bars")
    parser.add_argument("--rpm", type=int, default=None, help="API requests per minute before 429")
    parser.add_argument("--rps", type=int, default=None, help="API requests per second before 429")
    parser.add_argument("--ban-s", type=float, default=60.0, help="ban length when a client ignores a 429")
    parser.add_argument("--tolerance", type=int, default=0, help="requests during a 429 cooldown before a ban")
    parser.add_argument("--integer-retry-after", action="store_true", help="whole seconds in Retry-After")
    asyncio.run(_serve(parser.parse_args(argv)))


if __name__ == "__main__":
    main()
