"""Reading the provider's sources for one fetch: cache, storage and the live zone (a mixin of the provider).

Rules:
1. Each source serves the part of what is still missing that its coverage holds; its coverage is trimmed inward
   to whole bars first, never discarded: an off-grid range serves the whole bars inside it, and what it cannot
   serve stays missing for the next source (a cache range [95, 100) ms of a 10 ms series serves nothing and
   leaves the bar at 90 ms to storage).
2. A cache that fails (any exception but cancellation) is skipped: counted in ``seamless_source_errors_total``,
   logged as ``fetch.source_skipped`` and noted in ``last_fetch_metadata.skipped_sources``; storage serves instead.
3. A storage error during a read surfaces as :class:`~provider.errors.StorageFailedError` (a provider error
   naming the series and what to do next; the storage error is its ``__cause__``).
4. The live feed serves missing bars inside its zone up to the newest bar it returned.
5. A source with ``serve(ranges, node_id=...)`` (the cache, the storage source) answers for its coverage and
   its bars in one call. Any other :class:`~provider.strategies.DataSource` is asked with
   :func:`covered_ranges`, which uses ``covered_within`` when the source has it (so a request's cost follows
   the request) and its whole ``coverage`` otherwise, then :func:`read_pieces`, one ``fetch`` per range.
"""

from __future__ import annotations

import asyncio
from typing import Any

from provider.core import intersect_ranges, subtract_ranges, tracing
from provider.core.obs import get_logger
from provider.errors import StorageFailedError
from provider.fetchmeta import FetchContext
from provider.frames import Piece, last_ts_ms, trim
from provider.metrics import ProviderMetrics
from provider.sla import SLARun
from provider.storage.errors import StorageError
from provider.storage_source import grid_inward

__all__ = ["SourceReads", "covered_ranges", "read_pieces"]

_log = get_logger("provider.seamless")


async def read_pieces(source: Any, ranges: list[tuple[int, int]], *, node_id: str) -> list[Piece]:
    """Ask ``source`` for the bars of each range."""
    if not ranges:
        return []
    frames = await asyncio.gather(*(source.fetch(lo, hi, node_id=node_id) for lo, hi in ranges))
    return list(zip(ranges, frames, strict=True))


async def covered_ranges(source: Any, ranges: list[tuple[int, int]], *, node_id: str) -> list[tuple[int, int]]:
    """The parts of ``ranges`` that ``source`` covers; a source with ``covered_within`` is asked about their hull
    only, any other for its whole coverage."""
    if not ranges:
        return []
    within = getattr(source, "covered_within", None)
    if within is not None:
        known = await within(min(lo for lo, _ in ranges), max(hi for _, hi in ranges), node_id=node_id)
    else:
        known = await source.coverage(node_id=node_id)
    return intersect_ranges(ranges, known)


