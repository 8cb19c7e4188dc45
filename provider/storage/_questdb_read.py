"""QuestDB bar reads: our own PG wire reader by default, the HTTP Parquet export where the DSN asks for it.

Rules:
1. A read of at most ``parquet_min_bars`` grid slots (``(end - start) / interval``; DSN option) goes over the PG
   wire with our reader (:mod:`provider.storage._pgwire`, rule 6) on a ready connection, ``ts`` cast to LONG,
   bind parameters, the rows decoded by numpy straight into the frame's arrays (sized by the slots). A larger one
   asks QuestDB's HTTP ``/exp?fmt=parquet&compression_codec=UNCOMPRESSED`` for the same query and reads the body
   with pyarrow. The default (:data:`PARQUET_MIN_BARS`) sends every read over the wire: measured on loopback
   against the export, it took 0.5-0.75x the export's time from 10^3 to 10^6 bars and 0.35-0.45x at 10^7, with
   peak RSS 1.16x the frame at 10^6 bars (the export 1.7x) and 1.17x at 10^7 (docs/benchmarks.md). Over a slow
   link the export's smaller body (48 bytes a bar against 79) may win for large reads: lower
   ``parquet_min_bars`` there. ``parquet_min_bars=0`` sends every read to the export.
2. ``/exp`` takes no bind parameters: the series name goes into the SQL text through :func:`sql_literal`, the one
   audited quoting function (single quotes doubled, NUL refused; QuestDB reads no backslash escapes), and the
   bounds as integers formatted by ``int``. Table names are validated identifiers (``_dsn``), quoted.
3. Both readers return the same contract frame (:func:`~provider.frames.frame_from_block`): int64 epoch-ms
   ``ts`` (the query returns epoch us) and five float64 columns, rows with a NULL ``close`` (tombstones)
   excluded by the query. The export path splits the range into chunks of at most ``chunk_bars`` grid slots
   (:data:`PARQUET_CHUNK_BARS`) and asks for each separately, the next one while the current one is decoded;
   each body is decoded one row group at a time into the frame's own preallocated arrays (sized by the slots,
   grown if a chunk holds more rows, e.g. duplicates written by hand; a frame much smaller than its slots is
   compacted), and the frame is assembled from them without a copy. So a read holds the frame plus at most two
   chunk bodies at its peak (RSS 1.9x the frame at 10^6 bars, 1.4x at 10^7), not the whole body beside it (2.4x).
   Chunks are half-open ``[lo, hi)`` ranges that tile the request, so no bar is dropped or doubled at a seam.
4. PG wire connections are reused: an idle list of connections (at most ``pool_size``), created on first
   use. An export connection stays open idle for ``export_keepalive_ms`` (DSN option, default 1,000 ms; 0 closes
   it after each export): an export on a fresh connection cost 0.9 ms more at 10^4 bars and 2-3 ms more at 10^5
   (17 -> 20 ms) than on a reused one, measured here, far more than the TCP connect. The keep-alive is short because
   QuestDB counts an idle keep-alive connection against its export connection limit
   (``http.export.connection.limit``, 2 on small servers): an idle reader refuses other processes' exports
   (served over the PG wire then, rule 5) for at most that long after its last export.
   A connection error is retried with backoff until ``retry_timeout_ms``, then raised as
   :class:`StorageUnavailableError`; a query error is a :class:`StorageError` naming the target.
5. An export refused with 429 (the server's export connection limit is reached) is served over the PG wire
   instead: slower, never failed (counted in ``served["export_busy"]``).
6. Our PG wire reader speaks cleartext and MD5 password logins and decodes exactly the query's result shape
   (int8 + 5 float8). When the server wants anything else (another login, a table whose prices are not DOUBLE)
   it says so before any query runs, and asyncpg serves that read and every later one of this reader (one
   ``storage.wire_fallback`` warning; ``served["asyncpg"]`` counts them), with the export from
   :data:`ASYNCPG_PARQUET_MIN_BARS` grid slots unless the DSN sets ``parquet_min_bars``. A column type altered
   under a prepared statement is refused by QuestDB ("cached plan must not change result type"): the read
   prepares again on a new connection, and the rule applies. A NULL price is refused with a
   :class:`StorageError` naming the column, as the export path refuses it.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp
import asyncpg
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from yarl import URL

from provider.core.obs import get_logger
from provider.frames import FRAME_COLUMNS, PRICE_COLUMNS, empty_frame, frame_from_block, ts_ns
from provider.storage._dsn import StorageDsn
from provider.storage._pgpool import TRANSIENT_ERRORS, _connection_closed, _protocol_broken
from provider.storage._pgwire import OID_TEXT, OID_TIMESTAMP, WireConnection, WireServerError, WireUnsupportedError
from provider.storage._sql import ms_to_naive
from provider.storage.errors import StorageError, StorageUnavailableError

__all__ = ["ASYNCPG_PARQUET_MIN_BARS", "PARQUET_CHUNK_BARS", "PARQUET_MIN_BARS", "QuestDBReader", "sql_literal"]

#: Reads of more grid slots than this use the Parquet export while our PG wire reader serves (rule 1): none
#: unless the DSN says so, since the wire reader was the faster at every size measured, 10^3-10^7 bars.
PARQUET_MIN_BARS = 10**9
#: The same boundary once asyncpg serves the PG wire instead (rule 6): its measured crossover with the export.
ASYNCPG_PARQUET_MIN_BARS = 5_000
#: Grid slots per export request (rule 3): one chunk body is ~12 MB, ~0.25x a 10^6-bar frame.
PARQUET_CHUNK_BARS = 250_000
_FIRST_DELAY_S = 0.05
_MAX_DELAY_S = 1.0
_PRICES = ", ".join(PRICE_COLUMNS)
_CHUNK_BYTES = 1 << 20


_CLIENT_ERRORS = (asyncpg.exceptions.InterfaceError, asyncpg.exceptions.InternalClientError)
_WIRE_STATEMENT = "bars"
_WIRE_PARAMS = (OID_TEXT, OID_TIMESTAMP, OID_TIMESTAMP)
_CONNECT_TIMEOUT_S = 10
#: "cached plan must not change result type": the statement outlived a column type change (rule 6).
_PLAN_CHANGED = "0A000"
_log = get_logger("provider.storage")


class _LostConnectionError(ConnectionError):
    """The PG wire connection was lost or refused (retried with backoff, rule 4)."""


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
        self._parquet_min_bars = dsn.parquet_min_bars
        self._keepalive_s = dsn.export_keepalive_ms / 1000
        #: Grid slots per export request (rule 3).
        self.chunk_bars = PARQUET_CHUNK_BARS
        # Not aliased ``ts``: ``ORDER BY ts`` must name the designated timestamp (no sort), not the cast.
        self._select = f'SELECT cast(ts AS LONG) ts_us, {_PRICES} FROM "{table}" '
        self._pg_sql = self._select + "WHERE series = $1 AND ts >= $2 AND ts < $3 AND close IS NOT NULL ORDER BY ts"
        self._idle: list[asyncpg.Connection] = []
        # Rule 6: our own PG wire client while the server speaks what it needs (asyncpg from the first refusal).
        self._wire_login = (dsn.host or "", dsn.port or 0, dsn.user or "", dsn.password or "", dsn.database or "qdb")
        self._wire_idle: list[WireConnection] = []
        self.wire_enabled = dsn.user is not None
        self._slots = asyncio.Semaphore(pool_size)
        self._session: aiohttp.ClientSession | None = None
        #: Reads served by each reader (tests check which one served).
        self.served = {"pg": 0, "parquet": 0, "export_busy": 0, "asyncpg": 0}
        #: Export connections opened (rule 4: reused while one is idle within ``export_keepalive_ms``).
        self.export_connections = 0

    def export_sql(self, series: str, start_ms: int, end_ms: int) -> str:
        """The query of the Parquet path, with the literals quoted (rule 2)."""
        lo, hi = int(start_ms) * 1000, int(end_ms) * 1000
        return (
            self._select + f"WHERE series = {sql_literal(series)} AND ts >= {lo}::timestamp AND ts < {hi}::timestamp"
            " AND close IS NOT NULL ORDER BY ts"
        )

    @property
    def parquet_min_bars(self) -> int:
        """Rule 1's boundary: the DSN's ``parquet_min_bars``, else the default of the PG wire reader in use."""
        if self._parquet_min_bars is not None:
            return self._parquet_min_bars
        return PARQUET_MIN_BARS if self.wire_enabled else ASYNCPG_PARQUET_MIN_BARS

    async def read(self, series: str, start_ms: int, end_ms: int, interval_ms: int) -> pd.DataFrame:
        """The stored bars of ``series`` in ``[start_ms, end_ms)``, from the reader rule 1 picks."""
        if (end_ms - start_ms) // interval_ms > self.parquet_min_bars:
            return await self.read_parquet(series, start_ms, end_ms, interval_ms)
        return await self.read_pg(series, start_ms, end_ms, interval_ms)

    async def _retrying(self, operation: Any, what: str) -> Any:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._retry_timeout_s
        delay = _FIRST_DELAY_S
        for attempt in itertools.count(1):
            try:
                return await operation()
            except (_LostConnectionError, aiohttp.ClientError, ConnectionError) as exc:  # a lost connection or body
                if loop.time() + delay > deadline:
                    raise StorageUnavailableError(
                        "questdb", self._target, f"{what} failed after {attempt} attempts: {exc!r}"
                    ) from exc
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_DELAY_S)
        raise AssertionError("unreachable")

    async def read_pg(self, series: str, start_ms: int, end_ms: int, interval_ms: int = 0) -> pd.DataFrame:
        """Rule 1's small path: the PG wire on a ready connection, ``ts`` cast to LONG, bind parameters
        (``interval_ms``, when known, sizes the arrays before the rows arrive)."""
        if self.wire_enabled:
            slots = (end_ms - start_ms) // interval_ms + 1 if interval_ms > 0 else _FIRST_CAPACITY
            try:
                stamps, prices = await self._retrying(lambda: self._wire_read(series, start_ms, end_ms, slots), "read")
            except WireUnsupportedError as exc:
                self.wire_enabled = False
                _log.warning("storage.wire_fallback", target=self._target, reason=str(exc), reader="asyncpg")
            else:
                self.served["pg"] += 1
                return frame_from_block(stamps, prices, ns_per_unit=1000) if len(stamps) else empty_frame()
        return await self._read_asyncpg(series, start_ms, end_ms)

    async def _wire_read(self, series: str, start_ms: int, end_ms: int, slots: int) -> tuple[np.ndarray, np.ndarray]:
        """One attempt of rule 6's reader on a ready connection of our own (reused while idle, rule 4)."""
        host, port, user, password, database = self._wire_login
        async with self._slots:
            conn = self._wire_idle.pop() if self._wire_idle else None
            try:
                if conn is None or conn.closed:
                    conn = None
                    conn = await WireConnection.open(
                        host, port, user=user, password=password, database=database, timeout_s=_CONNECT_TIMEOUT_S
                    )
                await conn.prepare(_WIRE_STATEMENT, self._pg_sql, _WIRE_PARAMS)
                columns = await conn.fetch(_WIRE_STATEMENT, (series, start_ms * 1000, end_ms * 1000), rows_hint=slots)
            except WireServerError as exc:
                if conn is not None:  # its statement may be what failed (e.g. a table dropped and created again)
                    conn.close()
                if exc.sqlstate == _PLAN_CHANGED:  # a column's type changed: prepare again on a new connection
                    raise _LostConnectionError(str(exc)) from exc
                raise StorageError(f"questdb storage at {self._target}: read refused: {exc}") from exc
            except (OSError, TimeoutError) as exc:  # ConnectionError included
                if conn is not None:
                    conn.close()
                raise _LostConnectionError(repr(exc)) from exc
            except BaseException:
                if conn is not None:
                    conn.close()
                raise
            self._wire_idle.append(conn)
            return columns

    async def _read_asyncpg(self, series: str, start_ms: int, end_ms: int) -> pd.DataFrame:
        """Rule 6's fallback: asyncpg on a ready connection, the same query."""
        args = (series, ms_to_naive(start_ms), ms_to_naive(end_ms))

        async def attempt() -> list[Any]:
            async with self._slots:
                conn = self._idle.pop() if self._idle else None
                try:
                    if conn is None or conn.is_closed():
                        conn = await asyncpg.connect(self._pg_dsn, timeout=10)
                    rows: list[Any] = await conn.fetch(self._pg_sql, *args)
                except asyncpg.exceptions.InvalidPasswordError as exc:
                    raise StorageUnavailableError("questdb", self._target, f"read: {exc}") from exc
                except (*TRANSIENT_ERRORS, *_CLIENT_ERRORS) as exc:
                    if conn is not None:
                        conn.terminate()
                    if isinstance(exc, TRANSIENT_ERRORS) or _connection_closed(exc) or _protocol_broken(exc):
                        raise _LostConnectionError(repr(exc)) from exc
                    raise StorageError(f"questdb storage at {self._target}: read failed: {exc}") from exc
                except asyncpg.PostgresError as exc:
                    if conn is not None:
                        conn.terminate()
                    raise StorageError(f"questdb storage at {self._target}: read refused: {exc}") from exc
                self._idle.append(conn)
                return rows

        rows: list[Any] = await self._retrying(attempt, "read")
        self.served["pg"] += 1
        self.served["asyncpg"] += 1
        if not rows:
            return empty_frame()
        flat = np.fromiter(itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * 6)
        columns = flat.reshape(len(rows), 6).T.copy()  # one (6, N) block: row 0 the stamps, rows 1-5 the prices
        return frame_from_block(columns[0].astype(np.int64), columns[1:], ns_per_unit=1000)  # epoch us

    async def read_parquet(self, series: str, start_ms: int, end_ms: int, interval_ms: int = 0) -> pd.DataFrame:
        """Rule 1's large path: the Parquet export read with pyarrow, chunk by chunk (rules 2 and 3);
        ``interval_ms`` 0 means one chunk."""
        span_ms = self.chunk_bars * interval_ms if interval_ms > 0 else 0
        bounds = list(_chunks(start_ms, end_ms, span_ms))
        slots = (end_ms - start_ms) // interval_ms if interval_ms > 0 else 0
        out = _Columns(slots + 1 if slots > 0 else _FIRST_CAPACITY)  # an off-grid start may hold one more
        pending = asyncio.ensure_future(self._export(series, *bounds[0]))
        exported = False
        try:
            for index, (lo, hi) in enumerate(bounds):
                body = await pending
                if index + 1 < len(bounds):  # the server prepares the next chunk while this one is decoded
                    pending = asyncio.ensure_future(self._export(series, *bounds[index + 1]))
                if body is None:  # rule 5: this chunk over the PG wire
                    self.served["export_busy"] += 1
                    out.append_frame(await self.read_pg(series, lo, hi, interval_ms))
                else:
                    _decode_into(body, out)
                    exported = True
                del body
        finally:
            if not pending.done():
                pending.cancel()
                await asyncio.gather(pending, return_exceptions=True)
        self.served["parquet"] += exported
        return out.frame()

    async def _export(self, series: str, start_ms: int, end_ms: int) -> bytearray | None:
        """The export body of ``[start_ms, end_ms)``, or None when the server refused it with 429 (rule 5)."""
        # Every reserved character percent-encoded: QuestDB's URL parser stops at a second '?' (a series may hold one).
        query = urlencode(
            {"query": self.export_sql(series, start_ms, end_ms), "fmt": "parquet", "compression_codec": "UNCOMPRESSED"},
            quote_via=quote,
            safe="",
        )
        url = URL(f"{self._http_url}?{query}", encoded=True)

        async def attempt() -> bytearray | None:
            async with self._http().get(url) as response:
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
        return body

    def _http(self) -> aiohttp.ClientSession:
        """The export session, made on first use; its connections stay idle for ``export_keepalive_ms`` (rule 4)."""
        if self._session is None:
            if self._keepalive_s > 0:
                connector = aiohttp.TCPConnector(limit=self._pool_size, keepalive_timeout=self._keepalive_s)
            else:
                connector = aiohttp.TCPConnector(limit=self._pool_size, force_close=True)
            traces = aiohttp.TraceConfig()
            traces.on_connection_create_end.append(self._connected)
            self._session = aiohttp.ClientSession(
                connector=connector, headers=self._headers, auth=self._auth, trace_configs=[traces]
            )
        return self._session

    async def _connected(self, *_: Any) -> None:
        self.export_connections += 1

    async def close(self) -> None:
        """Close the idle connections and the HTTP session."""
        wire, self._wire_idle = self._wire_idle, []
        for connection in wire:
            connection.close()
        idle, self._idle = self._idle, []
        for conn in idle:
            await conn.close(timeout=5)
        session, self._session = self._session, None
        if session is not None:
            await session.close()


