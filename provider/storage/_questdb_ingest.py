"""QuestDB plumbing: ILP/HTTP senders and the WAL-apply wait that gives read-your-writes.

Rules:
1. One ``flush`` per table per window: an ILP/HTTP flush is one WAL transaction, applied all at once.
2. ``questdb.Sender`` blocks and is not thread-safe: each flush runs in a worker thread on a sender borrowed
   from the :class:`SenderPool` of its ILP configuration. Senders are reused for the life of the process: the
   client warns ("burst of reconnections") when senders are created and destroyed often, and a program that opens
   and closes storages repeatedly (a provider per request, a test per table) would otherwise create one each
   time. Storages of one server and configuration share one pool, which keeps at most ``_IDLE_SENDERS`` (enough
   for a worker's windows in flight, two flushes each); a sender is closed only when a call on it failed (its
   buffer or connection is suspect) or its buffer grew past ``_KEEP_BUF_BYTES``. The client retries a failed
   flush for ``retry_timeout_ms`` (deduplication makes a repeated window harmless).
3. After a flush, :meth:`WalMonitor.wait_applied` polls ``wal_tables()`` until the tables' writers have applied
   every transaction the sequencer had at that moment, bounded by ``wal_apply_timeout_ms``. Concurrent waiters
   of one storage share each status query. A suspended table
   raises :class:`WalSuspendedError` with the ``RESUME WAL`` fix; it is never waited out silently.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import threading
from typing import Any, ClassVar

import numpy as np
import pandas as pd
from questdb import QuestDBError, QuestDBErrorCode, Sender, TimestampNanos

from provider.frames import PRICE_COLUMNS
from provider.storage._pgpool import PgPool
from provider.storage.errors import StorageError, StorageUnavailableError, WalApplyTimeoutError, WalSuspendedError

__all__ = ["IlpWriter", "SenderPool", "WalMonitor", "ilp_frame"]

#: Largest ILP buffer one window may need (~100 bytes per bar); larger windows are refused by the client.
_MAX_BUF_BYTES = 1 << 30
#: A sender whose buffer grew beyond this is closed after use instead of keeping the memory.
_KEEP_BUF_BYTES = 64 << 20
#: Idle senders kept per ILP configuration: 8 windows in flight flush bars and ledger together.
_IDLE_SENDERS = 16
_UNAVAILABLE_CODES = frozenset(
    getattr(QuestDBErrorCode, name)
    for name in ("SocketError", "CouldNotResolveAddr", "ConnectTimeout", "ServerFlushError", "FailoverRetry")
    if hasattr(QuestDBErrorCode, name)
)
_WAL_SQL = "SELECT name, suspended, writerTxn, sequencerTxn, errorTag, errorMessage FROM wal_tables()"
_POLL_FIRST_S = 0.002
_POLL_MAX_S = 0.05


def ilp_frame(series: str, ts_ms: np.ndarray, columns: Any) -> pd.DataFrame:
    """The frame the questdb client sends: a ``series`` symbol column, naive-UTC ``ts`` and the prices."""
    data: dict[str, Any] = {
        "series": pd.Series(np.full(len(ts_ms), series, dtype=object), dtype=object, copy=False),
        "ts": ts_ms.astype("datetime64[ms]").astype("datetime64[ns]"),
    }
    for name, column in zip(PRICE_COLUMNS, columns, strict=True):
        data[name] = column
    return pd.DataFrame(data)


class SenderPool:
    """Idle ILP/HTTP senders of one configuration string, shared by every storage of this process that uses it."""

    _pools: ClassVar[dict[str, SenderPool]] = {}
    _pools_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, conf: str) -> None:
        self._conf = conf
        self._idle: list[Sender] = []
        self._lock = threading.Lock()
        self.created = 0  #: senders established by this pool (a test checks reuse with it)

    @classmethod
    def for_conf(cls, conf: str) -> SenderPool:
        """The process's pool for ``conf`` (created on first use)."""
        with cls._pools_lock:
            pool = cls._pools.get(conf)
            if pool is None:
                pool = cls._pools[conf] = cls(conf)
            return pool

    def take(self) -> Sender:
        """An idle sender, or a new one when none is idle."""
        with self._lock:
            if self._idle:
                return self._idle.pop()
            self.created += 1
        sender = Sender.from_conf(self._conf)
        sender.establish()  # type: ignore[no-untyped-call]
        return sender

    def give_back(self, sender: Sender, sent_bytes: int) -> None:
        """Keep a sender that flushed cleanly for the next caller (bounded), else close it."""
        with self._lock:
            if sent_bytes <= _KEEP_BUF_BYTES and len(self._idle) < _IDLE_SENDERS:
                self._idle.append(sender)
                return
        sender.close(flush=False)


