"""Browser safety of a node without tokens (the loopback default): what stops a web page from using the API.

Without tokens anything that can reach the port may call the API, and a browser on the operator's machine can:
a page on another site may send a "simple" cross-origin POST (``text/plain``, no preflight), and a DNS-rebinding
page reaches ``127.0.0.1`` under its own host name and then reads answers as same-origin. So, when the node has
no token table:

1. ``Host`` must name this node: an IP address literal, ``localhost``, the host of ``--http`` or a name in
   ``coordinator.allowed_hosts``; anything else is 403 (field ``Host``). A rebinding page always sends its own
   name.
2. A write (any method but GET, HEAD and OPTIONS) carrying ``Origin`` must come from the node's own origin
   (same host and port as ``Host``) or from ``coordinator.allowed_origins``; otherwise 403 (field ``Origin``).
   Scripts and CLIs send no ``Origin``.
3. A non-empty body must be ``application/json``; anything else (a form, ``text/plain``) is 415 (field
   ``Content-Type``): browsers cannot send JSON cross-origin without a preflight, which the API never grants.
With tokens on, a page cannot present a bearer token it does not have, so none of this applies.
4. :class:`BrowserGuard` applies the same rules with the accepted names built once and the verdict on each
   distinct ``Host`` value remembered (at most :data:`HOST_CACHE_SIZE`): parsing an IP literal per request was
   about 4% of a leader's event-loop time under load (docs/benchmarks.md, issue 20).
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from coordinator._call import HttpRequest
from coordinator.errors import ApiError, AuthError

__all__ = ["HOST_CACHE_SIZE", "BrowserGuard", "browser_refusal"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
#: Distinct ``Host`` values whose verdict a :class:`BrowserGuard` remembers (rule 4); past it, it starts afresh.
HOST_CACHE_SIZE = 256


def _host_name(host: str) -> str:
    """The name part of a ``Host`` header (``[::1]:8080`` -> ``::1``, ``a:1`` -> ``a``), lower-cased."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def browser_refusal(
    request: HttpRequest, *, bound_host: str, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]
) -> ApiError | None:
    """The refusal for ``request`` on a node without tokens, or None when it may go on (rules 1-3)."""
    return BrowserGuard(bound_host, allowed_hosts, allowed_origins).refusal(request)


class BrowserGuard:
    """Rules 1-3 for one node's settings (rule 4: the accepted names built once, host verdicts remembered)."""

    def __init__(self, bound_host: str, allowed_hosts: tuple[str, ...], allowed_origins: tuple[str, ...]) -> None:
        self._accepted = frozenset({"localhost", bound_host.lower(), *(h.lower() for h in allowed_hosts)})
        self._allowed_origins = allowed_origins
        self._hosts: dict[str, bool] = {}

    def _host_ok(self, host: str) -> bool:
        known = self._hosts.get(host)
        if known is None:
            name = _host_name(host)
            known = _is_ip(name) or name in self._accepted
            if len(self._hosts) >= HOST_CACHE_SIZE:
                self._hosts.clear()
            self._hosts[host] = known
        return known

    def refusal(self, request: HttpRequest) -> ApiError | None:
        """The refusal for ``request``, or None when it may go on (rules 1-3)."""
        host = request.headers.get("Host", "")
        if not self._host_ok(host):
            return AuthError(
                f"Host {host[:100]!r} does not name this node: without tokens only IP addresses, localhost, the "
                "--http host and coordinator.allowed_hosts are served (DNS-rebinding protection); use one of "
                "those, add the name to coordinator.allowed_hosts, or turn tokens on (--token-file)",
                code="forbidden",
                field="Host",
            )
        if request.method in _SAFE_METHODS:
            return None
        origin = request.headers.get("Origin")
        if origin is not None and origin not in self._allowed_origins:
            parts = urlsplit(origin)
            if parts.netloc.lower() != host.strip().lower() or parts.scheme not in ("http", "https"):
                return AuthError(
                    f"a write from origin {origin[:100]!r} is refused: without tokens only the node's own origin and "
                    "coordinator.allowed_origins may send writes (a web page must not drive the cluster); add the "
                    "origin to coordinator.allowed_origins, or turn tokens on (--token-file)",
                    code="forbidden",
                    field="Origin",
                )
        has_body = (request.content_length or 0) > 0 or request.body_exists  # a declared length, or a chunked body
        if has_body and request.content_type != "application/json":
            return ApiError(
                f"a body of type {request.content_type!r} is refused: send JSON with 'Content-Type: application/json' "
                "(curl: --json '{...}' or -H 'Content-Type: application/json')",
                code="unsupported_media_type",
                field="Content-Type",
            )
        return None
