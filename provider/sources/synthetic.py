"""The synthetic source: deterministic bars from (market, interval, bar time, seed), no network.

Spec: ``synthetic[:SEED][?gaps=FRACTION]`` — ``SEED`` is an int from 0 to 2**63-1 (default 0); ``gaps`` is the
fraction of bars that are missing, from 0 (default) to 0.99.

Rules:
1. Every bar is a pure function of ``(market_key(symbol), interval_ms, open time, seed)``: any bar can be
   computed alone, so overlapping ranges give identical rows, and the loopback fake exchange
   (devkit/fake_exchange.py) serves exactly these bars. The series' source field is ignored, and symbols that
   differ only by ``/`` or case are the same market (``BTC/USDT`` and ``BTCUSDT``).
2. Randomness is a counter hash (splitmix64) of the bar index, never a stateful generator. Prices are a sum of
   linearly interpolated hash noise over 20 octaves (scale 2**k bars, amplitude ~ sqrt(2**k)): a random walk
   whose value at any bar needs O(octaves) work. A rational squash keeps prices within 25%..175% of the
   market's base price. Only + - * / and sqrt are used, so the bars are bit-identical on every IEEE-754 machine.
3. The close of bar i is the open of bar i+1; ``low <= min(open, close) <= max(open, close) <= high``; prices
   are rounded to the market's tick (a decimal grid), volumes to 4 decimals, so "%.8f" text parses back exactly.
4. With ``gaps`` > 0 a bar is missing when a separate hash of its index falls below ``gaps`` — deterministic,
   independent of the range asked. Missing bars are simply absent from the frame.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pandas as pd

from provider.core import SeriesKey
from provider.frames import frame_from_arrays
from provider.sources._base import normalize_request
from provider.sources._limits import SourceLimits
from provider.sources._spec import SourceSpec

__all__ = [
    "MAX_SYNTHETIC_BARS",
    "SyntheticSource",
    "market_key",
    "open_synthetic",
    "price_decimals",
    "synthetic_arrays",
    "synthetic_bars",
]

#: Grid slots one call may span; a larger range is a caller mistake (split it into windows).
MAX_SYNTHETIC_BARS = 5_000_000
#: Octaves of price noise: the slowest one spans 2**19 bars (about a year of 1m bars).
_OCTAVES = 20
#: Largest relative move of the squash: prices stay within (1 - _SWING, 1 + _SWING) x base.
_SWING = 0.75
#: Base prices and their tick decimals; a market picks one by hash.
_BASES: tuple[tuple[float, int], ...] = (
    (3.0, 6),
    (7.0, 5),
    (15.0, 5),
    (40.0, 4),
    (90.0, 4),
    (250.0, 3),
    (600.0, 3),
    (1500.0, 2),
    (4000.0, 2),
    (12000.0, 2),
    (30000.0, 2),
    (65000.0, 2),
)
_VOLUME_DECIMALS = 4
_MASK = (1 << 64) - 1
# Hash streams: one per use of randomness, so the draws are independent.
_STREAM_GAP, _STREAM_HIGH, _STREAM_LOW, _STREAM_VOLUME, _STREAM_NOISE = 1, 2, 3, 4, 100


def market_key(symbol: str) -> str:
    """The synthetic market a symbol names: ``/`` removed, upper case (``BTC/USDT`` -> ``BTCUSDT``)."""
    return symbol.replace("/", "").upper()


def _splitmix(value: int) -> int:
    value = (value + 0x9E3779B97F4A7C15) & _MASK
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK
    return value ^ (value >> 31)


def _mix(x: np.ndarray) -> np.ndarray:
    # splitmix64 finalizer on uint64 arrays; array arithmetic wraps modulo 2**64 silently, as intended.
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = x ^ (x >> np.uint64(31))
    return mixed


def _uniform(key: int, stream: int, index: np.ndarray) -> np.ndarray:
    """Uniform draws in [0, 1) for each bar index (int64 >= 0), independent per (key, stream)."""
    salt = np.uint64(_splitmix(key ^ _splitmix(stream)))
    bits = _mix(index.astype(np.uint64) + salt)
    return (bits >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _market_key_hash(market: str, interval_ms: int, seed: int) -> int:
    digest = hashlib.blake2b(f"{market}|{interval_ms}|{seed}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def price_decimals(symbol: str, seed: int = 0) -> int:
    """Tick decimals of a synthetic market's prices (the same for every interval)."""
    return _BASES[_market_key_hash(market_key(symbol), 0, seed) % len(_BASES)][1]


def _walk(key: int, points: np.ndarray, sigma: float) -> np.ndarray:
    """The squashed multi-octave noise at each point (contiguous int64 bar indices), in (-_SWING, _SWING)."""
    total = np.zeros(len(points))
    first, last = int(points[0]), int(points[-1])
    for k in range(_OCTAVES):
        lo = first >> k
        nodes = 2.0 * _uniform(key, _STREAM_NOISE + k, np.arange(lo, (last >> k) + 2, dtype=np.int64)) - 1.0
        cell = (points >> k) - lo
        frac = (points & ((1 << k) - 1)).astype(np.float64) * (1.0 / (1 << k))
        left = nodes[cell]
        total += (sigma * math.sqrt(float(1 << k))) * (left + (nodes[cell + 1] - left) * frac)
    return _SWING * total / (1.0 + np.abs(total))


