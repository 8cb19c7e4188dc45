"""Errors of the coordinator service; the HTTP layer maps ``code`` to a status in one table (``api.STATUS``).

Tree::

    provider.core.errors.SeamlessDataError   the common root of every package's errors
    └── ApiError            base: code, message, field (the offending input) and optional hints
        ├── BadRequestError     400 ``invalid``: a field is missing, malformed or out of range
        ├── AuthError           401 ``unauthorized`` / 403 ``forbidden``
        ├── NotFoundError       404 ``not_found``: unknown job, lease, window or key
        ├── ConflictError       409 ``conflict`` or ``lease_lost`` (a stale fencing token; nothing changed)
        ├── BodyTooLargeError   413 ``too_large``
        ├── NotLeaderError      421 ``not_leader``: ``leader`` holds the leader's HTTP base URL to retry on
        └── UnavailableError    503 ``no_leader`` or ``timeout``, 429 ``capacity`` (a limit: nothing changed), with
                                ``retry_after_s``; a ``timeout`` on a write means "maybe applied": retry with the
                                same ``Idempotency-Key`` to be safe

``ApiError`` is the server's error (the body it answers with); the client raises
``provider.errors.CoordinatorError`` when it reads such a body. The pure table never raises these: it returns
:class:`coordinator.table.Result` values, which :func:`from_result` turns into errors at the service edge.
"""

from __future__ import annotations

from typing import Any

from provider.core.errors import SeamlessDataError

__all__ = [
    "AuthError",
    "BadRequestError",
    "BodyTooLargeError",
    "ConflictError",
    "ApiError",
    "NotFoundError",
    "NotLeaderError",
    "UnavailableError",
    "from_result",
]


class ApiError(SeamlessDataError):
    """Base class: ``code`` is the machine-readable error, ``field`` names the input it concerns."""

    code = "internal"

    def __init__(self, message: str, *, code: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.field = field or None

    def body(self) -> dict[str, Any]:
        """The JSON error body: ``{"error": {"code", "message", "field"?, ...hints}}``."""
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            error["field"] = self.field
        return {"error": error}


class BadRequestError(ApiError):
    code = "invalid"


class AuthError(ApiError):
    code = "unauthorized"


class NotFoundError(ApiError):
    code = "not_found"


class ConflictError(ApiError):
    code = "conflict"


class BodyTooLargeError(ApiError):
    code = "too_large"


class NotLeaderError(ApiError):
    """This node cannot serve the write; ``leader`` is the HTTP base URL of the leader when known."""

    code = "not_leader"

    def __init__(self, message: str, *, leader: str | None) -> None:
        super().__init__(message)
        self.leader = leader

    def body(self) -> dict[str, Any]:
        body = super().body()
        body["error"]["leader"] = self.leader
        return body


class UnavailableError(ApiError):
    """No leader, or a replicated command did not finish in time."""

    code = "no_leader"

    def __init__(self, message: str, *, code: str = "no_leader", retry_after_s: int = 1) -> None:
        super().__init__(message, code=code)
        self.retry_after_s = retry_after_s


_BY_CODE: dict[str, type[ApiError]] = {
    "invalid": BadRequestError,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "lease_lost": ConflictError,
}


def from_result(code: str, message: str, field: str = "", value: Any = None) -> ApiError:
    """The error for a failed table :class:`~coordinator.table.Result` (whose ``value`` may carry
    ``retry_after_ms`` for a ``capacity`` refusal)."""
    if code == "capacity":
        retry_ms = value.get("retry_after_ms", 1000) if isinstance(value, dict) else 1000
        error = UnavailableError(message, code=code, retry_after_s=max(1, -(-int(retry_ms) // 1000)))
        error.field = field or None
        return error
    cls = _BY_CODE.get(code, ApiError)
    return cls(message, code=code, field=field or None)
