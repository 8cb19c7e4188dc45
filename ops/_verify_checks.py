"""The checks of ``coordinator verify``, on plain frames and ranges (no I/O): ledger vs bars, conformance over
stored bars, and stored bars vs a re-fetch from the source.

Rules:
1. The unit is the coordinator's window (``window_ranges`` with the cluster's ``window_bars``), clipped to the
   request. A window is *covered* when the ledger's coverage holds all of its clipped range.
2. Findings per window: ``ledger_without_bars`` (covered, no bar), ``bars_outside_coverage`` (bars where the ledger
   says nothing was written), ``duplicate_ts``, ``off_grid``, ``non_finite`` (over the stored rows as read), and with
   a source: ``missing_bar`` (the source has it, storage does not), ``extra_bar`` (the reverse), ``changed`` (same
   ``ts``, a price or volume differs by more than ``tolerance`` relative to the source's value).
3. A window with findings is what ``--repair`` re-queues; its count is the number of rows concerned.
4. A covered window without bars whose source has no bars either is an exchange gap, materialized on purpose:
   once compared with the source it is not a finding.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from provider.core import intersect_ranges, window_id, window_ranges

__all__ = ["Finding", "WindowCheck", "compare_to_source", "plan_windows", "stored_findings"]

PRICE_COLUMNS = ("open", "high", "low", "close", "volume")


@dataclass(frozen=True)
class Finding:
    """One kind of problem in one window; ``count`` rows concerned; ``example_ms`` the first bar concerned."""

    kind: str
    count: int
    example_ms: int | None = None


@dataclass
class WindowCheck:
    """One window of the request and what was found in it."""

    series: str
    start_ms: int
    end_ms: int
    covered: bool
    bars: int = 0
    findings: list[Finding] = field(default_factory=list)
    compared: bool = False

    @property
    def window_id(self) -> str:
        return window_id(self.series, self.start_ms)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["window_id"] = self.window_id
        return data


def plan_windows(
    series: str, start_ms: int, end_ms: int, step_ms: int, window_bars: int, coverage: list[tuple[int, int]]
) -> list[WindowCheck]:
    """The windows of ``[start_ms, end_ms)`` (rule 1) with their covered flag."""
    checks = []
    for lo, hi in window_ranges(start_ms, end_ms, step_ms, window_bars):
        clip = (max(lo, start_ms), min(hi, end_ms))
        inside = intersect_ranges(coverage, [clip])
        covered = sum(b - a for a, b in inside) == clip[1] - clip[0]
        checks.append(WindowCheck(series, lo, hi, covered))
    return checks


def _ts_ms(frame: pd.DataFrame) -> np.ndarray[Any, np.dtype[np.int64]]:
    if frame.empty:
        return np.empty(0, dtype=np.int64)
    values = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[ms, UTC]").astype("int64")
    return np.asarray(values, dtype=np.int64)


def _add(check: WindowCheck, kind: str, stamps: np.ndarray[Any, Any]) -> None:
    if len(stamps):
        check.findings.append(Finding(kind, len(stamps), int(stamps.min())))


def stored_findings(
    checks: list[WindowCheck], frame: pd.DataFrame, coverage: list[tuple[int, int]], step_ms: int
) -> None:
    """Ledger vs bars and conformance of the stored rows (rule 2), added to each window's findings."""
    ts = _ts_ms(frame)
    values = frame[list(PRICE_COLUMNS)].to_numpy(dtype="float64") if len(ts) else np.empty((0, 5))
    covered = np.zeros(len(ts), dtype=bool)
    for lo, hi in coverage:
        covered |= (ts >= lo) & (ts < hi)
    for check in checks:
        mine = (ts >= check.start_ms) & (ts < check.end_ms)
        stamps = ts[mine]
        check.bars = int(mine.sum())
        if check.covered and check.bars == 0:
            check.findings.append(Finding("ledger_without_bars", 1, check.start_ms))
        _add(check, "bars_outside_coverage", ts[mine & ~covered])
        unique, counts = np.unique(stamps, return_counts=True)
        _add(check, "duplicate_ts", unique[counts > 1])
        _add(check, "off_grid", stamps[stamps % step_ms != 0])
        _add(check, "non_finite", stamps[~np.isfinite(values[mine]).all(axis=1)])


def compare_to_source(check: WindowCheck, stored: pd.DataFrame, fetched: pd.DataFrame, tolerance: float) -> None:
    """Stored bars of one window vs the source's bars of it, bar by bar (rule 2)."""
    check.compared = True
    mine = stored.assign(_ts=_ts_ms(stored)).drop_duplicates("_ts", keep="last").set_index("_ts")
    theirs = fetched.assign(_ts=_ts_ms(fetched)).set_index("_ts")
    mine = mine[(mine.index >= check.start_ms) & (mine.index < check.end_ms)]
    theirs = theirs[(theirs.index >= check.start_ms) & (theirs.index < check.end_ms)]
    if theirs.empty and mine.empty:
        # The exchange has no bar there either: a materialized gap (DESIGN.md section 6), not a lost window.
        check.findings = [f for f in check.findings if f.kind != "ledger_without_bars"]
    _add(check, "missing_bar", np.asarray(theirs.index.difference(mine.index), dtype=np.int64))
    _add(check, "extra_bar", np.asarray(mine.index.difference(theirs.index), dtype=np.int64))
    both = mine.index.intersection(theirs.index)
    if len(both):
        a = mine.loc[both, list(PRICE_COLUMNS)].to_numpy(dtype="float64")
        b = theirs.loc[both, list(PRICE_COLUMNS)].to_numpy(dtype="float64")
        off = np.abs(a - b) > tolerance * np.maximum(np.abs(b), 1e-12)
        _add(check, "changed", np.asarray(both[off.any(axis=1)], dtype=np.int64))
