"""The conformance pipeline: schema registry and casts, temporal checks, regression reports, blocking rules."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from provider.conformance import (
    DEFAULT_BLOCKING_FLAGS,
    ConformanceContext,
    ConformancePipeline,
    ConformancePipelineError,
    RegressionReportStage,
    SchemaRegistry,
    SchemaRollupStage,
    TemporalRollupStage,
    report_uri,
)
from provider.frames import check_frame, frame_from_arrays
from provider.strategies import DataSourcePriority

from .conftest import MIN, NOW, SERIES, at, bars


def _ctx(start=None, end=None, covered=None, now_ms=NOW):
    start = at(0) if start is None else start
    end = at(10) if end is None else end
    return ConformanceContext(SERIES, MIN, start, end, covered=tuple(covered or [(start, end)]), now_ms=now_ms)


def _frame(minutes, close=None):
    ts = [at(m) for m in minutes]
    price = np.full(len(ts), 10.0)
    return frame_from_arrays(ts, price, price + 5, price - 5, price if close is None else close, np.ones(len(ts)))


def test_registry_versions_schemas_and_returns_existing_ones():
    """Registering new columns adds a version; identical columns return the existing version; an optional (``?``)
    column is what the default ``backward`` policy lets a new version add."""
    registry = SchemaRegistry()
    assert registry.get("ohlcv").label == "ohlcv@1"
    v1 = registry.register("trades", {"ts": "datetime64[ns, UTC]", "price": "float64"})
    again = registry.register("trades", {"ts": "datetime64[ns, UTC]", "price": "float64"})
    v2 = registry.register("trades", {"ts": "datetime64[ns, UTC]", "price": "float64", "size": "float64?"})
    assert (v1.version, again.version, v2.version) == (1, 1, 2)
    assert registry.versions("trades") == [1, 2]
    assert registry.get("trades", 1) is v1
    with pytest.raises(KeyError, match="no version 3"):
        registry.get("trades", 3)
    with pytest.raises(ValueError, match="'ts'"):
        registry.register("bad", {"price": "float64"})


def test_schema_stage_casts_and_counts():
    """Wrong dtypes are cast and counted per column; naive ts means UTC; extra columns go, missing are added."""
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime([at(0), at(1)], unit="ms"),  # naive
            "open": [1, 2],
            "high": [2.0, 3.0],
            "low": [0.5, 1.5],
            "close": ["1.5", "2.5"],
            "extra": [0, 0],
        }
    )
    pipeline = ConformancePipeline([SchemaRollupStage()])
    out, report = pipeline.run(frame, _ctx(end=at(2)))
    check_frame(out.assign(volume=0.0), interval_ms=MIN)
    assert report.casts == {"ts": 2, "open": 2, "close": 2}
    assert report.flag_counts == {"extra_column": 1, "dtype_cast": 3, "missing_column": 1}
    assert out["close"].tolist() == [1.5, 2.5]
    assert report.schema == "ohlcv@1"
    assert set(report.blocking) == {"dtype_cast", "missing_column"}


@pytest.mark.parametrize("unit_ms", [1000, 1])
def test_schema_stage_reads_int_seconds_and_ms(unit_ms):
    """Integer ts below 10**11 are epoch seconds (QMTL frames), larger ones epoch milliseconds."""
    frame = _frame([0, 1])
    frame["ts"] = [at(0) // unit_ms, at(1) // unit_ms]
    out, report = ConformancePipeline([SchemaRollupStage()]).run(frame, _ctx())
    assert out["ts"].tolist() == list(pd.to_datetime([at(0), at(1)], unit="ms", utc=True))
    assert report.casts == {"ts": 2}


@pytest.mark.parametrize(
    ("minutes", "close", "flags", "kept"),
    [
        ([2, 0, 1], None, {"unsorted": 1}, [0, 1, 2]),
        ([0, 1, 1, 2], [10.0, 11.0, 12.0, 13.0], {"duplicate_ts": 1}, [0, 1, 2]),
        ([0, 1.5, 2], None, {"off_grid": 1, "gap": 1}, [0, 2]),
        ([0, 1, 2], [10.0, np.nan, 10.0], {"non_finite": 1, "gap": 1}, [0, 2]),
        ([0, 1, 2], [10.0, np.inf, 10.0], {"non_finite": 1, "gap": 1}, [0, 2]),
        ([0, 1, 2], [10.0, 99.0, 10.0], {"ohlc_violation": 1}, [0, 1, 2]),
        ([0, 3], None, {"gap": 1}, [0, 3]),
    ],
)
def test_temporal_flags(minutes, close, flags, kept):
    """Each temporal rule raises its flag with the right count and keeps exactly the right rows."""
    frame = _frame(minutes, None if close is None else np.asarray(close))
    out, report = ConformancePipeline([TemporalRollupStage()]).run(frame, _ctx(end=at(max(minutes) + 1)))
    assert report.flag_counts == flags
    assert [int(x) for x in ((out["ts"].astype("int64") // 10**6 - at(0)) // MIN)] == kept
    if "duplicate_ts" in flags:
        assert out["close"].tolist() == [10.0, 12.0, 13.0]  # the last of the repeated bar wins


def test_future_bars_are_dropped_and_gaps_only_count_inside_covered_ranges():
    """Bars not closed at now are dropped; absent bars outside the covered ranges are not gaps."""
    frame = _frame([0, 1, 5, 6, 9])
    context = _ctx(end=at(10), covered=[(at(0), at(4))], now_ms=at(9) + 30_000)
    out, report = ConformancePipeline([TemporalRollupStage()]).run(frame, context)
    assert report.flag_counts == {"future_bar": 1, "gap": 1}
    assert report.gaps == [(at(2), at(4))]
    assert len(out) == 4


def test_regression_stage_compares_with_the_previous_report():
    """The regression stage reports flag deltas, new and resolved gaps against the series' previous report."""
    regression = RegressionReportStage()
    pipeline = ConformancePipeline([SchemaRollupStage(), TemporalRollupStage(), regression])
    first = pipeline.run(_frame([0, 3, 4]), _ctx(end=at(5)))[1]
    assert first.regression["previous"] is None and first.regression["new_gaps"] == [(at(1), at(3))]
    second = pipeline.run(_frame([0, 1, 2, 3, 3, 4]), _ctx(end=at(5)))[1]
    assert second.regression["flag_delta"] == {"duplicate_ts": 1, "gap": -1}
    assert second.regression["resolved_gaps"] == [(at(1), at(3))]
    assert second.flag_counts["regression"] == 1
    assert regression.previous(SERIES) is second


