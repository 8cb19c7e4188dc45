"""The schema stage enforces the registry: a frame declaring a schema its subject cannot read is blocked with
``schema_incompatible``; a readable one passes; each node id is checked against its own subject's schema."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from provider.conformance import (
    DEFAULT_BLOCKING_FLAGS,
    FLAGS,
    ConformanceContext,
    ConformancePipeline,
    ConformancePipelineError,
    SchemaRegistry,
    SchemaRollupStage,
)
from provider.core import ConformanceConfig
from provider.frames import FRAME_COLUMNS
from provider.strategies import DataSourcePriority

from .conftest import MIN, NOW, SERIES, at, bars

TS = "datetime64[ns, UTC]"
OHLCV = {"ts": TS, **dict.fromkeys(FRAME_COLUMNS[1:], "float64")}


def _ctx(node_id: str = SERIES, end: int | None = None) -> ConformanceContext:
    end = at(10) if end is None else end
    return ConformanceContext(node_id, MIN, at(0), end, covered=((at(0), end),), now_ms=NOW)


async def _bars(declared: str | None = None, **extra: Any) -> pd.DataFrame:
    frame = await bars(at(0), at(10))
    frame = frame.assign(**extra) if extra else frame
    if declared is not None:
        frame.attrs["schema"] = declared
    return frame


def _registry(tmp_path: Path) -> SchemaRegistry:
    """ohlcv@2 adds an optional ``trades`` (backward: allowed); ohlcv@3 then drops ``volume`` under policy none."""
    registry = SchemaRegistry(tmp_path / "schemas.json")
    registry.register("ohlcv", {**OHLCV, "trades": "float64?"})
    registry.set_compatibility("ohlcv", "none")
    without_volume = {k: v for k, v in OHLCV.items() if k != "volume"}
    registry.register("ohlcv", {**without_volume, "trades": "float64?"})
    return registry


def test_the_new_flags_are_documented_and_schema_incompatible_blocks() -> None:
    """schema_incompatible blocks by default, missing_optional_column does not; both are in FLAGS and in the flag
    table of docs/provider.md with that blocking default."""
    assert "schema_incompatible" in DEFAULT_BLOCKING_FLAGS and "schema_incompatible" in FLAGS
    assert "missing_optional_column" not in DEFAULT_BLOCKING_FLAGS and "missing_optional_column" in FLAGS
    table = (Path(__file__).resolve().parents[2] / "docs" / "provider.md").read_text(encoding="utf-8")
    rows = {
        line.split("|")[1].strip(" `"): line.split("|")[-2].strip()
        for line in table.splitlines()
        if line.startswith("| `") and line.count("|") == 5
    }
    assert (rows["schema_incompatible"], rows["missing_optional_column"]) == ("yes", "no")


async def test_a_frame_declaring_a_newer_incompatible_version_is_blocked(tmp_path: Path) -> None:
    """A reader pinned to ohlcv@1 cannot read ohlcv@3 (volume gone): blocked, empty, the report names both."""
    pipeline = ConformancePipeline(registry=None, stages=[SchemaRollupStage(_registry(tmp_path), version=1)])
    frame = await _bars("ohlcv@3")
    out, report = pipeline.run(frame.drop(columns=["volume"]), _ctx())
    assert report.blocking == ("schema_incompatible",)
    assert (report.schema, report.schema_declared) == ("ohlcv@1", "ohlcv@3")
    assert "volume: required by ohlcv@1 but absent from ohlcv@3" in report.flags[0].detail
    assert len(out) == 0 and list(out.columns) == list(FRAME_COLUMNS)


async def test_a_frame_declaring_a_newer_compatible_version_passes(tmp_path: Path) -> None:
    """ohlcv@2 only added an optional column: a reader at ohlcv@1 reads it, dropping ``trades`` (not blocking)."""
    pipeline = ConformancePipeline([SchemaRollupStage(_registry(tmp_path), version=1)])
    out, report = pipeline.run(await _bars("ohlcv@2", trades=np.ones(10)), _ctx())
    assert report.ok, report.summary()
    assert report.flag_counts == {"extra_column": 1}
    assert list(out.columns) == list(FRAME_COLUMNS) and len(out) == 10


@pytest.mark.parametrize(
    ("declared", "detail"),
    [
        ("ohlcv@9", "ohlcv@9 is not registered (versions of ohlcv: 1, 2, 3)"),
        ("quotes@1", "resolves to subject 'ohlcv'"),
        ("ohlcv@x", "must be 'name' or 'name@version'"),
    ],
)
async def test_unknown_or_foreign_declarations_are_blocked(tmp_path: Path, declared: str, detail: str) -> None:
    """An unregistered version, another subject's schema or a malformed declaration never passes."""
    pipeline = ConformancePipeline(registry=_registry(tmp_path))
    _, report = pipeline.run(await _bars(declared), _ctx())
    assert report.blocking == ("schema_incompatible",)
    assert detail in report.flags[0].detail


