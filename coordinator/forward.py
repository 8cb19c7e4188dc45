"""Follower -> leader forwarding of write requests over HTTP.

Rules:
1. A follower forwards a write it cannot serve to the leader's announced HTTP address, once: the forwarded request
   carries ``X-Coordinator-Forwarded-By`` and is never forwarded again (the leader answers 421 with a hint if it
   lost leadership meanwhile).
2. The forwarded request keeps the caller's Authorization, X-Client-Id and X-Request-Id, so the leader
   authenticates the caller and de-duplicates retries exactly as if the caller had come directly.
3. When the leader cannot be reached this raises ``UnavailableError``; the API waits for the next leader and
   forwards again until ``coordinator.leader_wait_ms`` has passed, then the caller gets 503 with Retry-After.
4. Reads are forwarded too (linearizable reads are served by the leader); the answer's consistency headers are
   relayed.
"""

from __future__ import annotations

import aiohttp
from aiohttp import web

from coordinator.errors import UnavailableError

__all__ = ["FORWARDED_HEADER", "Forwarder"]

FORWARDED_HEADER = "X-Coordinator-Forwarded-By"
_PASSED = ("Authorization", "Content-Type", "X-Client-Id", "X-Request-Id")
_RELAYED = ("Retry-After", "X-Consistency", "X-Raft-Applied-Index")


class Forwarder:
    """One client session per node, opened lazily."""

    def __init__(self, node_id: str, timeout_s: float) -> None:
        self._node_id = node_id
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def forward(self, request: web.Request, body: bytes, leader: str, headers: dict[str, str]) -> web.Response:
        """Send ``request`` (with the already-read ``body``) to ``leader`` and relay its answer."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout, connector=aiohttp.TCPConnector(limit=512))
        sent = {name: request.headers[name] for name in _PASSED if name in request.headers}
        sent.update(headers)
        sent[FORWARDED_HEADER] = self._node_id
        url = leader.rstrip("/") + str(request.rel_url)
        try:
            async with self._session.request(request.method, url, data=body, headers=sent) as answer:
                data = await answer.read()
                relayed = {"Content-Type": answer.headers.get("Content-Type", "application/json")}
                relayed.update({name: answer.headers[name] for name in _RELAYED if name in answer.headers})
                return web.Response(status=answer.status, body=data, headers=relayed)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise UnavailableError(
                f"the leader at {leader} did not answer ({type(exc).__name__}); retry", retry_after_s=1
            ) from None
