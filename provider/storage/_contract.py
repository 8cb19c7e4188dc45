"""The storage contract every backend implements, and the checks they share.

Rules:
1. ``write_window(series, start, end, frame, *, source=None)`` stores the bars of one window ``[start, end)``
   atomically and idempotently: afterwards the stored bars of the series inside the window are exactly the
   frame's bars (a re-write replaces, never duplicates), and the window is covered, even when the frame is empty.
   The window's ledger row records ``source`` (the name of what served the bars; None, as is an empty name,
   when the caller does not say), its bar count and when it was written; a re-write replaces the row.
2. Everything is validated before any I/O: the series key, the bounds (ints of epoch ms or anything
   :func:`provider.core.to_ms` accepts, on the series' bar grid, ``start <= end``) and the frame. The frame goes
   through :func:`provider.conformance.normalize_bars` in strict mode: every lossless shape is accepted and
   normalized (``ts`` of any datetime64 resolution, naive = UTC or any zone; int/float32 values exactly
   representable as float64; columns in any order; unsorted rows; exact duplicate rows), and what would lose or
   invent data is refused with :class:`FrameRejectedError` whose ``problem`` is the first blocking flag
   (``missing_column``, ``extra_column``, ``dtype_mismatch`` -- epoch ints included: they carry no unit --,
   ``invalid_timestamp``, ``precision_loss``, ``conflicting_duplicate``, ``off_grid``, ``out_of_range``,
   ``non_finite``). A refused write changes nothing.
3. ``read(series, start, end)`` returns the stored bars whose open time lies in ``[start, end)`` as a contract
   frame (``ts`` ``datetime64[ns, UTC]``, see docs/storage.md), every float bit for bit (a negative zero is
   stored as 0.0). Bounds are not snapped, so adjacent reads never share a bar.
4. ``coverage(series)`` is the merged union of the windows ever written, from the window ledger: it costs
   O(windows), never O(rows). Coverage means "materialized", not "has bars". ``coverage(series, start, end)``
   is the same clipped to ``[start, end)``; only the windows overlapping it are merged, so asking about recent
   bars does not cost the whole history of the series.
5. ``windows(series, start=None, end=None)`` reads the ledger itself: one :class:`LedgerWindow` per window
   written (as written, not clipped), ordered by start; with ``start`` and/or ``end``, only the windows
   overlapping ``[start, end)``.
6. When ``write_window`` returns, a following ``read`` or ``coverage`` from any process sees the write.
7. ``remove_duplicates(series, start, end)`` leaves at most one stored bar per ``ts`` in ``[start, end)`` and
   returns how many stamps had more. Only a store that can hold duplicates does anything (QuestDB, after rows
   were inserted by hand while its DEDUP was disabled); the others return 0. ``coordinator verify --repair``
   calls it before re-queueing a window with a ``duplicate_ts`` finding (writes replace bars, never remove a
   duplicate already stored).
8. Coverage known complete is remembered per series (the merged ranges every coverage answer and every
   successful write of this object showed covered): ``coverage(series, start, end)`` of a range wholly inside
   them is answered without a query. It is exact because the ledger only grows: no operation of the contract
   removes a window (bars are replaced, windows never dropped). Whoever removes ledger rows out of band (an
   operator's ``DELETE``, a dropped table) calls :meth:`StorageBase.forget_coverage` on every open storage, or
   reopens them. The memo holds at most ``_KNOWN_SERIES_MAX`` series (then starts afresh).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

from provider.conformance._ingest import normalize_bars
from provider.core import Range, SeriesKey, intersect_ranges, merge_ranges, subtract_ranges, to_ms
from provider.frames import PRICE_COLUMNS, empty_frame, frame_from_arrays, ts_ms
from provider.storage.errors import FrameRejectedError, StorageClosedError, StorageRequestError

__all__ = [
    "LedgerWindow",
    "Storage",
    "StorageBase",
    "WindowWrite",
    "frame_from_columns",
    "parse_series",
    "prepare_write",
    "write_window_from",
]

#: Bounds of ``windows()`` when the caller gives none: beyond any epoch-ms stamp (and clear of QuestDB's LONG
#: NULL, which is the smallest long).
_NO_START = -(1 << 62)
_NO_END = 1 << 62


@dataclass(frozen=True, slots=True)
class LedgerWindow:
    """One row of the window ledger: a window ``[start_ms, end_ms)`` written with ``rows`` bars."""

    start_ms: int
    end_ms: int
    rows: int
    #: What served the bars (e.g. ``binance`` or ``ccxt:okx``); None when the writer did not say.
    source: str | None
    #: When the window was last written, epoch ms (the storage server's clock for PostgreSQL).
    written_at_ms: int


@runtime_checkable
class Storage(Protocol):
    """A bar store with a window ledger: what :func:`provider.storage.open_storage` returns."""

    @property
    def kind(self) -> str:
        """``memory``, ``sqlite``, ``postgres`` or ``questdb``."""
        ...

    async def write_window(
        self, series: SeriesKey | str, start: Any, end: Any, frame: pd.DataFrame, *, source: str | None = None
    ) -> int:
        """Replace the bars of ``[start, end)`` with ``frame`` and mark the window covered (recording ``source``
        in its ledger row); return the bar count."""
        ...

    async def read(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The stored bars whose ``ts`` lies in ``[start, end)``, as a contract frame."""
        ...

    async def coverage(self, series: SeriesKey | str, start: Any = None, end: Any = None) -> list[tuple[int, int]]:
        """The merged half-open ranges of every window written for ``series`` (clipped to ``[start, end)``)."""
        ...

    async def windows(self, series: SeriesKey | str, start: Any = None, end: Any = None) -> list[LedgerWindow]:
        """The ledger rows of ``series`` overlapping ``[start, end)`` (all without bounds), ordered by start."""
        ...

    async def aclose(self) -> None:
        """Release connections and threads; the storage is unusable afterwards."""
        ...


