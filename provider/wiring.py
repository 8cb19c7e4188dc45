"""Turning the provider's constructor arguments into components.

Rules:
1. ``storage_source`` may be a DataSource (used as is), a storage object of the ``open_storage`` contract or a
   DSN string (wrapped in :class:`~provider.storage_source.StorageDataSource`; a DSN is opened lazily and owned).
2. ``cache_source=None`` builds the default L1 cache (``cache_ttl`` seconds); ``False`` disables caching.
3. With ``coordinator`` (a CoordinatorClient, a URL or a list of URLs) missing ranges become coordinator jobs;
   otherwise ``backfiller`` may be a backfiller of :mod:`provider.backfill`, any AutoBackfiller (given
   single-flight by :class:`~provider.backfill.DelegatingBackfiller`) or a plain fetcher with
   ``fetch(series, start, end)`` (an in-process backfiller is built around it).
4. ``live_feed`` may be a LiveDataFeed or a plain fetcher (wrapped in :class:`~provider.live.PollingLiveFeed`).
5. ``conformance=None`` builds the default pipeline; ``False`` disables conformance; a
   :class:`~provider.core.ConformanceConfig` builds the default pipeline over its schema registry file.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from provider.backfill import BaseBackfiller, CoordinatorBackfiller, DelegatingBackfiller, InProcessBackfiller
from provider.cache import SeamlessCache
from provider.conformance import ConformancePipeline, SchemaRegistry
from provider.core import BackfillConfig, ConformanceConfig, SLAConfig
from provider.live import PollingLiveFeed
from provider.metrics import ProviderMetrics
from provider.sla import SLAPolicy
from provider.storage_source import StorageDataSource

__all__ = ["build_backfiller", "build_cache", "build_conformance", "build_live", "build_sla", "build_storage"]


def build_storage(storage_source: Any) -> Any:
    """The STORAGE data source (rule 1), or None."""
    if storage_source is None or isinstance(storage_source, StorageDataSource):
        return storage_source
    if isinstance(storage_source, str):
        return StorageDataSource(storage_source)
    if hasattr(storage_source, "priority") and hasattr(storage_source, "coverage"):
        return storage_source
    if all(hasattr(storage_source, name) for name in ("read", "coverage", "write_window")):
        return StorageDataSource(storage_source)
    raise TypeError(
        f"storage_source {type(storage_source).__name__} is neither a DataSource, a storage object "
        "(read/coverage/write_window) nor a DSN string"
    )


def build_cache(cache_source: Any, *, ttl_s: float, clock: Callable[[], int], metrics: ProviderMetrics) -> Any:
    """The CACHE data source (rule 2), or None."""
    if cache_source is False:
        return None
    if cache_source is None:
        return SeamlessCache(ttl_s=ttl_s, clock=clock, metrics=metrics)
    return cache_source


def build_backfiller(
    backfiller: Any,
    coordinator: Any,
    storage: Any,
    *,
    config: BackfillConfig,
    clock: Callable[[], int],
    metrics: ProviderMetrics,
) -> BaseBackfiller | None:
    """The backfill engine (rule 3), or None when nothing can backfill."""
    if isinstance(backfiller, BaseBackfiller):
        return backfiller
    if coordinator is not None:
        if storage is None:
            raise ValueError("a coordinator needs storage_source: the provider reads what the workers write")
        return CoordinatorBackfiller(coordinator, storage, config=config, clock=clock, metrics=metrics)
    if backfiller is None:
        return None
    if storage is None or not hasattr(storage, "write_window"):
        raise ValueError("backfilling needs a storage_source with write_window (a storage object or DSN)")
    if hasattr(backfiller, "backfill"):
        return DelegatingBackfiller(backfiller, storage, config=config, clock=clock, metrics=metrics)
    if hasattr(backfiller, "fetch"):
        return InProcessBackfiller(backfiller, storage, config=config, clock=clock, metrics=metrics)
    raise TypeError(f"backfiller {type(backfiller).__name__} has neither backfill() nor fetch()")


def build_live(live_feed: Any, *, clock: Callable[[], int], metrics: ProviderMetrics) -> Any:
    """The live feed (rule 4), or None."""
    if live_feed is None or hasattr(live_feed, "subscribe"):
        return live_feed
    if hasattr(live_feed, "fetch"):
        return PollingLiveFeed(live_feed, clock=clock, metrics=metrics)
    raise TypeError(f"live_feed {type(live_feed).__name__} has neither subscribe() nor fetch()")


def build_conformance(conformance: Any) -> ConformancePipeline | None:
    """The conformance pipeline (rule 5), or None."""
    if conformance is False:
        return None
    if conformance is None:
        return ConformancePipeline()
    if isinstance(conformance, ConformanceConfig):
        path = conformance.schema_registry_path
        return ConformancePipeline(registry=SchemaRegistry(path) if path else None)
    if not hasattr(conformance, "run"):
        raise TypeError(f"conformance {type(conformance).__name__} has no run(frame, context)")
    pipeline: ConformancePipeline = conformance
    return pipeline


def build_sla(sla: Any) -> SLAPolicy:
    """An :class:`SLAPolicy` from a policy, an SLAConfig or None."""
    if sla is None:
        return SLAPolicy()
    if isinstance(sla, SLAPolicy):
        return sla
    if isinstance(sla, SLAConfig):
        return SLAPolicy.from_config(sla)
    raise TypeError(f"sla must be an SLAPolicy, an SLAConfig or None, not {type(sla).__name__}")
