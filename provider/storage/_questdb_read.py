"""QuestDB bar reads: the reader is picked per request (PG wire for small ranges, Parquet export for large ones).

Rules:
1. A read of at most ``parquet_min_bars`` grid slots (``(end - start) / interval``; DSN option, default
   :data:`PARQUET_MIN_BARS`, measured crossover) goes over the PG wire with psycopg 3's binary cursor and bind
   parameters. A larger one asks QuestDB's HTTP ``/exp?fmt=parquet&compression_codec=UNCOMPRESSED`` for the
   same query and reads the body with pyarrow: 10^6 bars in ~0.2 s against ~0.8 s for psycopg and ~2 s for
   asyncpg (docs/benchmarks.md). ``parquet_min_bars=0`` sends every read to the export, a very large value none.
2. ``/exp`` takes no bind parameters: the series name goes into the SQL text through :func:`sql_literal`, the one
   audited quoting function (single quotes doubled, NUL refused; QuestDB reads no backslash escapes), and the
   bounds as integers formatted by ``int``. Table names are validated identifiers (``_dsn``), quoted.
3. Both readers return the same contract frame (:func:`frame_from_columns`): int64 epoch-ms ``ts`` (the query
   returns epoch us) and five float64 columns, rows with a NULL ``close`` (tombstones) excluded by the query.
   The Parquet body is read into one growing buffer, decoded one row group at a time into the frame's own
   arrays, and the frame is assembled from them without a copy, so a read holds about twice the frame it
   returns at its peak (body + arrays + one row group), not four times (chunks + body + arrow table + frame).
4. PG wire connections are reused: an idle list of psycopg connections (at most ``pool_size``), created on first
   use. HTTP connections are not kept alive: QuestDB counts an idle keep-alive connection against its export
   connection limit (``http.export.connection.limit``, 2 on small servers), so idle readers of other processes
   would refuse each other; a TCP connect on loopback costs ~0.1 ms against the >= 5 ms of a large read.
   A connection error is retried with backoff until ``retry_timeout_ms``, then raised as
   :class:`StorageUnavailableError`; a query error is a :class:`StorageError` naming the target.
5. An export refused with 429 (the server's export connection limit is reached) is served over the PG wire
   instead: slower, never failed (counted in ``served["export_busy"]``).
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import numpy as np
import pandas as pd
import psycopg
import pyarrow as pa
import pyarrow.parquet as pq
from yarl import URL

from provider.frames import PRICE_COLUMNS, empty_frame, frame_from_block
from provider.storage._dsn import StorageDsn
from provider.storage._sql import ms_to_naive
from provider.storage.errors import StorageError, StorageUnavailableError

__all__ = ["PARQUET_MIN_BARS", "QuestDBReader", "sql_literal"]

#: Reads of more grid slots than this use the Parquet export (measured crossover, docs/benchmarks.md).
PARQUET_MIN_BARS = 5_000
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
_PRICES = ", ".join(PRICE_COLUMNS)
_CHUNK_BYTES = 1 << 20


def sql_literal(text: str) -> str:
    """``text`` as a QuestDB (and SQL standard) string literal: quotes doubled; NUL, which no literal can hold,
    is refused. QuestDB reads backslashes literally, so nothing else needs escaping."""
    if not isinstance(text, str):
        raise StorageError(f"sql_literal: expected a str, got {type(text).__name__}")
    if "\x00" in text:
        raise StorageError(f"sql_literal: {text!r} contains NUL, which no SQL literal can hold")
    return "'" + text.replace("'", "''") + "'"


class QuestDBReader:
    """Reads one bar table's rows of a series in ``[start, end)`` over the PG wire or the Parquet export."""

    def __init__(self, dsn: StorageDsn, table: str, *, pool_size: int, target: str) -> None:
        self._pg_dsn = dsn.pg_dsn()
        self._http_url = f"http://{dsn.http_host or dsn.host}:{dsn.http_port}/exp"
        self._headers: dict[str, str] = {}
        self._auth: aiohttp.BasicAuth | None = None
        if dsn.http_token:
            self._headers["Authorization"] = f"Bearer {dsn.http_token}"
        elif dsn.http_user:
            self._auth = aiohttp.BasicAuth(dsn.http_user, dsn.http_password or "")
        self._table = table
        self._pool_size = pool_size
        self._target = target
        self._retry_timeout_s = dsn.retry_timeout_ms / 1000
        self.parquet_min_bars = PARQUET_MIN_BARS if dsn.parquet_min_bars is None else dsn.parquet_min_bars
        # Not aliased ``ts``: ``ORDER BY ts`` must name the designated timestamp (no sort), not the cast.
        self._select = f'SELECT cast(ts AS LONG) ts_us, {_PRICES} FROM "{table}" '
        self._pg_sql = self._select + "WHERE series = %s AND ts >= %s AND ts < %s AND close IS NOT NULL ORDER BY ts"
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(pool_size)
        self._session: aiohttp.ClientSession | None = None
        #: Reads served by each reader (tests check which one served).
        self.served = {"pg": 0, "parquet": 0, "export_busy": 0}

    def export_sql(self, series: str, start_ms: int, end_ms: int) -> str:
        """The query of the Parquet path, with the literals quoted (rule 2)."""
        lo, hi = int(start_ms) * 1000, int(end_ms) * 1000
        return (
            self._select + f"WHERE series = {sql_literal(series)} AND ts >= {lo}::timestamp AND ts < {hi}::timestamp"
            " AND close IS NOT NULL ORDER BY ts"
        )

    async def read(self, series: str, start_ms: int, end_ms: int, interval_ms: int) -> pd.DataFrame:
        """The stored bars of ``series`` in ``[start_ms, end_ms)``, from the reader rule 1 picks."""
        if (end_ms - start_ms) // interval_ms > self.parquet_min_bars:
            return await self.read_parquet(series, start_ms, end_ms)
        return await self.read_pg(series, start_ms, end_ms)

    async def _retrying(self, operation: Any, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_timeout_s
        delay = _FIRST_DELAY_S
        for attempt in itertools.count(1):
            try:
                return await operation()
            except (psycopg.OperationalError, aiohttp.ClientError, ConnectionError) as exc:  # a lost connection or body
                if loop.time() + delay > deadline:
                    raise StorageUnavailableError(
                        "questdb", self._target, f"{what} failed after {attempt} attempts: {exc!r}"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
        raise AssertionError("unreachable")

    async def read_pg(self, series: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Rule 1's small path: psycopg 3, binary cursor, bind parameters."""
        params = (series, ms_to_naive(start_ms), ms_to_naive(end_ms))

        async def attempt() -> list[Any]:
            async with self._slots:
                conn = self._idle.pop() if self._idle else None
                if conn is None or conn.closed:
                    conn = await psycopg.AsyncConnection.connect(self._pg_dsn, autocommit=True, connect_timeout=10)
                try:
                    async with conn.cursor(binary=True) as cur:
                        await cur.execute(self._pg_sql, params)
                        rows = await cur.fetchall()
                except psycopg.OperationalError:
                    await conn.close()
                    raise
                except psycopg.Error as exc:
                    await conn.close()
                    raise StorageError(f"questdb storage at {self._target}: read refused: {exc}") from exc
                self._idle.append(conn)
                return rows

        rows: list[Any] = await self._retrying(attempt, "read")
        self.served["pg"] += 1
        if not rows:
            return empty_frame()
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * 6)
        columns = flat.reshape(len(rows), 6).T.copy()  # one (6, N) block: row 0 the stamps, rows 1-5 the prices
        return frame_from_block(columns[0].astype(np.int64) // 1000, columns[1:])

    async def read_parquet(self, series: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Rule 1's large path: the Parquet export read with pyarrow (rules 2 and 3)."""
        # Every reserved character percent-encoded: QuestDB's URL parser stops at a second '?' (a series may hold one).
        query = urlencode(
            {"query": self.export_sql(series, start_ms, end_ms), "fmt": "parquet", "compression_codec": "UNCOMPRESSED"},
            quote_via=quote,
            safe="",
        )
        url = URL(f"{self._http_url}?{query}", encoded=True)

        async def attempt() -> bytearray | None:
            if self._session is None:
                connector = aiohttp.TCPConnector(limit=self._pool_size, force_close=True)
                self._session = aiohttp.ClientSession(connector=connector, headers=self._headers, auth=self._auth)
            async with self._session.get(url) as response:
                if response.status == 429:  # the server's export connection limit: rule 5
                    return None
                if response.status != 200:
                    text = (await response.text())[:500]
                    raise StorageError(f"questdb storage at {self._target}: export refused ({response.status}): {text}")
                body = bytearray()  # grown in place (realloc moves large blocks without copying): ~1x the body
                async for chunk in response.content.iter_chunked(_CHUNK_BYTES):
                    body += chunk
                return body

        body: bytearray | None = await self._retrying(attempt, "read (parquet export)")
        if body is None:
            self.served["export_busy"] += 1
            return await self.read_pg(series, start_ms, end_ms)
        self.served["parquet"] += 1
        return _frame_from_parquet(body)

    async def close(self) -> None:
        """Close the idle connections and the HTTP session."""
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close()
        session, self._session = self._session, None
        if session is not None:
            await session.close()


def _frame_from_parquet(body: bytearray) -> pd.DataFrame:
    """Rule 3: the contract frame of an export body, decoded one row group at a time into the frame's own arrays
    (so pyarrow holds one row group, not a second copy of the result), assembled without a further copy."""
    parquet = pq.ParquetFile(pa.py_buffer(body))
    rows = parquet.metadata.num_rows
    if rows == 0:
        return empty_frame()
    arrays = [np.empty(rows, dtype=np.int64), *(np.empty(rows, dtype=np.float64) for _ in PRICE_COLUMNS)]
    at = 0
    for group in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(group)
        n = table.num_rows
        for index, target in enumerate(arrays):
            column = table.column(index)
            if column.null_count:
                raise StorageError(f"questdb export returned NULLs in column {table.column_names[index]!r}")
            target[at : at + n] = column.to_numpy()
        at += n
        del table
    del parquet
    stamps = arrays[0]
    stamps *= 1000  # epoch us -> ns, in place
    ts = pd.DatetimeIndex(stamps.view("datetime64[ns]"), copy=False).tz_localize("UTC")
    data: dict[str, Any] = {"ts": ts}
    data.update(zip(PRICE_COLUMNS, arrays[1:], strict=True))
    return pd.DataFrame(data, copy=False)
