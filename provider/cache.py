"""The provider's cache: L1 in memory (TTL, bounded in bytes), optional L2 in a SQLite file.

Rules:
1. The cache holds only materialized ranges: an entry ``(series, [start, end))`` says "these are all the bars of
   that range, checked". So a cache entry is coverage, like the storage ledger, and gaps inside it stay gaps.
2. L1 entries live ``ttl_s`` seconds (the config's ``cache_ttl``) on the injected clock, and the bytes of all
   entries stay under ``max_bytes``: least recently used entries go first; an entry larger than the bound is
   not kept. Frames are copied in and out, so callers can never change what the cache holds.
3. L2 (``l2_path``, :class:`SqliteCache`) survives restarts: one row per entry ``(series, start_ms, end_ms,
   expires_at_ms, rows, payload)`` whose payload is the int64 ts followed by the five float64 columns (one
   ``frombuffer`` to read), with the same TTL; expired rows are purged on write, entries inside a newer one are
   deleted. An L2 hit is promoted to L1. SQLite calls run in a worker thread, one connection behind a lock.
   Several processes may share the file (WAL journal; openers racing to switch a new file to WAL wait, as the
   SQLite storage's do).
4. Hits and misses are counted per layer (``seamless_cache_hit_total{layer}``, ``seamless_cache_miss_total``).
"""

from __future__ import annotations

import asyncio
import bisect
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from provider.core import SeriesKey, intersect_ranges, merge_ranges, subtract_ranges
from provider.core.clock import wall_clock_ms
from provider.frames import PRICE_COLUMNS, empty_frame, frame_from_arrays, slice_frame, ts_ms
from provider.metrics import ProviderMetrics
from provider.storage._sqlite import enable_wal
from provider.strategies import DataSourcePriority

__all__ = [
    "DEFAULT_CACHE_MAX_BYTES",
    "CacheEntry",
    "MemoryCache",
    "SeamlessCache",
    "SqliteCache",
]

#: Default L1 bound: 256 MiB of frames.
DEFAULT_CACHE_MAX_BYTES = 256 * 1024 * 1024


