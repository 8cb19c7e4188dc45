"""HTTP connection guard: timeouts, connection caps and file-descriptor headroom for the API server (issue 21).

aiohttp's server times nothing out before a request's headers are complete and takes every connection the kernel
hands it. A client that sends its headers a byte a second therefore holds a file descriptor forever, and 1,100 of
them exhaust a process limited to 1,024: the node then accepts nothing (libuv, under uvloop, closes what it cannot
accept without a word), every write through every node fails and nothing is logged. This module sits between the
listening socket and aiohttp's protocol (``GuardedSite``) and keeps every connection accountable.

Rules:
1. Every connection is in one phase: ``head`` (waiting for a request's headers, from the accept or from the first
   byte after a keep-alive pause), ``body`` (headers parsed, body not yet received), ``busy`` (the handler runs;
   long polls live here and this module never times them out) or ``idle`` (keep-alive between requests). A
   connection longer than ``header_timeout_s`` in ``head``, ``body_timeout_s`` in ``body`` or ``idle_timeout_s`` in
   ``idle`` is aborted.
2. Caps: at most ``max_per_peer`` connections from one address (one more is answered 503 and closed) and
   ``max_total`` in all. At ``max_total`` a new connection evicts the oldest stalled one (``head``, then ``body``,
   then ``idle``) and is refused only when every connection is ``busy``. ``max_total`` stays below the process's
   file-descriptor limit (:func:`connection_limits`), which :func:`raise_fd_limit` raises to the hard limit first.
3. A node that refused a connection at ``max_total``, whose accept() failed for lack of resources, or whose free
   file descriptors ran low in the last ``REPORT_S`` reports ``not_accepting`` (:meth:`ConnectionGuard.health`;
   ``/healthz`` answers 503). Evictions and per-peer refusals report ``saturated``. What was shed is logged at most
   once per ``_LOG_EVERY_S``, with the counts since the previous line.
4. Phase changes are O(1) (ordered dicts per phase, oldest first); the sweeper only looks at the oldest
   connections of each phase, so an attack costs the node work per connection, never per connection and sweep.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import json
import os
import resource
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from provider.core import CoordinatorConfig
from provider.core.obs import get_logger

__all__ = [
    "ConnectionGuard",
    "ConnectionLimits",
    "GuardedSite",
    "RelayProtocol",
    "connection_limits",
    "fd_limit",
    "raise_fd_limit",
]

log = get_logger("coordinator.connections")

#: File descriptors kept for everything but inbound HTTP: Raft listener and peers, journal and dump files, the event
#: loop, libuv's spare descriptor, logs. The forwarding pools are reserved on top (``connection_limits``).
FD_RESERVE = 64
#: Below this many free descriptors the node reports ``not_accepting`` (something else is eating them).
FD_LOW = 16
#: The smallest connection cap the node runs with, whatever the descriptor limit says.
MIN_TOTAL = 16
#: How long a refusal or failed accept keeps ``/healthz`` reporting it.
REPORT_S = 10.0
_LOG_EVERY_S = 10.0
_FD_CHECK_EVERY_S = 1.0
_ACCEPT_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
_HEAD, _BODY, _BUSY, _IDLE = "head", "body", "busy", "idle"
#: What a refused connection reads before it is closed (it never reaches aiohttp).
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\n"
    b"Connection: close\r\nContent-Length: %d\r\n\r\n%s"
)


@dataclass(frozen=True)
class ConnectionLimits:
    """The guard's limits, in seconds and connections."""

    #: Longest time to receive a request's headers (from the accept, or from the first byte after a pause).
    header_timeout_s: float
    #: Longest time to receive a request's body once its headers are in.
    body_timeout_s: float
    #: Longest keep-alive pause between two requests.
    idle_timeout_s: float
    #: Open connections in all (below the fd limit).
    max_total: int
    #: Open connections from one peer address.
    max_per_peer: int


