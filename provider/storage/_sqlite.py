"""The SQLite backend (``sqlite:///path.db``), the embedded default.

Rules:
1. Schema (``T`` is the DSN's ``table`` option, default ``ohlcv``)::

       T_series (id INTEGER PRIMARY KEY, series TEXT UNIQUE, source, symbol, interval)
       T        (series_id, ts INTEGER epoch ms, open, high, low, close, volume REAL; PK (series_id, ts))
       T_windows(series_id, start_ms, end_ms, row_count, written_at epoch ms, source TEXT NULL;
                 PK (series_id, start_ms))

   A ``T_windows`` of an earlier version (without ``source``) gets the column at open (``ALTER TABLE ... ADD
   COLUMN``, in the schema transaction, so concurrent openers add it once); its windows keep a NULL source.

2. Several processes on one machine may share a file: WAL journal, ``busy_timeout``, and every write is one
   ``BEGIN IMMEDIATE`` transaction (delete the window's bars, insert the new ones, upsert the ledger row), so a
   window is replaced atomically or not at all. ``synchronous=FULL``: a returned write survives power loss.
3. sqlite3 blocks, so every call runs in a small thread pool; each thread owns one connection.
4. A file still in SQLite's default rollback journal (a new file, or one another tool made) is switched to WAL
   at open. SQLite takes the exclusive lock for that switch without calling its busy handler, so while another
   connection holds the file's write lock (a racing opener does, in the middle of its own switch) it answers
   BUSY at once. The switch therefore waits out BUSY itself, backing off up to 50 ms, until ``busy_timeout_ms``;
   then it fails as any lock wait does.
"""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import pandas as pd

from provider.core import Range, SeriesKey
from provider.core.clock import wall_clock_ms
from provider.frames import PRICE_COLUMNS
from provider.storage._contract import LedgerWindow, StorageBase, WindowWrite, frame_from_columns
from provider.storage._dsn import StorageDsn
from provider.storage._sql import coverage_sql, ranges_from_boundaries, rows_to_matrix
from provider.storage.errors import SchemaMismatchError, StorageUnavailableError

__all__ = ["SQLiteStorage", "enable_wal"]

_T = TypeVar("_T")
_PRICES = ", ".join(PRICE_COLUMNS)


def _schema(table: str) -> list[str]:
    return [
        f'CREATE TABLE IF NOT EXISTS "{table}_series" (id INTEGER PRIMARY KEY, series TEXT NOT NULL UNIQUE, '
        "source TEXT NOT NULL, symbol TEXT NOT NULL, interval TEXT NOT NULL)",
        f'CREATE TABLE IF NOT EXISTS "{table}" (series_id INTEGER NOT NULL, ts INTEGER NOT NULL, '
        + ", ".join(f"{name} REAL NOT NULL" for name in PRICE_COLUMNS)
        + ", PRIMARY KEY (series_id, ts)) WITHOUT ROWID",
        f'CREATE TABLE IF NOT EXISTS "{table}_windows" (series_id INTEGER NOT NULL, start_ms INTEGER NOT NULL, '
        "end_ms INTEGER NOT NULL, row_count INTEGER NOT NULL, written_at INTEGER NOT NULL, source TEXT, "
        "PRIMARY KEY (series_id, start_ms)) WITHOUT ROWID",
    ]


def _columns(conn: sqlite3.Connection, table: str) -> set[str]:
    return {row[1] for row in conn.execute(f'PRAGMA table_info("{table}")')}


def enable_wal(conn: sqlite3.Connection, timeout_s: float) -> None:
    """``PRAGMA journal_mode = WAL``, waiting out for up to ``timeout_s`` the BUSY that SQLite returns at once to
    openers racing to switch a file (rule 4). The provider's L2 cache file uses it too."""
    deadline = time.monotonic() + timeout_s
    pause = 0.001
    while True:
        try:
            conn.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() + pause > deadline:
                raise
        time.sleep(pause)
        pause = min(2 * pause, 0.05)


