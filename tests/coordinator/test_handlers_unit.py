"""The HTTP layer in one process: the real aiohttp app of ``api.py`` over nodes on ``MemoryReplica`` and
``ManualClock`` (``coordinator/_memory.py``), served on loopback by aiohttp's test server. Forwarding, 421 hints,
read barriers, long polls and the leader wait were exercised only against real clusters before."""

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
from coordinator.forward import FORWARDED_HEADER
from coordinator.node import CoordinatorNode, NodeSettings
from provider.client import CoordinatorClient
from provider.core import AppConfig
from provider.errors import LeaseLostError

pytestmark = [
    pytest.mark.timeout(10),
    # aiohttp >= 3.14 warns once per process about the str key ``request["request_id"]`` of api.py; web.RequestKey
    # does not exist in aiohttp 3.9, which pyproject.toml still allows. Served in-process, the warning lands here.
    pytest.mark.filterwarnings("ignore::aiohttp.web_exceptions.NotAppKeyWarning"),
]

LEADER, FOLLOWER = "127.0.0.1:7001", "127.0.0.1:7002"
SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
Serve = Callable[[str, str | None], Awaitable[tuple[CoordinatorNode, TestClient[Any, Any]]]]


@pytest.fixture
async def serve(tmp_path: Path, clock: ManualClock) -> AsyncIterator[Serve]:
    """Start a node at Raft address ``raft`` that believes ``leader`` leads, and its HTTP app; all stopped after."""
    running: list[tuple[CoordinatorNode, TestClient[Any, Any]]] = []

    async def start(raft: str, leader: str | None) -> tuple[CoordinatorNode, TestClient[Any, Any]]:
        config = AppConfig()
        config = replace(config, coordinator=replace(config.coordinator, leader_wait_ms=1_000))
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


def job_body(windows: int = 1) -> dict[str, Any]:
    return {"series": SERIES, "start": 0, "end": windows * 900 * MIN}


def announce(node: CoordinatorNode, raft: str, client: TestClient[Any, Any]) -> None:
    """Put ``raft``'s HTTP address (``client``'s server) into ``node``'s replica, as its announcement would."""
    url = str(client.make_url("")).rstrip("/")
    MemoryReplica.of(node).apply("announce", node_id=raft, raft=raft, http=url)


async def test_a_job_is_created_claimed_and_completed_through_the_handlers(serve: Serve) -> None:
    """POST /v1/jobs, claim, complete on the leader: the job is done, and its linearizable read committed a
    barrier first and names the applied index it is at least as new as."""
    node, client = await serve(LEADER, LEADER)
    created = await client.post("/v1/jobs", json=job_body())
    assert created.status == 201
    job_id = (await created.json())["job"]["job_id"]
    claimed = await client.post("/v1/windows/claim", json={"worker_id": "w1"})
    lease = (await claimed.json())["leases"][0]
    done = await client.post(
        "/v1/windows/complete", json={"lease_id": lease["lease_id"], "token": lease["token"], "rows": 900}
    )
    assert done.status == 200
    barriers = MemoryReplica.of(node).applied.count("barrier")
    answer = await client.get(f"/v1/jobs/{job_id}")
    assert answer.status == 200
    assert (await answer.json())["job"]["state"] == "done"
    assert MemoryReplica.of(node).applied.count("barrier") == barriers + 1
    assert answer.headers["X-Consistency"] == "linearizable"
    assert int(answer.headers["X-Raft-Applied-Index"]) == MemoryReplica.of(node).last_applied


async def test_a_stale_read_commits_no_barrier(serve: Serve) -> None:
    """``?consistency=stale`` reads this replica as it is: nothing is submitted."""
    node, client = await serve(LEADER, LEADER)
    before = list(MemoryReplica.of(node).submitted)
    answer = await client.get("/v1/jobs?consistency=stale")
    assert answer.status == 200 and answer.headers["X-Consistency"] == "stale"
    assert MemoryReplica.of(node).submitted == before


async def test_a_follower_forwards_a_write_to_the_leader(serve: Serve) -> None:
    """A follower that knows the leader's HTTP address forwards a write there: the job is created in the leader's
    table, none in the follower's (the two fakes share no state), and the caller sees the leader's answer."""
    leader, leader_client = await serve(LEADER, LEADER)
    follower, client = await serve(FOLLOWER, LEADER)
    announce(follower, LEADER, leader_client)
    created = await client.post("/v1/jobs", json=job_body(), headers={"X-Client-Id": "c1", "X-Request-Id": "r1"})
    assert created.status == 201
    job_id = (await created.json())["job"]["job_id"]
    assert leader.read(lambda t: t.job(job_id)) is not None
    assert follower.read(lambda t: t.job(job_id)) is None
    assert "submit_job" not in MemoryReplica.of(follower).submitted