#: Rows preallocated when the slot count is unknown (a read without an interval); grown as needed.
_FIRST_CAPACITY = 4096


def _chunks(start_ms: int, end_ms: int, span_ms: int) -> Iterator[tuple[int, int]]:
    """Half-open ranges of at most ``span_ms`` that tile ``[start_ms, end_ms)`` (0: one range)."""
    if span_ms <= 0:
        yield start_ms, end_ms
        return
    for lo in range(start_ms, end_ms, span_ms):
        yield lo, min(lo + span_ms, end_ms)


class _Columns:
    """The frame's arrays, preallocated for ``capacity`` rows and filled chunk by chunk (rule 3)."""

    def __init__(self, capacity: int) -> None:
        self.stamps = np.empty(capacity, dtype=np.int64)  # epoch us, then ns in place
        self.prices = np.empty((len(PRICE_COLUMNS), capacity), dtype=np.float64)
        self.rows = 0

    def reserve(self, more: int) -> None:
        """Room for ``more`` rows after the current ones (a copy only when the slots were too few)."""
        need = self.rows + more
        if need <= len(self.stamps):
            return
        capacity = max(need, 2 * len(self.stamps))
        stamps, prices = np.empty(capacity, dtype=np.int64), np.empty((len(PRICE_COLUMNS), capacity))
        stamps[: self.rows] = self.stamps[: self.rows]
        prices[:, : self.rows] = self.prices[:, : self.rows]
        self.stamps, self.prices = stamps, prices

    def append_frame(self, frame: pd.DataFrame) -> None:
        """Append a contract frame's rows (a chunk the PG wire served)."""
        n = len(frame)
        self.reserve(n)
        self.stamps[self.rows : self.rows + n] = ts_ns(frame) // 1000
        for index, name in enumerate(PRICE_COLUMNS):
            self.prices[index, self.rows : self.rows + n] = frame[name].to_numpy()
        self.rows += n

    def frame(self) -> pd.DataFrame:
        """The contract frame of the rows appended, taking the arrays over (compacted when mostly unused)."""
        n = self.rows
        if n == 0:
            return empty_frame()
        stamps, prices = self.stamps[:n], self.prices[:, :n]
        if n <= len(self.stamps) // 2:  # far fewer bars than slots: do not keep the unused half alive
            stamps, prices = stamps.copy(), prices.copy()
        self.stamps, self.prices = np.empty(0, dtype=np.int64), np.empty((len(PRICE_COLUMNS), 0))
        return frame_from_block(stamps, prices, ns_per_unit=1000)  # epoch us


def _decode_into(body: bytearray, out: _Columns) -> None:
    """Rule 3: decode an export body one row group at a time into ``out``'s arrays."""
    parquet = pq.ParquetFile(pa.py_buffer(body))
    out.reserve(parquet.metadata.num_rows)
    for group in range(parquet.metadata.num_row_groups):
        table = parquet.read_row_group(group, use_threads=False)  # memcpy-bound; threads only add pool arenas
        n, at = table.num_rows, out.rows
        for index in range(len(FRAME_COLUMNS)):
            column = table.column(index)
            if column.null_count:
                raise StorageError(f"questdb export returned NULLs in column {table.column_names[index]!r}")
            target = out.stamps if index == 0 else out.prices[index - 1]
            target[at : at + n] = column.to_numpy()
        out.rows += n
        del table
