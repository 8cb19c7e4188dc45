"""An asyncpg pool that survives server restarts, shared by the PostgreSQL and QuestDB backends.

Rules:
1. Every operation is a coroutine function of one connection; :meth:`PgPool.run` acquires a connection and runs
   it. When the connection is lost or refused (server restart, network blip) the operation is retried on a
   fresh connection with capped backoff until ``retry_timeout_ms``, then :class:`StorageUnavailableError`.
2. Only operations that are safe to repeat go through ``run``: reads, DDL with ``IF NOT EXISTS``, status polls,
   and PostgreSQL transactions (which either committed before the loss was seen, or rolled back).
   A connection whose protocol state broke (the server's FATAL message half-read) is terminated, not reused.
3. Errors the server reports about the query itself are not retried; they surface unchanged.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from provider.core.obs import get_logger
from provider.storage.errors import StorageUnavailableError

__all__ = ["TRANSIENT_ERRORS", "PgPool"]

_T = TypeVar("_T")
_log = get_logger("provider.storage")

#: Errors that mean "the connection is gone", not "the query is wrong" (see also :func:`_connection_closed`).
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.OperatorInterventionError,
)


def _connection_closed(exc: BaseException) -> bool:
    """asyncpg reports use of a connection the server dropped as a generic InterfaceError."""
    return isinstance(exc, asyncpg.exceptions.InterfaceError) and "closed" in str(exc)


def _protocol_broken(exc: BaseException) -> bool:
    """A connection the server terminated while idle may still be mid-way through reading the server's FATAL
    message when the next query starts; asyncpg then refuses to switch state ("another operation is in
    progress"). Nothing was sent, so the operation can run again on a fresh connection."""
    return isinstance(exc, asyncpg.exceptions.InternalClientError)


_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0


class PgPool:
    """A lazily created asyncpg pool with reconnecting retries."""

    def __init__(
        self,
        dsn: str,
        *,
        backend: str,
        target: str,
        max_size: int,
        retry_timeout_ms: int,
    ) -> None:
        self._dsn = dsn
        self._backend = backend
        self._target = target
        self._max_size = max_size
        self._retry_timeout_s = retry_timeout_ms / 1000
        self._pool: asyncpg.Pool | None = None
        self._creating = asyncio.Lock()

    async def _get_pool(self) -> asyncpg.Pool:
        if self._pool is not None:
            return self._pool
        async with self._creating:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self._dsn, min_size=1, max_size=self._max_size, timeout=10)
        return self._pool

    async def run(self, operation: Callable[[asyncpg.Connection], Awaitable[_T]], what: str) -> _T:
        """Run ``operation`` on a pooled connection, retrying lost connections; ``what`` names it in errors."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_timeout_s
        delay = _FIRST_DELAY_S
        attempt = 0
        while True:
            attempt += 1
            try:
                pool = await self._get_pool()
                async with pool.acquire() as conn:
                    try:
                        return await operation(conn)
                    except asyncpg.exceptions.InternalClientError:
                        conn.terminate()  # never hand a connection in a broken protocol state back to the pool
                        raise
            except asyncpg.exceptions.InvalidPasswordError as exc:
                raise StorageUnavailableError(self._backend, self._target, f"{what}: {exc}") from exc
            except (
                *TRANSIENT_ERRORS,
                asyncpg.exceptions.InterfaceError,
                asyncpg.exceptions.InternalClientError,
            ) as exc:
                if not isinstance(exc, TRANSIENT_ERRORS) and not _connection_closed(exc) and not _protocol_broken(exc):
                    raise
                if loop.time() + delay > deadline:
                    raise StorageUnavailableError(
                        self._backend, self._target, f"{what} failed after {attempt} attempts: {exc!r}"
                    ) from exc
                _log.warning(
                    "storage.retry",
                    backend=self._backend,
                    target=self._target,
                    what=what,
                    attempt=attempt,
                    error=repr(exc),
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)

    async def fetch(self, sql: str, *args: Any, what: str) -> list[Any]:
        """``conn.fetch`` through :meth:`run`."""

        async def op(conn: asyncpg.Connection) -> list[Any]:
            return list(await conn.fetch(sql, *args))

        return await self.run(op, what)

    async def fetchrow(self, sql: str, *args: Any, what: str) -> Any:
        """``conn.fetchrow`` through :meth:`run`."""

        async def op(conn: asyncpg.Connection) -> Any:
            return await conn.fetchrow(sql, *args)

        return await self.run(op, what)

    async def close(self) -> None:
        """Close the pool (waits for connections in use to be released, at most 10 s)."""
        pool, self._pool = self._pool, None
        if pool is not None:
            try:
                await asyncio.wait_for(pool.close(), timeout=10)
            except TimeoutError:
                pool.terminate()
