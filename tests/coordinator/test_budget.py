"""The shared exchange budget board (``coordinator/_budget.py``): shares on join, leave and missed heartbeats, the
new-leader grace, ban propagation, caps, and the invariant that what workers may be using never sums above the
source's limit, transitions included. Time is an argument: no clock, no sleeping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from coordinator._budget import BudgetBoard, Heartbeat, Quantities, Share

SRC = "binance:http://127.0.0.1:9"
TTL = 3_000
LIMIT = 1_200.0
T0 = 100_000


def fresh(now: int = T0, **kwargs: int) -> BudgetBoard:
    """A board past its new-leader grace (started one TTL before ``now``)."""
    return BudgetBoard(now_ms=now - TTL, ttl_ms=TTL, **kwargs)


def beat(
    board: BudgetBoard,
    worker: str,
    now: int,
    using: Quantities = (0.0, None),
    *,
    limits: Quantities = (LIMIT, None),
    **kwargs: object,
) -> Share:
    share = board.heartbeat(Heartbeat(SRC, worker, limits, using, **kwargs), now)  # type: ignore[arg-type]
    assert isinstance(share, Share), share
    return share


def settle(board: BudgetBoard, worker: str, now: int, using: Quantities = (0.0, None)) -> Share:
    """Heartbeat until the worker's grant stops changing (a worker applies each answer, then reports it)."""
    share = beat(board, worker, now, using)
    for _ in range(4):
        if share.grant == using:
            return share
        using = share.grant
        share = beat(board, worker, now, using)
    return share


def test_a_lone_worker_gets_the_whole_limit() -> None:
    """One live worker's share is the source's limit; an unshared quantity stays unlimited (None)."""
    board = fresh()
    share = beat(board, "a", T0)
    assert share.grant == (LIMIT, None)
    assert share.workers == 1 and share.news


def test_a_joiner_gets_its_share_only_after_the_others_confirm_they_shrank() -> None:
    """Join: the newcomer gets nothing while the old worker may still use everything; it is told to halve, and once
    it reports the half, the newcomer gets the other half. At no point do the grants in use exceed the limit."""
    board = fresh()
    a = settle(board, "a", T0)
    assert a.grant == (LIMIT, None)
    b = beat(board, "b", T0 + 1)
    assert b.grant == (0.0, None)  # a still holds everything
    a = beat(board, "a", T0 + 2, (LIMIT, None))
    assert a.grant == (LIMIT / 2, None) and a.news
    b = beat(board, "b", T0 + 3, b.grant)
    assert b.grant == (0.0, None)  # a has not confirmed yet
    beat(board, "a", T0 + 4, a.grant)  # a now applies the half
    b = beat(board, "b", T0 + 5, b.grant)
    assert b.grant == (LIMIT / 2, None)


def test_a_leaving_worker_frees_its_share_at_once() -> None:
    """Leave: the remaining worker may take the whole limit at its next heartbeat."""
    board = fresh()
    settle(board, "a", T0)
    settle(board, "b", T0)
    settle(board, "a", T0)
    assert beat(board, "b", T0, (LIMIT / 2, None)).grant == (LIMIT / 2, None)
    left = beat(board, "a", T0 + 10, (LIMIT / 2, None), leave=True)
    assert left.workers == 1
    assert beat(board, "b", T0 + 11, (LIMIT / 2, None)).grant == (LIMIT, None)


def test_a_parked_poll_reread_after_its_worker_left_does_not_bring_it_back() -> None:
    """A worker's long poll parks, the worker leaves (cancelling the poll client-side); when the leader re-reads the
    parked poll it must not re-register the worker: the one left gets the whole limit at once, not after the ttl."""
    board = fresh()
    settle(board, "a", T0)
    settle(board, "b", T0)
    settle(board, "a", T0)
    beat(board, "a", T0 + 10, (LIMIT / 2, None), leave=True)
    ghost = beat(board, "a", T0 + 11, (LIMIT / 2, None), register=False)
    assert ghost.grant == (0.0, None) and ghost.workers == 1
    assert beat(board, "b", T0 + 12, (LIMIT / 2, None)).grant == (LIMIT, None)
    # a member's own re-read still refreshes it
    assert beat(board, "b", T0 + 13, (LIMIT, None), register=False).grant == (LIMIT, None)


def test_a_missed_heartbeat_frees_the_share_after_the_ttl_and_not_before() -> None:
    """Crash: a worker silent for less than the TTL keeps its share; at the TTL it is dropped and its share freed."""
    board = fresh()
    settle(board, "a", T0)
    settle(board, "b", T0)
    settle(board, "a", T0)
    settle(board, "b", T0)
    assert beat(board, "b", T0 + TTL - 1, (LIMIT / 2, None)).grant == (LIMIT / 2, None)
    share = beat(board, "b", T0 + TTL, (LIMIT / 2, None))
    assert share.workers == 1 and share.grant == (LIMIT, None)
    assert board.expire(T0 + TTL) == []  # already dropped


def test_a_new_board_grants_no_increase_during_its_grace() -> None:
    """New leader: for one TTL a worker keeps what it reports using, never more, and a joiner gets nothing (old
    grants may still be in use); after the grace the fair shares apply."""
    board = BudgetBoard(now_ms=T0, ttl_ms=TTL)
    assert beat(board, "a", T0 + 1, (LIMIT / 2, None)).grant == (LIMIT / 2, None)
    assert beat(board, "c", T0 + 2, (0.0, None)).grant == (0.0, None)
    assert beat(board, "a", T0 + TTL, (LIMIT / 2, None)).grant == (LIMIT / 2, None)
    assert beat(board, "c", T0 + TTL + 1, (0.0, None)).grant == (LIMIT / 2, None)


