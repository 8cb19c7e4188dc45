"""RetryingSource: the section 3 schedule, Retry-After floors, attempt limits and what is not retried."""

from __future__ import annotations

import random
from typing import Any

import pandas as pd
import pytest

from provider.core import BackfillConfig, retry_delay_ms
from provider.frames import empty_frame
from provider.sources import (
    BadResponseError,
    BannedError,
    FatalSourceError,
    RateLimitedError,
    RetryableSourceError,
    RetryEvent,
    RetryingSource,
    retry_wait_s,
)


class ScriptedSource:
    """A source that plays a script: each fetch raises the next exception or returns the next frame."""

    name = "scripted"

    def __init__(self, *outcomes: Any) -> None:
        self.outcomes = list(outcomes)
        self.calls = 0
        self.closed = False

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        self.calls += 1
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def aclose(self) -> None:
        self.closed = True


class Sleeps:
    """An injected sleep that records waits and returns at once."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


CONFIG = BackfillConfig(max_attempts=5, retry_backoff_ms=500, jitter_ratio=0.25)


async def test_waits_equal_the_formula_with_a_pinned_rng() -> None:
    """With a seeded rng the four waits are exactly retry_delay_ms(n, 500, 0.25, draw n) and each is reported."""
    frame = empty_frame()
    inner = ScriptedSource(*[RetryableSourceError("boom")] * 4, frame)
    sleeps, events = Sleeps(), list[RetryEvent]()
    source = RetryingSource(inner, CONFIG, rng=random.Random(1234), sleep=sleeps, on_retry=events.append)
    assert await source.fetch("ohlcv:x:BTC/USDT:1m", 0, 60_000) is frame
    draws = random.Random(1234)
    expected = [retry_delay_ms(n, 500, 0.25, draws.random()) / 1000 for n in range(1, 5)]
    assert sleeps.waits == expected
    assert [(e.retry, e.delay_s, e.source) for e in events] == [
        (n, w, "scripted") for n, w in zip(range(1, 5), expected, strict=True)
    ]
    assert all(0.5 * 2 ** (n - 1) <= w <= 0.625 * 2 ** (n - 1) for n, w in enumerate(expected, 1))
    assert inner.calls == 5 and source.retries == 4


async def test_max_attempts_then_the_last_error_surfaces() -> None:
    """After max_attempts failures the last error itself is raised, with max_attempts-1 sleeps in between."""
    errors = [RetryableSourceError(f"fail {i}") for i in range(5)]
    inner = ScriptedSource(*errors, errors[-1])
    sleeps = Sleeps()
    source = RetryingSource(inner, CONFIG, rng=random.Random(0), sleep=sleeps)
    with pytest.raises(RetryableSourceError) as caught:
        await source.fetch("ohlcv:x:BTC/USDT:1m", 0, 60_000)
    assert caught.value is errors[4]
    assert inner.calls == 5 and len(sleeps.waits) == 4


@pytest.mark.parametrize("error", [FatalSourceError("bad symbol"), ValueError("bad range"), KeyError("bug")])
async def test_non_retryable_errors_surface_at_once(error: Exception) -> None:
    """Fatal source errors and programming errors are raised after one attempt, without sleeping."""
    inner = ScriptedSource(error)
    sleeps = Sleeps()
    with pytest.raises(type(error)):
        await RetryingSource(inner, CONFIG, sleep=sleeps).fetch("ohlcv:x:BTC/USDT:1m", 0, 60_000)
    assert inner.calls == 1 and sleeps.waits == []


async def test_single_attempt_config_never_retries() -> None:
    """max_attempts=1 means one try: a retryable error surfaces with no retry."""
    inner = ScriptedSource(BadResponseError("junk"))
    sleeps = Sleeps()
    with pytest.raises(BadResponseError):
        await RetryingSource(inner, BackfillConfig(max_attempts=1), sleep=sleeps).fetch("ohlcv:x:A/B:1m", 0, 1)
    assert inner.calls == 1 and sleeps.waits == []


@pytest.mark.parametrize(
    ("retry", "error", "uniform", "expected_s"),
    [
        (1, RetryableSourceError("x"), 0.0, 0.5),
        (1, RetryableSourceError("x"), 1.0, 0.625),
        (3, RetryableSourceError("x"), 0.5, 2.25),
        (1, RateLimitedError("429", retry_after_s=7.0), 0.0, 7.0),
        (5, RateLimitedError("429", retry_after_s=1.0), 0.0, 8.0),
        (2, BannedError("418", retry_after_s=30.0), 1.0, 30.0),
        (2, None, 0.0, 1.0),
    ],
)
def test_retry_wait_is_the_formula_floored_by_retry_after(
    retry: int, error: BaseException | None, uniform: float, expected_s: float
) -> None:
    """The wait is the section 3 formula, or the server's Retry-After when that is longer."""
    assert retry_wait_s(retry, error, CONFIG, uniform) == pytest.approx(expected_s)


async def test_rate_limit_wait_honours_retry_after() -> None:
    """A 429 with Retry-After 7 s makes the next attempt wait 7 s, not the formula's 0.5 s."""
    inner = ScriptedSource(RateLimitedError("429", retry_after_s=7.0), empty_frame())
    sleeps = Sleeps()
    await RetryingSource(inner, CONFIG, rng=random.Random(0), sleep=sleeps).fetch("ohlcv:x:A/B:1m", 0, 1)
    assert sleeps.waits == [7.0]


@pytest.mark.parametrize(
    "error", [BannedError("418", retry_after_s=3600.0), RateLimitedError("429", retry_after_s=901)]
)
async def test_waits_beyond_max_wait_are_not_retried(error: RetryableSourceError) -> None:
    """A ban or cooldown longer than max_wait_s fails the fetch at once instead of sleeping through it."""
    inner = ScriptedSource(error, empty_frame())
    sleeps = Sleeps()
    with pytest.raises(type(error)):
        await RetryingSource(inner, CONFIG, sleep=sleeps, max_wait_s=900).fetch("ohlcv:x:A/B:1m", 0, 1)
    assert inner.calls == 1 and sleeps.waits == []


async def test_wrapper_forwards_name_and_close() -> None:
    """The wrapper reports the inner source's name and closes it; max_attempts below 1 is refused."""
    inner = ScriptedSource(empty_frame())
    source = RetryingSource(inner, CONFIG)
    assert source.name == "scripted"
    await source.aclose()
    assert inner.closed
    with pytest.raises(ValueError, match="max_attempts"):
        RetryingSource(inner, BackfillConfig(max_attempts=0))
