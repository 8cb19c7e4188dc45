"""Shared exchange budget, worker side: hold this process's share of a source's limits, hear and spread bans.

Rules:
1. One :class:`BudgetAgent` per (worker process, source spec) when ``worker.shared_requests_per_minute`` or
   ``worker.shared_weight_per_minute`` is set. It long-polls ``POST /v1/budget/heartbeat`` (``worker.budget_wait_ms``)
   and retunes the source's :class:`~provider.sources.SourceLimits` budget to the grant it gets.
2. Until its first answer, a shared quantity admits nothing: a joining worker takes its share only as the others
   shrink (the coordinator's rule), so a pool that grows never overshoots the source's limit.
3. A grant holds until ``ttl_ms`` after the heartbeat that brought it was *sent*; the coordinator frees it only
   ``ttl_ms`` after it *arrived*, so the worker always stops using it first. When it lapses with no newer answer
   (the coordinator is unreachable), or the first heartbeat fails, the budget falls back to the floor: the
   per-process ``worker.requests_per_minute`` / ``weight_per_minute``. Quantities that are not shared always use the
   floor.
4. A block of the process's gate with a local cause (418 ban, 429 Retry-After, exhausted weight window) is reported
   at once in an extra heartbeat that does not wait; a block the coordinator reports (another worker's ban) closes
   this process's gate with ``notify=False`` (never echoed back).
5. :meth:`BudgetAgent.leave` (graceful stop, after the windows drained) frees the share at once.
6. The clock and the random generator are injected (``time.monotonic``, ``random.Random()`` by default). A bucket
   that starts (or resumes from 0) owes a random fraction of a request, so workers granted their shares by one
   broadcast do not send in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable
from typing import Any, Protocol

from provider.core.obs import get_logger
from provider.errors import CoordinatorError
from provider.sources import SourceLimits

__all__ = ["BudgetAgent", "BudgetApi"]

log = get_logger("worker.budget")

Amounts = tuple[float | None, float | None]
#: Pause after a failed heartbeat before the next one.
_RETRY_S = 0.2
#: How often the lapse of a grant is checked while a heartbeat is in flight.
_WATCH_S = 0.05


class BudgetApi(Protocol):
    """What the agent needs of :class:`provider.client.CoordinatorClient`."""

    async def budget_heartbeat(self, body: dict[str, Any], *, wait_ms: int = 0) -> dict[str, Any]: ...


def _limit(value: int) -> float | None:
    return float(value) if value > 0 else None


class BudgetAgent:
    """The share of one source in one worker process (module rules)."""

    def __init__(
        self,
        api: BudgetApi,
        *,
        worker_id: str,
        source: str,
        limits: SourceLimits,
        shared: tuple[int, int],
        floor: tuple[int, int],
        wait_ms: int = 1_000,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[BudgetAgent], Any] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        if shared[0] <= 0 and shared[1] <= 0:
            raise ValueError(f"shared limits {shared!r}: at least one of requests and weight per minute must be > 0")
        self._api = api
        self.worker_id = worker_id
        self.source = source
        self.limits = limits
        self.shared = shared
        self.floor: Amounts = (_limit(floor[0]), _limit(floor[1]))
        self.wait_ms = wait_ms
        self._clock = clock
        self._on_change = on_change
        #: Draws the start delay of a resumed bucket (workers resumed together must not send in lockstep).
        self._rng = rng if rng is not None else random.Random()
        #: ``starting`` (nothing admitted), ``shared`` (a grant holds) or ``floor`` (rule 3).
        self.mode = "starting"
        self.using: Amounts = (None, None)
        self.valid_until_s = -1.0
        self.workers = 0
        self._stopping = asyncio.Event()
        self._reports: set[asyncio.Task[bool]] = set()
        self._apply((0.0, 0.0), "starting")
        limits.gate.on_block = self._on_local_block

    # -- state -------------------------------------------------------------------------------------------------

    def _apply(self, grant: Amounts, mode: str) -> None:
        """Retune the budget: shared quantities to ``grant``, the others to the floor."""
        using = tuple(grant[q] if self.shared[q] > 0 else self.floor[q] for q in (0, 1))
        amounts: Amounts = (using[0], using[1])
        if amounts != self.using or mode != self.mode:
            self.limits.budget.retune(*amounts, start_delay=self._rng.random())
            if mode != self.mode:
                log.info("budget.mode_changed", source=self.source, mode=mode, previous=self.mode)
            self.using, self.mode = amounts, mode
            if self._on_change is not None:
                self._on_change(self)

    def _fall_back(self) -> None:
        if self.mode != "floor":
            self._apply(self.floor, "floor")

    def check_lapse(self) -> None:
        """Rule 3: back to the floor once the grant is older than its ttl (or there never was one)."""
        if self.mode == "shared" and self._clock() >= self.valid_until_s:
            self._fall_back()

    def _take(self, answer: dict[str, Any], sent_s: float) -> None:
        self.valid_until_s = sent_s + int(answer["ttl_ms"]) / 1000
        self.workers = int(answer["workers"])
        blocked_ms = int(answer.get("blocked_ms") or 0)
        if blocked_ms > 0:
            reason = str(answer.get("blocked_reason") or "banned")
            gate = self.limits.gate
            before = gate.until_s
            if gate.block(blocked_ms / 1000, reason, notify=False) > before + 0.05:
                log.info("budget.block_received", source=self.source, reason=reason, blocked_ms=blocked_ms)
        self._apply((answer["requests_per_minute"], answer["weight_per_minute"]), "shared")

    def _body(self, wait_ms: int, *, leave: bool = False) -> dict[str, Any]:
        gate = self.limits.gate
        blocked_ms = int(gate.remaining_s() * 1000)
        reason = gate.reason if blocked_ms > 0 and gate.reason in ("banned", "rate_limited", "weight") else ""
        return {
            "worker_id": self.worker_id,
            "source": self.source,
            "requests_per_minute": self.shared[0],
            "weight_per_minute": self.shared[1],
            "using_requests_per_minute": self.using[0] if self.mode != "starting" else 0.0,
            "using_weight_per_minute": self.using[1] if self.mode != "starting" else 0.0,
            "blocked_ms": blocked_ms if reason else 0,
            "blocked_reason": reason,
            "wait_ms": wait_ms,
            "leave": leave,
        }

    # -- loops -------------------------------------------------------------------------------------------------

    async def beat(self, wait_ms: int) -> bool:
        """One heartbeat; True when it was answered (and the answer applied)."""
        sent_s = self._clock()
        try:
            answer = await self._api.budget_heartbeat(self._body(wait_ms), wait_ms=wait_ms)
        except CoordinatorError as exc:
            if self.mode == "starting":
                self._fall_back()
            self.check_lapse()
            log.warning("budget.heartbeat_failed", source=self.source, mode=self.mode, error=str(exc)[:300])
            return False
        self._take(answer, sent_s)
        return True

    async def run(self) -> None:
        """Heartbeat until :meth:`stop`; a watchdog drops a lapsed grant while a heartbeat hangs (rule 3)."""
        watch = asyncio.create_task(self._watch(), name=f"budget-watch-{self.source}")
        try:
            while not self._stopping.is_set():
                if not await self.beat(self.wait_ms):
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._stopping.wait(), _RETRY_S)
        finally:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watch

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(_WATCH_S)
            self.check_lapse()

    def _on_local_block(self, seconds: float, reason: str) -> None:
        """Rule 4: tell the coordinator now, not at the next heartbeat."""
        log.info("budget.block_seen", source=self.source, reason=reason, seconds=round(seconds, 3))
        with contextlib.suppress(RuntimeError):  # no running loop: nothing to report to
            task = asyncio.get_running_loop().create_task(self.beat(0))
            self._reports.add(task)
            task.add_done_callback(self._reports.discard)

    def stop(self) -> None:
        """Stop heartbeating (call :meth:`leave` after the windows drained)."""
        self._stopping.set()

    async def leave(self) -> None:
        """Rule 5: free the share at once; the budget admits nothing afterwards."""
        self._stopping.set()
        self._apply((0.0, 0.0), "left")
        with contextlib.suppress(CoordinatorError):
            await self._api.budget_heartbeat(self._body(0, leave=True), wait_ms=0)
