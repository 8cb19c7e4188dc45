"""Storage DSNs: parse and validate once; :mod:`provider.storage._open` opens the backend a DSN names.

Rules:
1. Schemes: ``questdb://USER:PASS@HOST:PGPORT/?http_port=9000`` (reads over the PG wire, writes over HTTP,
   reads of more than ``parquet_min_bars`` slots over the HTTP export, see :mod:`provider.storage._questdb_read`),
   ``postgresql://`` (or ``postgres://``), ``sqlite:///relative.db`` / ``sqlite:////absolute.db`` and
   ``memory://``. A ``postgresql://`` DSN of a QuestDB server is accepted with ``kind="questdb"``.
2. Every field is checked here; a bad one raises :class:`StorageConfigError` naming it. Unknown query options
   are errors, except that a PostgreSQL DSN passes them on to the driver (``sslmode=...``).
3. The ``table`` option names the bar table; the ledger (``_windows``) and series (``_series``) tables take it
   as a prefix. It must be a lower-case SQL identifier, so it can be quoted into DDL safely.
4. Parsing opens no connection, reads no environment and shows no password (see :meth:`StorageDsn.redacted`).
5. This module imports no backend: the backends import :class:`StorageDsn` from here, and the factory that
   imports them lives in ``_open.py``, so the imports of the package form no circle.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlsplit

from provider.core import STORAGE_DSN_ENV
from provider.storage.errors import StorageConfigError

__all__ = [
    "KINDS",
    "STORAGE_DSN_ENV",
    "StorageDsn",
    "parse_dsn",
    "read_dsn_file",
    "shows_password",
    "valid_identifier",
]

#: Backend kinds, as ``open_storage(kind=...)`` and :attr:`Storage.kind` spell them.
KINDS = ("memory", "sqlite", "postgres", "questdb")

_SCHEMES = {
    "memory": "memory",
    "sqlite": "sqlite",
    "postgresql": "postgres",
    "postgres": "postgres",
    "questdb": "questdb",
}
_IDENTIFIER_RE = re.compile(r"[a-z_][a-z0-9_]{0,39}")
#: Options each kind understands; ``postgres`` passes any others to asyncpg.
_OPTIONS = {
    "memory": frozenset(),
    "sqlite": frozenset({"table", "busy_timeout_ms"}),
    "postgres": frozenset({"table", "pool_size", "retry_timeout_ms"}),
    "questdb": frozenset(
        {
            "table",
            "pool_size",
            "retry_timeout_ms",
            "http_port",
            "http_host",
            "http_user",
            "http_password",
            "http_token",
            "wal_apply_timeout_ms",
            "parquet_min_bars",
            "export_keepalive_ms",
        }
    ),
}
_DEFAULT_PORT = {"postgres": 5432, "questdb": 8812}
_DEFAULT_TABLE = "ohlcv"


def shows_password(dsn: str) -> bool:
    """Whether ``dsn`` carries a secret (a URL password, ``http_password`` or ``http_token``): given as a command
    line argument it is visible to every local user in ``ps``."""
    try:
        parts = urlsplit(dsn)
        return parts.password is not None or any(
            key in ("http_password", "http_token") for key, _ in parse_qsl(parts.query)
        )
    except ValueError:
        return False


def read_dsn_file(path: Any) -> str:
    """The DSN in a file (``--storage-file``, e.g. a Docker or Kubernetes secret): its first line that is neither
    blank nor a ``#`` comment."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return text
    raise StorageConfigError("storage_file", str(path), "a file whose first non-comment line is a storage DSN")


def valid_identifier(name: Any) -> bool:
    """Whether ``name`` is a lower-case SQL identifier of at most 40 chars (safe to splice into DDL)."""
    return isinstance(name, str) and _IDENTIFIER_RE.fullmatch(name) is not None


