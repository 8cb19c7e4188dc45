"""Wiring of the shared exchange budget into ``worker run``: one agent for the primary ``--source``.

Rules:
1. On only when ``worker.shared_requests_per_minute`` or ``worker.shared_weight_per_minute`` is set. The budget key
   is the ``--source`` spec as given (every worker of one exchange account must name it the same way); fallback
   sources keep their per-process budgets.
2. The agent talks to the coordinator through a client of its own with a short retry deadline (the grant's ttl):
   a heartbeat that cannot get through must not outlive the share it renews.
3. ``worker_budget_share_per_minute{source,quantity}`` shows what the process applies, and
   ``worker_budget_fallback{source}`` is 1 while it runs on the floor (docs/worker.md).
4. A stopping worker leaves the budget once its windows are past their fetches, not after its writes drained
   (the windows that sent nothing are released at once: ``worker/daemon.py`` rule 4).
5. Every change of what the process applies is also told to ``on_change`` (the worker's
   :meth:`~worker.daemon.Worker.budget_changed`: a grown share lets it claim more at once).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from provider.core import AppConfig
from worker.budget import BudgetAgent
from worker.metrics import WorkerMetrics

__all__ = ["SharedBudgets"]

#: The client's retry deadline and per-call timeout floor, in seconds (rule 2).
_RETRY_DEADLINE_S = 2.0


def _publish(metrics: WorkerMetrics, agent: BudgetAgent) -> None:
    for quantity, amount in zip(("requests", "weight"), agent.using, strict=True):
        metrics.budget_share.labels(source=agent.source, quantity=quantity).set(-1 if amount is None else amount)
    metrics.budget_fallback.labels(source=agent.source).set(1 if agent.mode == "floor" else 0)


def _changed(metrics: WorkerMetrics, agent: BudgetAgent, on_change: Callable[[], Any] | None) -> None:
    _publish(metrics, agent)
    if on_change is not None:
        on_change()


@dataclass
class SharedBudgets:
    """The running agents of one worker process (none when the budget is not shared)."""

    agents: list[BudgetAgent] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    clients: list[Any] = field(default_factory=list)
    left: bool = False

    @classmethod
    def start(
        cls,
        opts: dict[str, Any],
        config: AppConfig,
        worker_id: str,
        limits: dict[str, Any],
        metrics: WorkerMetrics,
        token: str | None,
        on_change: Callable[[], Any] | None = None,
    ) -> SharedBudgets:
        """Start the agent of rule 1, or nothing."""
        from provider.client import CoordinatorClient

        cfg = config.worker
        shared = (cfg.shared_requests_per_minute, cfg.shared_weight_per_minute)
        if shared == (0, 0):
            return cls()
        client = CoordinatorClient(
            opts["coordinator_urls"],
            token=token,
            client_id=f"{worker_id}-budget",
            timeout_s=_RETRY_DEADLINE_S,
            retry_deadline_s=_RETRY_DEADLINE_S,
        )
        spec = opts["source"]
        agent = BudgetAgent(
            client,
            worker_id=worker_id,
            source=spec,
            limits=limits[spec],
            shared=shared,
            floor=(cfg.requests_per_minute, cfg.weight_per_minute),
            wait_ms=cfg.budget_wait_ms,
            on_change=lambda a: _changed(metrics, a, on_change),
        )
        task = asyncio.create_task(agent.run(), name=f"budget-{spec}")
        return cls([agent], [task], [client])

    async def leave_after(self, done: Awaitable[None]) -> None:
        """Leave as soon as ``done`` (the worker's :meth:`~worker.daemon.Worker.source_done`): a stopping worker
        hands its share back before its last writes drain, so the others use it at once."""
        await done
        await self.leave()

    async def leave(self) -> None:
        """Stop the agents, free their shares, close their clients (once)."""
        if self.left:
            return
        self.left = True
        for agent in self.agents:
            agent.stop()
        for task in self.tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for agent in self.agents:
            await agent.leave()
        for client in self.clients:
            with contextlib.suppress(Exception):
                await client.aclose()
