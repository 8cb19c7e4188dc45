"""The HTTP connection guard (coordinator/_connections.py) in front of a real aiohttp server on loopback: stalled
connections are closed by phase, caps refuse or evict, long polls are never touched, and the health report says
when the node could not accept. Time is injected: the tests call ``guard.sweep(now)`` instead of waiting."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace

import pytest
from aiohttp import web

from coordinator._call import HttpRequest
from coordinator._connections import (
    FD_RESERVE,
    MIN_TOTAL,
    ConnectionGuard,
    ConnectionLimits,
    GuardedSite,
    connection_limits,
    raise_fd_limit,
)
from coordinator._hotpath import HotPath
from devkit.ports import free_port
from provider.core import CoordinatorConfig

HOST = "127.0.0.1"
LIMITS = ConnectionLimits(header_timeout_s=1.0, body_timeout_s=2.0, idle_timeout_s=5.0, max_total=50, max_per_peer=20)
REQUEST = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s"


@dataclass
class Served:
    guard: ConnectionGuard
    port: int
    release: asyncio.Event = field(default_factory=asyncio.Event)
    held: int = 0
    writers: list[asyncio.StreamWriter] = field(default_factory=list)

    async def connect(self, source: str = HOST) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection(HOST, self.port, local_addr=(source, 0))
        self.writers.append(writer)
        return reader, writer

    def now(self) -> float:
        return asyncio.get_running_loop().time()


@asynccontextmanager
async def served(limits: ConnectionLimits = LIMITS, fds: int = 100_000, hot: bool = False) -> AsyncIterator[Served]:
    """An aiohttp app behind a guard (no sweeper: tests sweep with their own clock): /echo answers its body, /hold
    answers when the test releases it (a long poll). ``hot``: /echo is served by a hot path (``_hotpath.py``)."""
    guard = ConnectionGuard(limits, fds=lambda: fds)
    state = Served(guard, free_port(HOST))

    async def echo(request: HttpRequest) -> web.Response:
        return web.json_response(json.loads(await request.read()))

    async def hold(request: web.Request) -> web.Response:
        state.held += 1
        await state.release.wait()
        return web.json_response({"held": True})

    app = web.Application()
    app.router.add_post("/echo", echo)
    app.router.add_get("/hold", hold)
    app.middlewares.append(guard.middleware)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    front = None
    if hot:
        path = HotPath(_passed_through, guard, 1 << 20)
        path.add("/echo", echo)
        front = path.protocol
    await GuardedSite(runner, HOST, state.port, guard, front=front).start()
    try:
        yield state
    finally:
        state.release.set()
        for writer in state.writers:
            writer.close()
        await runner.cleanup()


async def _passed_through(
    request: HttpRequest, route: str, handler: Callable[[HttpRequest], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    return await handler(request)


async def closed(reader: asyncio.StreamReader) -> bytes:
    """Everything the server sends until it closes the connection (fails if it stays open for 5 s)."""
    data = b""
    async with asyncio.timeout(5):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, payload: dict[str, int]) -> dict[str, int]:
    body = json.dumps(payload).encode()
    writer.write(REQUEST % (len(body), body))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    assert head.startswith(b"HTTP/1.1 200"), head
    length = int(
        next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length:")).split(b":")[1]
    )
    answer: dict[str, int] = json.loads(await asyncio.wait_for(reader.readexactly(length), 5))
    return answer


async def wait_until(predicate: object, what: str) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # type: ignore[operator]
            await asyncio.sleep(0.01)


@pytest.mark.parametrize("hot", [False, True], ids=["aiohttp", "hot path"])
async def test_a_connection_that_never_finishes_its_headers_is_closed_after_the_header_timeout(hot: bool) -> None:
    """A client that sent half a request line is disconnected once ``header_timeout_s`` passed, not before; a client
    on another connection is served meanwhile and afterwards."""
    async with served(hot=hot) as s:
        slow_r, slow_w = await s.connect()
        slow_w.write(b"POST /echo HT")
        await wait_until(lambda: s.guard.open == 1, "the slow connection")
        s.guard.sweep(s.now() + LIMITS.header_timeout_s - 0.2)
        assert s.guard.open == 1
        r, w = await s.connect()
        assert await echo(r, w, {"k": 1}) == {"k": 1}
        s.guard.sweep(s.now() + LIMITS.header_timeout_s + 0.1)
        assert await closed(slow_r) == b""
        assert s.guard.counts["header_timeout"] == 1
        assert await echo(r, w, {"k": 2}) == {"k": 2}  # the served connection was idle, not stalled


@pytest.mark.parametrize("hot", [False, True], ids=["aiohttp", "hot path"])
async def test_a_keep_alive_connection_is_closed_after_the_idle_timeout_and_a_new_request_restarts_its_clock(
    hot: bool,
) -> None:
    """Between requests a connection may pause ``idle_timeout_s``; bytes of a next request move it back to the
    header clock, so a client that starts a request after a pause and stalls is closed after the header timeout."""
    async with served(hot=hot) as s:
        r, w = await s.connect()
        assert await echo(r, w, {"k": 1}) == {"k": 1}
        s.guard.sweep(s.now() + LIMITS.header_timeout_s + 0.5)  # idle, not waiting for headers: kept
        assert await echo(r, w, {"k": 2}) == {"k": 2}
        w.write(b"POST /ec")
        await wait_until(lambda: s.guard.phases()["head"] == 1, "bytes of a next request")
        s.guard.sweep(s.now() + LIMITS.header_timeout_s + 0.1)
        assert await closed(r) == b""
        r2, w2 = await s.connect()
        assert await echo(r2, w2, {"k": 3}) == {"k": 3}
        s.guard.sweep(s.now() + LIMITS.idle_timeout_s + 0.1)
        assert await closed(r2) == b""
        assert s.guard.counts["idle_timeout"] == 1 and s.guard.counts["header_timeout"] == 1


@pytest.mark.parametrize("hot", [False, True], ids=["aiohttp", "hot path"])
async def test_a_body_that_stops_arriving_is_cut_after_the_body_timeout(
    caplog: pytest.LogCaptureFixture, hot: bool
) -> None:
    """Headers announce 100 bytes and 10 arrive: the connection is closed after ``body_timeout_s`` (not after the
    shorter header timeout), and the aborted handler logs no error."""
    caplog.set_level(logging.WARNING)
    async with served(hot=hot) as s:
        r, w = await s.connect()
        w.write(
            b'POST /echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{"k": 1, '
        )
        await wait_until(lambda: s.guard.phases()["body"] == 1, "the headers")
        s.guard.sweep(s.now() + LIMITS.header_timeout_s + 0.1)
        assert s.guard.open == 1
        s.guard.sweep(s.now() + LIMITS.body_timeout_s + 0.1)
        assert await closed(r) == b""
        assert s.guard.counts["body_timeout"] == 1
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_long_poll_outlives_every_timeout() -> None:
    """A request whose handler waits (a long-poll claim) is never closed by the guard, however long it runs."""
    async with served() as s:
        r, w = await s.connect()
        w.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
        await wait_until(lambda: s.held == 1, "the long poll")
        s.guard.sweep(s.now() + 3600)
        s.release.set()
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 5)
        assert head.startswith(b"HTTP/1.1 200")
        assert sum(s.guard.counts.values()) == 0


async def test_one_address_cannot_take_more_than_its_share() -> None:
    """Beyond ``max_per_peer`` connections from one address the next one is answered 503 with Retry-After and closed;
    another address still connects and is served."""
    async with served(replace(LIMITS, max_per_peer=3)) as s:
        held = [await s.connect("127.0.0.7") for _ in range(3)]
        await wait_until(lambda: s.guard.open == 3, "three connections")
        r, _ = await s.connect("127.0.0.7")
        refused = await closed(r)
        assert refused.startswith(b"HTTP/1.1 503") and b"Retry-After: 1" in refused and b"overloaded" in refused
        r2, w2 = await s.connect("127.0.0.8")
        assert await echo(r2, w2, {"k": 1}) == {"k": 1}
        health = s.guard.health()
        assert health["state"] == "saturated" and "refused_per_peer" in health["recent"]
        assert len(held) == 3 and s.guard.counts["refused_per_peer"] == 1


async def test_at_the_total_cap_the_oldest_stalled_connection_makes_room() -> None:
    """With every slot taken by connections that never finish their headers, a new client is admitted and served:
    the oldest stalled connection is evicted (one per newcomer), and the node reports itself saturated."""
    async with served(replace(LIMITS, max_total=MIN_TOTAL)) as s:
        stalled = []
        for i in range(MIN_TOTAL):
            reader, writer = await s.connect(f"127.0.1.{i + 1}")
            writer.write(b"GET / HT")
            stalled.append(reader)
            await wait_until(lambda n=i + 1: s.guard.open == n, "a stalled connection")
        r, w = await s.connect()
        assert await echo(r, w, {"k": 1}) == {"k": 1}
        assert await closed(stalled[0]) == b""
        assert s.guard.counts["evicted"] == 1 and s.guard.open == MIN_TOTAL
        assert s.guard.health()["state"] == "saturated"


async def test_at_the_total_cap_with_every_connection_busy_a_newcomer_is_refused_and_health_says_so() -> None:
    """When every connection is a running request (long polls), nothing can be evicted: the newcomer gets 503 and
    the node reports ``not_accepting`` until ``REPORT_S`` passed."""
    async with served(replace(LIMITS, max_total=MIN_TOTAL)) as s:
        polls = []
        for i in range(MIN_TOTAL):
            reader, writer = await s.connect(f"127.0.2.{i + 1}")
            writer.write(b"GET /hold HTTP/1.1\r\nHost: x\r\n\r\n")
            polls.append(reader)
        await wait_until(lambda: s.held == MIN_TOTAL, "every long poll")
        r, _ = await s.connect()
        assert (await closed(r)).startswith(b"HTTP/1.1 503")
        health = s.guard.health()
        assert health["state"] == "not_accepting" and health["open"] == MIN_TOTAL
        s.release.set()
        for reader in polls:
            assert (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).startswith(b"HTTP/1.1 200")


async def test_failed_accepts_and_low_descriptors_are_reported() -> None:
    """An accept() that failed with EMFILE (reported through the loop's exception handler, as asyncio does) and a
    process with fewer than FD_LOW free descriptors both make the node ``not_accepting``."""
    guard = ConnectionGuard(LIMITS, fds=lambda: 100_000)
    guard.start()
    try:
        loop = asyncio.get_running_loop()
        assert guard.health()["state"] == "ok"
        loop.call_exception_handler(
            {"message": "socket.accept() out of system resource", "exception": OSError(errno.EMFILE, "Too many")}
        )
        assert guard.health()["state"] == "not_accepting" and "accept_error" in guard.health()["recent"]
    finally:
        await guard.stop()
    starved = ConnectionGuard(LIMITS, fds=lambda: 1)
    starved.sweep(asyncio.get_running_loop().time() + 10)
    assert starved.health()["state"] == "not_accepting" and starved.health()["fd_free"] < 0


@pytest.mark.parametrize(
    ("fds", "configured", "expected"),
    [
        (1_048_576, 8_192, 8_192),  # plenty of descriptors: the configured cap
        (1_024, 8_192, 1_024 - FD_RESERVE - 128 - 64),  # the cap fits under the limit with the pools and reserve
        (100, 8_192, MIN_TOTAL),  # absurdly low limit: a minimal cap rather than none
    ],
)
def test_the_connection_cap_fits_under_the_descriptor_limit(fds: int, configured: int, expected: int) -> None:
    """``http_max_connections`` is lowered so that connections, forwarding pools and a reserve fit in the limit;
    the per-peer cap never exceeds the total."""
    limits = connection_limits(CoordinatorConfig(http_max_connections=configured), fds)
    assert limits.max_total == expected
    assert limits.max_per_peer == min(1_024, expected)


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    """At start the node takes every descriptor it may have."""
    soft, hard = raise_fd_limit()
    assert soft == hard
