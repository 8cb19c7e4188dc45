"""The retry schedule of DESIGN.md section 3, as a pure function.

Retry n (n = 1 .. max_attempts-1) waits ``d = retry_backoff_ms * 2**(n-1)`` plus a uniform random part in
``[0, jitter_ratio * d]``. The random draw is an argument (``uniform`` in [0, 1]) so the function stays pure and
tests can pin it; callers pass ``random.random()``.
"""

from __future__ import annotations

__all__ = ["retry_delay_ms", "retry_delay_bounds_ms"]

#: No single wait grows beyond one hour, however many attempts are configured.
MAX_DELAY_MS = 3_600_000


def retry_delay_bounds_ms(retry: int, retry_backoff_ms: int, jitter_ratio: float) -> tuple[float, float]:
    """The smallest and largest wait before retry ``retry`` (1-based)."""
    if isinstance(retry, bool) or not isinstance(retry, int) or retry < 1:
        raise ValueError(f"retry {retry!r} must be an int >= 1 (retry 1 follows the first attempt)")
    if retry_backoff_ms < 0:
        raise ValueError(f"retry_backoff_ms {retry_backoff_ms!r} must be >= 0")
    if not 0.0 <= jitter_ratio <= 1.0:
        raise ValueError(f"jitter_ratio {jitter_ratio!r} must be from 0 to 1")
    base = min(float(retry_backoff_ms) * 2.0 ** min(retry - 1, 62), MAX_DELAY_MS)
    return base, base + jitter_ratio * base


def retry_delay_ms(retry: int, retry_backoff_ms: int, jitter_ratio: float, uniform: float) -> float:
    """The wait before retry ``retry`` for a uniform draw in [0, 1]."""
    if not 0.0 <= uniform <= 1.0:
        raise ValueError(f"uniform {uniform!r} must be a draw from [0, 1]")
    low, high = retry_delay_bounds_ms(retry, retry_backoff_ms, jitter_ratio)
    return low + (high - low) * uniform