def synthetic_arrays(
    symbol: str, interval_ms: int, start_ms: int, end_ms: int, *, seed: int = 0, gaps: float = 0.0
) -> tuple[np.ndarray, np.ndarray]:
    """The bars with open time in ``[start_ms, end_ms)`` (grid-aligned) as (int64 ts, float64 (n, 5) values).

    ``values`` columns are open, high, low, close, volume. ``symbol`` goes through :func:`market_key`.
    """
    if interval_ms <= 0:
        raise ValueError(f"interval_ms {interval_ms!r} must be positive")
    if not 0.0 <= gaps < 1.0:
        raise ValueError(f"gaps {gaps!r} must be a fraction in [0, 1)")
    first = -(-max(start_ms, 0) // interval_ms)
    stop = -(-max(end_ms, 0) // interval_ms)
    if stop - first > MAX_SYNTHETIC_BARS:
        raise ValueError(f"range [{start_ms}, {end_ms}) spans {stop - first} bars; at most {MAX_SYNTHETIC_BARS}")
    if stop <= first:
        return np.empty(0, dtype=np.int64), np.empty((0, 5))
    market = market_key(symbol)
    base, decimals = _BASES[_market_key_hash(market, 0, seed) % len(_BASES)]
    key = _market_key_hash(market, interval_ms, seed)
    sigma = min(0.02, 0.001 * math.sqrt(interval_ms / 60_000.0))
    points = np.arange(first, stop + 1, dtype=np.int64)
    price = base * (1.0 + _walk(key, points, sigma))
    index = points[:-1]
    open_, close = price[:-1], price[1:]
    high = np.maximum(open_, close) * (1.0 + sigma * _uniform(key, _STREAM_HIGH, index))
    low = np.minimum(open_, close) * (1.0 - sigma * _uniform(key, _STREAM_LOW, index))
    volume = (100_000.0 / base) * (0.2 + 1.8 * _uniform(key, _STREAM_VOLUME, index))
    scale, vscale = float(10**decimals), float(10**_VOLUME_DECIMALS)
    values = np.column_stack(
        [np.rint(col * scale) / scale for col in (open_, high, low, close)] + [np.rint(volume * vscale) / vscale]
    )
    keep = _uniform(key, _STREAM_GAP, index) >= gaps if gaps > 0 else slice(None)
    return index[keep] * interval_ms, values[keep]


def synthetic_bars(
    symbol: str, interval_ms: int, start_ms: int, end_ms: int, *, seed: int = 0, gaps: float = 0.0
) -> pd.DataFrame:
    """The bars of ``[start_ms, end_ms)`` as a contract frame (see :func:`synthetic_arrays`)."""
    stamps, values = synthetic_arrays(symbol, interval_ms, start_ms, end_ms, seed=seed, gaps=gaps)
    return frame_from_arrays(stamps, *values.T)


class SyntheticSource:
    """Deterministic bars for any series, computed locally (the embedded default source)."""

    name = "synthetic"

    def __init__(self, *, seed: int = 0, gaps: float = 0.0) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed {seed!r} must be an int from 0 to 2**63-1")
        if not 0.0 <= gaps <= 0.99:
            raise ValueError(f"gaps {gaps!r} must be a fraction from 0 to 0.99")
        self.seed = seed
        self.gaps = gaps
        #: Fetches served (for tests and metrics).
        self.fetches = 0

    def __repr__(self) -> str:
        return f"SyntheticSource(seed={self.seed}, gaps={self.gaps})"

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """The synthetic bars of ``[start, end)`` snapped to the series' grid."""
        request = normalize_request(series, start, end)
        self.fetches += 1
        return synthetic_bars(
            request.series.symbol,
            request.interval_ms,
            request.start_ms,
            request.end_ms,
            seed=self.seed,
            gaps=self.gaps,
        )

    async def aclose(self) -> None:
        """Nothing to release."""


def open_synthetic(spec: SourceSpec, *, limits: SourceLimits | None = None) -> SyntheticSource:
    """Entry point of ``synthetic[:SEED][?gaps=FRACTION]``; ``limits`` is unused (no network)."""
    spec.check_params(["gaps"])
    seed = 0
    if spec.target:
        if not spec.target.isdigit() or int(spec.target) >= 2**63:
            raise spec.error(f"seed {spec.target!r} must be an integer from 0 to 2**63-1")
        seed = int(spec.target)
    gaps = spec.number("gaps", 0.0, lo=0.0, hi=0.99)
    return SyntheticSource(seed=seed, gaps=gaps)
