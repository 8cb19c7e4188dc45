"""Forwarding keeps long polls apart (coordinator/forward.py rule 5), with a real follower app and a stand-in leader
in process: claims that wait hold only the long-poll pool, queue for it in order, and never delay or fail a
forwarded write."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from coordinator.forward import LONG_POLL_ROUTE, Forwarder
from coordinator.metrics import ClusterFigures, CoordinatorMetrics
from devkit.ports import free_port
from provider.core import CoordinatorConfig
from provider.core.obs import new_registry

HOST = "127.0.0.1"


@dataclass
class Pair:
    """A follower that forwards everything to a stand-in leader, which holds waiting claims until released."""

    follower: str
    metrics: CoordinatorMetrics
    release: asyncio.Event = field(default_factory=asyncio.Event)
    waits_seen: list[int] = field(default_factory=list)
    #: When the stand-in leader saw each claim (event loop time), parallel to ``waits_seen``.
    seen_at: list[float] = field(default_factory=list)
    holding: int = 0

    def left_of(self, index: int, wait_ms: int, sent_at: float) -> bool:
        """Whether claim ``index`` (``wait_ms``, sent at ``sent_at``) came with what was left of its wait: at most
        the wait, and at least the wait less the time between sending it and the leader seeing it."""
        spent_ms = (self.seen_at[index] - sent_at) * 1000
        return wait_ms - spent_ms - 1 <= self.waits_seen[index] <= wait_ms

    def gauge(self, state: str) -> float:
        value = self.metrics.registry.get_sample_value("coordinator_forward_long_polls", {"state": state})
        return value or 0.0


@asynccontextmanager
async def pair(cfg: CoordinatorConfig) -> AsyncIterator[Pair]:
    stats = {"jobs_running": [], "windows": {}, "leases_active": 0, "stale_claims_total": 0, "token": 0}
    figures = ClusterFigures(False, 1, 1, stats)
    state = Pair("", CoordinatorMetrics(new_registry(), lambda: figures))

    async def leader_claim(request: web.Request) -> web.Response:
        wait_ms = (await request.json()).get("wait_ms", 0)
        state.waits_seen.append(wait_ms)
        state.seen_at.append(asyncio.get_running_loop().time())
        if type(wait_ms) is int and wait_ms > 0:
            state.holding += 1
            await state.release.wait()
            state.holding -= 1
        return web.json_response({"leases": []})

    async def leader_job(request: web.Request) -> web.Response:
        return web.json_response({"job": await request.json()}, status=201)

    leader_app = web.Application()
    leader_app.router.add_post("/v1/windows/claim", leader_claim)
    leader_app.router.add_post("/v1/jobs", leader_job)
    leader_port = free_port(HOST)
    forwarder = Forwarder("f1", cfg, state.metrics)

    async def forward(request: web.Request) -> web.Response:
        leader = f"http://{HOST}:{leader_port}"
        return await forwarder.forward(request, await request.read(), leader, {}, route=request.match_info.route.name)

    follower_app = web.Application()
    follower_app.router.add_post("/v1/windows/claim", forward, name=LONG_POLL_ROUTE)
    follower_app.router.add_post("/v1/jobs", forward, name="create_job")
    runners = [web.AppRunner(leader_app, access_log=None), web.AppRunner(follower_app, access_log=None)]
    follower_port = free_port(HOST)
    for runner, port in zip(runners, (leader_port, follower_port), strict=True):
        await runner.setup()
        await web.TCPSite(runner, HOST, port).start()
    state.follower = f"http://{HOST}:{follower_port}"
    try:
        yield state
    finally:
        state.release.set()
        await forwarder.close()
        for runner in runners:
            await runner.cleanup()


async def post(session: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> int:
    async with session.post(url, data=json.dumps(body)) as answer:
        await answer.read()
        return answer.status


async def until(predicate: Any, what: str) -> None:
    async with asyncio.timeout(5):
        while not predicate():
            await asyncio.sleep(0.01)


async def test_waiting_claims_beyond_the_long_poll_pool_queue_and_writes_pass_at_once() -> None:
    """With 2 long-poll connections and 5 waiting claims, 2 are held by the leader and 3 queue at the follower; a
    job submission through the follower is answered at once; when work comes, the queued claims are forwarded in
    turn with the wait they have left, and every claim is answered 200."""
    cfg = CoordinatorConfig(forward_long_poll_connections=2, forward_max_connections=4)
    async with pair(cfg) as p, aiohttp.ClientSession() as session:
        claim = {"worker_id": "w", "wait_ms": 20_000}
        sent_at = asyncio.get_running_loop().time()
        claims = [asyncio.create_task(post(session, p.follower + "/v1/windows/claim", claim)) for _ in range(5)]
        await until(lambda: p.holding == 2 and p.gauge("queued") == 3, "2 held and 3 queued claims")
        assert p.gauge("holding") == 2
        status = await asyncio.wait_for(post(session, p.follower + "/v1/jobs", {"series": "s"}), 2)
        assert status == 201
        p.release.set()
        assert await asyncio.gather(*claims) == [200] * 5
        assert len(p.waits_seen) == 5 and all(p.left_of(i, 20_000, sent_at) for i in range(5))
        assert all(wait > 0 for wait in p.waits_seen)
        assert p.gauge("holding") == 0 and p.gauge("queued") == 0


async def test_a_claim_whose_wait_passes_in_the_queue_is_asked_once_without_waiting() -> None:
    """A claim that found every long-poll connection held for its whole wait is forwarded once with wait_ms 0 (an
    answer, possibly with leases, instead of a 503), through the pool of ordinary requests."""
    cfg = CoordinatorConfig(forward_long_poll_connections=1)
    async with pair(cfg) as p, aiohttp.ClientSession() as session:
        sent_at = asyncio.get_running_loop().time()
        first = asyncio.create_task(
            post(session, p.follower + "/v1/windows/claim", {"worker_id": "a", "wait_ms": 20_000})
        )
        await until(lambda: p.holding == 1, "the first claim held")
        status = await post(session, p.follower + "/v1/windows/claim", {"worker_id": "b", "wait_ms": 300})
        assert status == 200
        assert len(p.waits_seen) == 2 and p.left_of(0, 20_000, sent_at) and p.waits_seen[1] == 0
        p.release.set()
        assert await first == 200


async def test_claims_without_a_wait_and_bad_bodies_are_forwarded_as_they_are() -> None:
    """Only a claim with a positive integer wait_ms is a long poll; others are relayed untouched (the leader answers
    a bad body with its own 400)."""
    cfg = CoordinatorConfig(forward_long_poll_connections=1)
    async with pair(cfg) as p, aiohttp.ClientSession() as session:
        assert await post(session, p.follower + "/v1/windows/claim", {"worker_id": "a", "wait_ms": 0}) == 200
        assert await post(session, p.follower + "/v1/windows/claim", {"worker_id": "a", "wait_ms": True}) == 200
        assert p.waits_seen == [0, True]
        assert p.gauge("holding") == 0
