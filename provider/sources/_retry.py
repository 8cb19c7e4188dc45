"""Retries around any source: the schedule of DESIGN.md section 3 as a tenacity policy.

Rules:
1. A fetch is tried at most ``max_attempts`` times. Retry n (after attempt n) waits
   ``retry_backoff_ms * 2**(n-1)`` plus a uniform part in ``[0, jitter_ratio * d]``
   (:func:`provider.core.retry_delay_ms`, one ``rng.random()`` draw per failed attempt).
2. Only :class:`~provider.sources.RetryableSourceError` is retried. A 429 or 418 waits at least the server's
   ``retry_after_s``; one whose wait exceeds ``max_wait_s`` is not retried (a ban of hours fails the work so the
   coordinator can hand it out again later). Fatal errors and programming errors surface at once.
3. When attempts run out, the last error surfaces unchanged (not tenacity's RetryError).
4. Each retry is reported to ``on_retry(RetryEvent)`` before its sleep (the worker counts
   ``backfill_retry_total``) and recorded as a ``seamless.retry`` event on the current trace span. The sleep and the
   random generator are injected so tests pin both.
5. The wrapper waits; the request gating lives lower down: a 418 closes the process's BanGate, so every other
   fetch of the process to that source also waits, not only the one being retried.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import pandas as pd
import tenacity

from provider.core import BackfillConfig, SeriesKey, retry_delay_ms, tracing
from provider.sources._base import Source
from provider.sources._limits import DEFAULT_MAX_WAIT_S, Sleep
from provider.sources.errors import BannedError, RateLimitedError, RetryableSourceError

__all__ = ["RetryEvent", "RetryingSource", "retry_policy", "retry_wait_s"]


class Uniform(Protocol):
    """A random generator: ``random()`` returns a float in [0, 1) (``random.Random`` fits)."""

    def random(self) -> float: ...


@dataclass(frozen=True, slots=True)
class RetryEvent:
    """One retry about to happen: its number (retry n follows attempt n), the wait and the error that caused it."""

    source: str
    retry: int
    delay_s: float
    error: BaseException


def retry_wait_s(retry: int, error: BaseException | None, config: BackfillConfig, uniform: float) -> float:
    """Seconds to wait before ``retry``: the section 3 formula, raised to the error's ``retry_after_s``."""
    wait_s = retry_delay_ms(retry, config.retry_backoff_ms, config.jitter_ratio, uniform) / 1000.0
    if isinstance(error, RateLimitedError | BannedError):
        wait_s = max(wait_s, error.retry_after_s)
    return wait_s


def _retryable(max_wait_s: float) -> Callable[[BaseException], bool]:
    def check(error: BaseException) -> bool:
        if isinstance(error, RateLimitedError | BannedError) and error.retry_after_s > max_wait_s:
            return False
        return isinstance(error, RetryableSourceError)

    return check


def retry_policy(
    config: BackfillConfig,
    *,
    rng: Uniform | None = None,
    sleep: Sleep | None = None,
    on_retry: Callable[[RetryEvent], Any] | None = None,
    max_wait_s: float = DEFAULT_MAX_WAIT_S,
    source: str = "",
) -> tenacity.AsyncRetrying:
    """A tenacity policy implementing the module rules; call it as ``await policy(fn, *args)``."""
    if config.max_attempts < 1:
        raise ValueError(f"max_attempts {config.max_attempts!r} must be >= 1")
    draw = rng if rng is not None else random.Random()

    def wait(state: tenacity.RetryCallState) -> float:
        error = state.outcome.exception() if state.outcome is not None else None
        return retry_wait_s(state.attempt_number, error, config, draw.random())

    def before_sleep(state: tenacity.RetryCallState) -> None:
        if on_retry is None or state.outcome is None or state.next_action is None:
            return
        error = state.outcome.exception()
        if error is not None:
            on_retry(RetryEvent(source, state.attempt_number, state.next_action.sleep, error))

    return tenacity.AsyncRetrying(
        sleep=sleep if sleep is not None else asyncio.sleep,
        stop=tenacity.stop_after_attempt(config.max_attempts),
        wait=wait,
        retry=tenacity.retry_if_exception(_retryable(max_wait_s)),
        before_sleep=before_sleep,
        reraise=True,
    )


class RetryingSource:
    """Wraps any source with :func:`retry_policy`; it is itself a source (and a provider fetcher)."""

    def __init__(
        self,
        inner: Source,
        config: BackfillConfig,
        *,
        rng: Uniform | None = None,
        sleep: Sleep | None = None,
        on_retry: Callable[[RetryEvent], Any] | None = None,
        max_wait_s: float = DEFAULT_MAX_WAIT_S,
    ) -> None:
        if config.max_attempts < 1:
            raise ValueError(f"max_attempts {config.max_attempts!r} must be >= 1")
        self.inner = inner
        self.config = config
        self._rng = rng if rng is not None else random.Random()
        self._sleep = sleep
        self._on_retry = on_retry
        self.max_wait_s = max_wait_s
        #: Retries made so far, over all fetches.
        self.retries = 0

    @property
    def name(self) -> str:
        """The wrapped source's name."""
        return self.inner.name

    def __repr__(self) -> str:
        return f"RetryingSource({self.inner!r}, max_attempts={self.config.max_attempts})"

    def _report(self, event: RetryEvent) -> None:
        self.retries += 1
        tracing.event(
            "seamless.retry",
            {
                "seamless.source": event.source,
                "seamless.retry": event.retry,
                "seamless.delay_s": event.delay_s,
                "seamless.error": f"{type(event.error).__name__}: {event.error}"[:300],
            },
        )
        if self._on_retry is not None:
            self._on_retry(event)

    async def fetch(self, series: SeriesKey | str, start: Any, end: Any) -> pd.DataFrame:
        """Fetch through the inner source, retrying retryable errors per the module rules."""
        policy = retry_policy(
            self.config,
            rng=self._rng,
            sleep=self._sleep,
            on_retry=self._report,
            max_wait_s=self.max_wait_s,
            source=self.inner.name,
        )
        frame: pd.DataFrame = await policy(self.inner.fetch, series, start, end)
        return frame

    async def aclose(self) -> None:
        """Close the inner source."""
        await self.inner.aclose()