async def test_a_forwarded_request_that_finds_a_follower_gets_421_naming_the_leader(serve: Serve) -> None:
    """A request already forwarded once is never forwarded again: a follower answers 421 with the leader's URL."""
    _, leader_client = await serve(LEADER, LEADER)
    follower, client = await serve(FOLLOWER, LEADER)
    announce(follower, LEADER, leader_client)
    answer = await client.post("/v1/jobs", json=job_body(), headers={FORWARDED_HEADER: "n9"})
    assert answer.status == 421
    error = (await answer.json())["error"]
    assert error["code"] == "not_leader"
    assert error["leader"] == str(leader_client.make_url("")).rstrip("/")


async def test_without_a_leader_a_write_is_503_after_leader_wait_ms(serve: Serve, clock: ManualClock) -> None:
    """During an election without a winner, a write waits ``leader_wait_ms`` of the node's clock, then is 503
    ``no_leader`` with Retry-After."""
    _, client = await serve(LEADER, None)
    request = asyncio.ensure_future(client.post("/v1/jobs", json=job_body()))
    await clock.advance(0.9)
    assert not request.done()
    await clock.advance(0.2)
    answer = await asyncio.wait_for(request, 2)
    assert answer.status == 503
    assert (await answer.json())["error"]["code"] == "no_leader"
    assert answer.headers["Retry-After"] == "1"


async def test_a_long_poll_claim_is_answered_by_a_job_submitted_meanwhile(serve: Serve, clock: ManualClock) -> None:
    """A claim with ``wait_ms`` waits on the leader; a job submitted by another caller wakes it with a lease."""
    _, client = await serve(LEADER, LEADER)
    claim = asyncio.ensure_future(client.post("/v1/windows/claim", json={"worker_id": "w1", "wait_ms": 20_000}))
    await clock.advance(0.3)
    assert not claim.done()
    assert (await client.post("/v1/jobs", json=job_body())).status == 201
    answer = await asyncio.wait_for(claim, 2)
    assert [lease["series"] for lease in (await answer.json())["leases"]] == [SERIES]


async def test_health_follows_the_replica(serve: Serve) -> None:
    """/readyz is ok on a leader; /healthz is 503 ``disk_full`` while the node stands aside for its disk."""
    node, client = await serve(LEADER, LEADER)
    assert (await client.get("/readyz")).status == 200
    MemoryReplica.of(node).serving = False
    answer = await client.get("/healthz")
    assert answer.status == 503
    body = await answer.json()
    assert body["status"] == "disk_full" and body["role"] == "aside"


async def test_the_cluster_view_shows_the_replica(serve: Serve) -> None:
    """/v1/cluster reports role, term, indexes and each peer's connection as the replica sees them."""
    node, client = await serve(LEADER, LEADER)
    MemoryReplica.of(node).disconnected.add(FOLLOWER)
    body = await (await client.get("/v1/cluster")).json()
    assert body["role"] == "leader" and body["term"] == MemoryReplica.of(node).term
    assert body["last_applied"] == MemoryReplica.of(node).last_applied
    peers = {m["raft"]: m for m in body["members"]}
    assert peers[LEADER]["role"] == "leader" and peers[FOLLOWER]["connected"] is False


async def claim_one(client: TestClient[Any, Any], **body: Any) -> dict[str, Any]:
    answer = await client.post("/v1/windows/claim", json={"worker_id": "w1", **body})
    assert answer.status == 200, await answer.text()
    got: dict[str, Any] = await answer.json()
    return got


async def new_job(client: TestClient[Any, Any], windows: int) -> str:
    created = await client.post("/v1/jobs", json=job_body(windows))
    assert created.status == 201
    job_id: str = (await created.json())["job"]["job_id"]
    return job_id


def states(node: CoordinatorNode, job_id: str) -> dict[str, str]:
    """Window id -> state of the job's windows in the node's table."""
    return {w["window_id"]: w["state"] for w in node.read(lambda t: t.job_windows(job_id))}


def done_item(lease: dict[str, Any], rows: int = 900, token: int | None = None) -> dict[str, Any]:
    return {"lease_id": lease["lease_id"], "token": lease["token"] if token is None else token, "rows": rows}


async def test_a_claim_completes_the_leases_it_carries_then_claims(serve: Serve) -> None:
    """A claim carrying the previous lease completes it (answered as the complete route would) and grants the next
    window: one request where there were two. A claim without ``complete`` answers no ``completed``."""
    node, client = await serve(LEADER, LEADER)
    job_id = await new_job(client, 2)
    first = await claim_one(client)
    assert "completed" not in first
    lease = first["leases"][0]
    second = await claim_one(client, complete=[done_item(lease)])
    [completed] = second["completed"]
    assert (completed["window_id"], completed["state"], completed["rows"]) == (lease["window_id"], "done", 900)
    [granted] = second["leases"]
    assert states(node, job_id) == {lease["window_id"]: "done", granted["window_id"]: "leased"}


