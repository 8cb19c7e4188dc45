"""Schema stage: columns and dtypes checked against a versioned schema registry, casts counted.

Rules:
1. A schema is a name, a version and an ordered list of ``(column, dtype)``. Registering the same columns again
   returns the existing version; different columns under the same name get the next version. ``ohlcv`` v1 is the
   frame contract of :mod:`provider.frames` and is always present.
2. Missing columns are added (NaN, flag ``missing_column``); unknown columns are dropped (``extra_column``);
   a column of another dtype is cast (``dtype_cast``, with the cast values counted per column in
   ``report.casts``). Values that cannot be parsed become NaN and are caught by the temporal stage.
3. ``ts`` may arrive as tz-aware or naive datetimes (naive means UTC) or as integers: epoch milliseconds, or
   epoch seconds when every value is below 10**11 (QMTL frames carry seconds).
4. A frame that already matches is returned as is: no copy on the hot path.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from provider.conformance._report import ConformanceContext, ConformanceReport
from provider.frames import FRAME_COLUMNS, TS_DTYPE

__all__ = ["OHLCV_SCHEMA", "Schema", "SchemaRegistry", "SchemaRollupStage"]

#: Integer timestamps below this are epoch seconds (10**11 s is the year 5138; 10**11 ms is 1973).
_SECONDS_LIMIT = 10**11
_TS_TEXT = str(TS_DTYPE)


@dataclass(frozen=True, slots=True)
class Schema:
    """One version of a named column schema."""

    name: str
    version: int
    columns: tuple[tuple[str, str], ...]

    @property
    def label(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    def dtype(self, column: str) -> str | None:
        """The dtype text of ``column``, or None when the schema lacks it."""
        return dict(self.columns).get(column)


OHLCV_SCHEMA = Schema("ohlcv", 1, (("ts", _TS_TEXT), *((c, "float64") for c in FRAME_COLUMNS[1:])))


class SchemaRegistry:
    """Named schemas with integer versions; an in-memory registry, one per pipeline unless shared."""

    def __init__(self) -> None:
        self._schemas: dict[str, dict[int, Schema]] = {OHLCV_SCHEMA.name: {1: OHLCV_SCHEMA}}

    def register(self, name: str, columns: Mapping[str, str]) -> Schema:
        """Register ``columns`` under ``name``; identical columns return the existing version."""
        wanted = tuple((str(k), str(v)) for k, v in columns.items())
        if not wanted or wanted[0][0] != "ts":
            raise ValueError(f"schema {name!r} must start with the 'ts' column, got {[c for c, _ in wanted]}")
        versions = self._schemas.setdefault(name, {})
        for schema in versions.values():
            if schema.columns == wanted:
                return schema
        schema = Schema(name, max(versions, default=0) + 1, wanted)
        versions[schema.version] = schema
        return schema

    def get(self, name: str, version: int | None = None) -> Schema:
        """A schema by name and version (the latest when ``version`` is None)."""
        versions = self._schemas.get(name)
        if not versions:
            raise KeyError(f"schema {name!r} is not registered; known: {', '.join(sorted(self._schemas))}")
        chosen = max(versions) if version is None else version
        if chosen not in versions:
            raise KeyError(f"schema {name!r} has no version {chosen}; versions: {sorted(versions)}")
        return versions[chosen]

    def versions(self, name: str) -> list[int]:
        """The versions registered under ``name``."""
        return sorted(self._schemas.get(name, {}))


def _to_utc_ts(values: pd.Series) -> pd.Series:
    if pd.api.types.is_integer_dtype(values.dtype) or pd.api.types.is_float_dtype(values.dtype):
        numbers = pd.to_numeric(values, errors="coerce")
        finite = numbers[np.isfinite(numbers)]
        unit: Literal["s", "ms"] = "s" if len(finite) and float(finite.abs().max()) < _SECONDS_LIMIT else "ms"
        return (
            pd.to_datetime(numbers.to_numpy(), unit=unit, utc=True, errors="coerce")
            .to_series(index=values.index)
            .astype(TS_DTYPE)
        )
    converted = pd.to_datetime(values, utc=True, errors="coerce")
    return converted.astype(TS_DTYPE)


def _cast(values: pd.Series, dtype: str) -> pd.Series:
    if dtype == _TS_TEXT:
        return _to_utc_ts(values)
    if dtype == "float64":
        return pd.to_numeric(values, errors="coerce").astype(np.float64)
    return values.astype(pd.api.types.pandas_dtype(dtype))


class SchemaRollupStage:
    """Brings a frame to a registered schema, flagging and counting every change."""

    name = "schema"

    def __init__(
        self, registry: SchemaRegistry | None = None, *, schema: str = "ohlcv", version: int | None = None
    ) -> None:
        self.registry = registry if registry is not None else SchemaRegistry()
        self.schema = self.registry.get(schema, version)

    def _matches(self, frame: pd.DataFrame) -> bool:
        if tuple(frame.columns) != tuple(c for c, _ in self.schema.columns):
            return False
        if not isinstance(frame.index, pd.RangeIndex) or frame.index.start != 0 or frame.index.step != 1:
            return False
        dtypes = frame.dtypes
        return all(str(dtypes.iloc[i]) == d for i, (_, d) in enumerate(self.schema.columns))

    def run(self, frame: Any, context: ConformanceContext, report: ConformanceReport) -> pd.DataFrame:
        """Return ``frame`` in the schema's columns and dtypes, recording what had to change."""
        report.schema = self.schema.label
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"conformance needs a pandas DataFrame, got {type(frame).__name__}")
        if self._matches(frame):
            return frame
        if "ts" not in frame.columns and frame.index.name == "ts":
            frame = frame.reset_index()
        wanted = [c for c, _ in self.schema.columns]
        extra = [c for c in frame.columns if c not in wanted]
        if extra:
            report.add("extra_column", len(extra), detail=", ".join(map(str, extra)))
        columns: dict[str, pd.Series] = {}
        rows = len(frame)
        for column, dtype in self.schema.columns:
            if column not in frame.columns:
                report.add("missing_column", 1, detail=column)
                filler = pd.Series(np.full(rows, np.nan))
                columns[column] = _cast(filler, dtype)
                continue
            values = frame[column].reset_index(drop=True)
            if str(values.dtype) != dtype:
                report.add("dtype_cast", 1, detail=f"{column}: {values.dtype} -> {dtype}")
                report.casts[column] = report.casts.get(column, 0) + rows
                values = _cast(values, dtype)
            columns[column] = values
        return pd.DataFrame(columns)
