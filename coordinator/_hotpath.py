"""The hot path: the requests of a worker's loop answered without aiohttp's request machinery (issue 20).

A worker pool's traffic is claims, completions, renewals and budget heartbeats, small JSON requests. aiohttp
spends 90-110 us of server CPU on one beyond its socket I/O and JSON (``bench/bench_http_floor.py``), a fifth of
what a leader spends per window in all. This module reads those routes' requests off the connection itself and
runs them through the same code as any other request; everything else stays aiohttp's.

Rules:
1. Hot requests: ``POST`` of a path in :data:`HOT_ROUTES`, exactly (no query), ``HTTP/1.1``, with a head of at most
   :data:`MAX_HEAD_BYTES` this module reads without doubt: header lines ``name: value`` of visible ASCII, each name
   once, one ``Content-Length`` of at most ``max_body_bytes``, ``Content-Type: application/json``, ``Connection``
   absent, ``keep-alive`` or ``close``, and no ``Transfer-Encoding``, ``Expect`` or ``Upgrade``.
2. Any other request hands the connection over to aiohttp: its protocol gets every byte from the start of that
   request on and owns the connection from then on. Every other route, every oddity and every framing error is
   therefore answered by aiohttp exactly as before; the hot path never answers a request it doubts.
3. A hot request runs through the code every request runs through: ``_Server.respond`` (request id, logs, metrics,
   error answers) around ``_Server.wrap`` (browser guard or tokens, body, ids, and forwarding to the leader on a
   follower or when leadership was lost under it) and the route's handler. Only reading the head and writing the
   answer are this module's. Tracing (``OTEL_*``) turns the hot path off: spans come from aiohttp's middleware.
4. Requests on a connection are answered in order: the next is read once the answer to the previous is written
   (pipelined bytes wait; reading pauses while more than two bodies' worth waits). ``Connection: close`` and an
   end of input close the connection after the answer. The connection guard (``_connections.py``) sees the
   phases it sees with aiohttp: ``body`` while a body is incomplete, ``busy`` while the handler runs, ``idle``
   (or ``head``) after.
5. An answer carries its status, the handler's headers (X-Request-Id among them), Content-Length and Date.
6. ``coordinator.hot_path: false`` leaves every request to aiohttp.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from email.utils import formatdate
from http import HTTPStatus
from types import MappingProxyType
from typing import Any

from aiohttp import web

from coordinator._call import HttpRequest
from coordinator._connections import ConnectionGuard, RelayProtocol
from provider.core.obs import get_logger

__all__ = ["HOT_ROUTES", "MAX_HEAD_BYTES", "HotPath"]

log = get_logger("coordinator.hotpath")

#: The routes (``routes.ROUTES`` names) served here: what workers and QMTL key leases send in their loops.
HOT_ROUTES = (
    "claim_windows",
    "complete_window",
    "renew_window",
    "fail_window",
    "budget_heartbeat",
    "claim_key",
    "complete_key",
    "fail_key",
)
#: A longer head goes to aiohttp (which answers it 400 or 431).
MAX_HEAD_BYTES = 8190
_FIELD = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):([\t\x20-\x7e]*)")
_HANDED_OVER = frozenset({"transfer-encoding", "expect", "upgrade"})
_JSON = "application/json"
_NOTHING: Mapping[str, str] = MappingProxyType({})
_REASONS = {status.value: status.phrase for status in HTTPStatus}
#: Headers of a handler's answer this module writes itself (rule 5).
_OWN_HEADERS = frozenset({"content-length", "date", "connection", "transfer-encoding", "server"})

Respond = Callable[
    [HttpRequest, str, Callable[[HttpRequest], Awaitable[web.StreamResponse]]], Awaitable[web.StreamResponse]
]


class _Headers(Mapping[str, str]):
    """Header values by lower-cased name, looked up in any case (as aiohttp's are)."""

    __slots__ = ("_fields",)

    def __init__(self, fields: dict[str, str]) -> None:
        self._fields = fields

    def __getitem__(self, name: str) -> str:
        return self._fields[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._fields

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)


class _HotRequest:
    """A hot request, with what :class:`~coordinator._call.HttpRequest` asks for."""

    __slots__ = ("_body", "_state", "headers", "path")
    method = "POST"
    content_type = _JSON
    query = _NOTHING
    match_info = _NOTHING

    def __init__(self, path: str, headers: _Headers, body: bytes) -> None:
        self.path = path
        self.headers = headers
        self._body = body
        self._state: dict[str, Any] = {}

    @property
    def path_qs(self) -> str:
        return self.path

    @property
    def content_length(self) -> int:
        return len(self._body)

    @property
    def body_exists(self) -> bool:
        return bool(self._body)

    async def read(self) -> bytes:
        return self._body

    def __getitem__(self, key: str) -> Any:
        return self._state[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._state[key] = value


@dataclass(frozen=True, slots=True)
class _Head:
    """A hot request's head (rule 1), kept while its body arrives; its body starts at ``end``."""

    path: str
    handler: Callable[[HttpRequest], Awaitable[web.StreamResponse]]
    headers: _Headers
    length: int
    close: bool
    end: int


class HotPath:
    """The hot routes of one node and the connection protocol that serves them (module rules)."""

    def __init__(self, respond: Respond, guard: ConnectionGuard | None, max_body: int) -> None:
        self._respond = respond
        self._guard = guard
        self.max_body = max_body
        self._routes: dict[bytes, tuple[str, Callable[[HttpRequest], Awaitable[web.StreamResponse]]]] = {}
        self._date_s = -1
        self._date = ""

    def add(self, path: str, handler: Callable[[HttpRequest], Awaitable[web.StreamResponse]]) -> None:
        """Serve ``POST path`` with ``handler`` (``_Server.wrap`` of the route)."""
        self._routes[path.encode("ascii")] = (path, handler)

    def protocol(self, make: Callable[[], asyncio.Protocol]) -> asyncio.Protocol:
        """The protocol of one connection; ``make()`` builds aiohttp's when the connection is handed over."""
        return _FrontProtocol(self, make)

    def parse(self, head: bytes, end: int) -> _Head | None:
        """The head of a hot request (rule 1; ``end`` is where its body starts), or None: hand over (rule 2)."""
        lines = head.split(b"\r\n")
        parts = lines[0].split(b" ")
        if len(parts) != 3 or parts[0] != b"POST" or parts[2] != b"HTTP/1.1":
            return None
        route = self._routes.get(parts[1])
        if route is None:
            return None
        fields: dict[str, str] = {}
        for line in lines[1:]:
            match = _FIELD.fullmatch(line)
            if match is None:
                return None
            name = match[1].decode("ascii").lower()
            if name in fields:
                return None
            fields[name] = match[2].strip(b" \t").decode("ascii")
        if not _HANDED_OVER.isdisjoint(fields):
            return None
        length = fields.get("content-length", "")
        if not (length.isdigit() and len(length) <= 12) or int(length) > self.max_body:
            return None
        content_type = fields.get("content-type", "").lower()
        if content_type != _JSON and not content_type.startswith(_JSON + ";"):
            return None
        connection = fields.get("connection", "keep-alive").lower()
        if connection not in ("keep-alive", "close"):
            return None
        return _Head(route[0], route[1], _Headers(fields), int(length), connection == "close", end)

    async def answer(self, head: _Head, body: bytes) -> bytes:
        """The bytes of the answer to one hot request (rule 3 runs it, rule 5 writes it)."""
        request = _HotRequest(head.path, head.headers, body)
        response = await self._respond(request, head.path, head.handler)
        return self.render(response, head.close)

    def render(self, response: web.StreamResponse, close: bool) -> bytes:
        """Rule 5. A handler's answer here is always a ``web.Response`` of bytes; anything else is a 500."""
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes):
            log.error("hotpath.unwritable_answer", answer=type(response).__name__)
            response, body = web.Response(status=500), b'{"error": {"code": "internal", "message": "internal error"}}'
            response.content_type = _JSON
        lines = [f"HTTP/1.1 {response.status} {_REASONS.get(response.status, 'Unknown')}"]
        for name, value in response.headers.items():
            if name.lower() not in _OWN_HEADERS and "\r" not in value and "\n" not in value:
                lines.append(f"{name}: {value}")
        lines.append(f"Content-Length: {len(body)}")
        lines.append(f"Date: {self._now()}")
        if close:
            lines.append("Connection: close")
        lines.append("\r\n")
        return "\r\n".join(lines).encode("latin-1") + body

    def began(self, transport: asyncio.BaseTransport | None, body_complete: bool) -> Any:
        """Tell the connection guard a request's head is in (rule 4)."""
        if self._guard is None:
            return None
        return self._guard.request_began(transport, body_complete=body_complete)

    def ended(self, conn: Any) -> None:
        if self._guard is not None and conn is not None:
            self._guard.request_ended(conn)

    def _now(self) -> str:
        second = int(time.time())
        if second != self._date_s:
            self._date_s, self._date = second, formatdate(second, usegmt=True)
        return self._date


class _FrontProtocol(RelayProtocol):
    """One connection: hot requests here, then (rule 2) aiohttp's protocol for good."""

    def __init__(self, hot: HotPath, make: Callable[[], asyncio.Protocol]) -> None:
        super().__init__()
        self._hot = hot
        self._make = make
        self._transport: Any = None
        self._buffer = bytearray()
        self._head: _Head | None = None  # a hot head whose body is still coming
        self._scanned = 0  # the buffer holds no head end before this offset
        self._conn: Any = None
        self._busy = False
        self._paused = False
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def data_received(self, data: bytes) -> None:
        if self._inner is not None:
            self._inner.data_received(data)
            return
        self._buffer += data
        if not self._busy:
            self._next()
        elif len(self._buffer) > 2 * (self._hot.max_body + MAX_HEAD_BYTES) and not self._paused:
            self._paused = True
            self._transport.pause_reading()

    def eof_received(self) -> bool | None:
        if self._inner is not None:
            return self._inner.eof_received()
        self._eof = True
        return self._busy  # keep the connection open to write the answer in progress, then close it

    def _next(self) -> None:
        """Start the buffered request if it is complete and hot, wait for its bytes, or hand over (rule 2)."""
        buffer = self._buffer
        head = self._head
        if head is None:
            end = buffer.find(b"\r\n\r\n", self._scanned)
            if end < 0:
                self._scanned = max(0, len(buffer) - 3)
                if len(buffer) > MAX_HEAD_BYTES:
                    self._hand_over()
                return
            self._scanned = 0
            head = self._hot.parse(bytes(buffer[:end]), end + 4) if end <= MAX_HEAD_BYTES else None
            if head is None:
                self._hand_over()
                return
        if len(buffer) < head.end + head.length:
            if self._head is None:
                self._head = head
                self._conn = self._hot.began(self._transport, body_complete=False)
            return
        self._head = None
        body = bytes(buffer[head.end : head.end + head.length])
        del buffer[: head.end + head.length]
        self._busy = True
        self._conn = self._hot.began(self._transport, body_complete=True)
        asyncio.get_running_loop().create_task(self._serve(head, body))

    async def _serve(self, head: _Head, body: bytes) -> None:
        transport = self._transport
        try:
            data = await self._hot.answer(head, body)
        except Exception:  # respond() answers every error: this is a bug in writing the answer
            log.exception("hotpath.answer_failed", path=head.path)
            transport.abort()
            return
        finally:
            self._hot.ended(self._conn)
            self._conn = None
            self._busy = False
        if transport.is_closing():
            return
        transport.write(data)
        if head.close or (self._eof and not self._buffer):
            transport.close()
            return
        if self._paused:
            self._paused = False
            transport.resume_reading()
        if self._buffer:
            self._next()

    def _hand_over(self) -> None:
        inner = self._inner = self._make()
        inner.connection_made(self._transport)
        data, self._buffer = bytes(self._buffer), bytearray()
        if self._paused:
            self._paused = False
            self._transport.resume_reading()
        if data:
            inner.data_received(data)
        if self._eof and not inner.eof_received():
            self._transport.close()
