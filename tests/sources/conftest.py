"""Fixtures of the sources tests: the loopback fake exchange and an injected clock.

The exchange is devkit.fake_exchange, the one other suites use too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest


class FakeClock:
    """A monotonic clock whose sleep advances it at once and records every wait."""

    def __init__(self, start_s: float = 1_000.0) -> None:
        self.now_s = start_s
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now_s

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now_s += max(0.0, seconds)
        await asyncio.sleep(0)


@pytest.fixture
def clock() -> FakeClock:
    """A fresh injected clock."""
    return FakeClock()


@pytest.fixture
def make_exchange() -> Callable[..., AbstractAsyncContextManager[Any]]:
    """``async with make_exchange(**kwargs) as ex`` starts a FakeExchange on a free loopback port."""
    from devkit.fake_exchange import FakeExchange

    return FakeExchange


@pytest.fixture
async def exchange() -> AsyncIterator[Any]:
    """A fake exchange on a free loopback port serving ``synthetic:7``."""
    from devkit.fake_exchange import FakeExchange

    async with FakeExchange(seed=7) as ex:
        yield ex


@pytest.fixture
async def closer() -> AsyncIterator[Callable[[Any], Any]]:
    """``closer(source)`` returns the source and closes it at teardown, even when the test fails first."""
    opened: list[Any] = []

    def track(source: Any) -> Any:
        opened.append(source)
        return source

    yield track
    for source in reversed(opened):
        await source.aclose()