def fd_limit() -> int:
    """The process's soft limit on open file descriptors."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def raise_fd_limit() -> tuple[int, int]:
    """Raise the soft file-descriptor limit to the hard limit; return (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        # An "unlimited" hard limit is refused as a soft limit on Linux (nr_open caps it): then take 1,048,576.
        for target in (hard, 1_048_576) if hard == resource.RLIM_INFINITY else (hard,):
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
                break
            except (ValueError, OSError):
                continue
    return resource.getrlimit(resource.RLIMIT_NOFILE)


def connection_limits(cfg: CoordinatorConfig, fds: int) -> ConnectionLimits:
    """The limits of ``cfg``, with ``http_max_connections`` lowered so that HTTP connections, the forwarding pools and
    ``FD_RESERVE`` fit in ``fds`` descriptors (never below ``MIN_TOTAL``)."""
    room = fds - FD_RESERVE - cfg.forward_max_connections - cfg.forward_long_poll_connections
    total = max(MIN_TOTAL, min(cfg.http_max_connections, room))
    return ConnectionLimits(
        header_timeout_s=cfg.http_header_timeout_ms / 1000,
        body_timeout_s=cfg.http_body_timeout_ms / 1000,
        idle_timeout_s=cfg.http_idle_timeout_ms / 1000,
        max_total=total,
        max_per_peer=min(cfg.http_max_connections_per_peer, total),
    )


def _nothing() -> None:
    pass


class _Conn:
    """One accepted connection."""

    __slots__ = ("peer", "pending", "phase", "request", "since", "tracked", "transport")

    def __init__(self, peer: str, transport: asyncio.BaseTransport, now: float) -> None:
        self.peer = peer
        self.transport = transport
        self.phase = _HEAD
        self.since = now
        self.request: web.BaseRequest | None = None
        self.pending = False  # bytes arrived while busy: the next request has begun
        self.tracked = True


class ConnectionGuard:
    """Tracks, times out, caps and reports the HTTP connections of one node."""

    def __init__(self, limits: ConnectionLimits, *, fds: Callable[[], int] = fd_limit) -> None:
        self.limits = limits
        self._fds = fds
        self._phases: dict[str, collections.OrderedDict[_Conn, None]] = {
            p: collections.OrderedDict() for p in (_HEAD, _BODY, _IDLE)
        }
        self._by_transport: dict[asyncio.BaseTransport, _Conn] = {}
        self._per_peer: collections.Counter[str] = collections.Counter()
        #: Totals since start by event (``refused_total``, ``evicted``, ``header_timeout``, ...), for metrics.
        self.counts: collections.Counter[str] = collections.Counter()
        self._unlogged: collections.Counter[str] = collections.Counter()
        self._unlogged_peers: collections.Counter[str] = collections.Counter()
        self._last: dict[str, float] = {}  # event class -> loop time it last happened
        self._logged_at = 0.0
        self._fd_checked_at = 0.0
        self.fd_free: int | None = None
        self._task: asyncio.Task[None] | None = None
        self._restore: Callable[[], None] = _nothing
        self._loop: asyncio.AbstractEventLoop | None = None
        self.middleware = self._make_middleware()

    # -- lifecycle ----------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the sweeper and watch the loop's accept errors (call on the running loop)."""
        loop = self._loop = asyncio.get_running_loop()
        previous = loop.get_exception_handler()

        def on_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            exc = context.get("exception")
            if isinstance(exc, OSError) and exc.errno in _ACCEPT_ERRNOS:
                self._note("accept_error", "", loop.time())
            if previous is not None:
                previous(loop, context)
            else:
                loop.default_exception_handler(context)

        loop.set_exception_handler(on_error)
        self._restore = lambda: loop.set_exception_handler(previous)
        self._task = loop.create_task(self._sweep_loop(), name="http-connection-sweeper")

    async def stop(self) -> None:
        self._restore()
        self._restore = _nothing
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def protocol_factory(self, make: Callable[[], asyncio.Protocol]) -> Callable[[], asyncio.Protocol]:
        """A protocol factory for ``loop.create_server`` that passes admitted connections to ``make()``'s protocol."""
        return lambda: _GuardedProtocol(self, make)

    # -- figures ------------------------------------------------------------------------------------------------

    @property
    def open(self) -> int:
        return len(self._by_transport)

    def phases(self) -> dict[str, int]:
        """Connections waiting in each timed phase (``head``, ``body``, ``idle``)."""
        return {phase: len(queue) for phase, queue in self._phases.items()}

    def health(self) -> dict[str, Any]:
        """``state`` (``ok``, ``saturated`` or ``not_accepting``, rule 3) and the figures behind it."""
        now = self._now()
        recent = {kind for kind, at in self._last.items() if now - at < REPORT_S and kind != "idle_timeout"}
        if recent & {"refused_total", "accept_error", "fd_low"}:
            state = "not_accepting"
        elif recent & {"evicted", "refused_per_peer"}:
            state = "saturated"
        else:
            state = "ok"
        return {
            "state": state,
            "open": self.open,
            "max": self.limits.max_total,
            "max_per_peer": self.limits.max_per_peer,
            "recent": sorted(recent),
            "fd_free": self.fd_free,
        }

    # -- transitions (called by _GuardedProtocol and the middleware) --------------------------------------------

    def admit(self, transport: asyncio.BaseTransport) -> _Conn | None:
        """Track a new connection, or refuse it (rule 2): None means it was answered 503 and closed."""
        now = self._now()
        peername = transport.get_extra_info("peername")
        peer = str(peername[0]) if isinstance(peername, tuple) and peername else "?"
        if self._per_peer[peer] >= self.limits.max_per_peer:
            self._refuse(transport, "refused_per_peer", peer, now)
            return None
        if self.open >= self.limits.max_total and not self._evict_one(now):
            self._refuse(transport, "refused_total", peer, now)
            return None
        conn = _Conn(peer, transport, now)
        self._phases[_HEAD][conn] = None
        self._by_transport[transport] = conn
        self._per_peer[peer] += 1
        return conn

    def data_arrived(self, conn: _Conn) -> None:
        if conn.phase == _IDLE:
            self._move(conn, _HEAD, self._now())
        elif conn.phase == _BUSY:
            conn.pending = True

    def forget(self, conn: _Conn) -> None:
        """The connection is closed (or being closed by this guard): stop counting it. Idempotent."""
        if not conn.tracked:
            return
        conn.tracked = False
        self._unqueue(conn)
        conn.request = None
        self._by_transport.pop(conn.transport, None)
        self._per_peer[conn.peer] -= 1
        if self._per_peer[conn.peer] <= 0:
            del self._per_peer[conn.peer]

    def request_began(
        self, transport: asyncio.BaseTransport | None, *, body_complete: bool, request: web.BaseRequest | None = None
    ) -> _Conn | None:
        """A request's headers are in: its connection is ``busy`` once its body is complete, ``body`` until then
        (``request`` tells the sweeper when its body has come). None for a connection this guard does not track."""
        conn = self._by_transport.get(transport) if transport is not None else None
        if conn is None or not conn.tracked:
            return None
        conn.request = request
        self._move(conn, _BUSY if body_complete else _BODY, self._now())
        return conn

    def request_ended(self, conn: _Conn) -> None:
        """The answer is written: the connection waits for the next request (``head`` when it has begun)."""
        if conn.tracked:
            conn.request = None
            self._move(conn, _HEAD if conn.pending else _IDLE, self._now())
            conn.pending = False

    def _make_middleware(self) -> Any:
        @web.middleware
        async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
            conn = self.request_began(request.transport, body_complete=request.content.is_eof(), request=request)
            if conn is None:
                return await handler(request)  # type: ignore[no-any-return]
            try:
                return await handler(request)  # type: ignore[no-any-return]
            except ConnectionError:
                if conn.tracked:
                    raise
                # This guard aborted the connection under the handler (a body timeout): nobody reads the answer.
                return web.Response(status=408)
            finally:
                self.request_ended(conn)

        return middleware

    # -- internals ----------------------------------------------------------------------------------------------

    def _now(self) -> float:
        loop = self._loop
        if loop is None:
            loop = self._loop = asyncio.get_running_loop()
        return loop.time()

    def _unqueue(self, conn: _Conn) -> None:
        queue = self._phases.get(conn.phase)
        if queue is not None:
            queue.pop(conn, None)

    def _move(self, conn: _Conn, phase: str, now: float) -> None:
        self._unqueue(conn)
        conn.phase, conn.since = phase, now
        if phase != _BUSY:
            self._phases[phase][conn] = None

    def _body_done(self, conn: _Conn, now: float) -> bool:
        """A ``body`` connection whose body has arrived moves to ``busy`` (it is handled, not stalled)."""
        if conn.request is not None and conn.request.content.is_eof():
            self._move(conn, _BUSY, now)
            return True
        return False

    def _evict_one(self, now: float) -> bool:
        """Abort the oldest stalled connection (head, then body, then idle); False when every one is busy."""
        for phase in (_HEAD, _BODY, _IDLE):
            queue = self._phases[phase]
            while queue:
                conn = next(iter(queue))
                if phase == _BODY and self._body_done(conn, now):
                    continue
                self._close(conn, "evicted", now)
                return True
        return False

    def _close(self, conn: _Conn, reason: str, now: float) -> None:
        self.forget(conn)
        conn.transport.abort()  # type: ignore[attr-defined]
        self._note(reason, conn.peer, now)

    def _refuse(self, transport: asyncio.BaseTransport, reason: str, peer: str, now: float) -> None:
        body = json.dumps(
            {"error": {"code": "overloaded", "message": f"this node has too many open connections ({reason})"}}
        ).encode()
        with contextlib.suppress(Exception):  # the peer may be gone already
            transport.write(_REFUSAL % (len(body), body))  # type: ignore[attr-defined]
        transport.close()
        self._note(reason, peer, now)

    def _note(self, kind: str, peer: str, now: float) -> None:
        self.counts[kind] += 1
        self._last[kind] = now
        if kind != "idle_timeout":
            self._unlogged[kind] += 1
            if peer:
                self._unlogged_peers[peer] += 1
        self._flush_log(now)

    def _flush_log(self, now: float) -> None:
        if not self._unlogged or now - self._logged_at < _LOG_EVERY_S:
            return
        self._logged_at = now
        serious = self._unlogged.keys() & {"refused_total", "refused_per_peer", "accept_error", "fd_low", "evicted"}
        emit = log.warning if serious else log.info
        emit(
            "http_connections_shed",
            counts=dict(self._unlogged),
            top_peers=dict(self._unlogged_peers.most_common(3)),
            open=self.open,
            max=self.limits.max_total,
            fd_free=self.fd_free,
        )
        self._unlogged.clear()
        self._unlogged_peers.clear()

    def sweep(self, now: float) -> None:
        """Abort connections past their phase's timeout (rule 1); check the free descriptors now and then."""
        limits = self.limits
        for phase, timeout_s, reason in (
            (_HEAD, limits.header_timeout_s, "header_timeout"),
            (_BODY, limits.body_timeout_s, "body_timeout"),
            (_IDLE, limits.idle_timeout_s, "idle_timeout"),
        ):
            queue = self._phases[phase]
            while queue:
                conn = next(iter(queue))
                if now - conn.since < timeout_s:
                    break
                if phase == _BODY and self._body_done(conn, now):
                    continue
                self._close(conn, reason, now)
        if now - self._fd_checked_at >= _FD_CHECK_EVERY_S:
            self._fd_checked_at = now
            self._check_fds(now)
        self._flush_log(now)

    def _check_fds(self, now: float) -> None:
        try:
            used = len(os.listdir("/proc/self/fd"))
        except OSError:  # not Linux, or no descriptor left to list them with
            used = None
        if used is None:
            return
        self.fd_free = self._fds() - used
        if self.fd_free < FD_LOW:
            self._note("fd_low", "", now)

    async def _sweep_loop(self) -> None:
        limits = self.limits
        every_s = max(0.05, min(1.0, min(limits.header_timeout_s, limits.body_timeout_s, limits.idle_timeout_s) / 4))
        while True:
            await asyncio.sleep(every_s)
            try:
                self.sweep(self._now())
            except Exception:  # a bug here must not end the timeouts for good
                log.exception("http.sweep_failed")


class RelayProtocol(asyncio.Protocol):
    """A protocol in front of another (``_inner``, once there is one): the end of the connection and the flow
    control of writing are the inner protocol's."""

    __slots__ = ("_inner",)

    def __init__(self) -> None:
        self._inner: asyncio.Protocol | None = None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._inner is not None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()


class _GuardedProtocol(RelayProtocol):
    """Wraps aiohttp's per-connection protocol: admits (or refuses) the connection and reports its bytes."""

    __slots__ = ("_conn", "_guard", "_make")

    def __init__(self, guard: ConnectionGuard, make: Callable[[], asyncio.Protocol]) -> None:
        super().__init__()
        self._guard = guard
        self._make = make
        self._conn: _Conn | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._conn = self._guard.admit(transport)
        if self._conn is not None:
            self._inner = self._make()
            self._inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._inner is not None and self._conn is not None:
            self._guard.data_arrived(self._conn)
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._conn is not None:
            self._guard.forget(self._conn)
        super().connection_lost(exc)


class GuardedSite(web.BaseSite):
    """A TCP site of an ``AppRunner`` whose connections pass through a :class:`ConnectionGuard`; ``front(make)``,
    when given, is each connection's protocol in front of aiohttp's (``make()``; the hot path, ``_hotpath.py``)."""

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        guard: ConnectionGuard,
        *,
        backlog: int = 1024,
        front: Callable[[Callable[[], asyncio.Protocol]], asyncio.Protocol] | None = None,
    ) -> None:
        super().__init__(runner, backlog=backlog)
        self._app_runner = runner
        self._host = host
        self._port = port
        self._guard = guard
        self._front = front

    @property
    def name(self) -> str:
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._app_runner.server
        if server is None:
            raise RuntimeError("call runner.setup() before starting a site")
        front = self._front
        make: Callable[[], asyncio.Protocol] = server if front is None else lambda: front(server)
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            self._guard.protocol_factory(make), self._host, self._port, backlog=self._backlog, reuse_address=True
        )
