"""RateBudget and BanGate with an injected clock: nothing here waits on real time."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from provider.core import WorkerConfig
from provider.sources import BanGate, BannedError, RateBudget, RateLimitedError, SourceLimits


async def test_requests_budget_allows_a_burst_then_paces_at_the_rate(clock: Any) -> None:
    """60 requests/min: the first 6 (10% burst) pass at once, each later one waits exactly 1 s."""
    budget = RateBudget(requests_per_minute=60, burst_ratio=0.1, clock=clock, sleep=clock.sleep)
    waits = [await budget.acquire() for _ in range(10)]
    assert waits == [0.0] * 6 + [pytest.approx(1.0)] * 4
    assert clock.now_s == pytest.approx(1_004.0)
    assert budget.admitted == 10 and budget.waited_s == pytest.approx(4.0)


async def test_weight_budget_charges_the_request_weight(clock: Any) -> None:
    """600 weight/min (10/s, burst 60): two requests of weight 50 make the second wait 4 s."""
    budget = RateBudget(weight_per_minute=600, burst_ratio=0.1, clock=clock, sleep=clock.sleep)
    assert await budget.acquire(50) == 0.0
    assert await budget.acquire(50) == pytest.approx(4.0)


async def test_idle_time_refills_only_up_to_the_burst(clock: Any) -> None:
    """After a long idle period the bucket holds its burst capacity, not the whole idle time's worth."""
    budget = RateBudget(requests_per_minute=60, burst_ratio=0.1, clock=clock, sleep=clock.sleep)
    clock.now_s += 3_600
    waits = [await budget.acquire() for _ in range(7)]
    assert waits[:6] == [0.0] * 6 and waits[6] == pytest.approx(1.0)


async def test_weight_above_capacity_waits_for_a_full_bucket(clock: Any) -> None:
    """A request heavier than the burst capacity is admitted once the bucket is full, never deadlocked."""
    budget = RateBudget(weight_per_minute=60, burst_ratio=0.1, clock=clock, sleep=clock.sleep)  # capacity 6
    assert await budget.acquire(100) == 0.0
    assert await budget.acquire(100) == pytest.approx(6.0)


async def test_unlimited_budget_never_waits(clock: Any) -> None:
    """A budget of 0/0 admits everything immediately."""
    budget = RateBudget(clock=clock, sleep=clock.sleep)
    assert budget.unlimited
    assert [await budget.acquire(1_000) for _ in range(100)] == [0.0] * 100
    assert clock.sleeps == []


async def test_waiters_are_served_in_arrival_order(clock: Any) -> None:
    """Concurrent acquirers get their tokens first come, first served."""
    budget = RateBudget(requests_per_minute=6, clock=clock, sleep=clock.sleep)  # burst 1, then every 10 s
    order: list[int] = []

    async def take(i: int) -> None:
        await budget.acquire()
        order.append(i)

    await asyncio.gather(*(take(i) for i in range(5)))
    assert order == [0, 1, 2, 3, 4]
    assert clock.now_s == pytest.approx(1_040.0)


@settings(max_examples=50, deadline=None)
@given(
    weights=st.lists(st.integers(min_value=1, max_value=40), min_size=1, max_size=60),
    gaps_s=st.lists(st.floats(min_value=0, max_value=5), min_size=60, max_size=60),
)
def test_admitted_weight_never_exceeds_burst_plus_rate(weights: list[int], gaps_s: list[float]) -> None:
    """Over any run, weight admitted by time t is at most burst + rate * elapsed (the bucket invariant)."""
    now = [0.0]

    async def sleep(seconds: float) -> None:
        now[0] += seconds

    budget = RateBudget(weight_per_minute=600, burst_ratio=0.1, clock=lambda: now[0], sleep=sleep)  # 10/s, burst 60

    async def run() -> None:
        admitted = 0.0
        for weight, gap in zip(weights, gaps_s, strict=False):
            now[0] += gap
            await budget.acquire(weight)
            admitted += weight
            assert admitted <= 60 + 10 * now[0] + 1e-9

    asyncio.run(run())


async def test_default_burst_lets_n_workers_use_97_percent_of_a_minute_limit(clock: Any) -> None:
    """Four processes, each at 97% of its share of 1,200/min and starting with a full bucket, never put more
    than 1,200 requests into any 60 s: the default burst (2%) fits inside the 3% headroom."""
    budgets = [RateBudget.shared(1_200 * 0.97, 0, workers=4, clock=clock, sleep=clock.sleep) for _ in range(4)]
    stamps: list[float] = []

    async def hammer(budget: RateBudget) -> None:
        while clock.now_s < 1_000 + 180:
            await budget.acquire()
            stamps.append(clock.now_s)

    await asyncio.gather(*(hammer(b) for b in budgets))
    stamps.sort()
    busiest = max(sum(1 for t in stamps[i:] if t < start + 60) for i, start in enumerate(stamps))
    assert 1_100 < busiest <= 1_200


def test_shared_budget_splits_the_limit_between_workers() -> None:
    """Each of N workers gets limit / N; N must be a positive int."""
    budget = RateBudget.shared(1_200, 6_000, workers=4)
    assert (budget.requests_per_minute, budget.weight_per_minute) == (300, 1_500)
    with pytest.raises(ValueError, match="workers"):
        RateBudget.shared(1_200, 6_000, workers=0)
    with pytest.raises(ValueError, match="requests_per_minute"):
        RateBudget(requests_per_minute=-1)


