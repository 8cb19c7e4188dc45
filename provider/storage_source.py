"""The STORAGE data source: the provider's reads of bars and coverage from an ``open_storage()`` backend.

Rules:
1. :class:`StorageDataSource` wraps an ``open_storage()`` object (or opens one lazily from a DSN). Its coverage
   is the storage's coverage ledger, narrowed inward to the bar grid, so a partly covered bar counts as missing
   and no bar is read from two places. It reads all pieces of a request with one ``read`` over their hull,
   then keeps only rows inside the pieces. A request asks the ledger about its own range only
   (``covered_within``), so its cost follows the request, not the history of the series.
2. :func:`grid_inward` narrows coverage to whole bars; the frame helpers (trim, assemble, pieces) live in
   :mod:`provider.frames`, and reading any source piece by piece in :mod:`provider._reads`.
3. ``serve`` is what the provider calls: the ledger question and the read in one step, with no layer between
   them (a 1,000-bar fetch is about a millisecond, and each awaited layer cost microseconds of it).
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd

from provider.core import SeriesKey, intersect_ranges, merge_ranges, subtract_ranges
from provider.frames import Piece, ts_ns
from provider.strategies import DataSourcePriority

__all__ = ["StorageDataSource", "grid_inward"]


def grid_inward(ranges: list[tuple[int, int]], interval_ms: int) -> list[tuple[int, int]]:
    """Narrow each range to the whole bars it contains."""
    out = []
    for lo, hi in ranges:
        a = -((-lo) // interval_ms) * interval_ms
        b = (hi // interval_ms) * interval_ms
        if b > a:
            out.append((a, b))
    return merge_ranges(out)


class StorageDataSource:
    """The STORAGE data source over the storage contract (``open_storage(dsn)``)."""

    priority = DataSourcePriority.STORAGE
    name = "storage"

    def __init__(self, storage: Any, *, owned: bool | None = None, kind: str | None = None) -> None:
        #: Backend kind forced on a DSN (``"questdb"`` reads a ``postgresql://`` DSN as a QuestDB server).
        self.kind = kind
        if isinstance(storage, str):
            self.dsn: str | None = storage
            self._storage: Any = None
            self.owned = True if owned is None else owned
        else:
            self.dsn = None
            self._storage = storage
            self.owned = False if owned is None else owned
        self._lock = asyncio.Lock()

    async def storage(self) -> Any:
        """The storage object, opened on first use when built from a DSN."""
        if self._storage is None:
            async with self._lock:
                if self._storage is None:
                    from provider.storage import open_storage

                    self._storage = await open_storage(self.dsn, kind=self.kind)
        return self._storage

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        key = SeriesKey.parse(node_id)
        raw = await (await self.storage()).coverage(key)
        return grid_inward([(int(a), int(b)) for a, b in raw], key.interval_ms)

    async def is_available(self, start: int, end: int, *, node_id: str) -> bool:
        return not subtract_ranges([(start, end)], await self.covered_within(start, end, node_id=node_id))

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        frame: pd.DataFrame = await (await self.storage()).read(SeriesKey.parse(node_id), start, end)
        return frame

    async def covered_within(self, start: int, end: int, *, node_id: str) -> list[tuple[int, int]]:
        """The covered parts of ``[start, end)``, from the ledger rows of that range when the storage can."""
        key = SeriesKey.parse(node_id)
        return await self._covered_within(await self.storage(), key, start, end)

    async def serve(self, ranges: list[tuple[int, int]], *, node_id: str) -> list[Piece]:
        """The stored bars of the covered parts of ``ranges`` (rule 3: one ledger question, one read)."""
        ranges = merge_ranges(ranges)
        if not ranges:
            return []
        key = SeriesKey.parse(node_id)
        storage = await self.storage()
        covered = await self._covered_within(storage, key, ranges[0][0], ranges[-1][1])
        if len(ranges) > 1:
            covered = intersect_ranges(ranges, covered)
        if not covered:
            return []
        frame: pd.DataFrame = await storage.read(key, covered[0][0], covered[-1][1])
        return [(covered[0], frame)] if len(covered) == 1 else _split(frame, covered)

    @staticmethod
    async def _covered_within(storage: Any, key: SeriesKey, start: int, end: int) -> list[tuple[int, int]]:
        if getattr(storage, "bounded_coverage", False):
            raw = await storage.coverage(key, start, end)
        else:  # a storage object of another origin: its whole coverage
            raw = await storage.coverage(key)
        return intersect_ranges([(start, end)], grid_inward([(int(a), int(b)) for a, b in raw], key.interval_ms))

    #: ``write_window`` takes ``source`` (passed on when the storage records it).
    records_source = True

    async def write_window(
        self, series: SeriesKey | str, start: int, end: int, frame: pd.DataFrame, *, source: str | None = None
    ) -> None:
        """Materialize one window (bars and coverage) in the storage; its ledger row names ``source`` when the
        storage records sources (every backend of :mod:`provider.storage` does)."""
        from provider.storage._contract import write_window_from

        await write_window_from(await self.storage(), series, start, end, frame, source=source)

    async def aclose(self) -> None:
        """Close the storage when this source opened it (or was told it owns it)."""
        if self._storage is not None and self.owned:
            await self._storage.aclose()
            self._storage = None


def _split(frame: pd.DataFrame, ranges: list[tuple[int, int]]) -> list[Piece]:
    """The rows of a sorted frame in each of the disjoint, sorted ``ranges``, one piece per range."""
    stamps = ts_ns(frame) // 1_000_000
    pieces: list[Piece] = []
    for lo, hi in ranges:
        i0, i1 = np.searchsorted(stamps, [lo, hi])
        pieces.append(((lo, hi), frame.iloc[int(i0) : int(i1)].reset_index(drop=True)))
    return pieces