@dataclass(slots=True)
class CacheEntry:
    """One cached, materialized range of one series."""

    series: str
    start_ms: int
    end_ms: int
    frame: pd.DataFrame
    stamps_ms: np.ndarray
    nbytes: int
    expires_at_ms: int
    #: The conformance report the frame passed, when it came from a provider fetch.
    report: Any = None
    key: tuple[str, int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.key = (self.series, self.start_ms, self.end_ms)

    def slice(self, start_ms: int, end_ms: int) -> pd.DataFrame:
        """A copy of the bars of ``[start_ms, end_ms)`` (which must lie inside the entry)."""
        return slice_frame(self.frame, self.stamps_ms, start_ms, end_ms)


class MemoryCache:
    """L1: entries by series, expiring on the injected clock, bounded in bytes (LRU)."""

    def __init__(
        self, *, ttl_s: float, max_bytes: int = DEFAULT_CACHE_MAX_BYTES, clock: Callable[[], int] = wall_clock_ms
    ) -> None:
        if ttl_s < 0 or max_bytes < 0:
            raise ValueError(f"ttl_s {ttl_s!r} and max_bytes {max_bytes!r} must be >= 0")
        self.ttl_ms = int(ttl_s * 1000)
        self.max_bytes = max_bytes
        self._clock = clock
        self._lru: OrderedDict[tuple[str, int, int], CacheEntry] = OrderedDict()
        self._by_series: dict[str, list[tuple[int, int]]] = {}
        self.nbytes = 0

    def __len__(self) -> int:
        return len(self._lru)

    def put(self, series: str, start_ms: int, end_ms: int, frame: pd.DataFrame, report: Any = None) -> bool:
        """Cache the bars of a materialized range; False when TTL is 0 or the frame exceeds the bound."""
        stamps = ts_ms(frame)
        # Every contract column is 8 bytes a row; the ts copy kept for slicing is another 8.
        nbytes = len(frame) * 8 * (len(frame.columns) + 1)
        if self.ttl_ms <= 0 or nbytes > self.max_bytes or end_ms <= start_ms:
            return False
        self._expire(self._clock())
        for key in [k for k in self._keys(series) if start_ms <= k[1] and k[2] <= end_ms]:
            self._remove(key)
        entry = CacheEntry(series, start_ms, end_ms, frame.copy(), stamps, nbytes, self._clock() + self.ttl_ms, report)
        self._lru[entry.key] = entry
        bisect.insort(self._by_series.setdefault(series, []), (start_ms, end_ms))
        self.nbytes += nbytes
        while self.nbytes > self.max_bytes and self._lru:
            self._remove(next(iter(self._lru)))
        return True

    def covering(self, series: str, start_ms: int, end_ms: int) -> CacheEntry | None:
        """The entry holding all of ``[start_ms, end_ms)``, or None (touches it for LRU)."""
        now = self._clock()
        for lo, hi in self._by_series.get(series, ()):
            if lo > start_ms:
                break
            if hi >= end_ms:
                entry = self._lru[(series, lo, hi)]
                if entry.expires_at_ms > now:
                    self._lru.move_to_end(entry.key)
                    return entry
        return None

    def coverage(self, series: str) -> list[tuple[int, int]]:
        """The merged ranges of the series' live entries."""
        self._expire(self._clock())
        return merge_ranges([(lo, hi) for lo, hi in self._by_series.get(series, ())])

    def read(self, series: str, start_ms: int, end_ms: int) -> list[tuple[tuple[int, int], pd.DataFrame]]:
        """Pieces ``((lo, hi), frame)`` of ``[start_ms, end_ms)`` the cache holds, in time order."""
        remaining = [(start_ms, end_ms)]
        pieces: list[tuple[tuple[int, int], pd.DataFrame]] = []
        for key in list(self._keys(series)):
            entry = self._lru.get(key)
            if entry is None or not remaining:
                continue
            for lo, hi in intersect_ranges(remaining, [(entry.start_ms, entry.end_ms)]):
                pieces.append(((lo, hi), entry.slice(lo, hi)))
            remaining = subtract_ranges(remaining, [(entry.start_ms, entry.end_ms)])
            self._lru.move_to_end(key)
        return sorted(pieces, key=lambda piece: piece[0][0])

    def clear(self) -> None:
        """Drop every entry."""
        self._lru.clear()
        self._by_series.clear()
        self.nbytes = 0

    def _keys(self, series: str) -> list[tuple[str, int, int]]:
        return [(series, lo, hi) for lo, hi in self._by_series.get(series, ())]

    def _expire(self, now_ms: int) -> None:
        for key in [k for k, e in self._lru.items() if e.expires_at_ms <= now_ms]:
            self._remove(key)

    def _remove(self, key: tuple[str, int, int]) -> None:
        entry = self._lru.pop(key, None)
        if entry is None:
            return
        self.nbytes -= entry.nbytes
        ranges = self._by_series.get(key[0], [])
        ranges.remove((key[1], key[2]))
        if not ranges:
            self._by_series.pop(key[0], None)


class SeamlessCache:
    """The CACHE data source: L1 memory in front of an optional L2 SQLite file."""

    priority = DataSourcePriority.CACHE
    name = "cache"

    def __init__(
        self,
        *,
        ttl_s: float = 3600,
        max_bytes: int = DEFAULT_CACHE_MAX_BYTES,
        l2_path: str | None = None,
        clock: Callable[[], int] = wall_clock_ms,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        self.l1 = MemoryCache(ttl_s=ttl_s, max_bytes=max_bytes, clock=clock)
        self.l2 = SqliteCache(l2_path, ttl_s=ttl_s, clock=clock) if l2_path else None
        self.metrics = metrics if metrics is not None else ProviderMetrics()

    def hit(self, node_id: str, start_ms: int, end_ms: int) -> CacheEntry | None:
        """The L1 entry answering the whole request, counting a hit or a miss (the hot path; no awaits)."""
        entry = self.l1.covering(str(SeriesKey.parse(node_id)), start_ms, end_ms)
        (self.metrics.cache_hit if entry is not None else self.metrics.cache_miss).labels(layer="l1").inc()
        return entry

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        series = str(SeriesKey.parse(node_id))
        ranges = self.l1.coverage(series)
        if self.l2 is not None:
            ranges = merge_ranges(ranges + await self.l2.coverage(series))
        return ranges

    async def is_available(self, start: int, end: int, *, node_id: str) -> bool:
        return not subtract_ranges([(start, end)], await self.coverage(node_id=node_id))

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        """The cached bars of ``[start, end)``; parts not cached are simply absent."""
        pieces = await self.read(start, end, node_id=node_id)
        frames = [frame for _, frame in pieces if len(frame)]
        if not frames:
            return empty_frame()
        return frames[0] if len(frames) == 1 else pd.concat(frames, ignore_index=True)

    async def read(self, start: int, end: int, *, node_id: str) -> list[tuple[tuple[int, int], pd.DataFrame]]:
        """Cached pieces of ``[start, end)`` in time order: L1 first, then L2 for what L1 lacks."""
        series = str(SeriesKey.parse(node_id))
        pieces = self.l1.read(series, start, end)
        if self.l2 is None:
            return pieces
        remaining = subtract_ranges([(start, end)], [r for r, _ in pieces])
        if not remaining:
            return pieces
        entries = await self.l2.entries(series, remaining)
        (self.metrics.cache_hit if entries else self.metrics.cache_miss).labels(layer="l2").inc()
        for entry_start, entry_end, frame in entries:
            stamps = ts_ms(frame)
            for lo, hi in intersect_ranges(remaining, [(entry_start, entry_end)]):
                pieces.append(((lo, hi), slice_frame(frame, stamps, lo, hi)))
            remaining = subtract_ranges(remaining, [(entry_start, entry_end)])
            self.l1.put(series, entry_start, entry_end, frame)
        return sorted(pieces, key=lambda piece: piece[0][0])

    async def serve(self, ranges: list[tuple[int, int]], *, node_id: str) -> list[tuple[tuple[int, int], pd.DataFrame]]:
        """The cached pieces of ``ranges`` (what the provider asks the cache for; no coverage query first)."""
        pieces: list[tuple[tuple[int, int], pd.DataFrame]] = []
        for lo, hi in ranges:
            pieces += await self.read(lo, hi, node_id=node_id)
        return pieces

    async def put(self, node_id: str, start_ms: int, end_ms: int, frame: pd.DataFrame, report: Any = None) -> None:
        """Cache a materialized, checked range in L1 (and L2 when configured)."""
        series = str(SeriesKey.parse(node_id))
        self.l1.put(series, start_ms, end_ms, frame, report)
        if self.l2 is not None:
            await self.l2.put(series, start_ms, end_ms, frame)

    async def aclose(self) -> None:
        """Drop L1 and close the L2 file."""
        self.l1.clear()
        if self.l2 is not None:
            await self.l2.aclose()


_SCHEMA = """
CREATE TABLE IF NOT EXISTS cache_entries (
    series TEXT NOT NULL,
    start_ms INTEGER NOT NULL,
    end_ms INTEGER NOT NULL,
    expires_at_ms INTEGER NOT NULL,
    rows INTEGER NOT NULL,
    payload BLOB NOT NULL,
    PRIMARY KEY (series, start_ms, end_ms)
)
"""


def _encode(frame: pd.DataFrame) -> bytes:
    columns = [ts_ms(frame).astype(np.int64).view(np.float64)] + [frame[c].to_numpy(np.float64) for c in PRICE_COLUMNS]
    return np.concatenate(columns).tobytes() if len(frame) else b""


def _decode(payload: bytes, rows: int) -> pd.DataFrame:
    flat = np.frombuffer(payload, dtype=np.float64, count=6 * rows)
    parts = flat.reshape(6, rows) if rows else np.empty((6, 0))
    return frame_from_arrays(parts[0].view(np.int64), *parts[1:])


class SqliteCache:
    """The L2 layer (see the module rules)."""

    def __init__(self, path: str | Path, *, ttl_s: float, clock: Callable[[], int]) -> None:
        self.path = Path(path)
        self.ttl_ms = int(ttl_s * 1000)
        self._clock = clock
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            enable_wal(self._db, timeout_s=5.0)  # sqlite3.connect's default lock wait
            self._db.execute(_SCHEMA)
        return self._db

    async def coverage(self, series: str) -> list[tuple[int, int]]:
        """The merged ranges of the series' live entries."""
        return await asyncio.to_thread(self._coverage, series, self._clock())

    async def entries(self, series: str, ranges: list[tuple[int, int]]) -> list[tuple[int, int, pd.DataFrame]]:
        """Live entries that intersect ``ranges``, as ``(start_ms, end_ms, frame)``."""
        return await asyncio.to_thread(self._entries, series, ranges, self._clock())

    async def put(self, series: str, start_ms: int, end_ms: int, frame: pd.DataFrame) -> None:
        """Store a materialized range."""
        if self.ttl_ms > 0 and end_ms > start_ms:
            payload = _encode(frame)
            await asyncio.to_thread(self._put, series, start_ms, end_ms, len(frame), payload, self._clock())

    async def aclose(self) -> None:
        """Close the file."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    def _coverage(self, series: str, now_ms: int) -> list[tuple[int, int]]:
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT start_ms, end_ms FROM cache_entries WHERE series = ? AND expires_at_ms > ?",
                    (series, now_ms),
                )
                .fetchall()
            )
        return merge_ranges([(int(a), int(b)) for a, b in rows])

    def _entries(self, series: str, ranges: list[tuple[int, int]], now_ms: int) -> list[tuple[int, int, pd.DataFrame]]:
        if not ranges:
            return []
        lo, hi = ranges[0][0], ranges[-1][1]
        with self._lock:
            rows = (
                self._conn()
                .execute(
                    "SELECT start_ms, end_ms, rows, payload FROM cache_entries "
                    "WHERE series = ? AND expires_at_ms > ? AND start_ms < ? AND end_ms > ? ORDER BY start_ms",
                    (series, now_ms, hi, lo),
                )
                .fetchall()
            )
        found = []
        for start, end, count, payload in rows:
            if intersect_ranges(ranges, [(int(start), int(end))]):
                found.append((int(start), int(end), _decode(payload, int(count))))
        return found

    def _put(self, series: str, start_ms: int, end_ms: int, rows: int, payload: bytes, now_ms: int) -> None:
        with self._lock:
            db = self._conn()
            db.execute("BEGIN")
            db.execute("DELETE FROM cache_entries WHERE expires_at_ms <= ?", (now_ms,))
            db.execute(
                "DELETE FROM cache_entries WHERE series = ? AND start_ms >= ? AND end_ms <= ?",
                (series, start_ms, end_ms),
            )
            db.execute(
                "INSERT OR REPLACE INTO cache_entries VALUES (?, ?, ?, ?, ?, ?)",
                (series, start_ms, end_ms, now_ms + self.ttl_ms, rows, payload),
            )
            db.execute("COMMIT")
