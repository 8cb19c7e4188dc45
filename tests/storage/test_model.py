"""Random sequences of window writes leave exactly what a plain model predicts (memory and SQLite backends)."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from provider.core import merge_ranges
from provider.frames import frame_from_arrays
from provider.storage import open_storage

M = 60_000
SERIES = "ohlcv:binance:ETH/USDT:1m"
_DB_NUMBERS = itertools.count()

#: A write: window start and length in bars, which bars of the window are present, and a value seed.
WRITES = st.lists(
    st.tuples(st.integers(0, 30), st.integers(0, 12), st.integers(0, (1 << 12) - 1), st.integers(0, 1000)),
    min_size=1,
    max_size=12,
)


async def _check(dsn: str, writes: list[tuple[int, int, int, int]]) -> None:
    model: dict[int, float] = {}
    windows: list[tuple[int, int]] = []
    storage = await open_storage(dsn)
    try:
        for start_bar, length, mask, seed in writes:
            present = [i for i in range(length) if mask >> i & 1]
            ts = (start_bar + np.asarray(present, dtype=np.int64)) * M
            closes = seed + np.arange(len(present), dtype=np.float64)
            frame = frame_from_arrays(ts, closes, closes, closes, closes, closes)
            await storage.write_window(SERIES, start_bar * M, (start_bar + length) * M, frame)
            for bar in range(start_bar, start_bar + length):
                model.pop(bar, None)
            model.update(zip((start_bar + np.asarray(present, dtype=np.int64)).tolist(), closes.tolist(), strict=True))
            windows.append((start_bar * M, (start_bar + length) * M))
        got = await storage.read(SERIES, 0, 100 * M)
        assert (got["ts"].astype("int64") // 1_000_000 // M).tolist() == sorted(model)
        assert got["close"].tolist() == [model[bar] for bar in sorted(model)]
        # Coverage merges windows; a later shorter window with the same start replaces the ledger row.
        ledger: dict[int, int] = {}
        for start, end in windows:
            if end > start:
                ledger[start] = end
        assert await storage.coverage(SERIES) == merge_ranges(ledger.items())
    finally:
        await storage.aclose()


@settings(max_examples=60, deadline=None)
@given(writes=WRITES)
def test_memory_matches_the_model(writes):
    """The memory backend stores exactly the bars of the last write of each slot, and merged coverage."""
    asyncio.run(_check("memory://", writes))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(writes=WRITES)
def test_sqlite_matches_the_model(tmp_path: Path, writes):
    """The SQLite backend (real SQL, islands query included) agrees with the model."""
    asyncio.run(_check(f"sqlite:///{tmp_path / f'model{next(_DB_NUMBERS)}.db'}", writes))