class IlpWriter:
    """Flushes frames and ledger rows to QuestDB over ILP/HTTP, one flush per call."""

    def __init__(self, conf: str, *, target: str, retry_timeout_ms: int) -> None:
        self._senders = SenderPool.for_conf(
            f"{conf}auto_flush=off;max_buf_size={_MAX_BUF_BYTES};retry_timeout={retry_timeout_ms};"
        )
        self._target = target

    def _flush(self, fill: Any) -> None:
        try:
            sender = self._senders.take()
        except QuestDBError as exc:
            raise self._error(exc) from exc
        try:
            fill(sender)
            sent_bytes = len(sender)
            sender.flush()
        except QuestDBError as exc:
            sender.close(flush=False)
            raise self._error(exc) from exc
        except BaseException:
            sender.close(flush=False)
            raise
        self._senders.give_back(sender, sent_bytes)

    def _error(self, exc: QuestDBError) -> StorageError:
        if exc.code in _UNAVAILABLE_CODES:
            return StorageUnavailableError("questdb", self._target, f"ILP/HTTP write failed: {exc}")
        return StorageError(f"questdb storage at {self._target}: ILP/HTTP write refused: {exc}")

    async def send_frame(self, table: str, frame: pd.DataFrame) -> None:
        """Send ``frame`` (from :func:`ilp_frame`) to ``table`` in one flush."""

        def fill(sender: Sender) -> None:
            sender.dataframe(frame, table_name=table, symbols=["series"], at="ts")

        await asyncio.to_thread(self._flush, fill)

    async def send_ledger_row(
        self, table: str, series: str, start_ms: int, end_ms: int, rows: int, source: str | None = None
    ) -> None:
        """Record the window ``[start_ms, end_ms)`` of ``series`` (served by ``source``) in the ledger ``table``
        in one flush. Without a source the column is left out, so the replaced row's source becomes NULL."""
        written_at = dt.datetime.now(dt.UTC)
        symbols: dict[str, str | None] = {"series": series, "source": source}  # the client leaves None out

        def fill(sender: Sender) -> None:
            sender.row(
                table,
                symbols=symbols,
                columns={"start_ms": start_ms, "end_ms": end_ms, "row_count": rows, "written_at": written_at},
                at=TimestampNanos(start_ms * 1_000_000),
            )

        await asyncio.to_thread(self._flush, fill)

    def close(self) -> None:
        """Nothing to release: every call flushed and gave its sender back to the shared pool."""


class WalMonitor:
    """Waits for QuestDB to apply committed WAL transactions of a storage's tables and reports suspended ones.

    One ``wal_tables()`` query answers for every table of the storage, and concurrent callers share it: a caller
    takes the latest answer whose query started after the moment it needs (after its flush, or after the answer
    it already has), or starts one. So eight windows in flight cost one status query per poll, not eight.
    """

    def __init__(self, pool: PgPool, tables: tuple[str, ...], *, timeout_ms: int, target: str) -> None:
        self._pool = pool
        self._tables = tables
        self._timeout_ms = timeout_ms
        self._target = target
        marks = ", ".join(f"${n}" for n in range(1, len(tables) + 1))
        self._sql = f"{_WAL_SQL} WHERE name IN ({marks})"
        self._latest: tuple[float, asyncio.Future[dict[str, Any]]] | None = None

    async def _query(self) -> dict[str, Any]:
        rows = await self._pool.fetch(self._sql, *self._tables, what="wal status")
        return {row["name"]: row for row in rows}

    async def _statuses(self, newer_than: float) -> tuple[float, dict[str, Any]]:
        """The status of every table from a query started after ``newer_than`` (loop time), and its start."""
        latest = self._latest
        stale = latest is None or latest[0] <= newer_than
        if not stale and latest is not None and latest[1].done() and latest[1].exception() is not None:
            stale = True  # a failed query is never shared twice
        if stale:
            started = asyncio.get_running_loop().time()
            latest = self._latest = (started, asyncio.ensure_future(self._query()))
        assert latest is not None
        return latest[0], await asyncio.shield(latest[1])

    def _row(self, statuses: dict[str, Any], table: str) -> Any:
        row = statuses.get(table)
        if row is None:
            raise StorageError(f"questdb storage at {self._target}: table {table!r} is not a WAL table")
        if row["suspended"]:
            reason = " ".join(part for part in (row["errorTag"], row["errorMessage"]) if part)
            raise WalSuspendedError(table, reason)
        return row

    async def suspended(self) -> dict[str, bool]:
        """Each table of the storage and whether its WAL is suspended, from a status query started now."""
        _, statuses = await self._statuses(asyncio.get_running_loop().time())
        return {table: bool(statuses[table]["suspended"]) for table in self._tables if table in statuses}

    async def check(self, *tables: str) -> None:
        """Raise :class:`WalSuspendedError` when one of ``tables`` is suspended."""
        _, statuses = await self._statuses(asyncio.get_running_loop().time())
        for table in tables:
            self._row(statuses, table)

    async def wait_applied(self, *tables: str, committed_at: float | None = None) -> None:
        """Return once every transaction committed to ``tables`` so far is visible to readers.

        ``committed_at`` (loop time) is when the caller's last flush returned; a status query started after it
        already counts that flush, so the caller may share it. Without it, only a query started now counts.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_ms / 1000
        seen, statuses = await self._statuses(loop.time() if committed_at is None else committed_at)
        targets = {table: self._row(statuses, table)["sequencerTxn"] for table in tables}
        delay = _POLL_FIRST_S
        while behind := [t for t in tables if self._row(statuses, t)["writerTxn"] < targets[t]]:
            if loop.time() >= deadline:
                table = behind[0]
                writer = statuses[table]["writerTxn"]
                raise WalApplyTimeoutError(self._target, table, self._timeout_ms, writer, targets[table])
            await asyncio.sleep(delay)
            delay = min(delay * 2, _POLL_MAX_S)
            seen, statuses = await self._statuses(seen)
