"""Our PG wire reader (provider/storage/_pgwire.py) against real servers: NULLs and server errors refused clearly
on a connection that stays usable, lost connections replaced, and asyncpg taking over where the server wants what
the reader does not speak. Its frames are compared with asyncpg's and the export's in test_questdb_read.py."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import numpy as np
import pandas as pd
import pytest

from provider.storage._dsn import parse_dsn
from provider.storage._pgwire import OID_TEXT, OID_TIMESTAMP, WireConnection, WireServerError, WireUnsupportedError
from provider.storage._questdb_read import ASYNCPG_PARQUET_MIN_BARS, PARQUET_MIN_BARS, QuestDBReader
from provider.storage.errors import StorageError

from .conftest import unique_table

M = 60_000
T0 = 1_700_000_000_000 // M * M
US = 1000


@pytest.fixture
async def sql(questdb: Any) -> AsyncIterator[asyncpg.Connection]:
    conn = await asyncpg.connect(questdb.pg_dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def _plain_table(sql: asyncpg.Connection, price_type: str = "DOUBLE") -> str:
    """A non-WAL bar table (rows visible as soon as inserted) of the backend's shape."""
    table = unique_table()
    prices = ", ".join(f"{name} {price_type}" for name in ("open", "high", "low", "close", "volume"))
    await sql.execute(
        f'CREATE TABLE "{table}" (series SYMBOL, ts TIMESTAMP, {prices}) TIMESTAMP(ts) PARTITION BY DAY BYPASS WAL'
    )
    return table


async def _insert(sql: asyncpg.Connection, table: str, rows: list[tuple[Any, ...]]) -> None:
    await sql.executemany(f'INSERT INTO "{table}" VALUES ($1, $2, $3, $4, $5, $6, $7)', rows)


def _at(ms: int) -> Any:
    return pd.Timestamp(ms, unit="ms").to_pydatetime()


def _reader(questdb: Any, table: str) -> QuestDBReader:
    return QuestDBReader(parse_dsn(questdb.dsn), table, pool_size=2, target="test")


@pytest.mark.questdb
async def test_a_null_price_is_refused_naming_the_column_and_the_connection_stays_usable(
    questdb: Any, sql: asyncpg.Connection
) -> None:
    """A hand-written row with a NULL ``open`` (``close`` set, so not a tombstone) fails the read with a
    StorageError naming ``open``; the next read on the same connection returns the clean rows."""
    table = await _plain_table(sql)
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(3)])
    await _insert(sql, table, [("s", _at(T0 + 3 * M), None, 2.0, 0.5, 1.5, 10.0)])
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, 1.5, 10.0) for i in range(4, 3000)])
    reader = _reader(questdb, table)
    try:
        with pytest.raises(StorageError, match=r"column 'open' of a row is NULL"):
            await reader.read_pg("s", T0, T0 + 3000 * M)  # the bad row amid runs of good ones
        frame = await reader.read_pg("s", T0, T0 + 3 * M)
        assert list(frame["close"]) == [1.5, 1.5, 1.5]
        assert len(await reader.read_pg("s", T0 + 4 * M, T0 + 3000 * M)) == 2996
        assert reader.served["asyncpg"] == 0
    finally:
        await reader.close()


@pytest.mark.questdb
async def test_a_lost_connection_is_replaced_and_the_read_answered(questdb: Any, sql: asyncpg.Connection) -> None:
    """Idle wire connections cut under the reader (as a server restart or a network blip cuts them): the next
    read opens a new one and returns the rows, still over the wire reader."""
    table = await _plain_table(sql)
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, float(i), 10.0) for i in range(5)])
    reader = _reader(questdb, table)
    try:
        await reader.read_pg("s", T0, T0 + 5 * M)
        (idle,) = reader._wire_idle
        idle._transport.abort()
        await asyncio.sleep(0)  # the loop delivers connection_lost
        frame = await reader.read_pg("s", T0, T0 + 5 * M)
        assert list(frame["close"]) == [0.0, 1.0, 2.0, 3.0, 4.0]
        assert reader._wire_idle and reader._wire_idle[0] is not idle
        assert reader.served == {"pg": 2, "parquet": 0, "export_busy": 0, "asyncpg": 0}
    finally:
        await reader.close()


