"""Follower -> leader forwarding of write requests over HTTP.

Rules:
1. A follower forwards a write it cannot serve to the leader's announced HTTP address, once: the forwarded request
   carries ``X-Coordinator-Forwarded-By`` and is never forwarded again (the leader answers 421 with a hint if it
   lost leadership meanwhile).
2. The forwarded request keeps the caller's Authorization, X-Client-Id, X-Request-Id and trace context, so the leader
   authenticates the caller and de-duplicates retries exactly as if the caller had come directly.
3. When the leader cannot be reached this raises ``UnavailableError``; the API waits for the next leader and
   forwards again until ``coordinator.leader_wait_ms`` has passed, then the caller gets 503 with Retry-After.
4. Reads are forwarded too (linearizable reads are served by the leader); the answer's consistency headers are
   relayed.
5. Long polls never starve forwarding (issue 21): a claim with ``wait_ms`` > 0 is forwarded through its own pool of
   ``coordinator.forward_long_poll_connections`` connections, never through the ``forward_max_connections`` that
   every other forwarded request uses. When all long-poll connections are held, a claim queues for one (first
   come, first served) within its own wait, and is forwarded with the wait it has left; a claim whose whole wait
   passed in the queue is forwarded once without waiting. Callers thus never see a 503 from a full pool, and a
   submission through a follower is as fast with 600 claims waiting on it as with none.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp
from aiohttp import web

from coordinator._call import HttpRequest
from coordinator.errors import UnavailableError
from coordinator.metrics import CoordinatorMetrics
from provider.core import CoordinatorConfig, tracing

__all__ = ["FORWARDED_HEADER", "LONG_POLL_ROUTE", "Forwarder"]

FORWARDED_HEADER = "X-Coordinator-Forwarded-By"
#: The route (``routes.ROUTES`` name) whose requests may long-poll, with ``wait_ms`` in their body.
LONG_POLL_ROUTE = "claim_windows"
_PASSED = ("Authorization", "Content-Type", "X-Client-Id", "X-Request-Id", "traceparent", "tracestate")
_RELAYED = ("Retry-After", "X-Consistency", "X-Raft-Applied-Index")
#: Added to the leader's own time budget (commit, leader wait, long poll) before a forward is given up.
_SLACK_S = 2.0


def _wait_ms(route: str, body: bytes) -> int:
    """The long-poll wait a forwarded request of ``route`` asks for (0 when it is not a long-poll claim or its body
    is bad: the leader answers those itself)."""
    if route != LONG_POLL_ROUTE or not body:
        return 0
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return 0
    wait = data.get("wait_ms") if isinstance(data, dict) else None
    return wait if isinstance(wait, int) and not isinstance(wait, bool) and wait > 0 else 0


def _with_wait(body: bytes, wait_ms: int) -> bytes:
    data: dict[str, Any] = json.loads(body)
    data["wait_ms"] = wait_ms
    return json.dumps(data).encode()


class Forwarder:
    """Two client sessions per node (rule 5), opened lazily."""

    def __init__(self, node_id: str, cfg: CoordinatorConfig, metrics: CoordinatorMetrics | None = None) -> None:
        self._node_id = node_id
        self._cfg = cfg
        #: A forwarded request may wait for a leader and then for its commit on the leader.
        self._budget_s = (cfg.commit_timeout_ms + cfg.leader_wait_ms) / 1000 + _SLACK_S
        self._sessions: dict[str, aiohttp.ClientSession] = {}
        self._slots = asyncio.Semaphore(cfg.forward_long_poll_connections)
        self._gauges = (
            (metrics.forward_long_polls.labels("holding"), metrics.forward_long_polls.labels("queued"))
            if metrics is not None
            else None
        )

    async def close(self) -> None:
        sessions, self._sessions = self._sessions, {}
        for session in sessions.values():
            await session.close()

    def _session(self, pool: str) -> aiohttp.ClientSession:
        session = self._sessions.get(pool)
        if session is None or session.closed:
            limit = self._cfg.forward_long_poll_connections if pool == "long" else self._cfg.forward_max_connections
            session = self._sessions[pool] = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit))
        return session

    async def forward(
        self, request: HttpRequest, body: bytes, leader: str, headers: dict[str, str], *, route: str
    ) -> web.Response:
        """Send ``request`` of ``route`` (a ``routes.ROUTES`` name), with the already-read ``body``, to ``leader``
        and relay its answer."""
        wait_ms = min(_wait_ms(route, body), self._cfg.max_claim_wait_ms)
        if wait_ms <= 0:
            return await self._send("short", request, body, leader, headers, self._budget_s)
        return await self._long_poll(request, body, leader, headers, wait_ms)

    async def _long_poll(
        self, request: HttpRequest, body: bytes, leader: str, headers: dict[str, str], wait_ms: int
    ) -> web.Response:
        """Rule 5: hold a long-poll connection for the wait, or ask once without waiting if none came free."""
        loop = asyncio.get_running_loop()
        deadline_s = loop.time() + wait_ms / 1000
        holding, queued = self._gauges or (None, None)
        if queued is not None:
            queued.inc()
        try:
            async with asyncio.timeout(wait_ms / 1000):
                await self._slots.acquire()
        except TimeoutError:
            return await self._send("short", request, _with_wait(body, 0), leader, headers, self._budget_s)
        finally:
            if queued is not None:
                queued.dec()
        if holding is not None:
            holding.inc()
        try:
            left_ms = max(0, round((deadline_s - loop.time()) * 1000))
            budget_s = self._budget_s + left_ms / 1000
            return await self._send("long", request, _with_wait(body, left_ms), leader, headers, budget_s)
        finally:
            self._slots.release()
            if holding is not None:
                holding.dec()

    async def _send(
        self, pool: str, request: HttpRequest, body: bytes, leader: str, headers: dict[str, str], budget_s: float
    ) -> web.Response:
        sent = {name: request.headers[name] for name in _PASSED if name in request.headers}
        sent.update(headers)
        tracing.inject(sent)  # this node's server span, when tracing is on here (the caller's passes otherwise)
        sent[FORWARDED_HEADER] = self._node_id
        url = leader.rstrip("/") + request.path_qs
        timeout = aiohttp.ClientTimeout(total=budget_s)
        try:
            async with self._session(pool).request(
                request.method, url, data=body, headers=sent, timeout=timeout
            ) as answer:
                data = await answer.read()
                relayed = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
                relayed.update({name: answer.headers[name] for name in _RELAYED if name in answer.headers})
                return web.Response(status=answer.status, body=data, headers=relayed)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UnavailableError(
                f"the leader at {leader} did not answer ({type(exc).__name__}); retry", retry_after_s=1
            ) from None
