"""Strategies, source priorities and the protocols the seamless provider consumes (DESIGN.md section 6).

Rules:
1. ``node_id`` is a series key text (``ohlcv:binance:BTC/USDT:1m``): in QMTL a node id names one data stream, and
   here a series key does, so the two are the same string. The interval comes from the key.
2. Times passed to these protocols are int epoch ms on the bar grid, ranges half-open ``[start, end)``; frames
   follow the contract of :mod:`provider.frames`.
3. A :class:`DataSource` serves exactly what its ``coverage`` says. Coverage means "materialized": a range fetched
   from an exchange that had no trades is covered (see DESIGN.md section 6).
4. An :class:`AutoBackfiller` materializes ranges into storage; ``backfill`` waits for it, ``backfill_async``
   yields a frame per materialized window. A :class:`LiveDataFeed` yields closed bars only.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import Enum, IntEnum
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "AutoBackfiller",
    "BackfillProgress",
    "DataAvailabilityStrategy",
    "DataSource",
    "DataSourcePriority",
    "LiveDataFeed",
    "ProgressCallback",
]


class DataAvailabilityStrategy(Enum):
    """What a fetch does about the parts of a request that are not materialized yet."""

    #: Cache and storage only; any uncovered part raises DataUnavailableError with the missing ranges.
    FAIL_FAST = "fail_fast"
    #: Backfill every missing range, wait, return complete data or raise BackfillFailedError.
    AUTO_BACKFILL = "auto_backfill"
    #: Return what cache and storage hold now; start one background backfill of the rest; never wait on it.
    PARTIAL_FILL = "partial_fill"
    #: AUTO_BACKFILL for history plus the live feed for recent closed bars, merged into one frame.
    SEAMLESS = "seamless"

    @classmethod
    def parse(cls, value: DataAvailabilityStrategy | str) -> DataAvailabilityStrategy:
        """Accept a member, its value (``"auto_backfill"``) or its name (``"AUTO_BACKFILL"``)."""
        if isinstance(value, cls):
            return value
        text = str(value).strip().lower()
        for member in cls:
            if member.value == text:
                return member
        allowed = ", ".join(m.value for m in cls)
        raise ValueError(f"strategy {value!r} is not valid; use one of {allowed}")


class DataSourcePriority(IntEnum):
    """Order in which sources are consulted: lower first."""

    CACHE = 1
    STORAGE = 2
    BACKFILL = 3
    LIVE = 4


@dataclass(frozen=True, slots=True)
class BackfillProgress:
    """Progress of the backfill a fetch waits on; ``ratio`` is done windows / windows, from 0 to 1."""

    node_id: str
    ratio: float
    windows_done: int
    windows_total: int
    #: Coordinator job ids when the work runs through the coordinator, else empty.
    job_ids: tuple[str, ...] = ()


#: Called (synchronously, on the event loop) whenever backfill progress changes.
ProgressCallback = Callable[[BackfillProgress], Any]


@runtime_checkable
class DataSource(Protocol):
    """A source of already materialized bars (the cache, the storage)."""

    priority: DataSourcePriority

    async def is_available(self, start: int, end: int, *, node_id: str) -> bool:
        """Whether ``[start, end)`` is wholly covered."""
        ...

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        """The bars of ``[start, end)``."""
        ...

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        """The merged ranges this source can serve."""
        ...


@runtime_checkable
class AutoBackfiller(Protocol):
    """Materializes missing ranges into storage (in process, or through the coordinator's workers)."""

    async def can_backfill(self, start: int, end: int, *, node_id: str) -> bool:
        """Whether this backfiller can materialize ``[start, end)`` of the series."""
        ...

    async def backfill(self, start: int, end: int, *, node_id: str, target_storage: Any = None) -> pd.DataFrame:
        """Materialize ``[start, end)``, wait for it and return its bars."""
        ...

    def backfill_async(
        self,
        start: int,
        end: int,
        *,
        node_id: str,
        target_storage: Any = None,
        progress_callback: ProgressCallback | None = None,
    ) -> AsyncIterator[pd.DataFrame]:
        """Materialize ``[start, end)`` and yield the bars of each window as it lands."""
        ...


@runtime_checkable
class LiveDataFeed(Protocol):
    """Recent closed bars of a series, on demand and as a stream."""

    #: How far back (in bars before the last closed bar) ``fetch`` can serve.
    lookback_bars: int

    async def is_live_available(self, *, node_id: str) -> bool:
        """Whether the feed serves this series."""
        ...

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        """The closed bars of ``[start, end)`` the feed holds now."""
        ...

    def subscribe(self, *, node_id: str, start: int | None = None) -> AsyncIterator[pd.DataFrame]:
        """Yield frames of newly closed bars, each bar exactly once and in order, from ``start`` on."""
        ...
