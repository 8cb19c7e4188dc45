"""The storage data source and the frame plumbing the provider uses to split and join requests.

Rules:
1. :class:`StorageDataSource` wraps an ``open_storage()`` object (or opens one lazily from a DSN). Its coverage
   is the storage's coverage ledger, narrowed inward to the bar grid, so a partly covered bar counts as missing
   and no bar is read from two places. It reads all pieces of a request with one ``read`` over their hull,
   then keeps only rows inside the pieces. A request asks the ledger about its own range only
   (:func:`covered_ranges`), so its cost follows the request, not the history of the series.
2. :func:`assemble` joins pieces ``((lo, hi), frame)`` that are disjoint half-open ranges: each frame is trimmed
   to its range and the frames are concatenated in range order. Disjoint ranges make the seams exact: no bar is
   doubled or dropped where one source ends and the next begins.
3. :func:`read_pieces` asks any :class:`~provider.strategies.DataSource` for a list of ranges; sources with a
   ``read_ranges`` method do it in one go. :func:`covered_ranges` likewise uses ``covered_within`` when a
   source has it, and its whole ``coverage`` otherwise.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pandas as pd

from provider.core import SeriesKey, intersect_ranges, merge_ranges, subtract_ranges
from provider.frames import empty_frame
from provider.strategies import DataSourcePriority

__all__ = [
    "Piece",
    "StorageDataSource",
    "assemble",
    "covered_ranges",
    "grid_inward",
    "last_ts_ms",
    "read_pieces",
    "trim",
    "ts_ns",
]

#: A range and the bars the source returned for it.
Piece = tuple[tuple[int, int], pd.DataFrame]


def grid_inward(ranges: list[tuple[int, int]], interval_ms: int) -> list[tuple[int, int]]:
    """Narrow each range to the whole bars it contains."""
    out = []
    for lo, hi in ranges:
        a = -((-lo) // interval_ms) * interval_ms
        b = (hi // interval_ms) * interval_ms
        if b > a:
            out.append((a, b))
    return merge_ranges(out)


def ts_ns(frame: pd.DataFrame) -> np.ndarray:
    """The ``ts`` column of a contract frame as int64 epoch ns, without a copy."""
    return np.asarray(frame["ts"].array.asi8, dtype=np.int64)


def last_ts_ms(frame: pd.DataFrame) -> int:
    """The ``ts`` of the last row in epoch ms (the frame must not be empty)."""
    return int(ts_ns(frame)[-1]) // 1_000_000


def trim(frame: pd.DataFrame, start_ms: int, end_ms: int) -> pd.DataFrame:
    """The rows with ``start_ms <= ts < end_ms`` (the same object when nothing goes; order is kept)."""
    if len(frame) == 0:
        return frame
    stamps = ts_ns(frame)
    lo, hi = start_ms * 1_000_000, end_ms * 1_000_000
    if stamps.min() >= lo and stamps.max() < hi:
        return frame
    mask = (stamps >= lo) & (stamps < hi)
    return frame.loc[mask].reset_index(drop=True)


def assemble(pieces: list[Piece]) -> pd.DataFrame:
    """One frame from disjoint pieces (see rule 2)."""
    ordered = sorted(pieces, key=lambda piece: piece[0][0])
    frames = [trim(frame, lo, hi) for (lo, hi), frame in ordered]
    frames = [f for f in frames if len(f)]
    if not frames:
        return empty_frame()
    if len(frames) == 1:
        return frames[0]
    return pd.concat(frames, ignore_index=True)


async def read_pieces(source: Any, ranges: list[tuple[int, int]], *, node_id: str) -> list[Piece]:
    """Ask ``source`` for the bars of each range."""
    if not ranges:
        return []
    reader = getattr(source, "read_ranges", None)
    if reader is not None:
        pieces: list[Piece] = await reader(ranges, node_id=node_id)
        return pieces
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

    async def read_ranges(self, ranges: list[tuple[int, int]], *, node_id: str) -> list[Piece]:
        """The stored bars of each range, from one read over their hull."""
        ranges = merge_ranges(ranges)
        if not ranges:
            return []
        frame = await self.fetch(ranges[0][0], ranges[-1][1], node_id=node_id)
        if len(ranges) == 1:
            return [(ranges[0], frame)]
        stamps = ts_ns(frame) // 1_000_000
        pieces: list[Piece] = []
        for lo, hi in ranges:
            i0, i1 = np.searchsorted(stamps, [lo, hi])
            pieces.append(((lo, hi), frame.iloc[int(i0) : int(i1)].reset_index(drop=True)))
        return pieces

    async def covered_within(self, start: int, end: int, *, node_id: str) -> list[tuple[int, int]]:
        """The covered parts of ``[start, end)``, from the ledger rows of that range when the storage can."""
        key = SeriesKey.parse(node_id)
        storage = await self.storage()
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
