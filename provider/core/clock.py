"""The one clock of the system: wall-clock epoch milliseconds and monotonic seconds.

Rules:
1. This is the declared impure corner of :mod:`provider.core`: the only module of the core that reads a clock.
   Everything else in the core takes time as an argument (``now_ms``), and no other package keeps a copy of
   these functions.
2. Code that needs the time takes a clock parameter whose default is one of these functions, so tests inject a
   fake clock instead of waiting on real time.
3. Wall-clock time is an ``int`` of epoch milliseconds, UTC (an instant); monotonic time is a ``float`` of
   seconds, used only for durations and deadlines inside one process.
"""

from __future__ import annotations

import time

__all__ = ["monotonic_s", "wall_clock_ms"]


def wall_clock_ms() -> int:
    """Epoch milliseconds now, UTC (the default wall clock)."""
    return time.time_ns() // 1_000_000


def monotonic_s() -> float:
    """Seconds on the process's monotonic clock (durations and deadlines only; never an instant)."""
    return time.monotonic()