def test_limits_from_worker_config_use_its_per_process_budget() -> None:
    """SourceLimits.from_worker_config takes requests_per_minute and weight_per_minute from WorkerConfig."""
    limits = SourceLimits.from_worker_config(WorkerConfig(requests_per_minute=600, weight_per_minute=3_000))
    assert (limits.budget.requests_per_minute, limits.budget.weight_per_minute) == (600, 3_000)


async def test_gate_blocks_extend_but_never_shorten(clock: Any) -> None:
    """A longer block extends the gate, a shorter one leaves it; wait sleeps exactly the remaining time."""
    gate = BanGate(clock=clock, sleep=clock.sleep)
    assert await gate.wait() == 0.0
    gate.block(10, "banned")
    gate.block(3, "rate_limited")
    assert gate.remaining_s() == 10 and gate.reason == "banned"
    gate.block(12, "rate_limited")
    assert gate.remaining_s() == 12
    assert await gate.wait() == pytest.approx(12.0)
    assert gate.remaining_s() == 0 and clock.sleeps == [12.0]


async def test_gate_wait_follows_a_ban_extended_while_waiting(clock: Any) -> None:
    """If a ban is extended during the wait, waiters keep waiting until the new end."""
    gate = BanGate(clock=clock)

    async def sleep(seconds: float) -> None:
        clock.sleeps.append(seconds)
        clock.now_s += seconds
        if len(clock.sleeps) == 1:
            gate.block(5, "banned")

    gate._sleep = sleep
    gate.block(2, "banned")
    assert await gate.wait() == pytest.approx(7.0)
    assert clock.sleeps == [2.0, 5.0]


@pytest.mark.parametrize(("reason", "error"), [("banned", BannedError), ("rate_limited", RateLimitedError)])
async def test_gate_refuses_to_wait_beyond_max_wait(
    clock: Any, reason: str, error: type[BannedError | RateLimitedError]
) -> None:
    """A block longer than max_wait_s raises at once (BannedError for bans) instead of sleeping."""
    gate = BanGate(clock=clock, sleep=clock.sleep, max_wait_s=60)
    gate.block(3_600, reason)
    with pytest.raises(error) as caught:
        await gate.wait(source="binance")
    found = caught.value
    assert isinstance(found, BannedError | RateLimitedError) and found.retry_after_s == pytest.approx(3_600)
    assert "binance" in str(found)
    assert clock.sleeps == []


async def test_admit_rechecks_the_gate_after_waiting_for_the_budget(clock: Any) -> None:
    """A ban that starts while a request waits for tokens still holds that request back."""
    limits = SourceLimits.create(requests_per_minute=6, clock=clock, sleep=clock.sleep)
    await limits.admit()
    original = clock.sleep

    async def sleep_then_ban(seconds: float) -> None:
        await original(seconds)
        if len(clock.sleeps) == 1:
            limits.gate.block(30, "banned")

    limits.budget._sleep = sleep_then_ban
    await limits.admit()
    assert clock.sleeps == [pytest.approx(10.0), pytest.approx(30.0)]


def test_exhausted_exchange_weight_closes_the_gate_until_the_next_minute(clock: Any) -> None:
    """When the reported used weight leaves no room for the next request, the gate closes to the minute's end."""
    limits = SourceLimits(BanGate(clock=clock, sleep=clock.sleep), RateBudget(), wall_clock=lambda: 1_800_000_045.5)
    assert not limits.note_used_weight(5_990, 6_000, next_weight=2)
    assert limits.gate.remaining_s() == 0
    assert limits.note_used_weight(5_999, 6_000, next_weight=2)
    assert limits.gate.remaining_s() == pytest.approx(14.5) and limits.gate.reason == "weight"


async def test_retune_pauses_grows_and_never_adds_a_burst(clock: Any) -> None:
    """A shared budget's retune (docs/worker.md): 0 admits nothing (a waiting request keeps re-checking in short
    steps), a larger share takes effect within one step, and a quantity that appears starts with an empty bucket."""
    budget = RateBudget(requests_per_minute=60, burst_ratio=0.1, clock=clock, sleep=clock.sleep)
    budget.retune(0, None)
    waiter = asyncio.ensure_future(budget.acquire())
    for _ in range(20):
        await asyncio.sleep(0)
    assert not waiter.done() and max(clock.sleeps) <= 0.05
    retuned_at = clock.now_s
    budget.retune(6_000, None)  # 100/s
    await asyncio.wait_for(waiter, 1)
    assert clock.now_s - retuned_at <= 0.05 + 0.01
    budget.retune(6_000, 600)
    assert await budget.acquire(5) == pytest.approx(0.5, abs=0.06)  # the new weight bucket started empty


async def test_a_local_block_notifies_and_a_learnt_one_does_not(clock: Any) -> None:
    """BanGate.on_block hears blocks set by this process (to report them), not those set with notify=False."""
    gate = BanGate(clock=clock, sleep=clock.sleep)
    heard: list[tuple[float, str]] = []
    gate.on_block = lambda seconds, reason: heard.append((seconds, reason))
    gate.block(5, "banned")
    gate.block(9, "banned", notify=False)
    gate.block(1, "rate_limited")  # shorter: not an extension
    assert heard == [(5.0, "banned")]
    assert gate.remaining_s() == pytest.approx(9.0)
