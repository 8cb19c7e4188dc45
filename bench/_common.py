"""Shared helpers for bench/ scripts: repeated timing, medians and result output.

Every figure is the median of several runs, and every ratio is computed from figures measured in the same run as
its baseline. Each script prints a markdown table and one JSON line (prefixed ``RESULT``) that ``make bench``
collects into one results file.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["emit", "median_time_s", "table"]


def median_time_s(fn: Callable[[], Any], runs: int = 5) -> tuple[float, list[float]]:
    """Run ``fn`` ``runs`` times; return the median wall time in seconds and all samples."""
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples), samples


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A markdown table."""

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:,.3f}" if abs(value) < 100 else f"{value:,.0f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def emit(name: str, results: dict[str, Any]) -> None:
    """Print the machine-readable result line for ``make bench``."""
    print("RESULT " + json.dumps({"bench": name, **results}, sort_keys=True))