async def test_an_older_declared_version_is_read_by_the_latest(tmp_path: Path) -> None:
    """The default reader is the subject's latest (ohlcv@3): ohlcv@2 data is readable (volume dropped, no block),
    ohlcv@1 data too; the absent optional ``trades`` is filled with NaN and flagged without blocking."""
    pipeline = ConformancePipeline([SchemaRollupStage(_registry(tmp_path))])
    out, report = pipeline.run(await _bars("ohlcv@1"), _ctx())
    assert report.ok, report.summary()
    assert report.schema == "ohlcv@3"
    assert report.flag_counts == {"extra_column": 1, "missing_optional_column": 1}
    assert list(out.columns) == ["ts", "open", "high", "low", "close", "trades"]
    assert out["trades"].isna().all()


async def test_declared_widening_casts_are_counted_not_flagged(tmp_path: Path) -> None:
    """A readable declared version whose dtype widens into the reader's is cast (counted) without dtype_cast;
    the same frame undeclared is a dtype_cast as before."""
    registry = SchemaRegistry(tmp_path / "schemas.json")
    registry.register("counts", {"ts": TS, "n": "int64"}, pattern="counts:*")
    registry.register("counts", {"ts": TS, "n": "float64"})
    stage = SchemaRollupStage(registry)
    stamps = pd.to_datetime([at(0)], unit="ms", utc=True).astype(TS)
    frame = pd.DataFrame({"ts": stamps, "n": np.array([3], dtype=np.int64)})
    frame.attrs["schema"] = "counts@1"
    out, report = ConformancePipeline([stage]).run(frame, _ctx("counts:x:y:1m", end=at(1)))
    assert report.ok and report.casts == {"n": 1} and out["n"].dtype == np.float64
    undeclared = frame.copy()
    undeclared.attrs.clear()
    _, again = ConformancePipeline([stage]).run(undeclared, _ctx("counts:x:y:1m", end=at(1)))
    assert again.blocking == ("dtype_cast",)


async def test_a_matching_frame_is_returned_without_copy_and_subjects_follow_the_file(tmp_path: Path) -> None:
    """The hot path returns the very frame; a registration by another registry instance reaches the stage."""
    path = tmp_path / "schemas.json"
    stage = SchemaRollupStage(SchemaRegistry(path))
    frame = await _bars()
    assert stage.run(frame, _ctx(), _report()) is frame
    SchemaRegistry(path).register("binance", {**OHLCV, "trades": "float64?"}, pattern="ohlcv:binance:*")
    report = _report()
    out = stage.run(frame, _ctx(), report)
    assert report.schema == "binance@1" and "trades" in out.columns
    assert stage.run(frame, _ctx("ohlcv:kraken:BTC/USDT:1m"), _report()) is frame


def _report() -> Any:
    from provider.conformance import ConformanceReport

    return ConformanceReport(SERIES, MIN, at(0), at(10))


class DeclaringStorage:
    """A storage data source whose frames declare a schema (as a source that knows its schema would)."""

    priority = DataSourcePriority.STORAGE

    def __init__(self, frame: pd.DataFrame) -> None:
        self.frame = frame

    async def is_available(self, start: int, end: int, *, node_id: str) -> bool:
        return True

    async def fetch(self, start: int, end: int, *, node_id: str) -> pd.DataFrame:
        return self.frame

    async def coverage(self, *, node_id: str) -> list[tuple[int, int]]:
        return [(at(0), at(10))]


async def test_a_provider_fetch_is_blocked_by_an_incompatible_declaration(tmp_path: Path, make_provider: Any) -> None:
    """Through SeamlessDataProvider, configured by ConformanceConfig(schema_registry_path): a frame declaring
    ohlcv@9 raises ConformancePipelineError naming schema_incompatible; an undeclared one is returned."""
    path = tmp_path / "schemas.json"
    SchemaRegistry(path).register("ohlcv", {**OHLCV, "trades": "float64?"})
    conformance = ConformanceConfig(schema_registry_path=str(path))
    blocked = make_provider(
        strategy="fail_fast",
        storage_source=DeclaringStorage(await _bars("ohlcv@9")),
        conformance=conformance,
        cache_source=False,
    )
    with pytest.raises(ConformancePipelineError, match="schema_incompatible") as caught:
        await blocked.fetch(at(0), at(10), node_id=SERIES)
    assert caught.value.report.schema_declared == "ohlcv@9"
    passing = make_provider(
        strategy="fail_fast",
        storage_source=DeclaringStorage(await _bars("ohlcv@1")),
        conformance=conformance,
        cache_source=False,
    )
    frame = await passing.fetch(at(0), at(10), node_id=SERIES)
    assert len(frame) == 10 and frame["trades"].isna().all()
    assert passing.last_conformance_report.flag_counts == {"missing_optional_column": 1}