def test_clean_frame_passes_untouched():
    """A conforming frame comes back as the same object with an empty, non-blocking report."""
    frame = _frame(range(10))
    out, report = ConformancePipeline().run(frame, _ctx())
    assert out is frame
    assert report.ok and report.flag_counts == {} and report.rows_in == report.rows_out == 10
    assert report.uri == report_uri(SERIES) == f"qmtl://observability/seamless/{SERIES}"
    assert "gap" not in DEFAULT_BLOCKING_FLAGS


class BadStorage:
    """A STORAGE data source that serves a crafted frame for any request."""

    priority = DataSourcePriority.STORAGE
    name = "storage"

    def __init__(self, frame):
        self.frame = frame

    async def coverage(self, *, node_id):
        return [(0, 2**62)]

    async def is_available(self, start, end, *, node_id):
        return True

    async def fetch(self, start, end, *, node_id):
        return self.frame.copy()


async def _bad(kind):
    good = await bars(at(0), at(10))
    if kind == "duplicate_ts":
        return pd.concat([good.iloc[:5], good.iloc[4:]], ignore_index=True), 1
    if kind == "dtype_cast":
        return good.assign(volume=good["volume"].astype("float32")), 1
    return good.assign(close=good["close"].where(good.index != 3, np.nan)), 1


@pytest.mark.parametrize("kind", ["duplicate_ts", "dtype_cast", "non_finite"])
async def test_provider_blocks_by_default_and_passes_with_partial_ok(kind, make_provider, sink):
    """Duplicate ts, bad dtypes and non-finite values block a fetch by default; partial_ok returns normalized data."""
    frame, count = await _bad(kind)
    strict = make_provider(strategy="fail_fast", storage_source=BadStorage(frame), cache_source=False)
    with pytest.raises(ConformancePipelineError) as info:
        await strict.fetch(at(0), at(10), node_id=SERIES)
    assert info.value.report.flag_counts[kind] == count
    assert kind in info.value.report.blocking
    assert strict.last_fetch_metadata.outcome == "blocked"

    lenient = make_provider(strategy="fail_fast", storage_source=BadStorage(frame), partial_ok=True)
    out = await lenient.fetch(at(0), at(10), node_id=SERIES)
    check_frame(out, interval_ms=MIN)
    assert len(out) == (9 if kind == "non_finite" else 10)
    assert lenient.last_conformance_report.flag_counts[kind] == count
    assert lenient.last_fetch_metadata.conformance_ok is False
    assert lenient.last_fetch_metadata.conformance_flags[kind] == count
    await lenient.wait_for_backfills()
    published = sink.latest(SERIES)
    assert published is not None and published["flag_counts"][kind] == count
    assert published["uri"] == f"qmtl://observability/seamless/{SERIES}"
