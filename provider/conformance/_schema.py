"""Schema stage: columns and dtypes checked against the subject's schema in a registry, casts counted.

Rules:
1. The schema a frame is checked against (its reader) is the latest version of the subject its node id resolves
   to in the :class:`SchemaRegistry` (``ohlcv@1``, the frame contract, unless other subjects or versions were
   registered); ``SchemaRollupStage(schema=..., version=...)`` pins one instead. Resolutions are cached per node id
   until the registry changes.
2. Missing columns are added (NaN, flag ``missing_column``; ``missing_optional_column`` for a column the schema
   marks optional, which does not block); unknown columns are dropped (``extra_column``); a column of another
   dtype is cast (``dtype_cast``, with the cast values counted per column in ``report.casts``). Values that cannot
   be parsed become NaN and are caught by the temporal stage.
3. A frame may declare the schema it was written with: ``frame.attrs["schema"] = "name@version"`` (or ``"name"``,
   meaning the reader). A declaration of another subject, of an unknown version, or of a version the reader
   cannot read (``_compat.read_problems``: e.g. a newer version that dropped a required column) is blocked with
   ``schema_incompatible``: the stage returns an empty frame of the reader's columns and ``report.schema_declared``
   names the declaration. A readable declared version is conformed to the reader; the widening casts its dtypes
   call for are counted in ``report.casts`` without a ``dtype_cast`` flag.
4. ``ts`` may arrive as tz-aware or naive datetimes (naive means UTC) or as integers: epoch milliseconds, or
   epoch seconds when every value is below 10**11 (QMTL frames carry seconds).
5. A frame that already matches is returned as is: no copy on the hot path (one ``stat`` of the registry file and
   a dict lookup per frame). A frame our readers built (:func:`provider.frames.contract_arrays`) matches the
   contract's schema by its layout alone, without reading a dtype per column.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import pandas as pd

from provider.conformance._compat import Schema, parse_declaration, read_problems, widens
from provider.conformance._registry import OHLCV_SCHEMA, SchemaRegistry
from provider.conformance._report import ConformanceContext, ConformanceReport
from provider.frames import FRAME_COLUMNS, PRICE_COLUMNS, TS_DTYPE, column_arrays, column_names, contract_arrays

__all__ = ["OHLCV_SCHEMA", "Schema", "SchemaRegistry", "SchemaRollupStage"]

#: Integer timestamps below this are epoch seconds (10**11 s is the year 5138; 10**11 ms is 1973).
_SECONDS_LIMIT = 10**11
_TS_TEXT = str(TS_DTYPE)
#: The frame contract's columns as a schema lists them (``ohlcv@1``).
_CONTRACT = tuple(zip(FRAME_COLUMNS, (_TS_TEXT, *["float64"] * len(PRICE_COLUMNS)), strict=True))
#: Node ids whose reader schema a stage remembers (then it starts over); also bounds the dtype text cache.
_MAX_CACHED_NODES = 4096
_DTYPE_TEXT: dict[Any, str] = {}


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


def _empty(schema: Schema) -> pd.DataFrame:
    return pd.DataFrame({c: _cast(pd.Series(np.empty(0, dtype=np.float64)), d) for c, d in schema.columns})


def _matches(frame: pd.DataFrame, schema: Schema) -> bool:
    index = frame.index
    if not isinstance(index, pd.RangeIndex) or index.start != 0 or index.step != 1:
        return False
    if schema.columns == _CONTRACT and contract_arrays(frame) is not None:
        return True  # built by our readers and laid out so: the contract's labels and dtypes (rule 5)
    if column_names(frame) != schema.names:
        return False
    arrays = column_arrays(frame)  # the dtypes without building frame.dtypes (a Series): rule 5
    return all(_dtype_text(arrays[i].dtype) == d for i, (_, d) in enumerate(schema.columns))


def _dtype_text(dtype: Any) -> str:
    """``str(dtype)``, remembered (it costs microseconds per column, and a frame has few distinct dtypes)."""
    text = _DTYPE_TEXT.get(dtype)
    if text is None:
        text = _DTYPE_TEXT[dtype] = str(dtype)
        if len(_DTYPE_TEXT) > _MAX_CACHED_NODES:
            _DTYPE_TEXT.clear()
    return text


def _conform(frame: pd.DataFrame, reader: Schema, writer: Schema | None, report: ConformanceReport) -> pd.DataFrame:
    if "ts" not in frame.columns and frame.index.name == "ts":
        frame = frame.reset_index()
    wanted = set(reader.names)
    extra = [c for c in frame.columns if c not in wanted]
    if extra:
        report.add("extra_column", len(extra), detail=", ".join(map(str, extra)))
    columns: dict[str, pd.Series] = {}
    rows = len(frame)
    for column, dtype in reader.columns:
        if column not in frame.columns:
            flag = "missing_optional_column" if column in reader.optional else "missing_column"
            report.add(flag, 1, detail=column)
            columns[column] = _cast(pd.Series(np.full(rows, np.nan)), dtype)
            continue
        values = frame[column].reset_index(drop=True)
        found = str(values.dtype)
        if found != dtype:
            declared = writer is not None and writer.dtype(column) == found and widens(found, dtype)
            if not declared:
                report.add("dtype_cast", 1, detail=f"{column}: {found} -> {dtype}")
            report.casts[column] = report.casts.get(column, 0) + rows
            values = _cast(values, dtype)
        columns[column] = values
    return pd.DataFrame(columns)


class SchemaRollupStage:
    """Brings a frame to its subject's schema, flagging and counting every change (module rules)."""

    name = "schema"

    def __init__(
        self, registry: SchemaRegistry | None = None, *, schema: str | None = None, version: int | None = None
    ) -> None:
        self.registry = registry if registry is not None else SchemaRegistry()
        self._pin = (schema or "ohlcv", version) if schema is not None or version is not None else None
        #: The pinned schema, or ``ohlcv``'s latest (what a node id no other subject matches is checked against).
        self.schema = self.registry.get(*(self._pin or ("ohlcv", None)))
        self._readers: dict[str, Schema] = {}
        self._generation = -1

    def reader(self, node_id: str) -> Schema:
        """The schema frames of ``node_id`` are checked against (rule 1)."""
        self.registry.refresh()
        if self.registry.generation != self._generation:
            self._readers.clear()
            self._generation = self.registry.generation
        found = self._readers.get(node_id)
        if found is None:
            found = self.registry.get(*self._pin) if self._pin else self.registry.resolve(node_id).latest
            if len(self._readers) >= _MAX_CACHED_NODES:
                self._readers.clear()
            self._readers[node_id] = found
        return found

    def run(self, frame: Any, context: ConformanceContext, report: ConformanceReport) -> pd.DataFrame:
        """Return ``frame`` in the reader schema's columns and dtypes, recording what had to change."""
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"conformance needs a pandas DataFrame, got {type(frame).__name__}")
        reader = self.reader(context.node_id)
        report.schema = reader.label
        declared = frame.attrs.get("schema") if frame.attrs else None
        writer = None
        if declared is not None and declared not in (reader.label, reader.name):
            report.schema_declared = str(declared)
            writer = self._writer(declared, reader, context.node_id, report)
            if writer is None:
                return _empty(reader)
        if _matches(frame, reader):
            return frame
        return _conform(frame, reader, writer, report)

    def _writer(self, declared: Any, reader: Schema, node_id: str, report: ConformanceReport) -> Schema | None:
        """The declared schema when the reader can read it; else None with ``schema_incompatible`` recorded."""
        try:
            name, version = parse_declaration(declared)
        except ValueError as exc:
            report.add("schema_incompatible", 1, detail=str(exc))
            return None
        if name != reader.name:
            problem = f"frame declares {declared!r} but {node_id} resolves to subject {reader.name!r}"
            report.add("schema_incompatible", 1, detail=problem)
            return None
        writer = reader if version is None else self.registry.subject(name).version(version)
        if writer is None:
            known = ", ".join(str(v) for v in self.registry.versions(name))
            report.add("schema_incompatible", 1, detail=f"{declared} is not registered (versions of {name}: {known})")
            return None
        problems = read_problems(reader, writer)
        if problems:
            why = "; ".join(f"{c}: {p}" for c, p in problems)
            report.add("schema_incompatible", 1, detail=f"{writer.label} cannot be read as {reader.label}: {why}")
            return None
        return writer
