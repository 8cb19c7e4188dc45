"""Fixtures of the provider tests: a manual clock, storages (memory and SQLite files), counting sources.

Times: T0 is aligned to the 100-bar window grid of 1m bars; NOW (the provider's clock) is far after every
range the tests ask for, so every bar asked is closed unless a test moves the clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from provider.core import BackfillConfig, SeriesKey
from provider.core.obs import new_registry
from provider.reports import MemoryReportSink
from provider.seamless import SeamlessDataProvider
from provider.sources import open_source
from provider.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
WINDOW_BARS = 100
SPAN = WINDOW_BARS * MIN
T0 = (1_700_000_000_000 // SPAN) * SPAN
NOW = T0 + 100_000 * MIN


def at(minutes: float) -> int:
    """T0 plus ``minutes`` (in ms)."""
    return T0 + int(minutes * MIN)


class ManualClock:
    """Epoch-ms clock that only moves when told."""

    def __init__(self, now_ms: int = NOW) -> None:
        self.now_ms = now_ms

    def __call__(self) -> int:
        return self.now_ms

    def advance(self, ms: int) -> None:
        self.now_ms += ms


class CountingSource:
    """Wraps a source; records every fetch, can hold fetches behind a gate or fail them."""

    name = "counting"

    def __init__(self, inner: Any, *, gate: asyncio.Event | None = None, error: BaseException | None = None) -> None:
        self.inner = inner
        self.gate = gate
        self.error = error
        self.calls: list[tuple[int, int]] = []

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        self.calls.append((int(start), int(end)))
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        frame: pd.DataFrame = await self.inner.fetch(series, start, end)
        return frame

    async def aclose(self) -> None:
        await self.inner.aclose()


async def bars(start: int, end: int, series: str = SERIES, spec: str = "synthetic:7") -> pd.DataFrame:
    """The synthetic bars of ``[start, end)``: what every source in these tests serves."""
    source = open_source(spec)
    try:
        frame: pd.DataFrame = await source.fetch(SeriesKey.parse(series), start, end)
        return frame
    finally:
        await source.aclose()


async def store(storage: Any, start: int, end: int, series: str = SERIES, spec: str = "synthetic:7") -> None:
    """Materialize ``[start, end)`` in ``storage`` as one window."""
    await storage.write_window(series, start, end, await bars(start, end, series, spec))


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def sink() -> MemoryReportSink:
    return MemoryReportSink()


@pytest.fixture
def source() -> CountingSource:
    return CountingSource(open_source("synthetic:7"))


@pytest.fixture(params=["memory", "sqlite"])
async def storage(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh storage: in memory, and a real SQLite file."""
    dsn = "memory://" if request.param == "memory" else f"sqlite:///{tmp_path / 'bars.db'}"
    opened = await open_storage(dsn)
    yield opened
    await opened.aclose()


@pytest.fixture
async def sqlite_storage(tmp_path: Path) -> AsyncIterator[Any]:
    """A fresh SQLite file storage (real storage)."""
    opened = await open_storage(f"sqlite:///{tmp_path / 'bars.db'}")
    yield opened
    await opened.aclose()


@pytest.fixture
async def make_provider(
    clock: ManualClock, sink: MemoryReportSink
) -> AsyncIterator[Callable[..., SeamlessDataProvider]]:
    """Build providers with the test clock, a memory report sink and a private registry; closed at teardown."""
    made: list[SeamlessDataProvider] = []

    def build(**kwargs: Any) -> SeamlessDataProvider:
        kwargs.setdefault("clock", clock)
        kwargs.setdefault("report_sink", sink)
        kwargs.setdefault("registry", new_registry())
        kwargs.setdefault("backfill_config", BackfillConfig(window_bars=WINDOW_BARS, retry_backoff_ms=0))
        provider = SeamlessDataProvider(**kwargs)
        made.append(provider)
        return provider

    yield build
    for provider in made:
        await provider.aclose()


@pytest.fixture
def fake_exchange_cls() -> Any:
    """The FakeExchange class of devkit.fake_exchange."""
    from devkit.fake_exchange import FakeExchange

    return FakeExchange
