"""Bearer-token roles for the HTTP API.

Token file format (``--token-file``), one token per line::

    # comment
    TOKEN ROLE [NAME]

``ROLE`` is ``reader`` (GET routes), ``worker`` (reader + submitting jobs, claim/renew/complete/fail/release and
QMTL keyed leases: what workers and providers need) or ``operator`` (everything: also cancel, retry, requeue,
mark-done). ``NAME`` labels the token in logs (default: the
role). Tokens are at least 16 printable characters without spaces. A bad line is an error naming its number.

Rules:
1. ``Authorization: Bearer TOKEN`` picks the role; roles are ordered reader < worker < operator.
2. Tokens are kept only as SHA-256 digests and compared by digest, so the table never holds them in clear.
3. Without a token file auth is off (the CLI allows that on loopback binds only).
4. A public route that shows more to a role (``/metrics``: per-job series to ``reader``) takes an optional token:
   none is :data:`UNAUTHENTICATED`, which no role check allows; an unknown one is refused (401) as anywhere else,
   so a scraper with a wrong token fails loudly instead of quietly seeing less.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from coordinator.errors import AuthError

__all__ = ["ANONYMOUS", "ROLES", "UNAUTHENTICATED", "Principal", "TokenTable"]

#: Roles, weakest first; a role may do everything the roles before it may.
ROLES = ("reader", "worker", "operator")
_MIN_TOKEN_CHARS = 16


@dataclass(frozen=True)
class Principal:
    """Who made a request: a name for logs and a role."""

    name: str
    role: str

    def allows(self, required: str) -> bool:
        return self.role in ROLES and ROLES.index(self.role) >= ROLES.index(required)


#: The caller when auth is off.
ANONYMOUS = Principal("anonymous", "operator")
#: The caller of a public route without a token when auth is on (rule 4): no role.
UNAUTHENTICATED = Principal("unauthenticated", "")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class TokenTable:
    """Token digests -> principals."""

    def __init__(self, entries: dict[bytes, Principal]) -> None:
        self._entries = dict(entries)

    def __len__(self) -> int:
        return len(self._entries)

    @classmethod
    def parse(cls, text: str, source: str = "token file") -> TokenTable:
        """Parse the token file format, or raise ``ValueError`` naming the line."""
        entries: dict[bytes, Principal] = {}
        for number, raw in enumerate(text.splitlines(), start=1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            parts = line.split()
            if len(parts) not in (2, 3):
                raise ValueError(f"{source} line {number}: expected 'TOKEN ROLE [NAME]'")
            token, role = parts[0], parts[1]
            if role not in ROLES:
                raise ValueError(f"{source} line {number}: role {role!r} is not one of {', '.join(ROLES)}")
            if len(token) < _MIN_TOKEN_CHARS or not token.isprintable():
                raise ValueError(f"{source} line {number}: tokens need at least {_MIN_TOKEN_CHARS} printable chars")
            digest = _digest(token)
            if digest in entries:
                raise ValueError(f"{source} line {number}: duplicate token")
            entries[digest] = Principal(parts[2] if len(parts) == 3 else role, role)
        if not entries:
            raise ValueError(f"{source} has no tokens")
        return cls(entries)

    @classmethod
    def load(cls, path: str | Path) -> TokenTable:
        source = Path(path)
        try:
            text = source.read_text(encoding="utf-8")
        except OSError as exc:
            raise ValueError(f"cannot read token file {str(source)!r}: {exc.strerror}") from None
        return cls.parse(text, f"token file {str(source)!r}")

    def identify(self, header: str | None) -> Principal:
        """The principal of an optional ``Authorization`` header (rule 4): :data:`UNAUTHENTICATED` without one;
        an unknown token raises :class:`AuthError` (401)."""
        if not header:
            return UNAUTHENTICATED
        return self.authenticate(header, ROLES[0])

    def authenticate(self, header: str | None, required: str) -> Principal:
        """The principal of an ``Authorization`` header allowed ``required``, or raise :class:`AuthError`."""
        if not header:
            raise AuthError("missing Authorization: Bearer token", field="Authorization")
        scheme, _, token = header.partition(" ")
        principal = self._entries.get(_digest(token.strip())) if scheme.lower() == "bearer" else None
        if principal is None:
            raise AuthError("unknown bearer token", field="Authorization")
        if not principal.allows(required):
            raise AuthError(
                f"role {principal.role!r} may not do this; it needs {required!r}",
                code="forbidden",
                field="Authorization",
            )
        return principal