async def test_a_refused_completion_is_answered_in_its_item_and_the_claim_still_grants(serve: Serve) -> None:
    """A stale token (lease_lost) and an unknown lease (not_found) are answered per item, in order; the claim
    grants its window anyway, so no lease is lost with them, and the fenced window stays leased to its token."""
    node, client = await serve(LEADER, LEADER)
    job_id = await new_job(client, 2)
    lease = (await claim_one(client))["leases"][0]
    unknown = {"lease_id": "no-such-lease", "token": 1, "rows": 0}
    answer = await claim_one(client, complete=[done_item(lease, token=lease["token"] + 7), unknown])
    codes = [(item["lease_id"], item["error"]["code"]) for item in answer["completed"]]
    assert codes == [(lease["lease_id"], "lease_lost"), ("no-such-lease", "not_found")]
    [granted] = answer["leases"]
    assert states(node, job_id) == {lease["window_id"]: "leased", granted["window_id"]: "leased"}


async def test_a_claim_that_carries_completions_does_not_long_poll(serve: Serve) -> None:
    """With nothing left to claim, a claim with ``wait_ms`` and completions answers at once (the manual clock never
    moves), so the worker learns its windows are done without waiting for new work."""
    _, client = await serve(LEADER, LEADER)
    await new_job(client, 1)
    lease = (await claim_one(client))["leases"][0]
    answer = await asyncio.wait_for(claim_one(client, wait_ms=20_000, complete=[done_item(lease)]), 2)
    assert answer["leases"] == [] and answer["completed"][0]["state"] == "done"


async def test_a_retried_claim_with_completions_does_nothing_twice(serve: Serve) -> None:
    """The same request (same X-Client-Id and X-Request-Id) sent again answers as the first time: the completion
    is not re-applied and no second window is granted."""
    node, client = await serve(LEADER, LEADER)
    job_id = await new_job(client, 3)
    lease = (await claim_one(client))["leases"][0]
    ids = {"X-Client-Id": "c1", "X-Request-Id": "retry-1"}
    body = {"worker_id": "w1", "complete": [done_item(lease)]}
    first = await (await client.post("/v1/windows/claim", json=body, headers=ids)).json()
    again = await (await client.post("/v1/windows/claim", json=body, headers=ids)).json()
    assert again == first
    assert sorted(states(node, job_id).values()) == ["done", "leased", "pending"]


@pytest.mark.parametrize(
    ("complete", "field"),
    [
        ({"lease_id": "x"}, "complete"),
        ([{"lease_id": "x"}], "complete[0].token"),
        ([{"lease_id": "x", "token": 1, "rows": -1}], "complete[0].rows"),
        ([{"lease_id": "x", "token": 1, "extra": 1}], "complete[0].extra"),
        (["x"], "complete[0]"),
        ([{"lease_id": "x", "token": 1}] * 1001, "complete"),
    ],
)
async def test_a_bad_completion_list_is_a_400_naming_the_item(serve: Serve, complete: Any, field: str) -> None:
    """A malformed ``complete`` is refused as a whole before anything is applied, naming the item and field."""
    node, client = await serve(LEADER, LEADER)
    job_id = await new_job(client, 1)
    answer = await client.post("/v1/windows/claim", json={"worker_id": "w1", "complete": complete})
    assert answer.status == 400
    assert (await answer.json())["error"]["field"] == field
    assert list(states(node, job_id).values()) == ["pending"]


async def test_a_claim_with_completions_sent_to_a_follower_is_forwarded_whole(serve: Serve) -> None:
    """A follower forwards the claim with its completions: both apply in the leader's table, none in its own."""
    leader, leader_client = await serve(LEADER, LEADER)
    follower, client = await serve(FOLLOWER, LEADER)
    announce(follower, LEADER, leader_client)
    job_id = await new_job(leader_client, 2)
    lease = (await claim_one(leader_client))["leases"][0]
    answer = await claim_one(client, complete=[done_item(lease)])
    assert answer["completed"][0]["state"] == "done"
    assert sorted(states(leader, job_id).values()) == ["done", "leased"]
    assert "complete" not in MemoryReplica.of(follower).submitted


async def test_the_client_claims_completing_with_typed_outcomes(serve: Serve) -> None:
    """``CoordinatorClient.claim_completing``: per completion, the complete answer or the error ``complete`` would
    raise (LeaseLostError when fenced), and the leases of the claim; no completions sends no ``complete`` field."""
    _, server = await serve(LEADER, LEADER)
    await new_job(server, 3)
    async with CoordinatorClient(str(server.make_url("")).rstrip("/")) as client:
        [first] = await client.claim("w1")
        leases, outcomes = await client.claim_completing(
            "w1", [(first.lease_id, first.token, 900), (first.lease_id, first.token + 5, 0)], max_windows=2
        )
        assert len(leases) == 2 and first.window_id not in {lease.window_id for lease in leases}
        assert outcomes[0]["state"] == "done"
        assert isinstance(outcomes[1], LeaseLostError) and outcomes[1].status == 409
        more, none = await client.claim_completing("w1", [], max_windows=5)
        assert (more, none) == ([], [])
