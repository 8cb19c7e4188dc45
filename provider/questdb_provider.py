"""QuestDB-backed providers: ``EnhancedQuestDBProvider`` (seamless) and the legacy ``QuestDBLoader``.

Rules:
1. The DSN is a ``questdb://USER:PASS@HOST:PGPORT/?http_port=9000`` DSN or, as QMTL code passes it, the
   ``postgresql://admin:quest@host:8812/qdb`` DSN of a QuestDB (then ILP over HTTP goes to the same host, port
   9000 unless ``?http_port=`` says otherwise). ``table=`` picks the bar table. The storage opens on first use.
2. ``fetcher`` is any source with ``fetch(series, start, end)`` (``provider.sources.open_source(...)``) or a
   QMTL ``DataFetcher`` with ``fetch(start, end, *, node_id, interval)`` in epoch seconds; the latter is adapted
   by :class:`QMTLFetcherAdapter`. The same goes for ``live_fetcher``. The adapter converts the request only:
   what the fetcher returns (epoch-second ``ts``, duplicates, any dtype ...) goes unchanged to the ingest
   conformance of the backfill or live feed, which normalizes it with flags or blocks it (so an overlapping
   page's duplicates are flagged ``duplicate_ts``, never dropped silently).
3. ``EnhancedQuestDBProvider`` is a :class:`SeamlessDataProvider` (strategy SEAMLESS and conformance on by
   default; every other keyword goes to it). With ``coordinator`` the workers backfill and ``fetcher`` is not
   used for backfills.
4. ``QuestDBLoader`` is the legacy interface: ``fetch`` returns what is stored and never backfills;
   ``fill_missing`` backfills the uncovered parts with ``fetcher`` and waits.
"""

from __future__ import annotations

import inspect
from typing import Any
from urllib.parse import urlsplit

import pandas as pd

from provider.core import SeriesKey, snap_range
from provider.seamless import SeamlessDataProvider
from provider.storage_source import StorageDataSource
from provider.strategies import DataAvailabilityStrategy

__all__ = ["EnhancedQuestDBProvider", "QMTLFetcherAdapter", "QuestDBLoader", "adapt_fetcher", "questdb_storage"]

_SCHEMES = ("questdb", "postgresql", "postgres")


class QMTLFetcherAdapter:
    """Turns a QMTL ``DataFetcher`` (epoch seconds, ``node_id``/``interval`` keywords) into a source (rule 2)."""

    name = "qmtl"

    def __init__(self, fetcher: Any) -> None:
        self.fetcher = fetcher

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The fetcher's frame for ``[start, end)``, unchanged (the ingest conformance normalizes it)."""
        key = SeriesKey.parse(series)
        step = key.interval_ms
        lo, hi = snap_range(start, end, step)
        frame: pd.DataFrame = await self.fetcher.fetch(lo // 1000, hi // 1000, node_id=str(key), interval=step // 1000)
        return frame

    async def aclose(self) -> None:
        closer = getattr(self.fetcher, "aclose", None)
        if closer is not None:
            await closer()


def adapt_fetcher(fetcher: Any) -> Any:
    """The fetcher itself when it is a source, else a :class:`QMTLFetcherAdapter` around it (rule 2)."""
    if fetcher is None:
        return None
    fetch = getattr(fetcher, "fetch", None)
    if fetch is None:
        raise TypeError(f"fetcher {type(fetcher).__name__} has no fetch() method")
    try:
        params = inspect.signature(fetch).parameters
    except (TypeError, ValueError):
        return fetcher
    return QMTLFetcherAdapter(fetcher) if "node_id" in params else fetcher


def questdb_storage(dsn: str, *, table: str | None = None) -> StorageDataSource:
    """A lazily opened QuestDB storage data source for a ``questdb://`` or QuestDB ``postgresql://`` DSN."""
    scheme = urlsplit(dsn).scheme.lower() if isinstance(dsn, str) else ""
    if scheme not in _SCHEMES:
        raise ValueError(
            f"dsn {dsn!r} must be questdb://USER:PASS@HOST:PGPORT/?http_port=9000 or the "
            "postgresql://admin:quest@HOST:8812/qdb DSN of a QuestDB"
        )
    if table is not None:
        dsn = f"{dsn}{'&' if '?' in dsn else '?'}table={table}"
    return StorageDataSource(dsn, kind="questdb")


class EnhancedQuestDBProvider(SeamlessDataProvider):
    """A seamless provider over QuestDB storage (rule 3)."""

    def __init__(
        self,
        dsn: str,
        *,
        fetcher: Any = None,
        live_fetcher: Any = None,
        coordinator: Any = None,
        table: str | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("strategy", DataAvailabilityStrategy.SEAMLESS)
        storage = kwargs.pop("storage_source", None) or questdb_storage(dsn, table=table)
        backfiller = kwargs.pop("backfiller", None) or adapt_fetcher(fetcher)
        live_feed = kwargs.pop("live_feed", None) or adapt_fetcher(live_fetcher)
        self.dsn = dsn
        super().__init__(
            storage_source=storage, backfiller=backfiller, live_feed=live_feed, coordinator=coordinator, **kwargs
        )


class QuestDBLoader:
    """The legacy QMTL loader: ``fill_missing`` then ``fetch`` (rule 4)."""

    def __init__(self, dsn: str, *, fetcher: Any = None, table: str | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("conformance", False)
        kwargs.setdefault("cache_source", False)
        self._provider = SeamlessDataProvider(
            strategy=DataAvailabilityStrategy.PARTIAL_FILL,
            enable_background_backfill=False,
            storage_source=questdb_storage(dsn, table=table),
            backfiller=adapt_fetcher(fetcher),
            **kwargs,
        )
        self.dsn = dsn

    @property
    def provider(self) -> SeamlessDataProvider:
        """The provider doing the work."""
        return self._provider

    async def fetch(self, start: Any, end: Any, *, node_id: str, interval: Any = None) -> pd.DataFrame:
        """The stored bars of ``[start, end)``; missing parts are simply absent (no backfill)."""
        return await self._provider.fetch(start, end, node_id=node_id, interval=interval)

    async def fill_missing(self, start: Any, end: Any, *, node_id: str, interval: Any = None) -> None:
        """Backfill every uncovered part of ``[start, end)`` with the fetcher and wait."""
        if self._provider.backfiller is None:
            raise ValueError("QuestDBLoader.fill_missing needs fetcher=")
        await self._provider.fill_missing(start, end, node_id=node_id, interval=interval)

    async def coverage(self, *, node_id: str, interval: Any = None) -> list[tuple[int, int]]:
        """The materialized ranges of the series."""
        return await self._provider.coverage(node_id=node_id)

    async def aclose(self) -> None:
        """Close the storage."""
        await self._provider.aclose()

    async def __aenter__(self) -> QuestDBLoader:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
