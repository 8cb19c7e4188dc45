"""Per-process, per-source request limits: the ban gate and the rate budget.

Rules:
1. One :class:`SourceLimits` per (process, source). The wiring (the worker CLI, a provider) builds it and passes
   it to :func:`provider.sources.open_source`; nothing here is a global singleton.
2. Every network request of a source first calls :meth:`SourceLimits.admit`: it waits for the gate, takes the
   request's tokens from the budget, and checks the gate again (a ban may have started while it waited).
3. :class:`BanGate` blocks every request of the process to the source until a ban (HTTP 418), a cooldown
   (HTTP 429 Retry-After) or an exhausted exchange weight window ends. Blocks only ever extend, never shorten.
   A block longer than ``max_wait_s`` is not waited out: :meth:`BanGate.wait` raises at once, so a ban of days
   fails the work instead of hanging it.
4. :class:`RateBudget` is a token bucket per quantity (requests, request weight), refilled at ``limit / 60`` per
   second with a burst capacity of ``burst_ratio * limit``. Over any 60 s it admits at most
   ``limit * (1 + burst_ratio)``; in steady state exactly ``limit``. N workers sharing one exchange budget each
   get ``limit / N`` (:meth:`RateBudget.shared`). The default burst is 2%: N processes each given 97% of their
   share stay under the exchange's minute limit even when all of them start with a full bucket.
5. Clocks and sleeps are injected (seconds, ``time.monotonic`` and ``asyncio.sleep`` by default) so tests never
   wait on real time.
6. A shared budget (docs/worker.md, "Shared exchange budget") retunes a running budget with
   :meth:`RateBudget.retune` (``None`` = that quantity unlimited, 0 = nothing admitted until the next retune) and
   hears every local block through :attr:`BanGate.on_block`, to report it to the coordinator; blocks learnt from
   the coordinator are set with ``notify=False`` so they are not echoed back. Once retuned, a waiting request
   re-checks its bucket at least every ``_RETUNE_POLL_S``, so a larger share takes effect at once.
7. A caller that must know whether a unit of work has sent anything yet (a stopping worker releases the windows
   that have not) runs it under :func:`watch_admissions`: every :meth:`SourceLimits.admit` of that task (and of
   tasks it starts) marks the :class:`AdmissionWatch` as waiting, then counts the request once admitted. The count
   goes up before the request can be sent, with no await in between, so a watch seen waiting with nothing admitted
   proves no request of that unit reached the source.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import math
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from provider.sources.errors import BannedError, RateLimitedError

__all__ = [
    "DEFAULT_MAX_WAIT_S",
    "AdmissionWatch",
    "BanGate",
    "Clock",
    "RateBudget",
    "Sleep",
    "SourceLimits",
    "watch_admissions",
]

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[Any]]

#: A ban or cooldown longer than this is not waited out; the request fails with BannedError / RateLimitedError.
DEFAULT_MAX_WAIT_S = 900.0
#: Burst capacity of a budget, as a fraction of its per-minute limit.
DEFAULT_BURST_RATIO = 0.02
#: Token shortfalls (and gate remainders, in seconds) below this count as none: waiting for an ulp would spin on
#: a clock too coarse to move.
_TOKEN_EPSILON = 1e-6
#: Longest single wait of a request in a retuned budget (rule 6).
_RETUNE_POLL_S = 0.05


@dataclass
class AdmissionWatch:
    """What the requests of one unit of work did at the limits so far (rule 7)."""

    #: A request of the unit is waiting at the gate or the budget.
    waiting: bool = False
    #: Requests of the unit admitted (each one sent, or about to be with no await in between).
    admitted: int = 0

    @property
    def nothing_sent(self) -> bool:
        """True while the unit waits for its first admission: cancelling it now sends nothing to the source."""
        return self.waiting and self.admitted == 0


#: The watch of the current task (rule 7); tasks started under it inherit it.
_WATCH: contextvars.ContextVar[AdmissionWatch | None] = contextvars.ContextVar("admission_watch", default=None)


@contextlib.contextmanager
def watch_admissions(watch: AdmissionWatch) -> Iterator[AdmissionWatch]:
    """Count the admissions of the current task in ``watch`` while the block runs (rule 7)."""
    token = _WATCH.set(watch)
    try:
        yield watch
    finally:
        _WATCH.reset(token)


class BanGate:
    """Blocks every request of one process to one source while a ban or cooldown lasts."""

    def __init__(
        self, *, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep, max_wait_s: float = DEFAULT_MAX_WAIT_S
    ) -> None:
        if max_wait_s < 0:
            raise ValueError(f"max_wait_s {max_wait_s!r} must be >= 0")
        self._clock = clock
        self._sleep = sleep
        self.max_wait_s = max_wait_s
        self._until_s = -math.inf
        self._reason = ""
        #: Called with (seconds, reason) when a local cause sets or extends the block (rule 6).
        self.on_block: Callable[[float, str], Any] | None = None
        #: How many times a block was set or extended, and the total seconds requests spent waiting here.
        self.blocks = 0
        self.waited_s = 0.0

    @property
    def until_s(self) -> float:
        """End of the current block on the gate's clock (``-inf`` when the gate was never blocked)."""
        return self._until_s

    @property
    def reason(self) -> str:
        """Why the gate is (or was last) blocked: ``banned``, ``rate_limited`` or ``weight``."""
        return self._reason

    def remaining_s(self) -> float:
        """Seconds until the gate opens (0 when open)."""
        return max(0.0, self._until_s - self._clock())

    def block(self, seconds: float, reason: str, *, notify: bool = True) -> float:
        """Keep the gate closed for at least ``seconds`` from now; returns the end of the block. ``notify=False``
        for a block learnt from elsewhere (rule 6)."""
        until = self._clock() + max(0.0, float(seconds))
        if until > self._until_s:
            self._until_s = until
            self._reason = reason
            self.blocks += 1
            if notify and self.on_block is not None:
                self.on_block(float(seconds), reason)
        return self._until_s

    async def wait(self, *, source: str = "") -> float:
        """Wait until the gate is open; return the seconds waited. Raise when the block exceeds ``max_wait_s``."""
        waited = 0.0
        while (remaining := self.remaining_s()) > _TOKEN_EPSILON:
            if remaining > self.max_wait_s:
                self._raise_too_long(remaining, source)
            await self._sleep(remaining)
            waited += remaining
        self.waited_s += waited
        return waited

    def _raise_too_long(self, remaining: float, source: str) -> None:
        message = (
            f"{source or 'source'} is blocked ({self._reason}) for {remaining:.1f} s more, longer than "
            f"max_wait_s={self.max_wait_s:g}"
        )
        if self._reason == "banned":
            raise BannedError(message, retry_after_s=remaining, until_s=self._until_s, source=source, status=None)
        raise RateLimitedError(message, retry_after_s=remaining, source=source, status=None)