@dataclass(frozen=True, slots=True)
class WindowWrite:
    """A validated window write: the bars as int64 epoch-ms stamps and five float64 columns (copies)."""

    series: SeriesKey
    start_ms: int
    end_ms: int
    ts_ms: np.ndarray
    columns: tuple[np.ndarray, ...]
    #: Recorded in the window's ledger row.
    source: str | None = None

    @property
    def rows(self) -> int:
        """Number of bars in the window."""
        return len(self.ts_ms)

    @property
    def full(self) -> bool:
        """Whether the frame fills every grid slot of the window (so no stored bar can be left over)."""
        return self.rows == (self.end_ms - self.start_ms) // self.series.interval_ms


def parse_series(series: Any) -> SeriesKey:
    """A :class:`SeriesKey` from a key or its text, or :class:`StorageRequestError` naming it."""
    try:
        return SeriesKey.parse(series)
    except ValueError as exc:
        raise StorageRequestError("series", series, str(exc)) from None


def _bound(name: str, value: Any) -> int:
    try:
        return to_ms(value)
    except ValueError as exc:
        raise StorageRequestError(name, value, f"{name}: {exc}") from None


def prepare_range(series: Any, start: Any, end: Any) -> tuple[SeriesKey, int, int]:
    """Normalize a read: the series and ``[start, end)`` in epoch ms; ``start > end`` is an error."""
    key = parse_series(series)
    start_ms, end_ms = _bound("start", start), _bound("end", end)
    if start_ms > end_ms:
        raise StorageRequestError(
            "start", start, f"start {start_ms} is after end {end_ms}; ranges are half-open [start, end)"
        )
    return key, start_ms, end_ms


