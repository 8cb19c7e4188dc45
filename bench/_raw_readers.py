"""Raw readers of one series' bars, the baselines the provider's read path is measured against (same run).

Rules:
1. Each reader returns the frame the provider returns (:func:`provider.frames.frame_from_arrays`), so the
   comparison includes building it; none uses provider code for the read itself.
2. QuestDB: asyncpg ``fetch`` (ts decoded as datetimes), asyncpg with ``cast(ts AS LONG)`` flattened by numpy,
   psycopg 3's binary cursor, and the HTTP ``/exp`` Parquet export (``compression_codec=UNCOMPRESSED``) read by
   pyarrow. PostgreSQL: asyncpg and psycopg 3 binary. SQLite: the ``sqlite3`` module.
3. Literal values in SQL text (the ``/exp`` path takes no bind parameters) are the bench's own series name and
   integers; they are quoted all the same.
"""

from __future__ import annotations

import datetime as dt
import itertools
import sqlite3
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pandas as pd
import psycopg
import pyarrow.parquet as pq
from pyarrow import BufferReader

from provider.frames import frame_from_arrays

__all__ = [
    "QuestDBRaw",
    "naive",
    "pg_asyncpg",
    "pg_psycopg",
    "sqlite_raw",
]

_EPOCH = dt.datetime(1970, 1, 1)
_PRICES = "open, high, low, close, volume"


def naive(ms: int) -> dt.datetime:
    """Epoch ms as a naive UTC datetime (QuestDB parameters)."""
    return _EPOCH + dt.timedelta(milliseconds=ms)


def _frame_from_rows(rows: Any, ts_divisor: int) -> pd.DataFrame:
    flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * 6)
    matrix = flat.reshape(len(rows), 6)
    return frame_from_arrays(matrix[:, 0].astype(np.int64) // ts_divisor, *matrix[:, 1:].T)


class QuestDBRaw:
    """The raw readers of one QuestDB table (``series`` symbol column, as the provider's schema)."""

    def __init__(self, pg_dsn: str, http_url: str, table: str) -> None:
        self.pg_dsn, self.http_url, self.table = pg_dsn, http_url, table
        self._where = "WHERE series = {} AND ts >= {} AND ts < {} ORDER BY ts"
        self.asyncpg: asyncpg.Connection | None = None
        self.psycopg: psycopg.AsyncConnection[Any] | None = None
        self.http: aiohttp.ClientSession | None = None

    async def open(self) -> QuestDBRaw:
        """Connect every reader once (connections are reused, as any service would)."""
        self.asyncpg = await asyncpg.connect(self.pg_dsn)
        self.psycopg = await psycopg.AsyncConnection.connect(self.pg_dsn, autocommit=True)
        self.http = aiohttp.ClientSession()
        return self

    async def close(self) -> None:
        """Close every connection."""
        if self.asyncpg is not None:
            await self.asyncpg.close()
        if self.psycopg is not None:
            await self.psycopg.close()
        if self.http is not None:
            await self.http.close()

    def _sql(self, ts: str, marks: tuple[str, str, str]) -> str:
        return f'SELECT {ts}, {_PRICES} FROM "{self.table}" ' + self._where.format(*marks)

    async def asyncpg_fetch(self, series: str, lo: int, hi: int) -> pd.DataFrame:
        """asyncpg, ``ts`` decoded as datetimes (the obvious form)."""
        assert self.asyncpg is not None
        rows = await self.asyncpg.fetch(self._sql("ts", ("$1", "$2", "$3")), series, naive(lo), naive(hi))
        stamps = np.fromiter((r[0].timestamp() for r in rows), dtype=np.float64, count=len(rows))
        values = np.array([tuple(r)[1:] for r in rows], dtype=np.float64).reshape(len(rows), 5)
        return frame_from_arrays((stamps * 1000).round().astype(np.int64), *values.T)

    async def asyncpg_long(self, series: str, lo: int, hi: int) -> pd.DataFrame:
        """asyncpg, ``ts`` cast to LONG, rows flattened in C."""
        assert self.asyncpg is not None
        sql = self._sql("cast(ts AS LONG)", ("$1", "$2", "$3"))
        return _frame_from_rows(await self.asyncpg.fetch(sql, series, naive(lo), naive(hi)), 1000)

    async def psycopg_binary(self, series: str, lo: int, hi: int) -> pd.DataFrame:
        """psycopg 3, binary cursor, ``ts`` cast to LONG."""
        assert self.psycopg is not None
        async with self.psycopg.cursor(binary=True) as cur:
            await cur.execute(self._sql("cast(ts AS LONG)", ("%s", "%s", "%s")), (series, naive(lo), naive(hi)))
            rows = await cur.fetchall()
        return _frame_from_rows(rows, 1000)

    async def parquet(self, series: str, lo: int, hi: int) -> pd.DataFrame:
        """``/exp?fmt=parquet&compression_codec=UNCOMPRESSED`` into pyarrow, columns to numpy."""
        assert self.http is not None
        quoted = "'" + series.replace("'", "''") + "'"
        sql = self._sql(
            "cast(ts AS LONG) ts_us", (quoted, f"{int(lo) * 1000}::timestamp", f"{int(hi) * 1000}::timestamp")
        )
        params = {"query": sql, "fmt": "parquet", "compression_codec": "UNCOMPRESSED"}
        async with self.http.get(f"{self.http_url}/exp", params=params) as response:
            response.raise_for_status()
            body = await response.read()
        arrow = pq.read_table(BufferReader(body))
        ts = arrow.column(0).to_numpy() // 1000
        return frame_from_arrays(ts, *(arrow.column(i).to_numpy() for i in range(1, 6)))

    def readers(self) -> dict[str, Any]:
        """Reader name -> ``async fn(series, lo, hi) -> frame``."""
        return {
            "asyncpg fetch": self.asyncpg_fetch,
            "asyncpg ts::LONG": self.asyncpg_long,
            "psycopg binary": self.psycopg_binary,
            "/exp parquet": self.parquet,
        }


async def pg_asyncpg(conn: asyncpg.Connection, sql: str, *args: Any) -> pd.DataFrame:
    """PostgreSQL over asyncpg: ``sql`` selects epoch-ms ``ts`` and the five prices."""
    return _frame_from_rows(await conn.fetch(sql, *args), 1)


async def pg_psycopg(conn: psycopg.AsyncConnection[Any], sql: str, *args: Any) -> pd.DataFrame:
    """PostgreSQL over psycopg 3's binary cursor: ``sql`` selects epoch-ms ``ts`` and the five prices."""
    async with conn.cursor(binary=True) as cur:
        await cur.execute(sql, args)
        rows = await cur.fetchall()
    return _frame_from_rows(rows, 1)


def sqlite_raw(db: sqlite3.Connection, sql: str, *args: Any) -> pd.DataFrame:
    """SQLite over ``sqlite3``: ``sql`` selects epoch-ms ``ts`` and the five prices."""
    return _frame_from_rows(db.execute(sql, args).fetchall(), 1)
