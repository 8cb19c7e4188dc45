"""The pure shared core: time, intervals, ranges, series keys, the window grid, wire models, config, backoff.

Nothing here does I/O at import or call time (``load_config`` reads the one file it is given) or draws random
numbers. Coordinator nodes import only this package, so it stays cheap: numpy, no pandas.

The one declared impure corner is :mod:`provider.core.clock` (``wall_clock_ms``, ``monotonic_s``): the only
place in the code base that reads the clock for others. Every other module of the core takes time as an
argument, and every package above takes a clock parameter defaulting to these functions.
"""

from provider.core._backoff import retry_delay_bounds_ms, retry_delay_ms
from provider.core._config import (
    STORAGE_DSN_ENV,
    AppConfig,
    BackfillConfig,
    ConformanceConfig,
    CoordinatorConfig,
    SeamlessConfig,
    SLAConfig,
    StorageConfig,
    WorkerConfig,
    config_from_mapping,
    describe_schema,
    load_config,
)
from provider.core._models import (
    JOB_STATES,
    WINDOW_STATES,
    WIRE_MODELS,
    BudgetHeartbeatRequest,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    Job,
    JobRequest,
    KeyClaimRequest,
    KeyFinishRequest,
    Lease,
    LeaseInfo,
    ReasonRequest,
    RenewRequest,
    WindowCounts,
)
from provider.core._ranges import (
    Range,
    covered_ms,
    intersect_ranges,
    merge_ranges,
    missing_ranges,
    snap_range,
    subtract_ranges,
    window_ranges,
)
from provider.core._series import SeriesKey, parse_window_id, window_id
from provider.core._time import INTERVALS, interval_ms, interval_name, ms_to_iso, to_ms
from provider.core.clock import monotonic_s, wall_clock_ms
from provider.core.errors import ConfigError, CoreError, SeamlessDataError, WireFormatError

__all__ = [
    "INTERVALS",
    "JOB_STATES",
    "WINDOW_STATES",
    "WIRE_MODELS",
    "AppConfig",
    "BackfillConfig",
    "BudgetHeartbeatRequest",
    "ClaimRequest",
    "CompleteRequest",
    "ConfigError",
    "ConformanceConfig",
    "CoordinatorConfig",
    "CoreError",
    "FailRequest",
    "Job",
    "JobRequest",
    "KeyClaimRequest",
    "KeyFinishRequest",
    "Lease",
    "LeaseInfo",
    "Range",
    "ReasonRequest",
    "RenewRequest",
    "SLAConfig",
    "SeamlessConfig",
    "SeamlessDataError",
    "SeriesKey",
    "STORAGE_DSN_ENV",
    "StorageConfig",
    "WindowCounts",
    "WireFormatError",
    "WorkerConfig",
    "config_from_mapping",
    "covered_ms",
    "describe_schema",
    "interval_ms",
    "interval_name",
    "intersect_ranges",
    "load_config",
    "merge_ranges",
    "missing_ranges",
    "monotonic_s",
    "ms_to_iso",
    "parse_window_id",
    "retry_delay_bounds_ms",
    "retry_delay_ms",
    "snap_range",
    "subtract_ranges",
    "to_ms",
    "wall_clock_ms",
    "window_id",
    "window_ranges",
]