def prepare_write(series: Any, start: Any, end: Any, frame: Any, source: Any = None) -> WindowWrite:
    """Validate a window write before any I/O; see the module rules."""
    key, start_ms, end_ms = prepare_range(series, start, end)
    if source is not None and not isinstance(source, str):
        raise StorageRequestError("source", source, f"source must be a str or None, got {type(source).__name__}")
    step = key.interval_ms
    for name, value in (("start", start_ms), ("end", end_ms)):
        if value % step:
            raise StorageRequestError(
                name, value, f"window {name} {value} is not on the {key.interval} bar grid ({step} ms) of {key}"
            )
    if not isinstance(frame, pd.DataFrame):
        message = f"expected a pandas DataFrame, got {type(frame).__name__}"
        raise FrameRejectedError("type", message, series=str(key), start_ms=start_ms, end_ms=end_ms)
    frame, report = normalize_bars(
        frame, series=str(key), interval_ms=step, start_ms=start_ms, end_ms=end_ms, strict=True, check_ohlc=False
    )
    if report.blocking:
        problem = next(f.kind for f in report.flags if f.kind in report.blocking)
        message = f"{report.summary()}; nothing was stored"
        raise FrameRejectedError(problem, message, series=str(key), start_ms=start_ms, end_ms=end_ms)
    # Adding 0.0 turns -0.0 into 0.0 and changes nothing else: SQLite cannot store a negative zero, and every
    # backend must return the same bits.
    columns = tuple(frame[name].to_numpy(dtype=np.float64, copy=True) + 0.0 for name in PRICE_COLUMNS)
    return WindowWrite(key, start_ms, end_ms, ts_ms(frame), columns, source or None)


def frame_from_columns(ts_ms: np.ndarray, columns: Any) -> pd.DataFrame:
    """A contract frame from int64 epoch-ms stamps and the five price columns (already sorted and unique)."""
    if len(ts_ms) == 0:
        return empty_frame()
    return frame_from_arrays(ts_ms, *columns)


#: Series whose known coverage one storage object remembers (rule 8); past it, the memo starts afresh.
_KNOWN_SERIES_MAX = 100_000