@dataclass(frozen=True)
class StorageDsn:
    """A validated storage DSN."""

    kind: str
    table: str = _DEFAULT_TABLE
    path: str | None = None  #: sqlite file path
    host: str | None = None
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    database: str | None = None
    #: QuestDB ILP/HTTP endpoint and optional HTTP credentials.
    http_host: str | None = None
    http_port: int = 9000
    http_user: str | None = None
    http_password: str | None = field(default=None, repr=False)
    http_token: str | None = field(default=None, repr=False)
    #: Overrides of StorageConfig given in the DSN query (None means "use the config").
    pool_size: int | None = None
    wal_apply_timeout_ms: int | None = None
    #: QuestDB: reads of more grid slots than this use the HTTP Parquet export (None: the measured default).
    parquet_min_bars: int | None = None
    #: QuestDB: how long an export connection stays open idle for the next export (0: closed after each one).
    export_keepalive_ms: int = 1_000
    #: How long reconnects (after a server restart) are retried before StorageUnavailableError.
    retry_timeout_ms: int = 30_000
    busy_timeout_ms: int = 30_000
    #: Extra query options passed to asyncpg (postgres only).
    driver_options: tuple[tuple[str, str], ...] = ()

    def pg_dsn(self) -> str:
        """The ``postgresql://`` DSN asyncpg connects with (PostgreSQL and QuestDB's PG wire)."""
        auth = ""
        if self.user:
            auth = quote(self.user, safe="")
            if self.password is not None:
                auth += ":" + quote(self.password, safe="")
            auth += "@"
        query = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in self.driver_options)
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        base = f"postgresql://{auth}{host}:{self.port}/{quote(self.database or '', safe='')}"
        return f"{base}?{query}" if query else base

    def ilp_conf(self) -> str:
        """The questdb client configuration string for ILP over HTTP (without buffer options)."""
        parts = [f"http::addr={self.http_host or self.host}:{self.http_port}"]
        if self.http_token:
            parts.append(f"token={self.http_token}")
        elif self.http_user:
            parts.append(f"username={self.http_user}")
            parts.append(f"password={self.http_password or ''}")
        return ";".join(parts) + ";"

    def redacted(self) -> str:
        """A printable address without secrets, for messages and logs."""
        if self.kind == "memory":
            return "memory://"
        if self.kind == "sqlite":
            return f"sqlite:///{self.path}"
        user = f"{self.user}:***@" if self.user else ""
        extra = f" (ilp http port {self.http_port})" if self.kind == "questdb" else ""
        return f"{self.kind}://{user}{self.host}:{self.port}/{self.database or ''}{extra}"


def _int_option(name: str, text: str, lo: int, hi: int) -> int:
    if not re.fullmatch(r"[0-9]{1,10}", text) or not lo <= int(text) <= hi:
        raise StorageConfigError(name, text, f"an integer in [{lo}, {hi}]")
    return int(text)


def _kind_of(scheme: str, kind: str | None) -> str:
    base = _SCHEMES.get(scheme)
    if base is None:
        raise StorageConfigError("scheme", scheme, "questdb, postgresql, postgres, sqlite or memory")
    if kind is None:
        return base
    if kind not in KINDS:
        raise StorageConfigError("kind", kind, " | ".join(KINDS))
    if kind != base and not (kind == "questdb" and base == "postgres"):
        raise StorageConfigError("kind", kind, f"{base!r} for a {scheme}:// DSN (or 'questdb' for postgresql://)")
    return kind


def _options(query: str) -> dict[str, str]:
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=bool(query))
    except ValueError:
        raise StorageConfigError("query", query, "key=value pairs joined by &") from None
    options: dict[str, str] = {}
    for key, value in pairs:
        if key in options:
            raise StorageConfigError(key, value, "one value (the option is repeated)")
        options[key] = value
    return options


def _password(parts: Any, kind: str) -> str | None:
    if parts.username:
        return None if parts.password is None else unquote(parts.password)
    return "quest" if kind == "questdb" else None