class SourceReads:
    """The source-reading half of :class:`~provider.seamless.SeamlessDataProvider`."""

    cache: Any
    storage: Any
    live_feed: Any
    metrics: ProviderMetrics

    async def _read_cache(self, ctx: FetchContext, remaining: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """The cache serves what it can; a cache that fails is skipped (rule 7), storage serves instead."""
        with tracing.span("seamless.cache", attributes=lambda: _phase_attributes(ctx, remaining)) as current:
            try:
                return await self._read_source(ctx, self.cache, remaining, current=current)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # any failure of a cache is isolated: counted, logged, noted, skipped
                tracing.record_error(current, exc)
                self._skip_cache(ctx, exc)
                return remaining

    async def _put_cache(self, ctx: FetchContext, frame: Any) -> None:
        """Keep a complete result in a cache that can (``put``); a failing put is isolated like a failing read."""
        put = getattr(self.cache, "put", None)
        if put is None:
            return
        try:
            await put(ctx.node_id, ctx.start_ms, ctx.end_ms, frame, ctx.report)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a cache that cannot store must not fail a fetch that has its data
            self._skip_cache(ctx, exc)

    def _skip_cache(self, ctx: FetchContext, exc: BaseException) -> None:
        name = str(getattr(self.cache, "name", type(self.cache).__name__))
        error = f"{type(exc).__name__}: {exc}"[:300]
        self.metrics.count_source_error(name)
        ctx.meta.skipped_sources.append({"source": name, "error": error})
        _log.warning("fetch.source_skipped", source=name, error=error)

    async def _read_storage(
        self, ctx: FetchContext, remaining: list[tuple[int, int]], origin: str | None = None
    ) -> list[tuple[int, int]]:
        """Storage serves what its ledger covers (rule 3)."""
        with tracing.span("seamless.storage", attributes=lambda: _phase_attributes(ctx, remaining, origin)) as current:
            try:
                return await self._read_source(ctx, self.storage, remaining, origin, current=current)
            except StorageError as exc:
                raise StorageFailedError(ctx.node_id, "read", exc) from exc

    async def _read_source(
        self,
        ctx: FetchContext,
        source: Any,
        remaining: list[tuple[int, int]],
        origin: str | None = None,
        *,
        current: Any = None,
    ) -> list[tuple[int, int]]:
        name = getattr(source, "name", type(source).__name__)
        loop = asyncio.get_running_loop()
        started = loop.time()
        if hasattr(source, "serve"):
            pieces = await source.serve(remaining, node_id=ctx.node_id)
        else:
            covered = await covered_ranges(source, remaining, node_id=ctx.node_id)
            covered = grid_inward(covered, ctx.interval_ms)
            pieces = await read_pieces(source, covered, node_id=ctx.node_id)
        self.metrics.observe_source(name, loop.time() - started)
        ctx.add(origin or name, pieces)
        if current is not None:
            current.set_attribute("seamless.source", str(name))
            current.set_attribute("seamless.rows", sum(len(frame) for _, frame in pieces))
        return subtract_ranges(remaining, [r for r, _ in pieces])

    async def _read_live(self, ctx: FetchContext, sla: SLARun, missing: list[tuple[int, int]]) -> list[tuple[int, int]]:
        """SEAMLESS: take missing bars inside the live zone from the live feed; the rest stays missing."""
        if self.live_feed is None:
            return missing
        lookback_ms = int(getattr(self.live_feed, "lookback_bars", 0)) * ctx.interval_ms
        wanted = intersect_ranges(missing, [(max(0, ctx.horizon_ms - lookback_ms), ctx.horizon_ms)])
        if not wanted:
            return missing
        with tracing.span("seamless.live", attributes=lambda: _phase_attributes(ctx, wanted)):
            return await self._read_live_zone(ctx, sla, missing, wanted)

    async def _read_live_zone(
        self, ctx: FetchContext, sla: SLARun, missing: list[tuple[int, int]], wanted: list[tuple[int, int]]
    ) -> list[tuple[int, int]]:
        async with sla.phase("live"):
            for lo, hi in wanted:
                frame = trim(await self.live_feed.fetch(lo, hi, node_id=ctx.node_id), lo, hi)
                if len(frame):
                    # Served up to the newest bar received; a late bar after it is left for the backfill.
                    served = (lo, last_ts_ms(frame) + ctx.interval_ms)
                    ctx.add("live", [(served, frame)])
                    missing = subtract_ranges(missing, [served])
        return missing


def _phase_attributes(ctx: FetchContext, ranges: list[tuple[int, int]], origin: str | None = None) -> dict[str, Any]:
    """The span attributes of a read phase: the series and the ranges asked of it."""
    attributes: dict[str, Any] = {
        "seamless.series": ctx.node_id,
        "seamless.ranges": len(ranges),
        "seamless.start_ms": ranges[0][0] if ranges else ctx.start_ms,
        "seamless.end_ms": ranges[-1][1] if ranges else ctx.end_ms,
    }
    if origin is not None:
        attributes["seamless.origin"] = origin
    return attributes