class StorageBase:
    """Shared front half of every backend: validation, closed-state and ``async with`` support.

    Subclasses implement ``_write``, ``_read``, ``_coverage``, ``_windows`` and ``_close`` and receive validated
    arguments.
    """

    kind: ClassVar[str] = "base"
    #: ``coverage`` takes ``start`` and ``end`` (storage objects of other origins may not).
    bounded_coverage: ClassVar[bool] = True

    #: ``write_window`` takes ``source`` (storage objects of other origins may not).
    records_source: ClassVar[bool] = True

    def __init__(self) -> None:
        self._closed = False
        #: Rule 8: series -> merged ranges known covered.
        self._known: dict[SeriesKey, list[Range]] = {}
        #: Bounded coverage questions answered from the memo (rule 8), for tests and benchmarks.
        self.coverage_memo_hits = 0

    def forget_coverage(self, series: SeriesKey | str | None = None) -> None:
        """Drop the remembered coverage (rule 8) of ``series``, or of every series: for callers that removed
        ledger rows outside the contract."""
        if series is None:
            self._known.clear()
        else:
            self._known.pop(parse_series(series), None)

    def _learn(self, series: SeriesKey, ranges: list[Range]) -> None:
        if not ranges:
            return
        if series not in self._known and len(self._known) >= _KNOWN_SERIES_MAX:
            self._known.clear()
        self._known[series] = merge_ranges([*self._known.get(series, ()), *ranges])

    async def write_window(
        self, series: SeriesKey | str, start: Any, end: Any, frame: pd.DataFrame, *, source: str | None = None
    ) -> int:
        """Replace the bars of ``[start, end)`` with ``frame`` and mark the window covered (recording ``source``
        in its ledger row); return the bar count."""
        request = prepare_write(series, start, end, frame, source)
        self._check_open()
        if request.start_ms < request.end_ms:
            await self._write(request)
            self._learn(request.series, [(request.start_ms, request.end_ms)])
        return request.rows

    async def read(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The stored bars whose ``ts`` lies in ``[start, end)``, as a contract frame."""
        key, start_ms, end_ms = prepare_range(series, start, end)
        self._check_open()
        if start_ms == end_ms:
            return empty_frame()
        return await self._read(key, start_ms, end_ms)

    async def coverage(self, series: SeriesKey | str, start: Any = None, end: Any = None) -> list[tuple[int, int]]:
        """The merged half-open ranges of every window written for ``series``.

        With ``start`` and ``end`` (both or neither), only their part inside ``[start, end)``: the same as
        clipping the whole coverage, at the cost of the windows that overlap the range.
        """
        if start is None and end is None:
            key = parse_series(series)
            self._check_open()
            whole = await self._coverage(key, None)
            self._learn(key, whole)
            return whole
        key, start_ms, end_ms = prepare_range(series, start, end)
        self._check_open()
        if start_ms == end_ms:
            return []
        if not subtract_ranges([(start_ms, end_ms)], self._known.get(key, [])):
            self.coverage_memo_hits += 1
            return [(start_ms, end_ms)]
        covered = intersect_ranges(await self._coverage(key, (start_ms, end_ms)), [(start_ms, end_ms)])
        self._learn(key, covered)
        return covered

    async def wal_status(self) -> dict[str, bool]:
        """The storage's WAL tables and whether each is suspended; empty for backends without a WAL."""
        self._check_open()
        return {}

    async def windows(self, series: SeriesKey | str, start: Any = None, end: Any = None) -> list[LedgerWindow]:
        """The ledger rows of ``series`` ordered by start: every window written, or (with ``start`` and/or
        ``end``) those overlapping ``[start, end)``. Rows are as written, not clipped to the bounds."""
        key = parse_series(series)
        start_ms = _NO_START if start is None else _bound("start", start)
        end_ms = _NO_END if end is None else _bound("end", end)
        if start_ms > end_ms:
            raise StorageRequestError(
                "start", start, f"start {start_ms} is after end {end_ms}; ranges are half-open [start, end)"
            )
        self._check_open()
        if start_ms == end_ms:
            return []
        return await self._windows(key, start_ms, end_ms)

    async def remove_duplicates(self, series: SeriesKey | str, start: Any, end: Any) -> int:
        """Rule 7: keep one stored bar per ``ts`` in ``[start, end)``; return how many stamps had more."""
        key, start_ms, end_ms = prepare_range(series, start, end)
        self._check_open()
        if start_ms == end_ms:
            return 0
        return await self._remove_duplicates(key, start_ms, end_ms)

    async def aclose(self) -> None:
        """Release connections and threads; calling it again does nothing."""
        if not self._closed:
            self._closed = True
            await self._close()

    async def __aenter__(self) -> StorageBase:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    def _check_open(self) -> None:
        if self._closed:
            raise StorageClosedError(f"{self.kind} storage is closed")

    async def _write(self, request: WindowWrite) -> None:
        raise NotImplementedError

    async def _read(self, series: SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
        raise NotImplementedError

    async def _coverage(self, series: SeriesKey, bounds: Range | None) -> list[Range]:
        """The merged coverage, or (with ``bounds``) the merged runs of the windows overlapping them."""
        raise NotImplementedError

    async def _windows(self, series: SeriesKey, start_ms: int, end_ms: int) -> list[LedgerWindow]:
        """The ledger rows overlapping ``[start_ms, end_ms)``, ordered by start."""
        raise NotImplementedError

    async def _remove_duplicates(self, series: SeriesKey, start_ms: int, end_ms: int) -> int:
        """Backends whose keys make duplicates impossible have nothing to do."""
        return 0

    async def _close(self) -> None:
        raise NotImplementedError


async def write_window_from(
    storage: Any, series: Any, start: Any, end: Any, frame: pd.DataFrame, *, source: str | None
) -> Any:
    """``storage.write_window``, passing ``source`` when the storage records it (``records_source``): a
    storage object of another origin keeps its four-argument ``write_window``."""
    if source is not None and getattr(storage, "records_source", False):
        return await storage.write_window(series, start, end, frame, source=source)
    return await storage.write_window(series, start, end, frame)
