"""HTTP API v1 (aiohttp): parse and validate, call the node, map errors to statuses in one table.

Rules:
1. Routes come from ``routes.ROUTES`` only; each is served by the handler method of its name, or, for a route that
   names a table ``command``, by the generic command handler (``routes.py`` rule 5). Bodies are JSON objects
   validated by the ``provider.core`` wire models; a bad field is a 400 naming it.
   Bodies above ``max_body_bytes`` are refused with 413.
2. Errors are ``{"error": {"code", "message", "field"?}}``; ``STATUS`` maps each code to its status. 503 and 429
   (``capacity``: a limit refused the command, nothing changed) answers carry Retry-After; 421 ``not_leader``
   answers carry the leader's URL in ``error.leader``.
3. Any node accepts any request. Writes run on the leader and a follower forwards them (``forward.py``). Reads
   (``Route.read``) are linearizable by default: the leader commits a read barrier first, a follower forwards the
   read; ``?consistency=stale`` reads the node's own replica. When the leader dies or loses leadership under a
   forwarded request, the follower forwards it again (same ids: applied once) to the next leader until
   ``coordinator.leader_wait_ms`` has passed; only then does it answer 503 (or the 421 hint). A leader that
   answers 503 ``disk_full`` is handing off (``_aside.py``) and counts as demoted.
4. ``X-Client-Id`` + ``X-Request-Id`` identify a command for de-duplication (a retry with the same pair gets the
   first answer); ``X-Request-Id`` is echoed and bound to every log line of the request. With tokens on, the
   client id is scoped to the token's name, so another caller replaying the pair is a new command; the same pair
   with another body is a 409 ``conflict`` (``_state.py`` rule 3).
5. Without tokens, requests a browser could forge are refused first (``_browser.py``: Host, Origin, JSON bodies).
6. With tokens, a public route's caller is :data:`~coordinator.auth.UNAUTHENTICATED`, or the token's principal
   on a route with a ``detail_role`` (``routes.py`` rule 4); without tokens every caller is ``ANONYMOUS``.
7. With tracing on (``OTEL_*``; :mod:`provider.core.tracing`), every request is a server span ``METHOD ROUTE``,
   the child of the caller's ``traceparent``; a forwarded request carries this node's span on to the leader.
8. The requests of a worker's loop (claims, completions, renewals, heartbeats) take the hot path
   (``_hotpath.py``; ``HOT_PATH``, given to the site by ``coordinator serve``) unless ``coordinator.hot_path`` is
   false or tracing is on: the same wrapper, handler and :meth:`_Server.respond` as every route, without aiohttp's
   request and response objects.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from coordinator._browser import BrowserGuard
from coordinator._call import Call, HttpRequest
from coordinator._hotpath import HOT_ROUTES, HotPath
from coordinator.auth import ANONYMOUS, TokenTable
from coordinator.errors import (
    ApiError,
    BadRequestError,
    BodyTooLargeError,
    NotLeaderError,
    UnavailableError,
)
from coordinator.forward import FORWARDED_HEADER, Forwarder
from coordinator.handlers import Handlers
from coordinator.node import CoordinatorNode
from coordinator.openapi import build_openapi
from coordinator.routes import ROUTES, Route
from coordinator.status_page import StatusPage
from provider.core import tracing
from provider.core.obs import bind_request, get_logger, new_request_id

__all__ = ["HOT_PATH", "STATUS", "Call", "build_app", "error_response"]

log = get_logger("coordinator.api")

#: The one mapping from error code to HTTP status.
STATUS: dict[str, int] = {
    "invalid": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "not_found": 404,
    "method_not_allowed": 405,
    "conflict": 409,
    "lease_lost": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "capacity": 429,
    "not_leader": 421,
    "internal": 500,
    "no_leader": 503,
    "timeout": 503,
    "disk_full": 503,
}
_MAX_HEADER_ID_CHARS = 200
#: Refusals of malformed requests, logged at WARNING with the message cut short (other 4xx are normal flow).
_LOGGED_REFUSALS = frozenset({400, 413, 415})
#: After the leader was unreachable or answered 421, forward again once another leader is known, or after this
#: long at the latest (a transient failure). Hammering a dead leader would starve the Raft thread of the GIL.
_FORWARD_RETRY_S = 0.25
#: The app's hot path (rule 8), when it has one: ``coordinator serve`` hands it the connections.
HOT_PATH = web.AppKey("hot_path", HotPath)


def error_response(exc: ApiError) -> web.Response:
    response = web.json_response(exc.body(), status=STATUS.get(exc.code, 500))
    if isinstance(exc, UnavailableError):
        response.headers["Retry-After"] = str(exc.retry_after_s)
    return response


def _header_id(request: HttpRequest, name: str) -> str:
    value = request.headers.get(name, "")
    if len(value) > _MAX_HEADER_ID_CHARS or not value.isprintable():
        raise BadRequestError(f"header {name} must be at most {_MAX_HEADER_ID_CHARS} printable chars", field=name)
    return value


class _Server:
    """Route wrappers: auth, body cap, JSON parsing, ids, forwarding."""

    def __init__(self, node: CoordinatorNode, tokens: TokenTable | None) -> None:
        self.node = node
        self.tokens = tokens
        self.max_body = node.cfg.max_body_bytes
        self.browser = BrowserGuard(node.settings.http_host, node.cfg.allowed_hosts, node.cfg.allowed_origins)
        self.forwarder = Forwarder(node.settings.node_id, node.cfg, node.metrics)
        # Ids for requests that bring none: unique per process start, cheap (no syscall per request).
        self._id_prefix = new_request_id()[:8]
        self._id_counter = itertools.count(1)
        self._children: dict[tuple[str, int], tuple[Any, Any]] = {}

    def new_id(self) -> str:
        return f"{self._id_prefix}{next(self._id_counter):x}"

    def observe(self, route: str, status: int, elapsed_s: float) -> None:
        """Count and time a request; labelled children are cached (prometheus label lookups are not free)."""
        key = (route, status)
        children = self._children.get(key)
        if children is None:
            metrics = self.node.metrics
            children = self._children[key] = (
                metrics.http_requests.labels(route, str(status)),
                metrics.http_seconds.labels(route),
            )
        children[0].inc()
        children[1].observe(elapsed_s)

    async def respond(
        self, request: HttpRequest, route: str, handler: Callable[[HttpRequest], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """``handler``'s answer to ``request`` of ``route`` (its path pattern), or the error answer it raised, with
        X-Request-Id, bound to every log line and counted (the middleware of every route, and the hot path's)."""
        given = request.headers.get("X-Request-Id", "")
        rid = given if given and len(given) <= _MAX_HEADER_ID_CHARS and given.isprintable() else self.new_id()
        request["request_id"] = rid
        started = time.perf_counter()
        quiet = False  # a refusal whose cause the node logs itself, rate-limited
        with bind_request(rid):
            try:
                response = await handler(request)
            except ApiError as exc:
                response = error_response(exc)
                quiet = exc.code == "disk_full"  # coordinator/_disk.py logs the disk at most once a minute
                if response.status in _LOGGED_REFUSALS:  # a malformed request: say what, never echo it whole
                    log.warning(
                        "http.request_refused",
                        method=request.method,
                        path=request.path[:200],
                        status=response.status,
                        field=exc.field,
                        message=exc.message[:300],
                    )
            except web.HTTPException as exc:
                code = {404: "not_found", 405: "method_not_allowed", 413: "too_large"}.get(exc.status, "invalid")
                response = error_response(ApiError(f"{request.method} {request.path}: {exc.reason}", code=code))
            except Exception as exc:
                log.exception("http.request_failed", method=request.method, path=request.path)
                response = error_response(ApiError(f"internal error: {type(exc).__name__}"))
            response.headers["X-Request-Id"] = rid
            self.observe(route, response.status, time.perf_counter() - started)
            if response.status >= 500 and not quiet and not route.startswith("/health"):
                log.warning("http.request_error", method=request.method, path=request.path, status=response.status)
            return response

    async def read_body(self, request: HttpRequest) -> tuple[bytes, dict[str, Any]]:
        if request.content_length is not None and request.content_length > self.max_body:
            raise BodyTooLargeError(f"body of {request.content_length} bytes is above {self.max_body}", field="(body)")
        try:
            raw = await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise BodyTooLargeError(f"body is above {self.max_body} bytes", field="(body)") from None
        if not raw.strip():
            return raw, {}
        try:
            data = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            raise BadRequestError(f"body is not valid JSON ({exc})", field="(body)") from None
        except RecursionError:  # json.loads recurses per nesting level: "[[[[...]]]]" must be a 400, not a 500
            raise BadRequestError("body is nested too deeply", field="(body)") from None
        if not isinstance(data, dict):
            raise BadRequestError("body must be a JSON object", field="(body)")
        return raw, data

    def wrap(
        self, route: Route, fn: Callable[[Call], Awaitable[web.StreamResponse]]
    ) -> Callable[[HttpRequest], Awaitable[web.StreamResponse]]:
        """The handler of ``route``: auth, body, ids, then ``fn`` here or on the leader (rules 3-6)."""

        async def handler(request: HttpRequest) -> web.StreamResponse:
            principal = ANONYMOUS
            if self.tokens is None:
                refusal = self.browser.refusal(request)
                if refusal is not None:
                    raise refusal
            if self.tokens is not None and route.role is not None:
                principal = self.tokens.authenticate(request.headers.get("Authorization"), route.role)
            elif self.tokens is not None and route.detail_role is not None:
                principal = self.tokens.identify(request.headers.get("Authorization"))
            raw: bytes = b""
            body: dict[str, Any] = {}
            if request.method in ("POST", "PUT", "PATCH"):
                raw, body = await self.read_body(request)
            client_id = _header_id(request, "X-Client-Id")
            request_id = _header_id(request, "X-Request-Id") or request["request_id"]
            extra: dict[str, str] = {}
            if not client_id:
                client_id = f"anon-{self.new_id()}"
                extra = {"X-Client-Id": client_id, "X-Request-Id": request_id}
            # Rule 4: a client id is the caller's own; with tokens on, another token cannot replay it.
            scope = f"t:{principal.name}:" if principal is not ANONYMOUS else "c:"
            call = Call(request, body, principal, f"{scope}{client_id}", f"{route.name}|{request_id}")
            forwardable = (route.write or route.read) and FORWARDED_HEADER not in request.headers
            return await self.serve_or_forward(route.name, call, fn, raw, extra if forwardable else None)

        return handler

    async def serve_or_forward(
        self,
        route: str,
        call: Call,
        fn: Callable[[Call], Awaitable[web.StreamResponse]],
        raw: bytes,
        extra: dict[str, str] | None,
    ) -> web.StreamResponse:
        """Serve ``call`` here, or (``extra`` not None) forward it to the leader; a forward that finds the leader
        dead or demoted is tried again against the next leader until ``leader_wait_ms`` has passed (rule 3)."""
        clock = self.node.clock
        deadline_s = clock.monotonic_s() + self.node.cfg.leader_wait_ms / 1000
        while True:
            try:
                return await fn(call)
            except NotLeaderError as exc:
                if extra is None or exc.leader is None:
                    raise
                self.node.metrics.forwarded.inc()
                try:
                    answer = await self.forwarder.forward(call.request, raw, exc.leader, extra, route=route)
                except UnavailableError:
                    if clock.monotonic_s() >= deadline_s:
                        raise
                else:
                    gone = answer.status == STATUS["not_leader"] or _stood_aside(answer)
                    if not gone or clock.monotonic_s() >= deadline_s:
                        return answer
                log.debug("http.forward_retry", leader=exc.leader)
                await self.node.leader_changed(exc.leader, min(deadline_s, clock.monotonic_s() + _FORWARD_RETRY_S))


def _stood_aside(answer: web.Response) -> bool:
    """The leader answered 503 ``disk_full``: it is handing off (``coordinator/_aside.py``), so the next leader
    is asked instead, as after a 421."""
    if answer.status != STATUS["disk_full"] or not isinstance(answer.body, bytes):
        return False
    try:
        return bool(json.loads(answer.body)["error"]["code"] == "disk_full")
    except (ValueError, KeyError, TypeError):
        return False


def _route_key(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "(unmatched)"


def _middleware(server: _Server) -> Any:
    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        return await server.respond(request, _route_key(request), handler)

    return middleware


def _tracing_middleware(node_id: str) -> Any:
    """Rule 7: one server span per request (installed only while tracing is on: no cost otherwise)."""

    @web.middleware
    async def middleware(request: web.Request, handler: Any) -> web.StreamResponse:
        route = _route_key(request)
        attributes = {
            "http.request.method": request.method,
            "http.route": route,
            "seamless.node_id": node_id,
            "seamless.forwarded": FORWARDED_HEADER in request.headers,
        }
        with tracing.span(
            f"{request.method} {route}",
            kind=tracing.SpanKind.SERVER,
            attributes=attributes,
            parent=tracing.extract(request.headers),
        ) as current:
            response: web.StreamResponse = await handler(request)
            if current is not None:
                current.set_attribute("http.response.status_code", response.status)
                if response.status >= 500:
                    current.set_status(tracing.Status(tracing.StatusCode.ERROR, f"HTTP {response.status}"))
            return response

    return middleware


def build_app(node: CoordinatorNode, tokens: TokenTable | None) -> web.Application:
    """The aiohttp application of one node."""
    server = _Server(node, tokens)
    handlers = Handlers(node, build_openapi())
    page = StatusPage.load()
    middlewares = [_middleware(server)]
    if tracing.enabled():
        middlewares.insert(0, _tracing_middleware(node.settings.node_id))
    app = web.Application(middlewares=middlewares, client_max_size=node.cfg.max_body_bytes)
    hot = None
    if node.cfg.hot_path and not tracing.enabled():  # rule 8
        hot = app[HOT_PATH] = HotPath(server.respond, node.connections, node.cfg.max_body_bytes)
    for route in ROUTES:
        fn: Callable[[Call], Awaitable[web.StreamResponse]]
        if route.name == "status_page":
            fn = page.serve
        elif route.command is not None:  # routes.py rule 5: no handler method of its own
            fn = handlers.command_route(route)
        else:
            fn = getattr(handlers, route.name)
        handler = server.wrap(route, fn)
        app.router.add_route(route.method, route.path, handler, name=route.name)
        if hot is not None and route.name in HOT_ROUTES:
            hot.add(route.path, handler)

    async def close_forwarder(_: web.Application) -> None:
        await server.forwarder.close()

    app.on_cleanup.append(close_forwarder)
    return app
