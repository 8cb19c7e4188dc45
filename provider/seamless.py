"""The seamless data provider: one ``fetch`` that reads cache -> storage -> backfill -> live (DESIGN.md section 6).

Rules:
1. A request is snapped outward to the bar grid and stops at the end of the last closed bar. Sources are
   consulted in priority order; each serves the part of what is still missing that its coverage holds. The parts
   are disjoint ranges, so the joined frame has no missing or doubled bar at any seam.
2. Strategies: FAIL_FAST raises :class:`DataUnavailableError` for any uncovered part and makes no outbound request;
   AUTO_BACKFILL backfills every missing range and waits (or raises :class:`BackfillFailedError` with the ranges);
   PARTIAL_FILL returns what is stored now and starts one background backfill of the rest; SEAMLESS takes the
   live feed's zone (recent closed bars) from the live feed and backfills the rest like AUTO_BACKFILL.
3. Every result runs through the conformance pipeline; blocking flags raise
   :class:`ConformancePipelineError` unless ``partial_ok``. Reports go to the report sink
   (:func:`provider.reports.open_report_sink`; one built from a spec is closed by ``aclose()``). Every backfilled
   window went through the ingest conformance first (:mod:`provider.backfill`): its report is published too,
   its flags join this fetch's report, and a blocked window raises :class:`ConformancePipelineError` with it.
7. Coverage of any source is trimmed inward to whole bars, never discarded (an off-grid cache range still
   serves its whole bars). A failing cache is skipped (``seamless_source_errors_total{source}``, a log line,
   ``last_fetch_metadata.skipped_sources``) and storage serves instead; it never fails a fetch.
4. SLA phases cancel the work they time (:mod:`provider.sla`); PARTIAL_FILL downgrades instead of raising.
5. A complete, conforming result of stored data is cached; a later fetch wholly inside it is answered from L1
   without touching storage or re-running conformance; its cached report is published again only with
   ``republish_cache_hits=True``.
6. One request id per fetch, on every log line and in ``last_fetch_metadata``.
8. Traces (:mod:`provider.core.tracing`, on when ``OTEL_*`` says so): a ``seamless.fetch`` span per fetch with
   ``seamless.cache``, ``seamless.storage``, ``seamless.live``, ``seamless.backfill`` and ``seamless.conformance``
   children; SLA breaches and downgrades are span events; the coordinator client carries the context on.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from typing import Any

import pandas as pd

from provider._reads import SourceReads, covered_ranges
from provider.backfill import BaseBackfiller
from provider.conformance import ConformanceContext, ConformanceReport
from provider.core import BackfillConfig, SeriesKey, merge_ranges, snap_range, subtract_ranges, tracing
from provider.core.clock import wall_clock_ms
from provider.core.obs import bind_request, get_logger
from provider.errors import (
    BackfillFailedError,
    ConformancePipelineError,
    DataUnavailableError,
    SeamlessSLAExceeded,
)
from provider.fetchmeta import FetchContext, FetchMetadata, outcome_of
from provider.flights import BackfillTicket
from provider.frames import assemble, last_ts_ms
from provider.metrics import ProviderMetrics
from provider.reports import open_report_sink
from provider.sla import SLARun
from provider.strategies import DataAvailabilityStrategy, ProgressCallback
from provider.wiring import (
    build_backfiller,
    build_cache,
    build_conformance,
    build_live,
    build_sla,
    build_storage,
)

__all__ = ["SeamlessDataProvider"]

_log = get_logger("provider.seamless")
#: How long ``aclose()`` lets pending report publications finish before cancelling them.
_PUBLISH_GRACE_S = 5.0
_S = DataAvailabilityStrategy


class SeamlessDataProvider(SourceReads):
    """Complete, checked bars for any range, as if every bar always existed (see the module rules)."""

    def __init__(
        self,
        *,
        strategy: DataAvailabilityStrategy | str = DataAvailabilityStrategy.SEAMLESS,
        cache_source: Any = None,
        storage_source: Any = None,
        backfiller: Any = None,
        live_feed: Any = None,
        coordinator: Any = None,
        conformance: Any = None,
        sla: Any = None,
        partial_ok: bool = False,
        backfill_config: BackfillConfig | None = None,
        progress: ProgressCallback | None = None,
        cache_ttl: float = 3600,
        enable_background_backfill: bool = True,
        report_sink: Any = None,
        report_base: str | None = None,
        republish_cache_hits: bool = False,
        clock: Callable[[], int] | None = None,
        registry: Any = None,
    ) -> None:
        self.strategy = DataAvailabilityStrategy.parse(strategy)
        tracing.configure_tracing("seamless-provider")
        self.clock = clock if clock is not None else wall_clock_ms
        self.metrics = ProviderMetrics(registry)
        self.backfill_config = backfill_config if backfill_config is not None else BackfillConfig()
        self.storage = build_storage(storage_source)
        self.cache = build_cache(cache_source, ttl_s=cache_ttl, clock=self.clock, metrics=self.metrics)
        self.backfiller = build_backfiller(
            backfiller, coordinator, self.storage, config=self.backfill_config, clock=self.clock, metrics=self.metrics
        )
        self.live_feed = build_live(live_feed, clock=self.clock, metrics=self.metrics)
        self.conformance = build_conformance(conformance)
        self.sla = build_sla(sla)
        self.partial_ok = partial_ok
        self.progress = progress
        self.enable_background_backfill = enable_background_backfill
        #: Where reports go (``provider.reports.open_report_sink``); closed by ``aclose()`` when built here.
        self.report_sink = open_report_sink(report_sink, base=report_base, metrics=self.metrics)
        self._owns_report_sink = report_sink is None or isinstance(report_sink, str)
        #: Whether an L1 hit publishes its cached report again (off: a hit is not a new conformance run).
        self.republish_cache_hits = republish_cache_hits
        #: The report of the last fetch that ran conformance (per provider, last writer wins).
        self.last_conformance_report: ConformanceReport | None = None
        #: What the last fetch did.
        self.last_fetch_metadata: FetchMetadata | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False
        if isinstance(self.backfiller, BaseBackfiller):
            self.backfiller.on_report = self._on_ingest_report
            self.backfiller.partial_ok = self.backfiller.partial_ok or partial_ok
        self._metrics_servers: list[Any] = []

    @classmethod
    def from_config(cls, config: Any, **kwargs: Any) -> SeamlessDataProvider:
        """A provider configured by an :class:`~provider.core.AppConfig` (``load_config(path)``); keywords win."""
        block = config.seamless_data_provider
        kwargs.setdefault("strategy", block.strategy)
        kwargs.setdefault("backfill_config", block.backfill_config)
        kwargs.setdefault("cache_ttl", block.cache_ttl)
        kwargs.setdefault("enable_background_backfill", block.enable_background_backfill)
        kwargs.setdefault("sla", config.sla)
        kwargs.setdefault("report_sink", block.report_sink)
        kwargs.setdefault("report_base", block.report_base)
        kwargs.setdefault("republish_cache_hits", block.republish_cache_hits)
        kwargs.setdefault("conformance", config.conformance)
        return cls(**kwargs)

    # -- public API ----------------------------------------------------------------------------------------

    async def fetch(self, start: Any, end: Any, *, node_id: str, interval: Any = None) -> pd.DataFrame:
        """The bars of ``[start, end)`` of the series ``node_id`` according to the strategy (module rules)."""
        ctx = self._context(start, end, node_id, interval)
        loop = asyncio.get_running_loop()
        started = loop.time()
        with (
            bind_request(ctx.meta.request_id, node_id=ctx.node_id, strategy=self.strategy.value),
            tracing.span("seamless.fetch", attributes=lambda: self._fetch_attributes(ctx)) as current,
        ):
            sla = SLARun(self.sla, node_id=ctx.node_id, metrics=self.metrics)
            try:
                frame = self._from_l1(ctx)
                if frame is None:
                    async with sla.phase("total"):
                        frame = await self._run(ctx, sla)
            except BaseException as exc:
                ctx.meta.outcome = outcome_of(exc)
                self._finish(ctx, sla, loop.time() - started, None, current)
                _log.warning(
                    "fetch.error", outcome=ctx.meta.outcome, error=str(exc)[:500], missing=len(ctx.meta.missing_ranges)
                )
                raise
            self._finish(ctx, sla, loop.time() - started, frame, current)
            _log.info(
                "fetch.done",
                outcome=ctx.meta.outcome,
                rows=len(frame),
                cache_hit=ctx.meta.cache_hit,
                coverage_ratio=round(ctx.meta.coverage_ratio, 6),
                elapsed_ms=round(ctx.meta.elapsed_ms, 3),
            )
        return frame

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        """What is materialized for the series: storage ledger coverage merged with the cache's."""
        ranges: list[tuple[int, int]] = []
        for source in (self.cache, self.storage):
            if source is not None:
                ranges += await source.coverage(node_id=str(SeriesKey.parse(node_id)))
        return merge_ranges(ranges)

    async def fill_missing(self, start: Any, end: Any, *, node_id: str, interval: Any = None) -> list[tuple[int, int]]:
        """Backfill every uncovered part of ``[start, end)`` and wait; return the ranges that were missing."""
        ctx = self._context(start, end, node_id, interval)
        with bind_request(ctx.meta.request_id, node_id=ctx.node_id, op="fill_missing"):
            covered = []
            if self.storage is not None:
                covered = await covered_ranges(self.storage, [ctx.effective], node_id=ctx.node_id)
            missing = subtract_ranges([ctx.effective], covered)
            if missing:
                ticket = self._start_backfill(ctx, missing)
                await ticket.wait(self.progress)
        return missing

    def subscribe(self, *, node_id: str, start: Any = None) -> AsyncIterator[pd.DataFrame]:
        """Closed bars as they close, from the live feed (see :mod:`provider.live`)."""
        if self.live_feed is None:
            raise ValueError("subscribe() needs a live_feed (or EnhancedQuestDBProvider(live_fetcher=...))")
        begin = None if start is None else snap_range(start, start, SeriesKey.parse(node_id).interval_ms)[0]
        stream: AsyncIterator[pd.DataFrame] = self.live_feed.subscribe(node_id=node_id, start=begin)
        return stream

    async def wait_for_backfills(self) -> None:
        """Wait until every background backfill (and report publication) started so far has ended."""
        while True:
            if self.backfiller is not None:
                await self.backfiller.wait_idle()
            if not self._tasks:
                break
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def serve_metrics(self, port: int = 0, *, host: str = "127.0.0.1") -> Any:
        """Opt in to scraping: serve this provider's metrics at ``http://HOST:PORT/metrics`` until ``aclose()``.

        Returns a :class:`provider.metrics_http.MetricsServer` (``.port``, ``.url``); ``port=0`` picks a free port.
        """
        from provider.metrics_http import serve_metrics

        server = await serve_metrics(self.metrics.registry, port=port, host=host)
        self._metrics_servers.append(server)
        return server

    async def aclose(self) -> None:
        """Cancel background work and close what this provider opened."""
        if self._closed:
            return
        self._closed = True
        for server in self._metrics_servers:
            await server.aclose()
        if self.backfiller is not None:
            await self.backfiller.aclose()
        tasks = list(self._tasks)
        if tasks:  # report publications: a file write or an enqueue; give them a moment before cancelling
            await asyncio.wait(tasks, timeout=_PUBLISH_GRACE_S)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        owned_sink = self.report_sink if self._owns_report_sink else None
        for component in (self.cache, self.storage, owned_sink):
            closer = getattr(component, "aclose", None)
            if closer is not None:
                await closer()

    async def __aenter__(self) -> SeamlessDataProvider:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # -- one fetch -----------------------------------------------------------------------------------------

    def _context(self, start: Any, end: Any, node_id: str, interval: Any) -> FetchContext:
        return FetchContext.create(start, end, node_id, interval, strategy=self.strategy.value, now_ms=self.clock())

    def _from_l1(self, ctx: FetchContext) -> pd.DataFrame | None:
        if self.cache is None or not hasattr(self.cache, "hit") or ctx.start_ms >= ctx.end_ms:
            return None
        entry = self.cache.hit(ctx.node_id, ctx.start_ms, ctx.end_ms)
        if entry is None:
            return None
        frame: pd.DataFrame = entry.slice(ctx.start_ms, ctx.end_ms)
        ctx.meta.cache_hit = True
        ctx.meta.served["cache"] = [ctx.effective]
        ctx.finish_coverage([])
        if entry.report is not None:
            self.last_conformance_report = entry.report
            ctx.meta.conformance_flags = dict(entry.report.flag_counts)
            if self.republish_cache_hits:
                self._publish(entry.report)
        return frame

    async def _run(self, ctx: FetchContext, sla: SLARun) -> pd.DataFrame:
        missing = await self._read_stored(ctx, sla)
        if missing and self.strategy is _S.FAIL_FAST:
            ctx.finish_coverage(missing)
            raise DataUnavailableError(ctx.node_id, missing)
        if missing and self.strategy is _S.PARTIAL_FILL:
            if self.enable_background_backfill and self.backfiller is not None and not self._closed:
                self._start_backfill(ctx, missing)
        elif missing:
            if self.strategy is _S.SEAMLESS:
                missing = await self._read_live(ctx, sla, missing)
            missing = await self._backfill_and_read(ctx, sla, missing)
        ctx.finish_coverage(missing)
        frame = assemble(ctx.pieces)
        frame = await self._conform(ctx, frame)
        self._check_sla(ctx, sla, frame)
        if not missing and "live" not in ctx.meta.served and ctx.end_ms > ctx.start_ms:
            await self._put_cache(ctx, frame)
        if missing:
            ctx.meta.outcome = "partial"
        return frame

    async def _read_stored(self, ctx: FetchContext, sla: SLARun) -> list[tuple[int, int]]:
        """Cache then storage, each serving what the other could not; returns what is still missing."""
        remaining = [ctx.effective] if ctx.end_ms > ctx.start_ms else []
        try:
            async with sla.phase("storage"):
                if self.cache is not None and remaining:
                    remaining = await self._read_cache(ctx, remaining)
                if self.storage is not None and remaining:
                    remaining = await self._read_storage(ctx, remaining)
        except SeamlessSLAExceeded as exc:
            if self.strategy is not _S.PARTIAL_FILL:
                raise
            self._downgrade(ctx, exc)
            remaining = subtract_ranges([ctx.effective], ctx.served_ranges())
        return remaining

    async def _backfill_and_read(
        self, ctx: FetchContext, sla: SLARun, missing: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        """AUTO_BACKFILL: materialize ``missing``, wait, read it back from storage; raise if anything is left."""
        if not missing:
            return []
        if self.backfiller is None or self.storage is None:
            raise BackfillFailedError(
                ctx.node_id,
                missing,
                "no backfiller is configured (pass backfiller= or "
                "coordinator=, or use EnhancedQuestDBProvider(fetcher=...))",
            )
        with tracing.span("seamless.backfill", attributes={"seamless.series": ctx.node_id}) as current:
            ticket = self._start_backfill(ctx, missing)
            ctx.meta.backfill["waited"] = True
            if current is not None:
                current.set_attributes(
                    {
                        "seamless.ranges": len(missing),
                        "seamless.windows": len(ticket.flights),
                        "seamless.mode": str(self.backfiller.mode),
                    }
                )
            await self._wait_backfill(ctx, sla, missing, ticket)
        ctx.ingest = [f.report for f in ticket.flights if f.report is not None]
        ctx.meta.backfill["served_by"] = [
            {"start_ms": r.start_ms, "end_ms": r.end_ms, "source": r.source, "failed_sources": list(r.failed_sources)}
            for r in ctx.ingest
        ]
        async with sla.phase("storage"):
            remaining = await self._read_storage(ctx, missing, origin="backfill")
        if remaining:
            ctx.finish_coverage(remaining)
            raise BackfillFailedError(ctx.node_id, remaining, "the backfill ended but storage does not cover it")
        return []

    async def _wait_backfill(
        self, ctx: FetchContext, sla: SLARun, missing: list[tuple[int, int]], ticket: BackfillTicket
    ) -> None:
        try:
            async with sla.phase("backfill"):
                await ticket.wait(self.progress)
        except BackfillFailedError as exc:
            ctx.finish_coverage(missing)
            raise BackfillFailedError(ctx.node_id, missing, exc.reason) from exc
        except ConformancePipelineError as exc:
            ctx.finish_coverage(missing)
            self.last_conformance_report = ctx.report = exc.report
            raise

    def _start_backfill(self, ctx: FetchContext, missing: list[tuple[int, int]]) -> BackfillTicket:
        if self.backfiller is None:
            raise BackfillFailedError(ctx.node_id, missing, "no backfiller is configured")
        ticket = self.backfiller.start(ctx.node_id, missing, horizon_ms=ctx.horizon_ms)
        ctx.meta.backfill = {
            "mode": self.backfiller.mode,
            "windows": len(ticket.flights),
            "started": ticket.started,
            "shared": len(ticket.flights) - ticket.started,
            "waited": False,
            "ranges": list(missing),
        }
        return ticket

    async def _conform(self, ctx: FetchContext, frame: pd.DataFrame) -> pd.DataFrame:
        if self.conformance is None:
            return frame
        context = ConformanceContext(
            ctx.node_id,
            ctx.interval_ms,
            ctx.start_ms,
            ctx.end_ms,
            covered=tuple(ctx.served_ranges()),
            now_ms=self.clock(),
            request_id=ctx.meta.request_id,
        )
        with tracing.span("seamless.conformance", attributes=lambda: {"seamless.rows": len(frame)}) as current:
            frame, report = self.conformance.run(frame, context)
            for ingest in ctx.ingest:
                report.merge_ingest(ingest)
            if current is not None:
                current.set_attributes({"seamless.ok": report.ok, "seamless.flags": sorted(report.flag_counts)})
        self.last_conformance_report = ctx.report = report
        ctx.meta.conformance_flags = dict(report.flag_counts)
        ctx.meta.conformance_ok = report.ok
        self.metrics.count_flags(report.flag_counts)
        self._publish(report)
        if report.blocking and not self.partial_ok:
            raise ConformancePipelineError(report)
        return frame

    def _check_sla(self, ctx: FetchContext, sla: SLARun, frame: pd.DataFrame) -> None:
        try:
            sla.check_coverage(ctx.meta.coverage_ratio)
            if ctx.end_ms > ctx.start_ms and sla.policy.max_lag_seconds is not None:
                sla.check_freshness(last_ts_ms(frame) if len(frame) else None, ctx.interval_ms, ctx.end_ms)
        except SeamlessSLAExceeded as exc:
            if self.strategy is not _S.PARTIAL_FILL:
                raise
            self._downgrade(ctx, exc)

    def _downgrade(self, ctx: FetchContext, exc: SeamlessSLAExceeded) -> None:
        ctx.meta.downgraded = True
        ctx.meta.downgrade_reason = f"sla_{exc.phase}"
        ctx.meta.sla_violation = SLARun.violation(exc)
        tracing.event(
            "seamless.downgraded", {"seamless.phase": exc.phase, "seamless.reason": ctx.meta.downgrade_reason}
        )
        _log.warning("fetch.downgraded", phase=exc.phase, elapsed_ms=round(exc.elapsed_ms, 3), budget_ms=exc.budget_ms)

    def _on_ingest_report(self, report: ConformanceReport) -> None:
        """A backfilled window's ingest report: counted, logged and published like a fetch's."""
        self.metrics.count_flags(report.flag_counts)
        if report.flags:
            _log.info("backfill.conformance", summary=report.summary(), source=report.source, ok=report.ok)
        self._publish(report)

    def _publish(self, report: ConformanceReport) -> None:
        async def publish() -> None:
            try:
                await self.report_sink.publish(report.uri, report.to_dict())
            except Exception as exc:  # a sink problem (a sink of the caller's: any exception) must not fail fetches
                self.metrics.count_report_dropped(getattr(self.report_sink, "kind", "custom"), "error")
                _log.warning("report.publish_failed", uri=report.uri, error=f"{type(exc).__name__}: {exc}"[:500])

        task = asyncio.get_running_loop().create_task(publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _finish(
        self, ctx: FetchContext, sla: SLARun, elapsed_s: float, frame: pd.DataFrame | None, current: Any
    ) -> None:
        ctx.meta.elapsed_ms = elapsed_s * 1000.0
        ctx.meta.phases_ms = dict(sla.spent_ms)
        ctx.meta.rows = 0 if frame is None else len(frame)
        self.metrics.count_fetch(self.strategy.value, ctx.meta.outcome)
        self.last_fetch_metadata = ctx.meta
        if current is not None:
            current.set_attributes(
                {
                    "seamless.rows": ctx.meta.rows,
                    "seamless.outcome": ctx.meta.outcome,
                    "seamless.cache_hit": ctx.meta.cache_hit,
                    "seamless.coverage_ratio": ctx.meta.coverage_ratio,
                }
            )

    def _fetch_attributes(self, ctx: FetchContext) -> dict[str, Any]:
        return {
            "seamless.series": ctx.node_id,
            "seamless.start_ms": ctx.start_ms,
            "seamless.end_ms": ctx.end_ms,
            "seamless.strategy": self.strategy.value,
            "seamless.request_id": ctx.meta.request_id,
        }