def test_a_ban_reported_by_one_worker_is_news_for_every_other() -> None:
    """Ban: worker a reports a 418 with 5 s left; b's next answer carries the block (as news, so a parked poll is
    answered), the version changed, and blocks only extend."""
    board = fresh()
    settle(board, "a", T0)
    b = settle(board, "b", T0)
    version = board.version(SRC)
    beat(board, "a", T0 + 10, blocked_ms=5_000, blocked_reason="banned")
    assert board.version(SRC) > version
    b = beat(board, "b", T0 + 20, b.grant)
    assert b.blocked_ms == 4_990 and b.blocked_reason == "banned" and b.news
    beat(board, "a", T0 + 30, blocked_ms=100, blocked_reason="rate_limited")  # shorter: ignored
    b = beat(board, "b", T0 + 40, b.grant, blocked_ms=4_970, blocked_reason="banned")
    assert b.blocked_reason == "banned" and not b.news  # b knows it already
    assert board.blocks == {(SRC, "banned"): 1}


def test_the_bound_is_the_smallest_declared_limit() -> None:
    """Workers that disagree on the source's limit share the smallest one; a quantity no one limits stays None."""
    board = fresh()
    settle(board, "a", T0)
    share = board.heartbeat(Heartbeat(SRC, "b", (600.0, 3_000.0), (0.0, 0.0)), T0)
    assert isinstance(share, Share)
    assert share.target == (300.0, 1_500.0)


@pytest.mark.parametrize(
    ("kwargs", "second"),
    [
        ({"max_sources": 1}, Heartbeat("other", "x", (LIMIT, None))),
        ({"max_workers": 1}, Heartbeat(SRC, "y", (1.0, None))),
    ],
)
def test_caps_refuse_and_change_nothing(kwargs: dict[str, int], second: Heartbeat) -> None:
    """Beyond the caps a heartbeat gets an error naming the cap, and the board is unchanged."""
    board = fresh(**kwargs)
    settle(board, "a", T0)
    version = board.version(SRC)
    refused = board.heartbeat(second, T0 + 1)
    assert isinstance(refused, str) and "would exceed" in refused
    assert board.version(SRC) == version and board.sources() == [SRC]


# -- the invariant -------------------------------------------------------------------------------------------------

_OPS = st.lists(
    st.tuples(st.sampled_from(["beat", "beat", "beat", "leave", "crash"]), st.integers(0, 7), st.integers(0, 1_500)),
    min_size=1,
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(_OPS)
def test_grants_in_use_never_sum_above_the_limit(ops: list[tuple[str, int, int]]) -> None:
    """Any sequence of joins, heartbeats, leaves and crashes (silent workers keep using their grant until their own
    copy lapses, TTL after they sent the heartbeat): what the workers may be using never sums above the limit."""
    board = BudgetBoard(now_ms=0, ttl_ms=TTL)
    now = 0
    grants: dict[str, tuple[float, int]] = {}  # worker -> (grant in use, ms its copy lapses)
    crashed: set[str] = set()
    for op, index, dt in ops:
        now += dt
        worker = f"w{index}"
        using = grants.get(worker, (0.0, 0))
        in_use = using[0] if using[1] > now else 0.0
        if op == "crash":
            crashed.add(worker)
        elif op == "leave" and worker not in crashed:
            board.heartbeat(Heartbeat(SRC, worker, (LIMIT, None), (in_use, None), leave=True), now)
            grants.pop(worker, None)
        elif worker not in crashed:
            share = board.heartbeat(Heartbeat(SRC, worker, (LIMIT, None), (in_use, None)), now)
            assert isinstance(share, Share)
            grants[worker] = (share.grant[0] or 0.0, now + TTL)
        total = sum(g for g, lapse in grants.values() if lapse > now)
        assert total <= LIMIT + 1e-6, (total, grants)


async def test_a_new_leader_term_rebuilds_the_board_from_heartbeats() -> None:
    """Failover: the next term's board starts empty; a worker re-registering with the share it uses and the ban its
    gate still holds keeps that share (no increase during the grace) and the ban is known again for every worker."""
    from coordinator._memory import ManualClock
    from coordinator.budget import BudgetService
    from provider.core import BudgetHeartbeatRequest

    clock = ManualClock()
    service = BudgetService(clock, TTL)

    def request(worker: str, using: float, **extra: object) -> BudgetHeartbeatRequest:
        body = {"worker_id": worker, "source": SRC, "requests_per_minute": 1200, "using_requests_per_minute": using}
        return BudgetHeartbeatRequest.from_dict({**body, **extra})

    first = await service.heartbeat(request("a", 600.0, blocked_ms=20_000, blocked_reason="banned"), term=1)
    assert isinstance(first, Share) and first.blocked_ms == 20_000
    again = await service.heartbeat(request("a", 600.0, blocked_ms=19_000, blocked_reason="banned"), term=2)
    assert isinstance(again, Share)
    assert again.grant == (600.0, None)  # kept, not raised to 1200 during the new board's grace
    other = await service.heartbeat(request("b", 0.0), term=2)
    assert isinstance(other, Share)
    assert other.grant == (0.0, None) and other.blocked_reason == "banned" and other.blocked_ms == 19_000
    assert service.blocks == {(SRC, "banned"): 2}
