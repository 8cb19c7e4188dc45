"""SLA policy: a total deadline, per-phase budgets, freshness and minimum coverage, enforced by cancellation.

Rules:
1. A fetch runs in phases: ``storage`` (cache and storage reads), ``backfill`` (waiting for materialization),
   ``live`` (the live feed). Each phase runs under ``asyncio.timeout(min(phase budget, total left))``: when it
   fires, the awaited work is cancelled (not merely checked afterwards) and :class:`SeamlessSLAExceeded` names
   the phase whose budget ran out (``total`` when the total deadline was the tighter one), the elapsed and the
   budget in ms. The whole fetch also runs under the total deadline.
2. After the data is assembled: ``freshness`` fails when the newest bar lags the newest bar the request could
   have (``min(end, now)``) by more than ``max_lag_seconds``; ``coverage`` fails when the materialized part of
   the request is below ``min_coverage``.
3. PARTIAL_FILL never raises for the SLA: the provider turns the violation into a downgrade recorded in
   ``last_fetch_metadata`` (``downgraded``, ``sla_violation``).
4. Every phase's duration is observed in ``seamless_sla_deadline_seconds{node_id, phase}``. Durations use the
   event loop's monotonic clock.
5. A violation is also a ``seamless.sla_exceeded`` event (phase, elapsed and budget) on the current trace span.
6. A phase with neither a budget nor a total deadline only measures (no timer is armed): most fetches have no
   SLA, and a 1,000-bar fetch takes about a millisecond.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, fields
from typing import Any

from provider.core import SLAConfig, tracing
from provider.errors import SeamlessSLAExceeded
from provider.metrics import ProviderMetrics

__all__ = ["PHASES", "SLAPolicy", "SLARun"]

#: The phases an SLA violation can name.
PHASES = ("storage", "backfill", "live", "total", "freshness", "coverage")
_PHASE_FIELDS = {
    "storage": "max_wait_storage_ms",
    "backfill": "max_wait_backfill_ms",
    "live": "max_wait_live_ms",
    "total": "total_deadline_ms",
}


@dataclass(frozen=True)
class SLAPolicy:
    """Budgets of one fetch; ``None`` means no limit."""

    #: Whole-fetch budget in ms.
    total_deadline_ms: int | None = None
    #: Budget of the cache + storage reads in ms.
    max_wait_storage_ms: int | None = None
    #: Budget of waiting for backfills in ms.
    max_wait_backfill_ms: int | None = None
    #: Budget of the live feed in ms.
    max_wait_live_ms: int | None = None
    #: Freshness: the newest bar may lag the newest possible bar by at most this many seconds.
    max_lag_seconds: float | None = None
    #: Fraction (0..1) of the request that must be materialized.
    min_coverage: float | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError naming the first bad field."""
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"SLAPolicy.{f.name}={value!r} must be a number or None")
            if f.name.endswith("_ms") and (not isinstance(value, int) or value < 1):
                raise ValueError(f"SLAPolicy.{f.name}={value!r} must be an int of ms >= 1 or None")
            if f.name == "max_lag_seconds" and value < 0:
                raise ValueError(f"SLAPolicy.max_lag_seconds={value!r} must be >= 0 or None")
            if f.name == "min_coverage" and not 0.0 <= value <= 1.0:
                raise ValueError(f"SLAPolicy.min_coverage={value!r} must be from 0 to 1 or None")

    @classmethod
    def from_config(cls, config: SLAConfig) -> SLAPolicy:
        """The policy of a config file's ``sla:`` section."""
        return cls(**{f.name: getattr(config, f.name) for f in fields(config)})

    def budget_ms(self, phase: str) -> int | None:
        """The budget of a timed phase (storage, backfill, live, total)."""
        if phase not in _PHASE_FIELDS:
            raise ValueError(f"phase {phase!r} has no time budget; timed phases: {', '.join(_PHASE_FIELDS)}")
        value: int | None = getattr(self, _PHASE_FIELDS[phase])
        return value


def _breach(error: SeamlessSLAExceeded) -> SeamlessSLAExceeded:
    """``error``, after recording it as a ``seamless.sla_exceeded`` event on the current span."""
    tracing.event(
        "seamless.sla_exceeded",
        {"seamless.phase": error.phase, "seamless.elapsed_ms": error.elapsed_ms, "seamless.budget_ms": error.budget_ms},
    )
    return error