@pytest.mark.questdb
async def test_a_table_of_other_column_types_is_read_by_asyncpg(questdb: Any, sql: asyncpg.Connection) -> None:
    """A pre-existing table whose prices are FLOAT (4 bytes) is not the shape the wire reader decodes: it says
    so before any query runs, and asyncpg serves that read and the ones after."""
    table = await _plain_table(sql, price_type="FLOAT")
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, 1.25, 10.0) for i in range(4)])
    reader = _reader(questdb, table)
    try:
        assert reader.parquet_min_bars == PARQUET_MIN_BARS  # every read over the wire while it serves
        for _ in range(2):
            frame = await reader.read_pg("s", T0, T0 + 4 * M)
            assert list(frame["close"]) == [1.25] * 4
        assert reader.wire_enabled is False and reader.served["asyncpg"] == 2
        assert reader.parquet_min_bars == ASYNCPG_PARQUET_MIN_BARS  # asyncpg's crossover with the export
    finally:
        await reader.close()


async def _connect(questdb: Any) -> WireConnection:
    dsn = parse_dsn(questdb.dsn)
    return await WireConnection.open(
        dsn.host or "", dsn.port or 0, user=dsn.user or "", password=dsn.password or "", database="qdb", timeout_s=10
    )


@pytest.mark.questdb
async def test_a_server_error_is_raised_with_its_message(questdb: Any) -> None:
    """A statement the server refuses raises WireServerError with the server's message; the connection then
    runs the next statement."""
    conn = await _connect(questdb)
    try:
        with pytest.raises(WireServerError, match="does not exist"):
            await conn.prepare("missing", 'SELECT * FROM "no_such_table_here"', [])
        await conn.prepare(
            "one", "SELECT cast($2 AS LONG), 1.0, 2.0, 3.0, 4.0, length($1)::double", [OID_TEXT, OID_TIMESTAMP]
        )
        stamps, prices = await conn.fetch("one", ["it's; --", 1_700_000_000_123_456])
        assert stamps.tolist() == [1_700_000_000_123_456] and prices[:, 0].tolist() == [1.0, 2.0, 3.0, 4.0, 8.0]
    finally:
        conn.close()


@pytest.mark.postgres
async def test_postgresql_results_of_another_shape_are_refused_before_running(postgres: Any) -> None:
    """Against a real PostgreSQL (trust login): a statement whose columns are not int8 + 5 float8 is refused as
    unsupported at prepare; one of that shape reads back exactly."""
    dsn = parse_dsn(postgres.dsn)
    conn = await WireConnection.open(
        dsn.host or "",
        dsn.port or 0,
        user=dsn.user or "",
        password=dsn.password or "",
        database=dsn.database or "",
        timeout_s=10,
    )
    try:
        with pytest.raises(WireUnsupportedError, match="OIDs"):
            await conn.prepare("ints", "SELECT 1::int4, 2::int4", [])
        await conn.prepare(
            "bars",
            "SELECT g::int8, g * 0.5::float8, 1e300::float8, 5e-324::float8, -0.0::float8, g::float8"
            " FROM generate_series(1, $1::int) g",
            [OID_TEXT],
        )
        stamps, prices = await conn.fetch("bars", ["3000"])
        assert stamps.tolist() == list(range(1, 3001))
        assert prices[0].tolist() == [g * 0.5 for g in range(1, 3001)] and prices[1, -1] == 1e300
        assert prices[2, 0] == 5e-324 and np.signbit(prices[3, 0])
    finally:
        conn.close()


