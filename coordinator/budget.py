"""The leader's shared exchange budget service: long-polling heartbeats over the pure board (``_budget.py``).

Rules:
1. Soft state on the leader only (``_budget.py`` rule 1): the handler first makes sure this node leads (a follower
   forwards the heartbeat like a write), and a board belongs to one leader term: a new term starts a new board,
   whose first ``coordinator.budget_ttl_ms`` grants no increase. Nothing goes through Raft; a ban survives a
   failover because every worker re-reports its own gate's block in its next heartbeat.
2. A heartbeat is answered at once when it brings the worker news (another grant, a longer block); otherwise it
   waits up to its ``wait_ms`` for the source's version to change, then answers with the board as it is then,
   without registering the worker again if it left meanwhile (``_budget.py`` rule 9).
   So a ban reported by one worker reaches every parked worker of the source within one round trip.
3. Time is the node's clock (``monotonic_s``), so unit tests drive expiry with ``ManualClock``.
4. Metrics (the detailed and the public view): ``backfill_budget_workers{source}``,
   ``backfill_budget_share_per_minute{source,quantity}`` (the fair target per worker) and
   ``backfill_budget_blocks_total{source,reason}`` (blocks propagated to the source's workers).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from coordinator._budget import BudgetBoard, Heartbeat, Share
from coordinator.seams import Clock
from provider.core import BudgetHeartbeatRequest

__all__ = ["BudgetService", "share_body"]

#: Sources and workers per source one board keeps (``_budget.py`` rule 8).
MAX_SOURCES = 64
MAX_WORKERS_PER_SOURCE = 1024


def _limit(value: int) -> float | None:
    return float(value) if value > 0 else None


def share_body(share: Share, ttl_ms: int) -> dict[str, Any]:
    """The JSON answer of ``POST /v1/budget/heartbeat``."""
    return {
        "source": share.source,
        "workers": share.workers,
        "requests_per_minute": share.grant[0],
        "weight_per_minute": share.grant[1],
        "target_requests_per_minute": share.target[0],
        "target_weight_per_minute": share.target[1],
        "blocked_ms": share.blocked_ms,
        "blocked_reason": share.blocked_reason,
        "version": share.version,
        "ttl_ms": ttl_ms,
    }


class _Collector(Collector):
    def __init__(self, service: BudgetService) -> None:
        self._service = service

    def collect(self) -> Iterator[Metric]:
        board = self._service.board
        figures = board.figures() if board is not None else {}
        workers = GaugeMetricFamily(
            "backfill_budget_workers", "Live workers per shared source budget", labels=["source"]
        )
        share = GaugeMetricFamily(
            "backfill_budget_share_per_minute",
            "Fair share of a source's limit per live worker (leader only)",
            labels=["source", "quantity"],
        )
        for source, (n, target) in sorted(figures.items()):
            workers.add_metric([source], n)
            for quantity, amount in zip(("requests", "weight"), target, strict=True):
                if amount is not None:
                    share.add_metric([source, quantity], amount)
        blocks = CounterMetricFamily(
            "backfill_budget_blocks",
            "Blocks (bans, cooldowns) reported by one worker and propagated to every worker of the source",
            labels=["source", "reason"],
        )
        for (source, reason), count in sorted(self._service.blocks.items()):
            blocks.add_metric([source, reason], count)
        yield workers
        yield share
        yield blocks


class BudgetService:
    """One node's budget boards, one per leader term (rule 1)."""

    def __init__(self, clock: Clock, ttl_ms: int) -> None:
        self._clock = clock
        self.ttl_ms = ttl_ms
        self.board: BudgetBoard | None = None
        self._term: int | None = None
        self._changed: dict[str, asyncio.Event] = {}
        #: Blocks propagated, over every board of this node (a counter must not go back at a new term).
        self.blocks: dict[tuple[str, str], int] = {}

    def collector(self) -> Collector:
        """The metrics of rule 4."""
        return _Collector(self)

    def _now_ms(self) -> int:
        return int(self._clock.monotonic_s() * 1000)

    def _board(self, term: int) -> BudgetBoard:
        if self.board is None or self._term != term:
            self.board = BudgetBoard(
                now_ms=self._now_ms(), ttl_ms=self.ttl_ms, max_sources=MAX_SOURCES, max_workers=MAX_WORKERS_PER_SOURCE
            )
            self._term = term
            for event in self._changed.values():
                event.set()
            self._changed = {}
        return self.board

    def _beat(self, board: BudgetBoard, beat: Heartbeat) -> Share | str:
        before = board.version(beat.source)
        seen = dict(board.blocks)
        share = board.heartbeat(beat, self._now_ms())
        for key, count in board.blocks.items():
            self.blocks[key] = self.blocks.get(key, 0) + count - seen.get(key, 0)
        if board.version(beat.source) != before:
            self._notify(beat.source)
        return share

    def _notify(self, source: str) -> None:
        event = self._changed.pop(source, None)
        if event is not None:
            event.set()

    def expire(self, term: int) -> None:
        """Drop workers whose heartbeats stopped and wake the workers of the sources that changed."""
        for source in self._board(term).expire(self._now_ms()):
            self._notify(source)

    async def heartbeat(self, request: BudgetHeartbeatRequest, term: int) -> Share | str:
        """Rule 2: register or refresh the worker; answer at once with news, else after a change or ``wait_ms``."""
        beat = Heartbeat(
            source=request.source,
            worker_id=request.worker_id,
            limits=(_limit(request.requests_per_minute), _limit(request.weight_per_minute)),
            using=(request.using_requests_per_minute, request.using_weight_per_minute),
            blocked_ms=request.blocked_ms,
            blocked_reason=request.blocked_reason,
            leave=request.leave,
        )
        board = self._board(term)
        share = self._beat(board, beat)
        if isinstance(share, str) or share.news or request.wait_ms <= 0 or request.leave:
            return share
        event = self._changed.setdefault(request.source, asyncio.Event())
        woken = await self._clock.wait(event, request.wait_ms / 1000)
        if not woken:
            self.expire(term)
        board = self._board(term)
        # its block is noted already; a worker that left while this poll was parked is not added back (rule 9)
        return self._beat(board, dataclasses.replace(beat, blocked_ms=0, register=False))