def _server_fields(kind: str, parts: Any, options: dict[str, str]) -> dict[str, Any]:
    try:
        host, port = parts.hostname, parts.port
    except ValueError:
        raise StorageConfigError("port", parts.netloc.rpartition(":")[2], "an integer in [1, 65535]") from None
    if not host:
        raise StorageConfigError("host", host or "", f"a host name, e.g. {kind}://user:pass@127.0.0.1:5432/db")
    if port == 0:
        raise StorageConfigError("port", 0, "an integer in [1, 65535]")
    database = parts.path.lstrip("/") or ("qdb" if kind == "questdb" else None)
    if database is not None and "/" in database:
        raise StorageConfigError("database", database, "a single database name")
    out: dict[str, Any] = {
        "host": host,
        "port": port or _DEFAULT_PORT[kind],
        "user": unquote(parts.username) if parts.username else ("admin" if kind == "questdb" else None),
        "password": _password(parts, kind),
        "database": database,
    }
    if "pool_size" in options:
        out["pool_size"] = _int_option("pool_size", options.pop("pool_size"), 1, 256)
    if "retry_timeout_ms" in options:
        out["retry_timeout_ms"] = _int_option("retry_timeout_ms", options.pop("retry_timeout_ms"), 0, 3_600_000)
    if kind == "questdb":
        out.update(_questdb_fields(options))
    return out


def _questdb_fields(options: dict[str, str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if "http_port" in options:
        out["http_port"] = _int_option("http_port", options.pop("http_port"), 1, 65535)
    if "wal_apply_timeout_ms" in options:
        out["wal_apply_timeout_ms"] = _int_option(
            "wal_apply_timeout_ms", options.pop("wal_apply_timeout_ms"), 0, 600_000
        )
    if "parquet_min_bars" in options:
        out["parquet_min_bars"] = _int_option("parquet_min_bars", options.pop("parquet_min_bars"), 0, 10**9)
    if "export_keepalive_ms" in options:
        out["export_keepalive_ms"] = _int_option("export_keepalive_ms", options.pop("export_keepalive_ms"), 0, 60_000)
    for name in ("http_host", "http_user", "http_password", "http_token"):
        if name in options:
            value = options.pop(name)
            if not value or any(c in value for c in ";\n\r"):
                secret = "password" in name or "token" in name
                raise StorageConfigError(
                    name, "***" if secret else value, "a non-empty value without ';' or line breaks"
                )
            out[name] = value
    return out


def _sqlite_fields(parts: Any, options: dict[str, str]) -> dict[str, Any]:
    if parts.netloc:
        raise StorageConfigError("host", parts.netloc, "nothing: use sqlite:///relative.db or sqlite:////abs.db")
    path = parts.path[1:] if parts.path.startswith("/") else parts.path
    if not path or path.endswith("/") or path == ":memory:":
        raise StorageConfigError("path", path, "a database file path, e.g. sqlite:///seamless.db")
    out: dict[str, Any] = {"path": path}
    if "busy_timeout_ms" in options:
        out["busy_timeout_ms"] = _int_option("busy_timeout_ms", options.pop("busy_timeout_ms"), 0, 3_600_000)
    return out


def parse_dsn(dsn: Any, *, kind: str | None = None) -> StorageDsn:
    """Parse and validate ``dsn``; ``kind`` forces a backend (``"questdb"`` for a ``postgresql://`` QuestDB)."""
    if not isinstance(dsn, str) or "://" not in dsn:
        raise StorageConfigError("dsn", dsn, "a DSN such as sqlite:///seamless.db or questdb://admin:quest@host:8812/")
    parts = urlsplit(dsn)
    chosen = _kind_of(parts.scheme.lower(), kind)
    if parts.fragment:
        raise StorageConfigError("fragment", parts.fragment, "nothing after '#'")
    options = _options(parts.query)
    fields: dict[str, Any] = {"kind": chosen}
    if "table" in options:
        table = options.pop("table")
        if not valid_identifier(table):
            raise StorageConfigError("table", table, "a lower-case identifier matching [a-z_][a-z0-9_]{0,39}")
        fields["table"] = table
    if chosen == "memory":
        if parts.netloc or parts.path.strip("/"):
            raise StorageConfigError("path", parts.netloc + parts.path, "nothing: the DSN is just memory://")
    elif chosen == "sqlite":
        fields.update(_sqlite_fields(parts, options))
    else:
        fields.update(_server_fields(chosen, parts, options))
    if chosen == "postgres":
        fields["driver_options"] = tuple(sorted(options.items()))
        options = {}
    if options:  # every known option was consumed above
        name = sorted(options)[0]
        allowed = ", ".join(sorted(_OPTIONS[chosen])) or "no options"
        raise StorageConfigError(name, options[name], f"a known option for {chosen}: {allowed}")
    return StorageDsn(**fields)
