"""Seamless Data Provider: complete, checked market data on demand.

Public names are exported lazily (PEP 562) so that ``import provider.core`` on a coordinator node never loads
pandas or a database driver. ``provider.__all__`` lists what strategies may import.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> module that defines it; filled in as the packages land.
_EXPORTS: dict[str, str] = {
    "AutoBackfiller": "provider.strategies",
    "BackfillConfig": "provider.core",
    "BackfillFailedError": "provider.errors",
    "BackfillProgress": "provider.strategies",
    "ConformanceContext": "provider.conformance",
    "ConformancePipeline": "provider.conformance",
    "ConformancePipelineError": "provider.errors",
    "ConformanceReport": "provider.conformance",
    "CoordinatorBackfiller": "provider.backfill",
    "DataAvailabilityStrategy": "provider.strategies",
    "DataSource": "provider.strategies",
    "DataSourcePriority": "provider.strategies",
    "DataUnavailableError": "provider.errors",
    "EnhancedQuestDBProvider": "provider.questdb_provider",
    "FetchMetadata": "provider.fetchmeta",
    "HttpReportSink": "provider.reports",
    "InProcessBackfiller": "provider.backfill",
    "LiveDataFeed": "provider.strategies",
    "LocalFolderReportSink": "provider.reports",
    "MemoryReportSink": "provider.reports",
    "NullReportSink": "provider.reports",
    "PollingLiveFeed": "provider.live",
    "QuestDBLoader": "provider.questdb_provider",
    "RegressionReportStage": "provider.conformance",
    "ReportSink": "provider.reports",
    "SLAPolicy": "provider.sla",
    "SchemaRegistry": "provider.conformance",
    "SchemaRollupStage": "provider.conformance",
    "SeamlessCache": "provider.cache",
    "SeamlessDataProvider": "provider.seamless",
    "SeamlessSLAExceeded": "provider.errors",
    "StorageFailedError": "provider.errors",
    "SeriesKey": "provider.core",
    "StorageDataSource": "provider.storage_source",
    "TemporalRollupStage": "provider.conformance",
    "load_config": "provider.core",
    "open_report_sink": "provider.reports",
}

__all__ = [
    "AutoBackfiller",
    "BackfillConfig",
    "BackfillFailedError",
    "BackfillProgress",
    "ConformanceContext",
    "ConformancePipeline",
    "ConformancePipelineError",
    "ConformanceReport",
    "CoordinatorBackfiller",
    "DataAvailabilityStrategy",
    "DataSource",
    "DataSourcePriority",
    "DataUnavailableError",
    "EnhancedQuestDBProvider",
    "FetchMetadata",
    "HttpReportSink",
    "InProcessBackfiller",
    "LiveDataFeed",
    "LocalFolderReportSink",
    "MemoryReportSink",
    "NullReportSink",
    "PollingLiveFeed",
    "QuestDBLoader",
    "RegressionReportStage",
    "ReportSink",
    "SLAPolicy",
    "SchemaRegistry",
    "SchemaRollupStage",
    "SeamlessCache",
    "SeamlessDataProvider",
    "SeamlessSLAExceeded",
    "SeriesKey",
    "StorageDataSource",
    "StorageFailedError",
    "TemporalRollupStage",
    "load_config",
    "open_report_sink",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'provider' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
