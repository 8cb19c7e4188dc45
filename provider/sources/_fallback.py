"""A fallback chain of sources: each window is served by the first source of an ordered list that answers.

Rules:
1. ``FallbackSource([primary, fallback, ...])`` tries the sources in order for each fetch. A source fails a
   window *permanently* when its fetch raises after its own retries (members are wrapped in
   :class:`~provider.sources.RetryingSource` when ``retry`` is given; already wrapped ones are used as they are);
   the next source then serves the window. A success ends the walk: a later source is never asked for a window
   an earlier one served, and no source is asked twice for the same window by the chain.
2. ``fetch_served(series, start, end)`` returns ``(frame, source_name, failed)``: the bars, the name of the
   member that served them, and ``"name: error"`` for each member that failed before it. ``fetch`` returns the
   bars only. When every member fails, the last member's error surfaces unchanged (so its class decides whether
   a worker's window is retryable).
3. ``retries_inside`` tells a backfiller not to wrap the chain in another retry loop.
4. Cancellation is never a failure: it propagates at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd

from provider.core.obs import get_logger

__all__ = ["FallbackSource"]

_log = get_logger("provider.sources.fallback")


def _name(source: Any) -> str:
    return str(getattr(source, "name", type(source).__name__))


class FallbackSource:
    """An ordered chain of sources (see the module rules)."""

    retries_inside = True

    def __init__(
        self,
        sources: Sequence[Any],
        *,
        names: Sequence[str] | None = None,
        retry: Any = None,
        on_retry: Callable[..., Any] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("FallbackSource needs at least one source; got none")
        if names is not None and len(names) != len(sources):
            raise ValueError(f"names {list(names)!r} must name each of the {len(sources)} sources")
        members = list(sources)
        if retry is not None:
            from provider.sources._retry import RetryingSource

            members = [
                m if isinstance(m, RetryingSource) else RetryingSource(m, retry, on_retry=on_retry) for m in members
            ]
        self.sources = members
        self.names = list(names) if names is not None else [_name(s) for s in sources]
        self.name = self.names[0]

    async def fetch_served(self, series: Any, start: Any, end: Any) -> tuple[pd.DataFrame, str, list[str]]:
        """The bars of ``[start, end)``, the member that served them, and the members that failed before it."""
        failed: list[str] = []
        last: BaseException | None = None
        for name, source in zip(self.names, self.sources, strict=True):
            try:
                frame: pd.DataFrame = await source.fetch(series, start, end)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a member's permanent failure moves the window to the next member
                last = exc
                failed.append(f"{name}: {type(exc).__name__}: {exc}"[:300])
                _log.warning("source.fallback", source=name, series=str(series), start=start, end=end, error=failed[-1])
                continue
            return frame, name, failed
        if last is None:  # unreachable: __init__ refuses an empty chain
            raise RuntimeError("FallbackSource has no sources")
        raise last

    async def fetch(self, series: Any, start: Any, end: Any) -> pd.DataFrame:
        """The bars of ``[start, end)`` from the first member that serves them."""
        frame, _, _ = await self.fetch_served(series, start, end)
        return frame

    async def aclose(self) -> None:
        """Close every member."""
        for source in self.sources:
            closer = getattr(source, "aclose", None)
            if closer is not None:
                await closer()
