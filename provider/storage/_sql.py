"""SQL pieces shared by the SQLite, PostgreSQL and QuestDB backends (no driver imports here).

Rules:
1. Identifiers are never taken from callers: table names come from a validated DSN option
   (:func:`provider.storage._dsn.valid_identifier`) and are spliced in quoted; every value is a parameter.
2. Coverage is answered by one "gaps and islands" query over the window ledger: the database walks the series'
   windows in start order and returns only the rows that open or close a run of overlapping or adjacent
   windows, so the client receives O(runs) rows for O(windows) work on the server. Coverage within
   ``[start, end)`` first filters the windows to those overlapping it, so the ordered walk (the costly part)
   only sees them: a fetch of recent bars does not pay for the whole history of the series.
3. Rows become numpy arrays without per-row Python code (``np.fromiter`` over a chained iterator).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from provider.core import Range, merge_ranges

__all__ = ["coverage_sql", "ms_to_aware", "ms_to_naive", "ranges_from_boundaries", "rows_to_matrix"]

_EPOCH_NAIVE = dt.datetime(1970, 1, 1)
_EPOCH_AWARE = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def coverage_sql(
    ledger: str, key_column: str, order_column: str, placeholder: str, bounds: tuple[str, str] | None = None
) -> str:
    """The islands query: rows ``(start, run_end, prev_end, next_start)`` that open or close a run.

    ``prev_end`` is the largest end among earlier windows and ``run_end`` the largest end so far (including this
    window); a row opens a run when no earlier window reaches its start, and closes one when the next window
    starts after everything so far. Adjacent windows (``prev_end == start``) belong to the same run.
    ``bounds`` are the placeholders of ``(start, end)``, in that order after the key's: only windows that
    overlap ``[start, end)`` take part, so the runs are exact inside it (callers clip them to it).
    """
    where = f"{key_column} = {placeholder}"
    if bounds is not None:
        where += f" AND end_ms > {bounds[0]} AND start_ms < {bounds[1]}"
    return (
        "SELECT start_ms, run_end, prev_end, next_start FROM ("
        " SELECT start_ms,"
        f" max(end_ms) OVER (ORDER BY {order_column} ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end,"
        f" max(end_ms) OVER (ORDER BY {order_column} ROWS UNBOUNDED PRECEDING) AS run_end,"
        f" lead(start_ms) OVER (ORDER BY {order_column}) AS next_start"
        f" FROM {ledger} WHERE {where}"
        ") AS w WHERE prev_end IS NULL OR prev_end < start_ms OR next_start IS NULL OR next_start > run_end"
    )


def ranges_from_boundaries(rows: Iterable[Sequence[Any]]) -> list[Range]:
    """Turn the islands query's rows (in start order) into merged ranges."""
    starts: list[int] = []
    ends: list[int] = []
    for start, run_end, prev_end, next_start in rows:
        if prev_end is None or prev_end < start:
            starts.append(int(start))
        if next_start is None or next_start > run_end:
            ends.append(int(run_end))
    return merge_ranges(zip(starts, ends, strict=True))


def rows_to_matrix(rows: Sequence[Sequence[Any]], width: int) -> np.ndarray:
    """A ``(len(rows), width)`` float64 matrix from rows of numbers (no None), built in C."""
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * width)
    return flat.reshape(len(rows), width)


def ms_to_naive(ms: int) -> dt.datetime:
    """Epoch ms as a naive UTC datetime (QuestDB TIMESTAMP parameters must be naive)."""
    return _EPOCH_NAIVE + dt.timedelta(milliseconds=ms)


def ms_to_aware(ms: int) -> dt.datetime:
    """Epoch ms as a tz-aware UTC datetime (PostgreSQL timestamptz parameters)."""
    return _EPOCH_AWARE + dt.timedelta(milliseconds=ms)
