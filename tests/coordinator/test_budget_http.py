"""``POST /v1/budget/heartbeat`` and ``GET /v1/budget`` through the real aiohttp app over in-process nodes
(``MemoryReplica``, ``ManualClock``): a parked long poll answered by another worker's ban, a crashed worker's share
freed when the clock passes the TTL, forwarding from a follower, 400s naming the field, and the metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from coordinator._memory import ManualClock, MemoryReplica
from coordinator.api import build_app
from coordinator.node import CoordinatorNode, NodeSettings
from provider.core import AppConfig

pytestmark = [
    pytest.mark.timeout(10),
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),  # as test_handlers_unit.py
]

LEADER, FOLLOWER = "127.0.0.1:7001", "127.0.0.1:7002"
SRC = "binance:http://127.0.0.1:9"
TTL_MS = 3_000
Serve = Callable[[str, str | None], Awaitable[tuple[CoordinatorNode, TestClient[Any, Any]]]]


@pytest.fixture
async def serve(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Serve]:
    """Start a node at ``raft`` that believes ``leader`` leads, and its HTTP app; all stopped after."""
    running: list[tuple[CoordinatorNode, TestClient[Any, Any]]] = []

    async def start(raft: str, leader: str | None) -> tuple[CoordinatorNode, TestClient[Any, Any]]:
        config = AppConfig()
        config = replace(config, coordinator=replace(config.coordinator, leader_wait_ms=1_000, budget_ttl_ms=TTL_MS))
        settings = NodeSettings(f"n{len(running) + 1}", raft, (LEADER, FOLLOWER), "127.0.0.1", 0, tmp_path)
        node = CoordinatorNode(
            settings, config, clock=clock, replica=MemoryReplica.factory(clock=clock, address=raft, leader=leader)
        )
        await node.start()
        client: TestClient[Any, Any] = TestClient(TestServer(build_app(node, None), host="127.0.0.1"))
        await client.start_server()
        running.append((node, client))
        return node, client

    yield start
    for node, client in reversed(running):
        await client.close()
        await node.stop()


def body(worker: str, using: float | None = 0.0, **extra: Any) -> dict[str, Any]:
    fields = {"worker_id": worker, "source": SRC, "requests_per_minute": 1200, "using_requests_per_minute": using}
    return {**fields, **extra}


async def heartbeat(client: TestClient[Any, Any], worker: str, using: float | None = 0.0, **extra: Any) -> Any:
    answer = await client.post("/v1/budget/heartbeat", json=body(worker, using, **extra))
    assert answer.status == 200, await answer.text()
    return await answer.json()


async def share_out(client: TestClient[Any, Any], *workers: str) -> dict[str, float]:
    """Heartbeat round-robin, each worker reporting the grant it got last, until no grant changes."""
    using: dict[str, float] = dict.fromkeys(workers, 0.0)
    for _ in range(6):
        changed = False
        for worker in workers:
            grant = (await heartbeat(client, worker, using[worker]))["requests_per_minute"]
            changed |= grant != using[worker]
            using[worker] = grant
        if not changed:
            break
    return using


async def past_grace(client: TestClient[Any, Any], clock: ManualClock) -> None:
    """Start the leader's board and let its new-leader grace pass."""
    await heartbeat(client, "probe", leave=True)
    await clock.advance(TTL_MS / 1000)


async def test_a_parked_heartbeat_is_answered_by_another_workers_ban(serve: Serve, clock: ManualClock) -> None:
    """Worker b long-polls with nothing new; worker a reports a 418: b's poll returns with the ban at once (the clock
    does not move), which is how a ban reaches every worker of the source within one round trip."""
    _, client = await serve(LEADER, LEADER)
    await past_grace(client, clock)
    assert await share_out(client, "a", "b") == {"a": 600.0, "b": 600.0}
    parked = asyncio.ensure_future(heartbeat(client, "b", 600.0, wait_ms=5_000))
    await asyncio.sleep(0.05)
    assert not parked.done()
    reported = await heartbeat(client, "a", 600.0, blocked_ms=30_000, blocked_reason="banned")
    assert reported["blocked_ms"] == 30_000
    answer = await asyncio.wait_for(parked, 2)
    assert answer["blocked_reason"] == "banned" and answer["blocked_ms"] == 30_000


async def test_a_crashed_workers_share_is_freed_when_its_ttl_passes(serve: Serve, clock: ManualClock) -> None:
    """Worker a stops heartbeating; b's long poll, woken when the clock passes its wait, finds a gone once a's TTL
    has passed, and b the whole limit; GET /v1/budget shows one worker."""
    _, client = await serve(LEADER, LEADER)
    await past_grace(client, clock)
    assert await share_out(client, "a", "b") == {"a": 600.0, "b": 600.0}
    await clock.advance(TTL_MS / 1000)
    share = await heartbeat(client, "b", 600.0)
    assert share["workers"] == 1 and share["requests_per_minute"] == 1200.0
    view = await (await client.get("/v1/budget")).json()
    assert [s["workers"] for s in view["sources"]] == [1]


async def test_a_follower_forwards_heartbeats_to_the_leaders_board(serve: Serve, clock: ManualClock) -> None:
    """A heartbeat sent to a follower lands on the leader's board (the follower keeps none)."""
    leader, leader_client = await serve(LEADER, LEADER)
    follower, client = await serve(FOLLOWER, LEADER)
    url = str(leader_client.make_url("")).rstrip("/")
    MemoryReplica.of(follower).apply("announce", node_id=LEADER, raft=LEADER, http=url)
    share = await heartbeat(client, "a")
    assert share["workers"] == 1
    assert leader.budget.board is not None and leader.budget.board.sources() == [SRC]
    assert follower.budget.board is None


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"blocked_reason": "angry"}, "blocked_reason"),
        ({"wait_ms": 60_000}, "wait_ms"),
        ({"using_requests_per_minute": -1}, "using_requests_per_minute"),
        ({"source": ""}, "source"),
        ({"leave": "yes"}, "leave"),
    ],
)
async def test_bad_input_is_a_400_naming_the_field(serve: Serve, change: dict[str, Any], field: str) -> None:
    """Each malformed field is refused with 400 and its name; nothing is registered."""
    node, client = await serve(LEADER, LEADER)
    answer = await client.post("/v1/budget/heartbeat", json={**body("a"), **change})
    assert answer.status == 400
    assert (await answer.json())["error"]["field"] == field
    assert node.budget.board is None or node.budget.board.sources() == []


async def test_metrics_show_workers_shares_and_propagated_bans(serve: Serve, clock: ManualClock) -> None:
    """The leader's /metrics: live workers and the fair share per source, and a ban counted once."""
    _, client = await serve(LEADER, LEADER)
    await past_grace(client, clock)
    await share_out(client, "a", "b")
    await heartbeat(client, "a", 600.0, blocked_ms=10_000, blocked_reason="banned")
    text = await (await client.get("/metrics")).text()
    assert f'backfill_budget_workers{{source="{SRC}"}} 2.0' in text
    assert f'backfill_budget_share_per_minute{{quantity="requests",source="{SRC}"}} 600.0' in text
    assert f'backfill_budget_blocks_total{{reason="banned",source="{SRC}"}} 1.0' in text
