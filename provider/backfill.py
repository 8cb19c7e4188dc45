"""Backfillers: materialize missing ranges window by window, in process or through the coordinator.

Rules:
1. A missing range becomes the aligned windows that intersect it (``window_ranges`` with
   ``backfill_config.window_bars``), clipped at the *horizon*: the end of the last closed bar. A window is
   materialized whole, so later requests anywhere in it hit coverage; fetches trim to what was asked. A window is
   never materialized past the horizon: bars that have not closed yet are not "covered".
2. Windows are single-flight per process (:mod:`provider.flights`): concurrent fetches of overlapping missing
   ranges share one flight per window.
3. Work runs in tasks the backfiller tracks: :meth:`wait_idle` waits for all of them (``wait_for_backfills``),
   :meth:`aclose` cancels them and fails their flights. Nothing outlives the backfiller.
4. :class:`InProcessBackfiller` fetches each window from a source (at most ``max_concurrent_requests`` fetches in
   flight, retries per DESIGN.md section 3), passes the frame through the ingest conformance
   (:func:`provider.conformance.normalize_bars`) and writes it with ``write_window``. A window the conformance
   blocks writes nothing, is not covered, and fails with its report (``partial_ok`` stores the normalized rest).
   Every window's report (flags, the source that served it) goes to ``on_report``. A source with
   ``fetch_served`` (:class:`provider.sources.FallbackSource`) retries inside, per member, and names the member
   that served each window; the window's storage ledger row records that name (or the plain source's name), see
   ``Storage.windows``. :class:`DelegatingBackfiller`
   calls any third-party AutoBackfiller once per window.
5. :class:`CoordinatorBackfiller` turns each contiguous run of new windows into one coordinator job (the cluster
   shares windows across jobs and processes) and polls it every ``poll_interval_s`` until it ends; its
   ``completion_ratio`` is each flight's progress. The workers write storage; this process reads it afterwards.
   A fetch that stops waiting leaves the job running (what it materializes serves the next fetch), and
   :meth:`aclose` fails the local flights without cancelling cluster jobs other processes may share.
6. All are :class:`~provider.strategies.AutoBackfiller`\\ s: ``backfill`` waits and returns the bars,
   ``backfill_async`` yields each window's bars as it lands.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import pandas as pd

from provider.conformance import ConformanceReport, normalize_bars
from provider.core import BackfillConfig, SeriesKey, intersect_ranges, merge_ranges, tracing, window_ranges
from provider.core.clock import wall_clock_ms
from provider.core.obs import get_logger
from provider.flights import BackfillTicket, Flight, WindowFlights
from provider.frames import trim
from provider.metrics import ProviderMetrics
from provider.storage._contract import write_window_from
from provider.storage_source import StorageDataSource
from provider.strategies import ProgressCallback

__all__ = ["BaseBackfiller", "CoordinatorBackfiller", "DelegatingBackfiller", "InProcessBackfiller", "plan_windows"]

_log = get_logger("provider.backfill")


def plan_windows(
    ranges: list[tuple[int, int]], interval_ms: int, window_bars: int, horizon_ms: int
) -> list[tuple[int, int]]:
    """The aligned windows covering ``ranges``, clipped at ``horizon_ms`` (rule 1), in order, unique."""
    windows: dict[tuple[int, int], None] = {}
    for lo, hi in merge_ranges(ranges):
        for w_lo, w_hi in window_ranges(lo, min(hi, horizon_ms), interval_ms, window_bars) if lo < horizon_ms else ():
            clipped = (w_lo, min(w_hi, horizon_ms))
            if clipped[1] > clipped[0]:
                windows[clipped] = None
    return list(windows)


class BaseBackfiller:
    """Window planning, single-flight, task tracking and the AutoBackfiller methods; subclasses launch work."""

    mode = "base"

    def __init__(
        self,
        storage: Any,
        *,
        config: BackfillConfig | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        # A DataSource (anything with a priority) is read as is; a storage object is wrapped.
        self.storage = storage if hasattr(storage, "priority") else StorageDataSource(storage)
        self.config = config if config is not None else BackfillConfig()
        self.clock = clock
        self.metrics = metrics if metrics is not None else ProviderMetrics()
        self.flights = WindowFlights(ttl_ms=self.config.single_flight_ttl_ms, clock=clock)
        #: Store the normalized rest of a window ingest conformance blocked (the provider sets its own).
        self.partial_ok = False
        #: Called with each window's ingest report (the provider publishes it).
        self.on_report: Callable[[ConformanceReport], None] | None = None
        #: Unit of integer epoch ``ts`` from the source (None: decided by magnitude).
        self.ts_unit: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    # -- subclass hook -------------------------------------------------------------------------------------

    def _launch(self, series: SeriesKey, flights: list[Flight]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- planning and tracking -----------------------------------------------------------------------------

    def horizon_ms(self, interval_ms: int) -> int:
        """The end of the last closed bar on this backfiller's clock."""
        return (self.clock() // interval_ms) * interval_ms

    def start(self, node_id: str, ranges: list[tuple[int, int]], *, horizon_ms: int | None = None) -> BackfillTicket:
        """Make sure every window of ``ranges`` is materialized or in flight; return the ticket to wait on."""
        if self._closed:
            raise RuntimeError("the backfiller is closed")
        key = SeriesKey.parse(node_id)
        step = key.interval_ms
        horizon = self.horizon_ms(step) if horizon_ms is None else horizon_ms
        windows = plan_windows(ranges, step, self.config.window_bars, horizon)
        existing, created = self.flights.join(str(key), windows)
        if created:
            self.metrics.backfill_windows.labels(mode=self.mode).inc(len(created))
            _log.info(
                "backfill.start",
                node_id=str(key),
                mode=self.mode,
                windows=len(created),
                shared=len(existing),
                first_ms=created[0].start_ms,
                last_ms=created[-1].end_ms,
            )
            self._launch(key, created)
        return BackfillTicket(str(key), existing + created, started=len(created))

    def _track(self, coro: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    @property
    def active(self) -> int:
        """Tasks still running."""
        return len(self._tasks)

    async def wait_idle(self) -> None:
        """Wait until no backfill task of this backfiller is running (including ones started meanwhile)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel every task, fail the unfinished flights, and wait for the tasks to end."""
        self._closed = True
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.flights.cancel_all()

    # -- AutoBackfiller ------------------------------------------------------------------------------------

    async def can_backfill(self, start: int, end: int, *, node_id: str) -> bool:
        """True while the backfiller is open and ``[start, end)`` has closed bars."""
        step = SeriesKey.parse(node_id).interval_ms
        return not self._closed and start < self.horizon_ms(step)

    async def backfill(
        self,
        start: int,
        end: int,
        *,
        node_id: str,
        target_storage: Any = None,
        progress_callback: ProgressCallback | None = None,
    ) -> pd.DataFrame:
        """Materialize ``[start, end)``, wait, and return the stored bars of it."""
        self._check_target(target_storage)
        await self.start(node_id, [(start, end)]).wait(progress_callback)
        return trim(await self.storage.fetch(start, end, node_id=node_id), start, end)

    async def backfill_async(
        self,
        start: int,
        end: int,
        *,
        node_id: str,
        target_storage: Any = None,
        progress_callback: ProgressCallback | None = None,
    ) -> AsyncIterator[pd.DataFrame]:
        """Materialize ``[start, end)`` and yield the stored bars of each window as it lands, in landing order."""
        self._check_target(target_storage)
        ticket = self.start(node_id, [(start, end)])
        by_future = {f.future: f for f in ticket.flights}
        pending = set(by_future)
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            if progress_callback is not None:
                progress_callback(ticket.progress())
            for future in sorted(done, key=lambda fut: by_future[fut].start_ms):
                future.result()
                flight = by_future[future]
                for lo, hi in intersect_ranges([(flight.start_ms, flight.end_ms)], [(start, end)]):
                    yield trim(await self.storage.fetch(lo, hi, node_id=node_id), lo, hi)

    def _check_target(self, target_storage: Any) -> None:
        if target_storage is not None and target_storage is not self.storage:
            raise ValueError("target_storage must be the storage this backfiller writes to (or None)")


class InProcessBackfiller(BaseBackfiller):
    """Fetches windows from a source in this process and writes them to storage (rule 4)."""

    mode = "in_process"

    def __init__(
        self,
        source: Any,
        storage: Any,
        *,
        config: BackfillConfig | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: ProviderMetrics | None = None,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
        rng: random.Random | None = None,
    ) -> None:
        super().__init__(storage, config=config, clock=clock, metrics=metrics)
        self.source = source
        self._sleep = sleep
        self._rng = rng
        self._gate = asyncio.Semaphore(self.config.max_concurrent_requests)
        #: Outbound fetches started, over the backfiller's life.
        self.fetches = 0

    def _launch(self, series: SeriesKey, flights: list[Flight]) -> None:
        for flight in flights:
            self._track(self._run(series, flight))

    async def _fetch_once(self, series: SeriesKey, start_ms: int, end_ms: int) -> tuple[pd.DataFrame, str, list[str]]:
        async with self._gate:
            self.fetches += 1
            started = asyncio.get_running_loop().time()
            try:
                served = getattr(self.source, "fetch_served", None)
                if served is not None:
                    frame, name, failed = await served(series, start_ms, end_ms)
                    return frame, name, list(failed)
                frame = await self.source.fetch(series, start_ms, end_ms)
                return frame, str(getattr(self.source, "name", type(self.source).__name__)), []
            finally:
                self.metrics.observe_source("backfill", asyncio.get_running_loop().time() - started)

    async def _fetch(self, series: SeriesKey, start_ms: int, end_ms: int) -> tuple[pd.DataFrame, str, list[str]]:
        if getattr(self.source, "retries_inside", False):
            return await self._fetch_once(series, start_ms, end_ms)
        from provider.sources import retry_policy

        name = getattr(self.source, "name", "source")
        policy = retry_policy(self.config, rng=self._rng, sleep=self._sleep, source=name)
        result: tuple[pd.DataFrame, str, list[str]] = await policy(self._fetch_once, series, start_ms, end_ms)
        return result

    async def _run(self, series: SeriesKey, flight: Flight) -> None:
        attributes = {"seamless.series": str(series), "seamless.start_ms": flight.start_ms}
        with tracing.span("seamless.backfill_window", attributes={**attributes, "seamless.end_ms": flight.end_ms}):
            await self._run_window(series, flight)

    async def _run_window(self, series: SeriesKey, flight: Flight) -> None:
        try:
            raw, source, failed = await self._fetch(series, flight.start_ms, flight.end_ms)
            frame, report = normalize_bars(
                raw,
                series=str(series),
                interval_ms=series.interval_ms,
                start_ms=flight.start_ms,
                end_ms=flight.end_ms,
                ts_unit=self.ts_unit,
                created_at_ms=self.clock(),
            )
            report.source, report.failed_sources = source, failed
            flight.report = report
            if self.on_report is not None:
                self.on_report(report)
            if report.blocking and not self.partial_ok:
                _log.warning("backfill.window_blocked", node_id=str(series), source=source, summary=report.summary())
                self.flights.fail(flight, report.summary(), report=report)
                return
            await write_window_from(self.storage, series, flight.start_ms, flight.end_ms, frame, source=source)
        except asyncio.CancelledError:
            self.flights.fail(flight, "cancelled")
            raise
        except Exception as exc:  # every failure of one window fails that window only
            reason = f"{type(exc).__name__}: {exc}"
            _log.warning(
                "backfill.window_failed",
                node_id=str(series),
                start_ms=flight.start_ms,
                end_ms=flight.end_ms,
                reason=reason,
            )
            flight.report = None  # not a conformance block: waiters get BackfillFailedError with the reason
            self.flights.fail(flight, reason)
        else:
            self.flights.succeed(flight)


class DelegatingBackfiller(BaseBackfiller):
    """Gives any third-party :class:`~provider.strategies.AutoBackfiller` single-flight windows and tracking.

    Each new window is one ``await inner.backfill(start, end, node_id=...)``; the inner backfiller must leave
    the window materialized in the provider's storage (the provider reads it back from there).
    """

    mode = "delegated"

    def __init__(
        self,
        inner: Any,
        storage: Any,
        *,
        config: BackfillConfig | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        super().__init__(storage, config=config, clock=clock, metrics=metrics)
        self.inner = inner
        self._gate = asyncio.Semaphore(self.config.max_concurrent_requests)

    def _launch(self, series: SeriesKey, flights: list[Flight]) -> None:
        for flight in flights:
            self._track(self._run(series, flight))

    async def _run(self, series: SeriesKey, flight: Flight) -> None:
        try:
            async with self._gate:
                await self.inner.backfill(flight.start_ms, flight.end_ms, node_id=str(series))
        except asyncio.CancelledError:
            self.flights.fail(flight, "cancelled")
            raise
        except Exception as exc:  # one window's failure fails that window only
            self.flights.fail(flight, f"{type(exc).__name__}: {exc}")
        else:
            self.flights.succeed(flight)


#: Job states after which a job never changes again.
_ENDED = ("done", "failed", "cancelled")


def _runs(flights: list[Flight]) -> list[list[Flight]]:
    ordered = sorted(flights, key=lambda f: f.start_ms)
    runs: list[list[Flight]] = []
    for flight in ordered:
        if runs and runs[-1][-1].end_ms == flight.start_ms:
            runs[-1].append(flight)
        else:
            runs.append([flight])
    return runs


class CoordinatorBackfiller(BaseBackfiller):
    """Backfills through the coordinator cluster (see the module rules)."""

    mode = "coordinator"

    def __init__(
        self,
        coordinator: Any,
        storage: Any,
        *,
        config: BackfillConfig | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: ProviderMetrics | None = None,
        poll_interval_s: float = 0.1,
        priority: int = 0,
        sleep: Callable[[float], Awaitable[Any]] | None = None,
    ) -> None:
        super().__init__(storage, config=config, clock=clock, metrics=metrics)
        if isinstance(coordinator, str | Sequence):
            from provider.client import CoordinatorClient

            coordinator = CoordinatorClient(coordinator)
            self._owns_client = True
        else:
            self._owns_client = False
        self.client = coordinator
        self.poll_interval_s = poll_interval_s
        self.priority = priority
        self._sleep = sleep if sleep is not None else asyncio.sleep
        #: Jobs submitted over the backfiller's life.
        self.jobs_submitted = 0

    def _launch(self, series: SeriesKey, flights: list[Flight]) -> None:
        for run in _runs(flights):
            self._track(self._run_job(series, run))

    async def _run_job(self, series: SeriesKey, run: list[Flight]) -> None:
        start_ms, end_ms = run[0].start_ms, run[-1].end_ms
        try:
            job = await self.client.submit_job(str(series), start_ms, end_ms, priority=self.priority)
            self.jobs_submitted += 1
            _log.info(
                "backfill.job_submitted",
                node_id=str(series),
                job_id=job.job_id,
                start_ms=start_ms,
                end_ms=end_ms,
                windows=len(run),
            )
            while True:
                for flight in run:
                    flight.job_id = job.job_id
                    flight.ratio = job.completion_ratio
                if job.state in _ENDED:
                    break
                await self._sleep(self.poll_interval_s)
                job = await self.client.get_job(job.job_id)
        except asyncio.CancelledError:
            for flight in run:
                self.flights.fail(flight, "cancelled")
            raise
        except Exception as exc:  # a coordinator outage fails these windows; the next fetch retries them
            reason = f"coordinator: {type(exc).__name__}: {exc}"
            _log.warning("backfill.job_error", node_id=str(series), start_ms=start_ms, end_ms=end_ms, reason=reason)
            for flight in run:
                self.flights.fail(flight, reason)
            return
        if job.state == "done":
            for flight in run:
                self.flights.succeed(flight)
            return
        reason = f"coordinator job {job.job_id} ended {job.state} ({job.windows.failed} window(s) failed)"
        _log.warning("backfill.job_ended", node_id=str(series), job_id=job.job_id, state=job.state)
        for flight in run:
            self.flights.fail(flight, reason)

    async def aclose(self) -> None:
        """Stop polling, fail local flights; close the client when this backfiller created it."""
        await super().aclose()
        if self._owns_client:
            await self.client.aclose()
