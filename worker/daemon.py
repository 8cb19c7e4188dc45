"""The worker daemon: turn leases into stored bars.

Loop (DESIGN.md section 5): claim -> renew every TTL/3 in the background -> fetch with retries -> normalize the
frame (ingest conformance) -> write the window -> complete with the token.

Rules:
1. At most ``concurrency`` windows are in progress; claims ask only for free slots and long-poll when idle.
2. A lost lease (409 ``lease_lost`` on renew, or the local deadline passing without a successful renew) cancels
   that window's work; it is never completed. The window is re-checked with a renew right before the write, so a
   worker that was paused past its TTL (a zombie) does not write or complete. Once the complete is sent, its
   answer decides: a renew refused because that complete already landed does not make the window "lost".
3. A fatal source error fails the window with ``retryable=False``; any other error fails it retryable, and the
   coordinator re-queues it until ``max_attempts``.
4. ``stop()`` (SIGTERM) stops claiming and at once releases every window that has sent nothing to its source
   yet (claimed but not begun, or waiting at the source's limits for its first request:
   :func:`provider.sources.watch_admissions`), so other workers take them at once, attempt not counted. Windows
   already fetching get ``shutdown_grace_ms`` to finish and be written, then are cancelled and released. A release
   names the lease id, which is made from the lease's token: it can only end that very lease, never a newer one.
5. Writes are idempotent (the storage contract), so a window written twice holds the same bars.
7. Every fetched frame goes through :func:`provider.conformance.normalize_bars` (the same ingest conformance as
   the provider's backfill). Lossless reshapes are normalized, stored, and logged (``worker.window_conformance``
   with the report). A blocked window writes nothing and fails with ``retryable=False`` and the report's summary as the
   reason (the report is logged as one structured line); with ``partial_ok`` the normalized rest is stored.
8. The source that served the window (with a fallback chain, :class:`provider.sources.FallbackSource`, the
   member that served it) is logged on ``worker.window_done`` (``source``, ``failed_sources``), named in a fail reason,
   and recorded in the window's storage ledger row (``Storage.windows``).
9. With tracing on (``OTEL_*``), each window is a ``worker.window`` span: the child of the trace of the window's
   best-ranked traced job (``Lease.traces``), linked to the other jobs', with ``worker.fetch`` (the exchange
   requests and retries inside), ``worker.conform``, ``worker.write`` and the coordinator calls as children.
6. Only closed bars are stored: a window that reaches past now is fetched and written up to the last closed bar,
   so coverage never claims bars that did not exist yet. The coordinator re-opens such a window when a later job
   needs the bars closed since (docs/coordinator.md).
10. :meth:`Worker.source_done` tells when a stopping worker will send no more source requests (every window
   still in progress is past its fetch), so a shared exchange budget is handed back before the writes drain.
11. Claimed windows not yet past their fetch stay within what the source's budget admits in ``queue_horizon_s``
   (``fetch_rate_per_s``, requests per second now; at least one window): a small or shrinking share never strands
   a deep queue in one worker while others could fetch it. :meth:`Worker.budget_changed` wakes the claim loop
   when the share grows.
12. A finished window whose slot the claim loop is waiting for hands its complete to that loop, which sends it
   with the claim that refills the slot (``claim_completing``: one request instead of two, applied complete
   first). The window waits for that answer as it would for its own complete. A completion that cannot ride (the
   loop is long-polling or has no room to claim, the worker is stopping, the window is traced: its trace shows its
   own complete) goes alone; so does one the coordinator
   left unconfirmed, or every one of a claim that failed. A window waiting for its riding complete has freed its
   slot (rule 1 counts the windows still working). A coordinator older than the ``complete`` field (400
   naming it) turns riding off for the process.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd

from provider.conformance import ConformancePipelineError, ConformanceReport, normalize_bars
from provider.core import BackfillConfig, Lease, SeriesKey, WorkerConfig, tracing
from provider.core import clock as clock_module
from provider.core.obs import bind_request, get_logger
from provider.errors import (
    CoordinatorBadRequestError,
    CoordinatorError,
    CoordinatorNotFoundError,
    CoordinatorUnavailableError,
    LeaseLostError,
)
from provider.frames import FrameContractError, empty_frame
from provider.sources import AdmissionWatch, watch_admissions
from provider.sources.errors import FatalSourceError
from provider.storage._contract import write_window_from
from worker.metrics import WorkerMetrics

__all__ = ["Worker", "WorkerSettings"]

log = get_logger("worker")

#: A release on shutdown is best effort: the lease expires anyway.
_RELEASE_TIMEOUT_S = 5.0
#: Seconds of the source's admitted rate a worker keeps claimed ahead of its fetches (rule 11).
QUEUE_HORIZON_S = 2.0


class Coordinator(Protocol):
    """What the worker needs from :class:`provider.client.CoordinatorClient`."""

    async def claim(self, worker_id: str, *, max_windows: int = 1, wait_ms: int = 0) -> list[Lease]: ...
    async def renew(self, lease_id: str, token: int) -> int: ...
    async def complete(self, lease_id: str, token: int, rows: int) -> Any: ...
    async def claim_completing(
        self, worker_id: str, completions: Sequence[tuple[str, int, int]], *, max_windows: int = 1
    ) -> tuple[list[Lease], list[Any]]: ...
    async def fail(self, lease_id: str, token: int, reason: str, *, retryable: bool) -> Any: ...
    async def release(self, lease_id: str) -> Any: ...


class Fetcher(Protocol):
    """A source: the bars of ``[start, end)``."""

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame: ...


class Store(Protocol):
    """A storage backend: write one window atomically and idempotently (with ``records_source``, it also takes
    ``source=`` and records it in the window's ledger row)."""

    async def write_window(self, series: Any, start: Any, end: Any, frame: pd.DataFrame) -> Any: ...


@dataclass(frozen=True)
class WorkerSettings:
    """What one worker process is and how it paces itself."""

    worker_id: str
    concurrency: int
    lease_ttl_ms: int
    claim_wait_ms: int
    shutdown_grace_ms: int
    #: Rule 11: claimed windows not yet fetched stay within this many seconds of the source's admitted rate.
    queue_horizon_s: float = QUEUE_HORIZON_S

    @classmethod
    def from_config(cls, worker_id: str, worker: WorkerConfig, backfill: BackfillConfig) -> WorkerSettings:
        return cls(
            worker_id=worker_id,
            concurrency=worker.concurrency,
            lease_ttl_ms=backfill.distributed_lease_ttl_ms,
            claim_wait_ms=worker.claim_wait_ms,
            shutdown_grace_ms=worker.shutdown_grace_ms,
        )


def _report_fields(report: ConformanceReport) -> dict[str, Any]:
    """The report as a log field: everything but the (empty for ingest) regression part."""
    fields = report.to_dict()
    for key in ("regression", "ingest", "uri"):
        fields.pop(key, None)
    return fields


def _settle(answer: asyncio.Future[Any], value: Any = None, *, error: BaseException | None = None) -> None:
    """Resolve a riding complete's future, unless its window was cancelled meanwhile (rule 12)."""
    if answer.done():
        return
    if error is not None:
        answer.set_exception(error)
    else:
        answer.set_result(value)


class _LeaseLost(Exception):
    """Internal: the renew loop found the lease gone."""


class _NothingSent(Exception):
    """Internal: a stopping worker gives back a window that sent nothing to its source (rule 4)."""


class Worker:
    """One worker: a claim loop feeding up to ``concurrency`` window tasks."""

    def __init__(
        self,
        settings: WorkerSettings,
        *,
        coordinator: Coordinator,
        source: Fetcher,
        storage: Store,
        metrics: WorkerMetrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock_ms: Callable[[], int] = clock_module.wall_clock_ms,
        partial_ok: bool = False,
        ts_unit: str | None = None,
        fetch_rate_per_s: Callable[[], float | None] | None = None,
    ) -> None:
        #: Store the normalized rest of a window the ingest conformance blocked (rule 7).
        self.partial_ok = partial_ok
        #: Unit of integer epoch ``ts`` from the source (None: decided by magnitude).
        self.ts_unit = ts_unit
        self.settings = settings
        self._coordinator = coordinator
        self._source = source
        self._storage = storage
        self.metrics = metrics or WorkerMetrics()
        self._clock = clock
        self._wall_clock_ms = wall_clock_ms
        self._stopping = asyncio.Event()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._slot_freed = asyncio.Event()
        #: Windows that may still send requests to the source (claimed, not yet past their fetch): rule 10.
        self._fetching: set[str] = set()
        self._fetches_changed = asyncio.Event()
        #: The source's admitted request rate now (rule 11); None: not limited.
        self._fetch_rate_per_s = fetch_rate_per_s
        #: Per window being fetched: its work task and what its requests did at the source's limits (rule 4).
        self._works: dict[str, tuple[asyncio.Task[None], AdmissionWatch]] = {}
        #: Windows given back by :meth:`stop` before they sent anything.
        self._unsent: set[str] = set()
        #: Rule 12: completes waiting to ride on the next claim, whether the claim loop waits for a slot, whether
        #: the coordinator takes completions on claims, and the completes sent alone.
        self._outbox: list[tuple[Lease, int, asyncio.Future[Any]]] = []
        self._claim_waiting = False
        self._ride = True
        self._alone: set[asyncio.Task[None]] = set()

    # -- lifecycle -------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop claiming and give back the windows that sent nothing yet; :meth:`run` then drains the others within
        the grace period (rule 4)."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        for lease_id, (work, watch) in list(self._works.items()):
            if watch.nothing_sent and lease_id in self._fetching:
                self._unsent.add(lease_id)
                work.cancel()  # suspended at the limits: the cancel lands before any request is sent
                self._fetched(lease_id)

    def budget_changed(self) -> None:
        """The source's budget changed (a shared share grew or shrank): re-check the claim room (rule 11)."""
        self._slot_freed.set()

    async def run(self) -> None:
        """Claim and process windows until :meth:`stop`; then finish or release what is in progress."""
        log.info("worker.started", worker_id=self.settings.worker_id, concurrency=self.settings.concurrency)
        try:
            await self._claim_loop()
        finally:
            await self._drain()
            log.info("worker.stopped", worker_id=self.settings.worker_id)

    async def _claim_loop(self) -> None:
        backoff_s = 0.1
        while not self._stopping.is_set():
            free = min(self.settings.concurrency - len(self._tasks) + len(self._outbox), self._queue_room())
            if free <= 0:
                self._send_alone()
                await self._wait_for_slot()
                continue
            try:
                leases = await self._claim(free)
            except (CoordinatorUnavailableError, CoordinatorError) as exc:
                log.warning("worker.claim_failed", error=str(exc), retry_in_s=backoff_s)
                await self._sleep_unless_stopping(backoff_s)
                backoff_s = min(backoff_s * 2, 5.0)
                continue
            backoff_s = 0.1
            for lease in leases:
                self._start(lease)
        self._send_alone()

    async def _claim(self, free: int) -> list[Lease]:
        if self._outbox:
            return await self._claim_completing(free)
        wait_ms = self.settings.claim_wait_ms
        claim = asyncio.ensure_future(
            self._coordinator.claim(self.settings.worker_id, max_windows=free, wait_ms=wait_ms)
        )
        stop = asyncio.ensure_future(self._stopping.wait())
        done, _ = await asyncio.wait({claim, stop}, return_when=asyncio.FIRST_COMPLETED)
        if claim in done:
            stop.cancel()
            return claim.result()
        # Stopping during a long poll: let the claim finish so granted windows are released, not orphaned.
        leases = await claim
        for lease in leases:
            self._start(lease)
        return []

    async def _claim_completing(self, free: int) -> list[Lease]:
        """Rule 12: claim with the waiting completes aboard; hand each its answer."""
        riding, self._outbox = self._outbox, []
        done = [(lease.lease_id, lease.token, rows) for lease, rows, _ in riding]
        try:
            leases, outcomes = await self._coordinator.claim_completing(self.settings.worker_id, done, max_windows=free)
        except BaseException as exc:
            if isinstance(exc, CoordinatorBadRequestError) and exc.field == "complete":
                self._ride = False
                log.warning("worker.claim_completing_refused", error=str(exc), fix="upgrade the coordinator nodes")
            self._outbox = riding + self._outbox
            self._send_alone()
            raise
        self.metrics.completes.labels(via="claim").inc(len(riding))
        for (lease, rows, answer), outcome in zip(riding, outcomes, strict=True):
            if not isinstance(outcome, Exception):
                _settle(answer, outcome)
            elif isinstance(outcome, (LeaseLostError, CoordinatorNotFoundError)):
                _settle(answer, error=outcome)
            else:  # unconfirmed (timeout, leader change): complete it alone; complete is idempotent per token
                self._outbox.append((lease, rows, answer))
        self._send_alone()
        return leases

    async def _complete(self, lease: Lease, rows: int) -> Any:
        """Rule 12: ride on the claim the freed slot is about to send, or complete alone."""
        traced = bool(lease.traces) and tracing.enabled()  # its trace shows its own complete (rule 9)
        if not (self._ride and self._claim_waiting) or self._stopping.is_set() or traced:
            self.metrics.completes.labels(via="alone").inc()
            return await self._coordinator.complete(lease.lease_id, lease.token, rows)
        answer: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._outbox.append((lease, rows, answer))
        self._slot_freed.set()
        return await answer

    def _send_alone(self) -> None:
        """Send every waiting complete on its own (rule 12)."""
        waiting, self._outbox = self._outbox, []
        for lease, rows, answer in waiting:
            task = asyncio.create_task(self._complete_alone(lease, rows, answer))
            self._alone.add(task)
            task.add_done_callback(self._alone.discard)

    async def _complete_alone(self, lease: Lease, rows: int, answer: asyncio.Future[Any]) -> None:
        self.metrics.completes.labels(via="alone").inc()
        try:
            _settle(answer, await self._coordinator.complete(lease.lease_id, lease.token, rows))
        except Exception as exc:
            _settle(answer, error=exc)

    def _queue_room(self) -> int:
        """Rule 11: windows the claim may add before the fetch queue exceeds ``queue_horizon_s`` of the rate."""
        rate = self._fetch_rate_per_s() if self._fetch_rate_per_s is not None else None
        if rate is None:
            return self.settings.concurrency
        depth = max(1, math.ceil(rate * self.settings.queue_horizon_s))
        return depth - len(self._fetching)

    def _start(self, lease: Lease) -> None:
        task = asyncio.create_task(self._process(lease), name=f"window-{lease.window_id}")
        self._tasks[lease.lease_id] = task
        self._fetching.add(lease.lease_id)
        self.metrics.in_progress.set(len(self._tasks))

        def done(_: asyncio.Task[None], lease_id: str = lease.lease_id) -> None:
            self._fetched(lease_id)
            self._tasks.pop(lease_id, None)
            self.metrics.in_progress.set(len(self._tasks))
            self._slot_freed.set()

        task.add_done_callback(done)

    def _fetched(self, lease_id: str) -> None:
        if lease_id in self._fetching:
            self._fetching.discard(lease_id)
            self._fetches_changed.set()
            self._slot_freed.set()  # room in the fetch queue (rule 11)

    async def source_done(self) -> None:
        """Rule 10: return once the worker is stopping and none of its windows will send another source request."""
        while not (self._stopping.is_set() and not self._fetching):
            self._fetches_changed.clear()
            changed = asyncio.ensure_future(self._fetches_changed.wait())
            stop = asyncio.ensure_future(self._stopping.wait())
            await asyncio.wait({changed, stop}, return_when=asyncio.FIRST_COMPLETED)
            changed.cancel()
            stop.cancel()

    async def _wait_for_slot(self) -> None:
        self._slot_freed.clear()
        waiter = asyncio.ensure_future(self._slot_freed.wait())
        stop = asyncio.ensure_future(self._stopping.wait())
        self._claim_waiting = True
        try:
            await asyncio.wait({waiter, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            self._claim_waiting = False
        waiter.cancel()
        stop.cancel()

    async def _sleep_unless_stopping(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

    async def _drain(self) -> None:
        if not self._tasks:
            return
        grace_s = self.settings.shutdown_grace_ms / 1000
        log.info("worker.draining", in_progress=len(self._tasks), grace_s=grace_s)
        _, pending = await asyncio.wait(set(self._tasks.values()), timeout=grace_s)
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
            orphans = list(self._alone)  # completes of windows just cancelled (rule 12): their answer has no reader
            for task in orphans:
                task.cancel()
            await asyncio.gather(*orphans, return_exceptions=True)

    # -- one window ------------------------------------------------------------------------------------------

    async def _process(self, lease: Lease) -> None:
        fields = {"lease_id": lease.lease_id, "window_id": lease.window_id, "token": lease.token}
        with (
            bind_request(None, worker_id=self.settings.worker_id, **fields),
            tracing.span(
                "worker.window",
                kind=tracing.SpanKind.CONSUMER,
                attributes=self._window_attributes(lease),
                parent=tracing.context_of(lease.traces[0]) if lease.traces else None,
                links=lease.traces[1:],
            ) as current,
        ):
            await self._process_traced(lease, current)

    def _window_attributes(self, lease: Lease) -> dict[str, Any]:
        return {
            "seamless.series": lease.series,
            "seamless.start_ms": lease.start,
            "seamless.end_ms": lease.end,
            "seamless.window_id": lease.window_id,
            "seamless.lease_id": lease.lease_id,
            "seamless.attempt": lease.attempt,
            "seamless.worker_id": self.settings.worker_id,
        }

    async def _process_traced(self, lease: Lease, current: Any) -> None:
        completing = asyncio.Event()
        watch = AdmissionWatch()
        renewer = asyncio.create_task(self._renew_loop(lease))
        work = asyncio.create_task(self._work(lease, completing, watch))
        self._works[lease.lease_id] = (work, watch)
        try:
            done, _ = await asyncio.wait({renewer, work}, return_when=asyncio.FIRST_COMPLETED)
            if work not in done and completing.is_set():
                # The complete is sent: its answer (idempotent, deduplicated across retries) decides. A renew
                # refused because that very complete landed must not turn a completed window into a lost one.
                done, _ = await asyncio.wait({work})
                if not renewer.cancelled():
                    renewer.exception()  # seen; the complete's answer wins
            if work in done:
                if work.cancelled() and lease.lease_id in self._unsent:
                    raise _NothingSent
                work.result()
            else:
                work.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await work
                renewer.result()
        except asyncio.CancelledError:
            work.cancel()
            await self._release(lease)
            raise
        except _NothingSent:
            await self._release(lease, fetched=False)
        except (_LeaseLost, LeaseLostError) as exc:
            self.metrics.leases_lost.inc()
            tracing.record_error(current, exc)
            log.warning("worker.lease_lost")
        except Exception as exc:  # any failure of one window is reported, never kills the worker
            tracing.record_error(current, exc)
            await self._report_failure(lease, exc)
        finally:
            self._works.pop(lease.lease_id, None)
            self._unsent.discard(lease.lease_id)
            renewer.cancel()
            work.cancel()

    def _closed_end_ms(self, lease: Lease) -> int:
        step = SeriesKey.parse(lease.series).interval_ms
        return max(lease.start, min(lease.end, (self._wall_clock_ms() // step) * step))

    async def _work(self, lease: Lease, completing: asyncio.Event, watch: AdmissionWatch) -> None:
        if self._stopping.is_set():  # claimed as the worker stopped: give it back unfetched (rule 4)
            self._fetched(lease.lease_id)
            raise _NothingSent
        started = time.perf_counter()
        phases: dict[str, float] = {}

        def lap(phase: str) -> None:
            phases[phase] = round(time.perf_counter() - started - sum(phases.values()), 3)

        end = self._closed_end_ms(lease)
        with tracing.span("worker.fetch") as current:
            with watch_admissions(watch):
                frame, source, failed = await self._fetch(lease, end)
            self._fetched(lease.lease_id)
            if current is not None:
                current.set_attributes({"seamless.source": source, "seamless.rows": len(frame)})
        with tracing.span("worker.conform"):
            frame = self._conform(lease, end, frame, source, failed)
        lap("fetch_s")
        # Re-check ownership right before writing: a worker paused past its TTL must not write or complete.
        await self._coordinator.renew(lease.lease_id, lease.token)
        lap("renew_s")
        if end > lease.start:
            with tracing.span("worker.write", attributes={"seamless.rows": len(frame)}):
                await write_window_from(self._storage, lease.series, lease.start, end, frame, source=source)
        lap("write_s")
        completing.set()
        await self._complete(lease, len(frame))
        lap("complete_s")
        self.metrics.rows_written.inc(len(frame))
        self.metrics.windows_done.inc()
        self.metrics.last_timestamp.set(self._wall_clock_ms() / 1000)
        took_s = round(time.perf_counter() - started, 3)
        log.info(
            "worker.window_done",
            rows=len(frame),
            attempt=lease.attempt,
            took_s=took_s,
            source=source,
            failed_sources=failed,
            **phases,
        )

    async def _fetch(self, lease: Lease, end: int) -> tuple[pd.DataFrame, str, list[str]]:
        if end <= lease.start:
            return empty_frame(), "", []
        served = getattr(self._source, "fetch_served", None)
        if served is not None:
            frame, name, failed = await served(lease.series, lease.start, end)
            return frame, name, list(failed)
        frame = await self._source.fetch(lease.series, lease.start, end)
        return frame, str(getattr(self._source, "name", type(self._source).__name__)), []

    def _conform(self, lease: Lease, end: int, raw: Any, source: str, failed: list[str]) -> pd.DataFrame:
        """Rule 7: normalize, log the report, raise ConformancePipelineError when it blocks."""
        if end <= lease.start:
            return empty_frame()
        frame, report = normalize_bars(
            raw,
            series=lease.series,
            interval_ms=SeriesKey.parse(lease.series).interval_ms,
            start_ms=lease.start,
            end_ms=end,
            ts_unit=self.ts_unit,
            created_at_ms=self._wall_clock_ms(),
        )
        report.source, report.failed_sources = source, failed
        if report.flags:
            for flag, count in report.flag_counts.items():
                self.metrics.conformance_flags.labels(flag=flag).inc(count)
            log.info("worker.window_conformance", ok=report.ok, summary=report.summary(), report=_report_fields(report))
        if report.blocking and not self.partial_ok:
            raise ConformancePipelineError(report)
        return frame

    async def _renew_loop(self, lease: Lease) -> None:
        """Renew every TTL/3; raise :class:`_LeaseLost` when the lease is gone or can no longer be proven ours."""
        period_s = self.settings.lease_ttl_ms / 3000
        deadline = self._clock() + self.settings.lease_ttl_ms / 1000
        while True:
            await asyncio.sleep(period_s)
            try:
                await self._coordinator.renew(lease.lease_id, lease.token)
                deadline = self._clock() + self.settings.lease_ttl_ms / 1000
            except LeaseLostError as exc:
                raise _LeaseLost(str(exc)) from None
            except CoordinatorError as exc:
                if self._clock() >= deadline:
                    raise _LeaseLost(f"could not renew before expiry: {exc}") from None
                log.warning("worker.renew_failed", error=str(exc))

    async def _report_failure(self, lease: Lease, exc: Exception) -> None:
        retryable = not isinstance(exc, (FatalSourceError, FrameContractError, ConformancePipelineError))
        if isinstance(exc, ConformancePipelineError):
            reason = f"conformance {exc.report.summary()}"[:500]
        else:
            reason = f"{type(exc).__name__}: {exc}"[:500]
        self.metrics.failures.labels(reason=type(exc).__name__).inc()
        log.warning("worker.window_failed", reason=reason, retryable=retryable, attempt=lease.attempt)
        try:
            await self._coordinator.fail(lease.lease_id, lease.token, reason, retryable=retryable)
        except LeaseLostError:
            log.info("worker.fail_not_recorded")
        except CoordinatorError as report_exc:
            log.warning("worker.fail_not_reported", error=str(report_exc))

    async def _release(self, lease: Lease, *, fetched: bool = True) -> None:
        """Give the window back (attempt not counted); ``fetched=False`` when it sent nothing to the source."""
        try:
            await asyncio.wait_for(asyncio.shield(self._coordinator.release(lease.lease_id)), _RELEASE_TIMEOUT_S)
            log.info("worker.window_released", fetched=fetched)
        except (CoordinatorError, TimeoutError) as exc:
            log.warning("worker.release_failed", error=str(exc))
