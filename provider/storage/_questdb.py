"""The QuestDB backend (``questdb://USER:PASS@HOST:PGPORT/?http_port=9000``).

Rules:
1. Schema (``T`` is the DSN's ``table`` option, default ``ohlcv``), both WAL tables::

       T         (series SYMBOL, ts TIMESTAMP, open high low close volume DOUBLE)
                 TIMESTAMP(ts) PARTITION BY DAY, DEDUP UPSERT KEYS(ts, series)
       T_windows (series SYMBOL, ts TIMESTAMP = window start, start_ms LONG, end_ms LONG, row_count LONG,
                  written_at TIMESTAMP, source SYMBOL NULL) TIMESTAMP(ts) PARTITION BY YEAR,
                 DEDUP UPSERT KEYS(ts, series)

   A ``T_windows`` of an earlier version (without ``source``) gets the column at open. QuestDB 9.3 refuses
   ``ADD COLUMN IF NOT EXISTS`` on a WAL table that has the column (or has it pending) instead of doing nothing,
   so a refused ``ALTER`` is followed by a wait for the WAL and a second look: a concurrent opener added it.

   ``series`` holds the canonical key text (``ohlcv:binance:BTC/USDT:1m``): one symbol column is markedly faster
   to write and filter than three (measured), and the key round-trips exactly.
2. Writes go over ILP/HTTP; bar reads over our PG wire reader (or the HTTP Parquet export where the DSN asks),
   see :mod:`provider.storage._questdb_read`; the ledger, WAL status and maintenance over an asyncpg pool.
3. A window write is: refuse if the tables are suspended; find bars stored in the window that the new frame
   lacks (skipped when the frame fills every grid slot); send the new bars plus a tombstone (all prices NULL)
   for each such bar in ONE flush, so deduplication replaces the window in one WAL transaction; wait until it
   is applied; then upsert the ledger row and wait again. The ledger therefore never claims a window whose bars
   are not visible, and when ``write_window`` returns a read sees it.
4. QuestDB has no DELETE: a replaced bar stays as a tombstone row. Reads skip rows whose ``close`` is NULL
   (stored bars are always finite, so NULL is unambiguous).
5. Duplicates (rows inserted while DEDUP was disabled) survive any upsert. ``remove_duplicates`` moves every
   row of a duplicated stamp out of the series (``UPDATE ... SET series = '<duplicate>:SERIES'``, a symbol no
   reader asks for), then writes back the last stored bar of that stamp that is not a tombstone, and waits
   until both are applied.
6. A read waits for the bars table to apply what was committed before it (rule 3's counterpart: a ledger row seen
   mid-apply vouches for bars that may not be visible yet) only when needed: ranges that a ledger answer showed
   covered before a completed wait, or that a write of this object applied, are *settled* (their bars are
   visible and stay so: a re-write replaces them in one transaction), and a read inside settled ranges skips the
   WAL status query. With the coverage memo (storage contract rule 8), a repeated fetch costs one query.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any

import asyncpg
import numpy as np
import pandas as pd

from provider.core import Range, SeriesKey, merge_ranges, subtract_ranges
from provider.frames import PRICE_COLUMNS
from provider.storage._contract import LedgerWindow, StorageBase, WindowWrite
from provider.storage._dsn import StorageDsn
from provider.storage._pgpool import PgPool
from provider.storage._questdb_ingest import IlpWriter, WalMonitor, ilp_frame
from provider.storage._questdb_read import QuestDBReader
from provider.storage._sql import coverage_sql, ms_to_naive, ranges_from_boundaries, rows_to_matrix
from provider.storage.errors import SchemaMismatchError

__all__ = ["QuestDBStorage"]

_PRICES = ", ".join(PRICE_COLUMNS)
_SYMBOL = "SYMBOL CAPACITY 4096 CACHE"


def _schema(table: str) -> list[str]:
    return [
        f'CREATE TABLE IF NOT EXISTS "{table}" (series {_SYMBOL}, ts TIMESTAMP, '
        + ", ".join(f"{name} DOUBLE" for name in PRICE_COLUMNS)
        + ") TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, series)",
        f'CREATE TABLE IF NOT EXISTS "{table}_windows" (series {_SYMBOL}, ts TIMESTAMP, start_ms LONG, '
        f"end_ms LONG, row_count LONG, written_at TIMESTAMP, source {_SYMBOL}) "
        "TIMESTAMP(ts) PARTITION BY YEAR WAL DEDUP UPSERT KEYS(ts, series)",
    ]


async def _all(*calls: Awaitable[Any]) -> list[Any]:
    """Run ``calls`` concurrently (the suspension check costs no extra latency); raise the first failure."""
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    for outcome in outcomes:
        if isinstance(outcome, BaseException):
            raise outcome
    return outcomes


#: Series whose vouched and settled ranges one storage remembers (rule 6); past it, it starts afresh.
_SERIES_MAX = 100_000


def _remember(memo: dict[SeriesKey, list[Range]], series: SeriesKey, ranges: list[Range]) -> None:
    if not ranges:
        return
    if series not in memo and len(memo) >= _SERIES_MAX:
        memo.clear()
    memo[series] = merge_ranges([*memo.get(series, ()), *ranges])


class QuestDBStorage(StorageBase):
    """Bars and ledger in QuestDB WAL tables."""

    kind = "questdb"

    def __init__(self, dsn: StorageDsn, *, pool_size: int, wal_apply_timeout_ms: int) -> None:
        super().__init__()
        table = dsn.table
        self._bars, self._ledger = table, f"{table}_windows"
        target = dsn.redacted()
        self._pool = PgPool(
            dsn.pg_dsn(),
            backend=self.kind,
            target=target,
            max_size=pool_size,
            retry_timeout_ms=dsn.retry_timeout_ms,
        )
        self._ilp = IlpWriter(dsn.ilp_conf(), target=target, retry_timeout_ms=dsn.retry_timeout_ms)
        self._reader = QuestDBReader(dsn, table, pool_size=pool_size, target=target)
        self._wal = WalMonitor(self._pool, (self._bars, self._ledger), timeout_ms=wal_apply_timeout_ms, target=target)
        #: Rule 6: ranges a ledger answer showed covered, and ranges whose bars are known applied.
        self._vouched: dict[SeriesKey, list[Range]] = {}
        self._settled: dict[SeriesKey, list[Range]] = {}
        #: Reads that skipped the WAL wait (rule 6), for tests and benchmarks.
        self.wal_waits_skipped = 0
        self._sql = {
            "stored_ts": f'SELECT cast(ts AS LONG) FROM "{table}" '
            "WHERE series = $1 AND ts >= $2 AND ts < $3 AND close IS NOT NULL",
            "coverage": coverage_sql(f'"{self._ledger}"', "series", "ts", "$1"),
            "coverage_within": coverage_sql(f'"{self._ledger}"', "series", "ts", "$1", ("$2", "$3")),
            "windows": "SELECT start_ms, end_ms, row_count, source, cast(written_at AS LONG) "
            f'FROM "{self._ledger}" WHERE series = $1 AND end_ms > $2 AND start_ms < $3 ORDER BY ts',
            "duplicated_ts": "SELECT cast(ts AS LONG) FROM "
            f'(SELECT ts, count() n FROM "{table}" WHERE series = $1 AND ts >= $2 AND ts < $3) WHERE n > 1',
            "rows_at": f'SELECT {_PRICES} FROM "{table}" WHERE series = $1 AND ts = $2',
            "set_aside": f'UPDATE "{table}" SET series = $1 WHERE series = $2 AND ts = $3',
            "add_source": f'ALTER TABLE "{self._ledger}" ADD COLUMN IF NOT EXISTS source {_SYMBOL}',
        }

    @classmethod
    async def open(cls, dsn: StorageDsn, *, pool_size: int, wal_apply_timeout_ms: int) -> QuestDBStorage:
        """Connect over the PG wire and create the tables if needed."""
        storage = cls(dsn, pool_size=pool_size, wal_apply_timeout_ms=wal_apply_timeout_ms)
        try:
            await storage._create_schema()
        except BaseException:
            await storage.aclose()
            raise
        return storage

    async def _columns(self, table: str) -> dict[str, bool]:
        """Column name -> whether it is an upsert key."""
        # The name is a validated identifier, and table_columns() takes no bind parameters.
        rows = await self._pool.fetch(
            f"SELECT \"column\", upsertKey FROM table_columns('{table}')", what="inspect tables"
        )
        return {row[0]: row[1] for row in rows}

    async def _add_source_column(self) -> None:
        """Rule 1: give a ledger of an earlier version its ``source`` column."""
        ledger = await self._columns(self._ledger)
        if "source" in ledger or not {"series", "ts", "start_ms", "end_ms"} <= ledger.keys():
            return
        try:
            await self._pool.fetch(self._sql["add_source"], what="add the ledger's source column")
        except asyncpg.PostgresError:
            await self._wal.wait_applied(self._ledger)
            if "source" not in await self._columns(self._ledger):
                raise
        await self._wal.wait_applied(self._ledger)

    async def _create_schema(self) -> None:
        for statement in _schema(self._bars):
            await self._pool.fetch(statement, what="create tables")
        await self._add_source_column()
        needed = {
            self._bars: ("series", "ts", *PRICE_COLUMNS),
            self._ledger: ("series", "ts", "start_ms", "end_ms", "row_count", "written_at", "source"),
        }
        for table, columns_needed in needed.items():
            upsert_key = await self._columns(table)
            missing = [name for name in columns_needed if name not in upsert_key]
            missing += [f"{key} (as DEDUP UPSERT KEY)" for key in ("ts", "series") if upsert_key.get(key) is False]
            if missing:
                raise SchemaMismatchError(table, missing)

    async def _write(self, request: WindowWrite) -> None:
        _, stale = await _all(self._wal.check(self._bars, self._ledger), self._stale_stamps(request))
        series = str(request.series)
        if request.rows or len(stale):
            ts_ms, columns = request.ts_ms, request.columns
            if len(stale):
                ts_ms = np.concatenate((request.ts_ms, stale))
                order = np.argsort(ts_ms, kind="stable")
                tombstones = np.full(len(stale), np.nan)
                ts_ms = ts_ms[order]
                columns = tuple(np.concatenate((column, tombstones))[order] for column in request.columns)
            await self._ilp.send_frame(self._bars, ilp_frame(series, ts_ms, columns))
        # The ledger row is committed after the bars, and _read waits for the bars table to apply what was
        # committed before it starts: a reader that saw the ledger row sees the bars, even mid-apply.
        await self._ilp.send_ledger_row(
            self._ledger, series, request.start_ms, request.end_ms, request.rows, request.source
        )
        committed_at = asyncio.get_running_loop().time()
        await self._wal.wait_applied(self._bars, self._ledger, committed_at=committed_at)
        _remember(self._settled, request.series, [(request.start_ms, request.end_ms)])

    async def _stale_stamps(self, request: WindowWrite) -> np.ndarray:
        """Stamps stored in the window that the new frame does not have (they become tombstones)."""
        if request.full:
            return np.empty(0, dtype=np.int64)
        rows = await self._pool.fetch(
            self._sql["stored_ts"],
            str(request.series),
            ms_to_naive(request.start_ms),
            ms_to_naive(request.end_ms),
            what="read stored window",
        )
        stored_ms = rows_to_matrix(rows, 1)[:, 0].astype(np.int64) // 1000
        return np.setdiff1d(stored_ms, request.ts_ms, assume_unique=True)

    async def _read(self, series: SeriesKey, start_ms: int, end_ms: int) -> pd.DataFrame:
        if subtract_ranges([(start_ms, end_ms)], self._settled.get(series, [])):
            vouched = self._vouched.get(series, [])  # answers seen before the wait starts (rule 6)
            await self._wal.wait_applied(self._bars)  # see _write: bars a ledger row vouches for are applied first
            _remember(self._settled, series, vouched)
        else:
            self.wal_waits_skipped += 1
        return await self._reader.read(str(series), start_ms, end_ms, series.interval_ms)

    async def _coverage(self, series: SeriesKey, bounds: Range | None) -> list[Range]:
        sql, extra = (self._sql["coverage"], ()) if bounds is None else (self._sql["coverage_within"], bounds)
        _, rows = await _all(self._wal.check(self._ledger), self._pool.fetch(sql, str(series), *extra, what="coverage"))
        ranges = ranges_from_boundaries(rows)
        _remember(self._vouched, series, ranges)
        return ranges

    async def wal_status(self) -> dict[str, bool]:
        """Whether the bars and the ledger table are suspended (read from ``wal_tables()`` now)."""
        self._check_open()
        return await self._wal.suspended()

    async def _windows(self, series: SeriesKey, start_ms: int, end_ms: int) -> list[LedgerWindow]:
        fetch = self._pool.fetch(self._sql["windows"], str(series), start_ms, end_ms, what="windows")
        _, rows = await _all(self._wal.check(self._ledger), fetch)
        return [LedgerWindow(int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]) // 1000) for r in rows]

    async def _remove_duplicates(self, series: SeriesKey, start_ms: int, end_ms: int) -> int:
        """Rule 5."""
        await self._wal.check(self._bars)
        name = str(series)
        rows = await self._pool.fetch(
            self._sql["duplicated_ts"], name, ms_to_naive(start_ms), ms_to_naive(end_ms), what="find duplicates"
        )
        stamps = rows_to_matrix(rows, 1)[:, 0].astype(np.int64) // 1000
        kept_ts: list[int] = []
        kept: list[Any] = []
        for ts_ms in stamps.tolist():
            at = ms_to_naive(ts_ms)
            stored = await self._pool.fetch(self._sql["rows_at"], name, at, what="read duplicates")
            bars = [row for row in stored if row[3] is not None]  # close IS NULL marks a tombstone (rule 4)
            await self._pool.fetch(self._sql["set_aside"], f"<duplicate>:{name}", name, at, what="set aside")
            if bars:
                kept_ts.append(ts_ms)
                kept.append(bars[-1])
        if kept:
            columns = rows_to_matrix(kept, len(PRICE_COLUMNS)).T
            await self._ilp.send_frame(self._bars, ilp_frame(name, np.array(kept_ts, dtype=np.int64), columns))
        if len(stamps):
            await self._wal.wait_applied(self._bars, committed_at=asyncio.get_running_loop().time())
        return len(stamps)

    async def _close(self) -> None:
        self._ilp.close()
        await self._reader.close()
        await self._pool.close()
