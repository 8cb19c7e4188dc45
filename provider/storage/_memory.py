"""The in-memory backend (``memory://``): a real implementation of the contract for unit tests.

Rules:
1. It keeps exactly what the SQL backends keep: per series, sorted unique bars and a window ledger keyed by
   window start. It runs the same contract test suite as the real backends.
2. A write builds the new state completely and then swaps it in without awaiting in between, so concurrent
   writers on one event loop never interleave and a refused write changes nothing.
3. Frames handed out are fresh copies; nothing the caller does to them changes the store.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from provider.core import Range, SeriesKey, merge_ranges, wall_clock_ms
from provider.frames import PRICE_COLUMNS
from provider.storage._contract import LedgerWindow, StorageBase, WindowWrite, frame_from_columns

__all__ = ["MemoryStorage"]

_EMPTY_TS = np.empty(0, dtype=np.int64)


@dataclass
class _Series:
    ts_ms: np.ndarray = field(default_factory=lambda: _EMPTY_TS)
    #: shape (5, n): open, high, low, close, volume
    values: np.ndarray = field(default_factory=lambda: np.empty((len(PRICE_COLUMNS), 0)))
    #: window start -> its ledger row
    windows: dict[int, LedgerWindow] = field(default_factory=dict)


class MemoryStorage(StorageBase):
    """Bars and ledger in process memory; lost when the object goes away."""

    kind = "memory"

    def __init__(self) -> None:
        super().__init__()
        self._series: dict[str, _Series] = {}

    async def _write(self, request: WindowWrite) -> None:
        state = self._series.setdefault(str(request.series), _Series())
        keep = (state.ts_ms < request.start_ms) | (state.ts_ms >= request.end_ms)
        ts_ms = np.concatenate((state.ts_ms[keep], request.ts_ms))
        values = np.concatenate((state.values[:, keep], np.vstack(request.columns)), axis=1)
        order = np.argsort(ts_ms, kind="stable")
        state.ts_ms, state.values = ts_ms[order], values[:, order]
        written_at_ms = wall_clock_ms()
        state.windows[request.start_ms] = LedgerWindow(
            request.start_ms, request.end_ms, request.rows, request.source, written_at_ms
        )

    async def _read(self, series: SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
        state = self._series.get(str(series))
        if state is None:
            return frame_from_columns(_EMPTY_TS, ())
        lo, hi = np.searchsorted(state.ts_ms, [start_ms, end_ms], side="left")
        return frame_from_columns(state.ts_ms[lo:hi].copy(), state.values[:, lo:hi].copy())

    async def _coverage(self, series: SeriesKey, bounds: Range | None) -> list[Range]:
        state = self._series.get(str(series))
        if state is None:
            return []
        lo, hi = bounds if bounds is not None else (None, None)
        return merge_ranges(
            (w.start_ms, w.end_ms)
            for w in state.windows.values()
            if lo is None or hi is None or (w.end_ms > lo and w.start_ms < hi)
        )

    async def _windows(self, series: SeriesKey, start_ms: int, end_ms: int) -> list[LedgerWindow]:
        state = self._series.get(str(series))
        if state is None:
            return []
        found = [w for w in state.windows.values() if w.end_ms > start_ms and w.start_ms < end_ms]
        return sorted(found, key=lambda w: w.start_ms)

    async def _close(self) -> None:
        self._series.clear()
