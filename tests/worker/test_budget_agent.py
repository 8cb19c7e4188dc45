"""The worker's side of the shared exchange budget (``worker/budget.py``) against a scripted coordinator: nothing is
admitted before the first share, the share retunes the budget, the per-process floor takes over when the
coordinator is unreachable or a share lapses, a local ban is reported at once and a remote one is never echoed.
The clock is injected; nothing waits on real time but one loop turn."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from provider.errors import CoordinatorUnavailableError
from provider.sources import SourceLimits
from worker.budget import BudgetAgent

pytestmark = pytest.mark.timeout(10)

SRC = "binance:http://127.0.0.1:9"
FLOOR = (150, 0)
SHARED = (1_200, 0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Api:
    """Answers heartbeats from a script (a dict answer, or an exception to raise) and records every body."""

    def __init__(self, *answers: Any) -> None:
        self.answers = list(answers)
        self.bodies: list[dict[str, Any]] = []

    async def budget_heartbeat(self, body: dict[str, Any], *, wait_ms: int = 0) -> dict[str, Any]:
        self.bodies.append({**body, "wait_ms": wait_ms})
        answer = self.answers.pop(0) if self.answers else share(600.0)
        if isinstance(answer, Exception):
            raise answer
        return dict(answer)


def share(rpm: float, *, blocked_ms: int = 0, reason: str = "", workers: int = 2) -> dict[str, Any]:
    return {
        "source": SRC,
        "workers": workers,
        "requests_per_minute": rpm,
        "weight_per_minute": None,
        "blocked_ms": blocked_ms,
        "blocked_reason": reason,
        "version": 1,
        "ttl_ms": 3_000,
    }


def agent(api: Api, clock: Clock, limits: SourceLimits | None = None) -> BudgetAgent:
    limits = limits or SourceLimits.create(requests_per_minute=FLOOR[0], clock=clock)
    return BudgetAgent(api, worker_id="w1", source=SRC, limits=limits, shared=SHARED, floor=FLOOR, clock=clock)


def unreachable() -> CoordinatorUnavailableError:
    return CoordinatorUnavailableError("no coordinator answered", status=503, code="unavailable")


async def test_nothing_is_admitted_before_the_first_share_then_the_share_applies() -> None:
    """A joining worker starts paused (requests 0: it takes its share only as the others shrink), reports using 0,
    and the first answer retunes its budget to the grant."""
    clock = Clock()
    a = agent(Api(share(600.0)), clock)
    assert a.mode == "starting" and a.limits.budget.requests_per_minute == 0
    admit = asyncio.ensure_future(a.limits.budget.acquire())
    await asyncio.sleep(0.01)
    assert not admit.done()
    assert await a.beat(1_000)
    assert a.mode == "shared" and a.using == (600.0, None)
    assert a._api.bodies[0]["using_requests_per_minute"] == 0.0  # type: ignore[attr-defined]
    admit.cancel()


async def test_an_unreachable_coordinator_at_start_means_the_floor() -> None:
    """No coordinator at the first heartbeat: the per-process budget (worker.requests_per_minute) applies."""
    clock = Clock()
    a = agent(Api(unreachable()), clock)
    assert not await a.beat(1_000)
    assert a.mode == "floor" and a.using == (150.0, None)
    assert a.limits.budget.requests_per_minute == 150.0


async def test_a_share_lapses_to_the_floor_ttl_after_its_heartbeat_was_sent() -> None:
    """A granted share holds while the coordinator is unreachable for less than the ttl (from the heartbeat's send
    time), and falls back to the floor at the ttl; the next answer brings the share back."""
    clock = Clock()
    a = agent(Api(share(600.0), unreachable(), unreachable(), share(400.0)), clock)
    assert await a.beat(1_000)
    clock.now += 2.9
    assert not await a.beat(1_000)
    assert a.mode == "shared" and a.using == (600.0, None)
    clock.now += 0.1
    a.check_lapse()
    assert a.mode == "floor" and a.using == (150.0, None)
    assert not await a.beat(1_000)
    assert a.mode == "floor"
    assert await a.beat(1_000)
    assert a.mode == "shared" and a.using == (400.0, None)


async def test_a_local_ban_is_reported_at_once_and_a_remote_one_is_not_echoed() -> None:
    """A 418 closing this process's gate sends a heartbeat without waiting, carrying the block; a block the
    coordinator reports (another worker's ban) closes the gate without any report."""
    clock = Clock()
    api = Api(share(600.0), share(600.0, blocked_ms=5_000, reason="banned"))
    a = agent(api, clock)
    assert await a.beat(1_000)
    a.limits.gate.block(5.0, "banned")
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    report = api.bodies[1]
    assert report["wait_ms"] == 0 and report["blocked_ms"] == 5_000 and report["blocked_reason"] == "banned"

    other = agent(Api(share(600.0, blocked_ms=7_000, reason="banned")), clock)
    assert await other.beat(1_000)
    assert other.limits.gate.remaining_s() == pytest.approx(7.0) and other.limits.gate.reason == "banned"
    await asyncio.sleep(0)
    assert len(other._api.bodies) == 1  # type: ignore[attr-defined]


async def test_leave_frees_the_share_and_admits_nothing_after() -> None:
    """A graceful stop sends leave=true and pauses the budget (the process makes no more requests)."""
    clock = Clock()
    api = Api(share(600.0), share(0.0))
    a = agent(api, clock)
    assert await a.beat(1_000)
    await a.leave()
    assert api.bodies[-1]["leave"] is True
    assert a.limits.budget.requests_per_minute == 0 and a.mode == "left"