class SLARun:
    """The SLA clock of one fetch."""

    def __init__(self, policy: SLAPolicy | None, *, node_id: str, metrics: ProviderMetrics) -> None:
        self.policy = policy if policy is not None else SLAPolicy()
        self.node_id = node_id
        self.metrics = metrics
        self._loop = asyncio.get_running_loop()
        self.started_s = self._loop.time()
        #: Phase -> ms spent, for the fetch metadata.
        self.spent_ms: dict[str, float] = {}

    def elapsed_ms(self) -> float:
        """Ms since the fetch started."""
        return (self._loop.time() - self.started_s) * 1000.0

    def total_left_ms(self) -> float | None:
        """Ms left of the total deadline, or None without one."""
        total = self.policy.total_deadline_ms
        return None if total is None else total - self.elapsed_ms()

    def phase(self, name: str) -> _Phase:
        """An async context manager running its body under the phase's budget (see rule 1)."""
        return _Phase(self, name)

    def finish(self) -> None:
        """Record the total phase."""
        self.metrics.observe_phase(self.node_id, "total", self.elapsed_ms() / 1000.0)
        self.spent_ms["total"] = self.elapsed_ms()

    def check_freshness(self, newest_bar_ms: int | None, interval_ms: int, expected_end_ms: int) -> None:
        """Raise ``SeamlessSLAExceeded("freshness")`` when the newest bar lags too far (rule 2)."""
        max_lag = self.policy.max_lag_seconds
        if max_lag is None:
            return
        have_end = newest_bar_ms + interval_ms if newest_bar_ms is not None else None
        lag_ms = float("inf") if have_end is None else float(max(0, expected_end_ms - have_end))
        if lag_ms > max_lag * 1000.0:
            raise _breach(
                SeamlessSLAExceeded(
                    "freshness",
                    lag_ms,
                    max_lag * 1000.0,
                    f"node {self.node_id}: newest bar lags by {lag_ms / 1000.0:.1f} s",
                )
            )

    def check_coverage(self, ratio: float) -> None:
        """Raise ``SeamlessSLAExceeded("coverage")`` when the covered fraction is below ``min_coverage``.

        For this phase ``elapsed_ms`` and ``budget_ms`` carry the coverage and the minimum as per-mille values.
        """
        minimum = self.policy.min_coverage
        if minimum is not None and ratio < minimum:
            raise _breach(
                SeamlessSLAExceeded(
                    "coverage",
                    ratio * 1000.0,
                    minimum * 1000.0,
                    f"node {self.node_id}: {ratio:.1%} covered, {minimum:.1%} required",
                )
            )

    @staticmethod
    def violation(error: SeamlessSLAExceeded) -> dict[str, Any]:
        """The metadata form of a violation."""
        return {
            "phase": error.phase,
            "elapsed_ms": error.elapsed_ms,
            "budget_ms": error.budget_ms,
            "message": str(error),
        }


class _Phase:
    """One timed phase of an :class:`SLARun` (rule 1); a phase without any limit runs without a timer (rule 6)."""

    __slots__ = ("binding", "budget", "name", "run", "started", "timer")

    def __init__(self, run: SLARun, name: str) -> None:
        self.run = run
        self.name = name
        self.timer: asyncio.Timeout | None = None

    async def __aenter__(self) -> None:
        run, name = self.run, self.name
        self.budget = budget = run.policy.budget_ms(name)
        total_left = run.total_left_ms()
        self.started = run._loop.time()
        limits = [x for x in (budget, total_left) if x is not None]
        if not limits:
            return
        limit_ms = max(0.0, min(limits))
        self.binding = name if budget is not None and (total_left is None or budget <= total_left) else "total"
        self.timer = asyncio.timeout(limit_ms / 1000.0)
        await self.timer.__aenter__()

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> None:
        run, name, timer = self.run, self.name, self.timer
        try:
            if timer is not None:
                await timer.__aexit__(kind, exc, tb)
        except TimeoutError:
            if timer is None or not timer.expired():
                raise
            elapsed = (run._loop.time() - self.started) * 1000.0
            if self.binding == "total":
                elapsed = run.elapsed_ms()
            limit_budget = self.budget if self.binding == name else run.policy.total_deadline_ms
            why = f"node {run.node_id}; the {name} work was cancelled"
            raise _breach(SeamlessSLAExceeded(self.binding, elapsed, float(limit_budget or 0), why)) from None
        finally:
            spent_s = run._loop.time() - self.started
            run.spent_ms[name] = run.spent_ms.get(name, 0.0) + spent_s * 1000.0
            run.metrics.observe_phase(run.node_id, name, spent_s)
