"""The parsed request a handler receives: the one type the API, the handlers and the status page share.

Rules:
1. This module depends on nothing of the HTTP layer above it (``api.py``) or beside it (``handlers.py``,
   ``status_page.py``): they all import :class:`Call` from here, so their imports form no circle.
2. A path parameter is 1-1000 characters; anything else is a 400 naming it.
3. :class:`HttpRequest` is what the API layer, the handlers, the browser guard and the forwarder may read of a
   request. aiohttp's ``web.Request`` has it, and so does the hot path's request (``_hotpath.py``), which serves
   the two busiest routes without aiohttp's machinery; mypy holds the shared code to this much.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from coordinator.auth import Principal
from coordinator.errors import BadRequestError

__all__ = ["Call", "HttpRequest"]


class HttpRequest(Protocol):
    """The parts of a request the shared HTTP code reads (rule 3)."""

    @property
    def method(self) -> str: ...

    @property
    def path(self) -> str: ...

    @property
    def path_qs(self) -> str: ...

    @property
    def headers(self) -> Mapping[str, str]: ...

    @property
    def query(self) -> Mapping[str, str]: ...

    @property
    def match_info(self) -> Mapping[str, str]: ...

    @property
    def content_length(self) -> int | None: ...

    @property
    def content_type(self) -> str: ...

    @property
    def body_exists(self) -> bool: ...

    async def read(self) -> bytes: ...

    def __getitem__(self, key: str) -> Any: ...

    def __setitem__(self, key: str, value: Any) -> None: ...


@dataclass(frozen=True)
class Call:
    """One parsed request as handlers see it."""

    request: HttpRequest
    body: dict[str, Any]
    principal: Principal
    client_id: str
    request_id: str

    def param(self, name: str) -> str:
        """The path parameter ``name``; a 400 naming it when it is empty or longer than 1000 characters."""
        value = self.request.match_info[name]
        if not value or len(value) > 1000:
            raise BadRequestError(f"path parameter {name} must be 1-1000 chars", field=name)
        return value
