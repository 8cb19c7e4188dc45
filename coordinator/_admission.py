"""Leader-side admission of new jobs: a submission rate per client, and load shedding while Raft is backed up.

Rules:
1. Per client (the token's name; ``anonymous`` without tokens) a token bucket of
   ``coordinator.max_submits_per_s_per_client`` submissions per second holding two seconds' worth; an empty
   bucket is a 429 ``capacity`` whose Retry-After is the time until the next token. 0 turns the limit off.
2. While more than ``coordinator.shed_backlog_commands`` commands wait to be replicated, new jobs are refused
   (429, Retry-After 1 s) so that the apply loop keeps up with heartbeats; claims, renewals and completions, which
   drain work, are never shed.
3. Only the leader admits (a follower forwards the request, and the leader decides), so limits are not counted
   twice. The buckets are the leader's own memory: a new leader starts them full, at most one burst more.
4. The live-jobs and outstanding-windows limits are replicated state instead (``table.py`` rule 11).
5. Buckets of clients idle for a minute are dropped, so memory is bounded by the clients of the last minute.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from coordinator.errors import UnavailableError

__all__ = ["Admission"]

_BURST_S = 2.0
_IDLE_S = 60.0


class Admission:
    """Rules 1, 2 and 5; ``clock`` is injectable for tests."""

    def __init__(self, rate_per_s: float, shed_backlog: int, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate_per_s
        self._capacity = max(1.0, rate_per_s * _BURST_S)
        self._shed_backlog = shed_backlog
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._swept_at = clock()

    def admit_job(self, client: str, backlog: int) -> None:
        """Take a submission token for ``client`` or raise ``UnavailableError`` (``capacity``, HTTP 429)."""
        if backlog > self._shed_backlog:
            raise UnavailableError(
                f"the leader is busy: {backlog} commands wait for replication (coordinator.shed_backlog_commands = "
                f"{self._shed_backlog}); retry the submission later, running work is not affected",
                code="capacity",
                retry_after_s=1,
            )
        if self._rate <= 0:
            return
        now = self._clock()
        self._sweep(now)
        tokens, at = self._buckets.get(client, (self._capacity, now))
        tokens = min(self._capacity, tokens + (now - at) * self._rate)
        if tokens < 1.0:
            self._buckets[client] = (tokens, now)
            raise UnavailableError(
                f"{client} submits jobs faster than coordinator.max_submits_per_s_per_client = {self._rate:g}/s; "
                "slow down, or submit one job for a larger range",
                code="capacity",
                retry_after_s=max(1, math.ceil((1.0 - tokens) / self._rate)),
            )
        self._buckets[client] = (tokens - 1.0, now)

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < _IDLE_S:
            return
        self._swept_at = now
        self._buckets = {c: v for c, v in self._buckets.items() if now - v[1] < _IDLE_S}