@pytest.mark.questdb
async def test_a_refused_login_is_left_to_asyncpg_and_fails_at_once(questdb: Any) -> None:
    """A wrong password: the wire reader hands the login to asyncpg (which may speak what the server wants),
    and the read fails with a StorageError at once, not after the reconnect retries."""
    good = parse_dsn(questdb.dsn)
    dsn = parse_dsn(questdb.dsn.replace(f":{good.password}@", ":not-the-password@"))
    reader = QuestDBReader(dsn, unique_table(), pool_size=2, target="test")
    loop = asyncio.get_running_loop()
    started = loop.time()
    try:
        with pytest.raises(StorageError):
            await reader.read_pg("s", T0, T0 + M)
        assert loop.time() - started < 5  # retry_timeout_ms is 30 s: nothing was retried
        assert reader.wire_enabled is False
    finally:
        await reader.close()


@pytest.mark.questdb
async def test_concurrent_reads_each_get_their_own_rows(questdb: Any, sql: asyncpg.Connection) -> None:
    """Twenty concurrent reads of different ranges through two connections each return exactly their range."""
    table = await _plain_table(sql)
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, float(i), 10.0) for i in range(2000)])
    reader = _reader(questdb, table)
    try:
        bounds = [(i * 97 % 1500, i * 97 % 1500 + 50 + i * 20) for i in range(20)]
        frames = await asyncio.gather(*(reader.read_pg("s", T0 + lo * M, T0 + hi * M, M) for lo, hi in bounds))
        for (lo, hi), frame in zip(bounds, frames, strict=True):
            assert list(frame["close"]) == [float(i) for i in range(lo, min(hi, 2000))]
        assert len(reader._wire_idle) == 2 and reader.served["asyncpg"] == 0  # pool_size connections, reused
    finally:
        await reader.close()


@pytest.mark.questdb
async def test_a_query_cancelled_in_flight_closes_its_connection(questdb: Any, sql: asyncpg.Connection) -> None:
    """Cancelled after its query went out, a fetch closes the connection (the rest of the reply would be read as
    the next one's); a new connection then reads every row."""
    table = await _plain_table(sql)
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, float(i), 10.0) for i in range(2000)])
    sql_text = _reader(questdb, table)._pg_sql
    conn = await _connect(questdb)
    await conn.prepare("bars", sql_text, [OID_TEXT, OID_TIMESTAMP, OID_TIMESTAMP])
    task = asyncio.ensure_future(conn.fetch("bars", ["s", T0 * US, (T0 + 2000 * M) * US]))
    while conn._reply is None:  # the query is on the wire once a reply is expected
        await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert conn.closed
    fresh = await _connect(questdb)
    try:
        await fresh.prepare("bars", sql_text, [OID_TEXT, OID_TIMESTAMP, OID_TIMESTAMP])
        stamps, prices = await fresh.fetch("bars", ["s", T0 * US, (T0 + 2000 * M) * US])
        assert prices[3].tolist() == [float(i) for i in range(2000)] and stamps[0] == T0 * US
    finally:
        fresh.close()


@pytest.mark.questdb
async def test_a_column_type_changed_under_the_statement_is_read_by_asyncpg(
    questdb: Any, sql: asyncpg.Connection
) -> None:
    """QuestDB refuses a prepared statement whose result type changed ("cached plan must not change result type")
    after ``ALTER COLUMN volume TYPE LONG``: the same read prepares again, finds a shape it does not decode, and
    asyncpg serves it with the right values; no read fails."""
    table = await _plain_table(sql)
    await _insert(sql, table, [("s", _at(T0 + i * M), 1.0, 2.0, 0.5, 1.5, float(i)) for i in range(4)])
    reader = _reader(questdb, table)
    try:
        assert list((await reader.read_pg("s", T0, T0 + 4 * M))["volume"]) == [0.0, 1.0, 2.0, 3.0]
        await sql.execute(f'ALTER TABLE "{table}" ALTER COLUMN volume TYPE LONG')
        frame = await reader.read_pg("s", T0, T0 + 4 * M)
        assert list(frame["volume"]) == [0.0, 1.0, 2.0, 3.0] and frame["volume"].dtype == np.float64
        assert reader.wire_enabled is False and reader.served == {"pg": 2, "parquet": 0, "export_busy": 0, "asyncpg": 1}
    finally:
        await reader.close()