@dataclass
class _Bucket:
    rate_per_s: float
    capacity: float
    tokens: float
    stamp_s: float

    def refill(self, now_s: float) -> None:
        if now_s > self.stamp_s:
            self.tokens = min(self.capacity, self.tokens + (now_s - self.stamp_s) * self.rate_per_s)
        self.stamp_s = max(self.stamp_s, now_s)

    def shortfall_s(self, cost: float) -> float:
        missing = min(cost, self.capacity) - self.tokens
        if missing <= _TOKEN_EPSILON:
            return 0.0
        return missing / self.rate_per_s if self.rate_per_s > 0 else math.inf

    def take(self, cost: float) -> None:
        self.tokens -= min(cost, self.capacity)


class RateBudget:
    """A token bucket for requests and one for request weight, per minute; 0 means unlimited."""

    def __init__(
        self,
        requests_per_minute: float = 0,
        weight_per_minute: float = 0,
        *,
        burst_ratio: float = DEFAULT_BURST_RATIO,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        for name, value in (("requests_per_minute", requests_per_minute), ("weight_per_minute", weight_per_minute)):
            if not value >= 0:
                raise ValueError(f"{name} {value!r} must be >= 0 (0 means unlimited)")
        if not 0 < burst_ratio <= 1:
            raise ValueError(f"burst_ratio {burst_ratio!r} must be in (0, 1]")
        self.requests_per_minute = float(requests_per_minute)
        self.weight_per_minute = float(weight_per_minute)
        self._clock = clock
        self._sleep = sleep
        now = clock()
        self._buckets: dict[str, _Bucket] = {}
        for name, limit in (("requests", self.requests_per_minute), ("weight", self.weight_per_minute)):
            if limit > 0:
                capacity = max(1.0, limit * burst_ratio)
                self._buckets[name] = _Bucket(limit / 60.0, capacity, capacity, now)
        self._lock = asyncio.Lock()
        self._burst_ratio = burst_ratio
        self._retuned = False
        #: Requests admitted, and the total seconds they waited for tokens.
        self.admitted = 0
        self.waited_s = 0.0

    @classmethod
    def shared(cls, requests_per_minute: float, weight_per_minute: float, workers: int, **kwargs: Any) -> RateBudget:
        """The budget of one of ``workers`` processes sharing an exchange limit: each gets ``limit / workers``."""
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers {workers!r} must be an int >= 1")
        return cls(requests_per_minute / workers, weight_per_minute / workers, **kwargs)

    def retune(
        self, requests_per_minute: float | None, weight_per_minute: float | None, *, start_delay: float = 0.0
    ) -> None:
        """Change the limits of a running budget (rule 6): ``None`` = unlimited, 0 = nothing admitted. A bucket
        keeps its tokens up to its new capacity; a new (or resumed) bucket starts empty (a share changing hands
        never adds a burst), owing ``start_delay`` (0 to 1) of a request: workers resumed by one broadcast then do
        not send in lockstep."""
        if not 0 <= start_delay <= 1:
            raise ValueError(f"start_delay {start_delay!r} must be from 0 to 1")
        now = self._clock()
        self._retuned = True
        for name, limit in (("requests", requests_per_minute), ("weight", weight_per_minute)):
            if limit is not None and not limit >= 0:
                raise ValueError(f"{name}_per_minute {limit!r} must be >= 0 or None (unlimited)")
            bucket = self._buckets.get(name)
            if limit is None:
                self._buckets.pop(name, None)
                continue
            capacity = max(1.0, limit * self._burst_ratio) if limit > 0 else 1.0
            if bucket is None or bucket.rate_per_s == 0:
                self._buckets[name] = _Bucket(limit / 60.0, capacity, -start_delay if limit > 0 else 0.0, now)
                continue
            bucket.refill(now)
            bucket.rate_per_s, bucket.capacity = limit / 60.0, capacity
            bucket.tokens = min(bucket.tokens, capacity) if limit > 0 else 0.0
        self.requests_per_minute = requests_per_minute or 0.0
        self.weight_per_minute = weight_per_minute or 0.0

    def requests_per_s(self) -> float | None:
        """The request rate admitted now: ``None`` when requests are not limited, 0 while nothing is admitted."""
        bucket = self._buckets.get("requests")
        return None if bucket is None else bucket.rate_per_s

    @property
    def unlimited(self) -> bool:
        """True when neither quantity is limited."""
        return not self._buckets

    async def acquire(self, weight: float = 1.0) -> float:
        """Wait until one request of ``weight`` fits the budget, take it, and return the seconds waited.

        Waiters are served first come, first served. A weight above the burst capacity waits for a full bucket.
        """
        if weight < 0:
            raise ValueError(f"weight {weight!r} must be >= 0")
        costs = {"requests": 1.0, "weight": float(weight)}
        waited = 0.0
        async with self._lock:
            while True:
                now = self._clock()
                for bucket in self._buckets.values():
                    bucket.refill(now)
                need_s = max((b.shortfall_s(costs[n]) for n, b in self._buckets.items()), default=0.0)
                if need_s <= 0:
                    break
                if self._retuned:
                    need_s = min(need_s, _RETUNE_POLL_S)
                await self._sleep(need_s)
                waited += need_s
            for name, bucket in self._buckets.items():
                bucket.take(costs[name])
        self.admitted += 1
        self.waited_s += waited
        return waited


@dataclass
class SourceLimits:
    """The gate and the budget of one source in one process, plus the clocks they share."""

    gate: BanGate = field(default_factory=BanGate)
    budget: RateBudget = field(default_factory=RateBudget)
    #: Wall clock (epoch seconds), used to find the end of an exchange's per-minute weight window.
    wall_clock: Clock = time.time

    @classmethod
    def create(
        cls,
        *,
        requests_per_minute: float = 0,
        weight_per_minute: float = 0,
        workers: int = 1,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        wall_clock: Clock = time.time,
    ) -> SourceLimits:
        """Limits whose budget is this process's ``1 / workers`` share of the given per-minute limits."""
        budget = RateBudget.shared(requests_per_minute, weight_per_minute, workers, clock=clock, sleep=sleep)
        return cls(BanGate(clock=clock, sleep=sleep, max_wait_s=max_wait_s), budget, wall_clock)

    @classmethod
    def from_worker_config(cls, config: Any, *, workers: int = 1, **kwargs: Any) -> SourceLimits:
        """Limits from a :class:`provider.core.WorkerConfig` (its budgets are already per process)."""
        return cls.create(
            requests_per_minute=config.requests_per_minute,
            weight_per_minute=config.weight_per_minute,
            workers=workers,
            **kwargs,
        )

    async def admit(self, weight: float = 1.0, *, source: str = "") -> None:
        """Wait for the gate and the budget before one request of ``weight`` (rule 2); tell a watch (rule 7)."""
        watch = _WATCH.get()
        if watch is None:
            await self._admit(weight, source)
            return
        watch.waiting = True
        try:
            await self._admit(weight, source)
        finally:
            watch.waiting = False
        watch.admitted += 1

    async def _admit(self, weight: float, source: str) -> None:
        await self.gate.wait(source=source)
        await self.budget.acquire(weight)
        await self.gate.wait(source=source)

    def note_used_weight(self, used: int, limit: int, next_weight: float) -> bool:
        """Close the gate until the next wall-clock minute when the exchange's weight window is exhausted.

        ``used`` is what the exchange reports for its current minute (Binance ``X-MBX-USED-WEIGHT-1M``, counted
        for the whole IP, other processes included). Returns True when it closed the gate.
        """
        if limit <= 0 or used + next_weight <= limit:
            return False
        now = self.wall_clock()
        self.gate.block(60.0 - now % 60.0, "weight")
        return True
