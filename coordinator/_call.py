"""The parsed request a handler receives: the one type the API, the handlers and the status page share.

Rules:
1. This module depends on nothing of the HTTP layer above it (``api.py``) or beside it (``handlers.py``,
   ``status_page.py``): they all import :class:`Call` from here, so their imports form no circle.
2. A path parameter is 1-1000 characters; anything else is a 400 naming it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiohttp import web

from coordinator.auth import Principal
from coordinator.errors import BadRequestError

__all__ = ["Call"]


@dataclass(frozen=True)
class Call:
    """One parsed request as handlers see it."""

    request: web.Request
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