class SQLiteStorage(StorageBase):
    """Bars and ledger in one SQLite file."""

    kind = "sqlite"

    def __init__(self, dsn: StorageDsn, *, threads: int = 4) -> None:
        super().__init__()
        if dsn.path is None:
            raise ValueError("SQLite DSN without a path")
        self._path = Path(dsn.path)
        self._target = dsn.redacted()
        self._busy_timeout_ms = dsn.busy_timeout_ms
        table = dsn.table
        self._sql = {
            "series_id": f'SELECT id FROM "{table}_series" WHERE series = ?',
            "add_series": f'INSERT INTO "{table}_series" (series, source, symbol, interval) VALUES (?, ?, ?, ?) '
            "ON CONFLICT (series) DO NOTHING",
            "delete": f'DELETE FROM "{table}" WHERE series_id = ? AND ts >= ? AND ts < ?',
            "insert": f'INSERT INTO "{table}" (series_id, ts, {_PRICES}) VALUES (?, ?, ?, ?, ?, ?, ?)',
            "ledger": f'INSERT INTO "{table}_windows" (series_id, start_ms, end_ms, row_count, written_at, source) '
            "VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (series_id, start_ms) DO UPDATE SET end_ms = excluded.end_ms, "
            "row_count = excluded.row_count, written_at = excluded.written_at, source = excluded.source",
            "read": f'SELECT ts, {_PRICES} FROM "{table}" WHERE series_id = ? AND ts >= ? AND ts < ? ORDER BY ts',
            "coverage": coverage_sql(f'"{table}_windows"', "series_id", "start_ms", "?"),
            "coverage_within": coverage_sql(f'"{table}_windows"', "series_id", "start_ms", "?", ("?", "?")),
            "windows": f'SELECT start_ms, end_ms, row_count, source, written_at FROM "{table}_windows" '
            "WHERE series_id = ? AND end_ms > ? AND start_ms < ? ORDER BY start_ms",
            "add_source": f'ALTER TABLE "{table}_windows" ADD COLUMN source TEXT',
        }
        self._table = table
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sqlite-storage")

    @classmethod
    async def open(cls, dsn: StorageDsn) -> SQLiteStorage:
        """Open (creating if needed) the database file and its tables."""
        storage = cls(dsn)
        try:
            await storage._run(storage._create_schema)
        except BaseException:
            await storage.aclose()
            raise
        return storage

    def _connect(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        self._path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(
            self._path, timeout=self._busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
        )
        conn.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout_ms)}")
        enable_wal(conn, self._busy_timeout_ms / 1000)
        conn.execute("PRAGMA synchronous = FULL")
        self._local.conn = conn
        with self._lock:
            self._connections.append(conn)
        return conn

    async def _run(self, fn: Any, *args: Any) -> Any:
        def call() -> Any:
            try:
                return fn(self._connect(), *args)
            except sqlite3.Error as exc:
                raise StorageUnavailableError("sqlite", self._target, str(exc)) from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _schema(self._table):
                conn.execute(statement)
            ledger = _columns(conn, f"{self._table}_windows")
            if "source" not in ledger and {"series_id", "start_ms", "end_ms"} <= ledger:
                conn.execute(self._sql["add_source"])  # a ledger of an earlier version (rule 1)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        needed = {
            "": ("series_id", "ts", *PRICE_COLUMNS),
            "_windows": ("series_id", "start_ms", "end_ms", "row_count", "written_at", "source"),
        }
        for suffix, columns in needed.items():
            name = f"{self._table}{suffix}"
            have = _columns(conn, name)
            missing = [column for column in columns if column not in have]
            if missing:
                raise SchemaMismatchError(name, missing)

    def _series_id(self, conn: sqlite3.Connection, series: SeriesKey, create: bool) -> int | None:
        text = str(series)
        if create:
            conn.execute(self._sql["add_series"], (text, series.source, series.symbol, series.interval))
        row = conn.execute(self._sql["series_id"], (text,)).fetchone()
        return None if row is None else int(row[0])

    def _write_sync(self, conn: sqlite3.Connection, request: WindowWrite) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            series_id = self._series_id(conn, request.series, create=True)
            conn.execute(self._sql["delete"], (series_id, request.start_ms, request.end_ms))
            rows = zip(itertools.repeat(series_id), request.ts_ms.tolist(), *(c.tolist() for c in request.columns))
            conn.executemany(self._sql["insert"], rows)
            written_at = wall_clock_ms()
            ledger_row = (series_id, request.start_ms, request.end_ms, request.rows, written_at, request.source)
            conn.execute(self._sql["ledger"], ledger_row)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _read_sync(self, conn: sqlite3.Connection, series: SeriesKey, start_ms: int, end_ms: int) -> Any:
        series_id = self._series_id(conn, series, create=False)
        if series_id is None:
            return []
        return conn.execute(self._sql["read"], (series_id, start_ms, end_ms)).fetchall()

    def _coverage_sync(self, conn: sqlite3.Connection, series: SeriesKey, bounds: Range | None) -> list[Range]:
        series_id = self._series_id(conn, series, create=False)
        if series_id is None:
            return []
        if bounds is None:
            return ranges_from_boundaries(conn.execute(self._sql["coverage"], (series_id,)))
        return ranges_from_boundaries(conn.execute(self._sql["coverage_within"], (series_id, *bounds)))

    def _windows_sync(self, conn: sqlite3.Connection, series: SeriesKey, start_ms: int, end_ms: int) -> Any:
        series_id = self._series_id(conn, series, create=False)
        if series_id is None:
            return []
        return conn.execute(self._sql["windows"], (series_id, start_ms, end_ms)).fetchall()

    async def _write(self, request: WindowWrite) -> None:
        await self._run(self._write_sync, request)

    async def _read(self, series: SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
        rows = await self._run(self._read_sync, series, start_ms, end_ms)
        matrix = rows_to_matrix(rows, 1 + len(PRICE_COLUMNS))
        return frame_from_columns(matrix[:, 0].astype(np.int64), matrix[:, 1:].T)

    async def _coverage(self, series: SeriesKey, bounds: Range | None) -> list[Range]:
        result: list[Range] = await self._run(self._coverage_sync, series, bounds)
        return result

    async def _windows(self, series: SeriesKey, start_ms: int, end_ms: int) -> list[LedgerWindow]:
        rows = await self._run(self._windows_sync, series, start_ms, end_ms)
        return [LedgerWindow(int(a), int(b), int(n), source, int(at)) for a, b, n, source, at in rows]

    async def _close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self._pool.shutdown, True)
        with self._lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
