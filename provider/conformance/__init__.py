"""The conformance pipeline: every frame the provider returns is checked and normalized here first.

``ConformancePipeline().run(frame, ConformanceContext(...))`` returns ``(frame, ConformanceReport)``. Stages:
:class:`SchemaRollupStage` (columns and dtypes against the schema of the node id's subject in a
:class:`SchemaRegistry` of versioned schemas with compatibility policies, in memory or in a file; casts counted),
:class:`TemporalRollupStage` (order, duplicates keep-last, off-grid, future bars, gaps inside covered ranges,
non-finite values, OHLC sanity) and :class:`RegressionReportStage` (comparison with the previous report of the
series). Flags are listed in :data:`FLAGS`; those in :data:`DEFAULT_BLOCKING_FLAGS` block a fetch unless
``partial_ok=True``.
"""

from provider.conformance._compat import ALLOWED_CHANGES, COMPATIBILITY, Subject
from provider.conformance._ingest import INGEST_BLOCKING_FLAGS, epoch_unit, normalize_bars
from provider.conformance._pipeline import ConformancePipeline, ConformanceStage, RegressionReportStage
from provider.conformance._report import (
    DEFAULT_BLOCKING_FLAGS,
    FLAGS,
    ConformanceContext,
    ConformanceFlag,
    ConformanceReport,
    report_uri,
)
from provider.conformance._schema import OHLCV_SCHEMA, Schema, SchemaRegistry, SchemaRollupStage
from provider.conformance._temporal import TemporalRollupStage, find_gaps
from provider.errors import (
    ConformancePipelineError,
    SchemaIncompatibleError,
    SchemaRegistryError,
    SchemaRegistryFileError,
)

__all__ = [
    "ALLOWED_CHANGES",
    "COMPATIBILITY",
    "DEFAULT_BLOCKING_FLAGS",
    "FLAGS",
    "INGEST_BLOCKING_FLAGS",
    "OHLCV_SCHEMA",
    "ConformanceContext",
    "ConformanceFlag",
    "ConformancePipeline",
    "ConformancePipelineError",
    "ConformanceReport",
    "ConformanceStage",
    "RegressionReportStage",
    "Schema",
    "SchemaIncompatibleError",
    "SchemaRegistry",
    "SchemaRegistryError",
    "SchemaRegistryFileError",
    "SchemaRollupStage",
    "Subject",
    "TemporalRollupStage",
    "epoch_unit",
    "find_gaps",
    "normalize_bars",
    "report_uri",
]
