"""Single-flight registry of backfill windows, and the ticket a fetch waits on.

Rules:
1. A flight is one window ``(series, start, end)`` being materialized, with one future every interested fetch
   shares. While a flight is registered no second one starts for the same window in this process.
2. A finished flight stays registered for ``single_flight_ttl_ms`` (on the injected clock) so a burst of fetches
   right after it does not start the window again; every registry access purges the expired ones. A failed
   flight is removed at once, so the next fetch retries the window.
3. A window that ingest conformance blocked fails with its report; a ticket waiting on it raises
   :class:`ConformancePipelineError` with that report (the first such window's).
4. Waiting never cancels a flight: a fetch whose SLA runs out stops waiting, the work goes on for the others.
   Only :meth:`WindowFlights.cancel_all` (provider close) ends flights early.
5. Flights report progress as a ratio from 0 to 1; a :class:`BackfillTicket` reports the mean over its flights
   to the progress callback whenever it changes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from provider.errors import BackfillFailedError, ConformancePipelineError
from provider.strategies import BackfillProgress, ProgressCallback

__all__ = ["BackfillTicket", "Flight", "WindowFlights"]

#: How often a waiting ticket re-checks progress when no window finished (coordinator jobs move in between).
PROGRESS_POLL_S = 0.05


@dataclass(eq=False)
class Flight:
    """One window in flight."""

    series: str
    start_ms: int
    end_ms: int
    future: asyncio.Future[None]
    ratio: float = 0.0
    finished_at_ms: int | None = None
    job_id: str | None = None
    reason: str = ""
    #: The ingest conformance report of the window (in-process backfills), with ``source`` naming who served it.
    report: Any = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.series, self.start_ms, self.end_ms)


def _retrieve(future: asyncio.Future[None]) -> None:
    # Mark a failure as seen so asyncio does not log "exception was never retrieved" for unwaited flights.
    if not future.cancelled():
        future.exception()


class WindowFlights:
    """The per-process registry (see the module rules)."""

    def __init__(self, *, ttl_ms: int, clock: Callable[[], int]) -> None:
        self.ttl_ms = ttl_ms
        self._clock = clock
        self._flights: dict[tuple[str, int, int], Flight] = {}

    def __len__(self) -> int:
        return len(self._flights)

    def purge(self) -> None:
        """Forget finished flights older than the TTL."""
        now = self._clock()
        expired = [
            k
            for k, f in self._flights.items()
            if f.finished_at_ms is not None and f.finished_at_ms + self.ttl_ms <= now
        ]
        for key in expired:
            del self._flights[key]

    def join(self, series: str, windows: list[tuple[int, int]]) -> tuple[list[Flight], list[Flight]]:
        """Split ``windows`` into flights already registered and new flights (registered now, not started)."""
        self.purge()
        loop = asyncio.get_running_loop()
        existing: list[Flight] = []
        created: list[Flight] = []
        for lo, hi in windows:
            flight = self._flights.get((series, lo, hi))
            if flight is None:
                future: asyncio.Future[None] = loop.create_future()
                future.add_done_callback(_retrieve)
                flight = Flight(series, lo, hi, future)
                self._flights[flight.key] = flight
                created.append(flight)
            else:
                existing.append(flight)
        return existing, created

    def succeed(self, flight: Flight) -> None:
        """Mark a flight done; it stays registered for the TTL."""
        flight.ratio = 1.0
        flight.finished_at_ms = self._clock()
        if not flight.future.done():
            flight.future.set_result(None)

    def fail(self, flight: Flight, reason: str, *, report: Any = None) -> None:
        """Mark a flight failed and unregister it so a later fetch retries the window.

        With ``report`` (ingest conformance blocked the window) waiting tickets raise
        :class:`ConformancePipelineError` carrying it instead of :class:`BackfillFailedError`.
        """
        flight.reason = reason
        if report is not None:
            flight.report = report
        flight.finished_at_ms = self._clock()
        if self._flights.get(flight.key) is flight:
            del self._flights[flight.key]
        if not flight.future.done():
            flight.future.set_exception(BackfillFailedError(flight.series, [(flight.start_ms, flight.end_ms)], reason))

    def cancel_all(self, reason: str = "the provider was closed") -> None:
        """Fail every unfinished flight (used on close)."""
        for flight in list(self._flights.values()):
            if not flight.future.done():
                self.fail(flight, reason)
        self._flights.clear()


@dataclass(eq=False)
class BackfillTicket:
    """The flights one fetch waits on."""

    node_id: str
    flights: list[Flight]
    started: int = 0
    job_ids: tuple[str, ...] = field(default=())

    @property
    def windows(self) -> list[tuple[int, int]]:
        return [(f.start_ms, f.end_ms) for f in self.flights]

    def done(self) -> bool:
        return all(f.future.done() for f in self.flights)

    def progress(self) -> BackfillProgress:
        total = len(self.flights)
        finished = sum(1 for f in self.flights if f.future.done() and f.finished_at_ms is not None)
        ratio = sum(f.ratio for f in self.flights) / total if total else 1.0
        jobs = tuple(dict.fromkeys(f.job_id for f in self.flights if f.job_id)) or self.job_ids
        return BackfillProgress(self.node_id, min(1.0, ratio), finished, total, jobs)

    async def wait(self, progress: ProgressCallback | None = None) -> None:
        """Wait for every flight; raise BackfillFailedError listing the failed windows and the first reason."""
        pending = {f.future for f in self.flights if not f.future.done()}
        last: float | None = None
        while True:
            if progress is not None:
                report = self.progress()
                if report.ratio != last:
                    last = report.ratio
                    progress(report)
            if not pending:
                break
            _, pending = await asyncio.wait(pending, timeout=PROGRESS_POLL_S, return_when=asyncio.FIRST_COMPLETED)
        failed = [f for f in self.flights if f.future.cancelled() or f.future.exception() is not None]
        blocked = [f for f in failed if f.report is not None and bool(getattr(f.report, "blocking", None))]
        if blocked:
            raise ConformancePipelineError(blocked[0].report)
        if failed:
            reason = failed[0].reason or "cancelled"
            raise BackfillFailedError(self.node_id, [(f.start_ms, f.end_ms) for f in failed], reason)
