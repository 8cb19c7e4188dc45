"""Smoke tests of the real servers the integration tests run on (devkit/services, tests/conftest.py).

They prove what every storage test relies on: asyncpg and ILP/HTTP both reach the session QuestDB, DEDUP UPSERT
makes a re-sent window idempotent, applied rows survive a restart, stopping leaves no process behind, and the
session PostgreSQL accepts asyncpg. WAL apply is asynchronous, so tests wait on ``wal_tables()`` (bounded polls,
never fixed sleeps) before asserting on what is visible.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime, timedelta

import asyncpg
import pandas as pd
import pytest
from questdb import Sender

from devkit import services as devservices

WINDOW_START = datetime(2024, 3, 1)  # naive UTC: asyncpg rejects aware datetimes for QuestDB TIMESTAMP
WINDOW_END = WINDOW_START + timedelta(days=2)  # two DAY partitions
WAL_APPLY_TIMEOUT_S = 30.0
POLL_INTERVAL_S = 0.02
OHLCV_COLUMNS = ("symbol", "open", "high", "low", "close", "volume", "ts")


def _table_name(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def _ohlcv_frame(rows_per_symbol: int = 48) -> pd.DataFrame:
    """Hourly bars for two symbols inside the window, with distinct values per row.

    Built column by column: the questdb client rejects the strided string column of a frame built from rows
    ("ndarray is not C-contiguous").
    """
    symbols = ["BTC/USDT"] * rows_per_symbol + ["ETH/USDT"] * rows_per_symbol
    hours = list(range(rows_per_symbol)) * 2
    prices = [100.0 * (1 + index // rows_per_symbol) + hour * 0.25 for index, hour in enumerate(hours)]
    return pd.DataFrame(
        {
            "symbol": symbols,
            "open": prices,
            "high": [price + 1.5 for price in prices],
            "low": [price - 1.25 for price in prices],
            "close": [price + 0.5 for price in prices],
            "volume": [10.0 + hour for hour in hours],
            "ts": pd.to_datetime([WINDOW_START + timedelta(hours=hour) for hour in hours]),
        }
    )


def _expected_rows(frame: pd.DataFrame) -> list[tuple[object, ...]]:
    ordered = frame.sort_values(["ts", "symbol"])
    return [(*row[:-1], row[-1].to_pydatetime()) for row in ordered.itertuples(index=False)]


async def _create_ohlcv_table(connection: asyncpg.Connection, table: str) -> None:
    await connection.execute(
        f"CREATE TABLE {table} (symbol SYMBOL, open DOUBLE, high DOUBLE, low DOUBLE, close DOUBLE, volume DOUBLE,"
        " ts TIMESTAMP) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, symbol)"
    )


def _send(ilp_conf: str, table: str, frame: pd.DataFrame) -> None:
    """One flush = one WAL transaction."""
    with Sender.from_conf(f"{ilp_conf}auto_flush=off;") as sender:
        sender.dataframe(frame, table_name=table, symbols=["symbol"], at="ts")
        sender.flush()


async def _wait_applied(connection: asyncpg.Connection, table: str, min_txn: int) -> int:
    """Wait until the table's WAL holds at least ``min_txn`` transactions, all applied; return that count."""
    deadline_s = time.monotonic() + WAL_APPLY_TIMEOUT_S
    state = None
    while time.monotonic() < deadline_s:
        state = await connection.fetchrow(
            "SELECT suspended, writerTxn, sequencerTxn FROM wal_tables() WHERE name = $1", table
        )
        if state is not None:
            if state["suspended"]:
                pytest.fail(f"WAL of {table} is suspended (ALTER TABLE {table} RESUME WAL): {dict(state)}")
            if state["sequencerTxn"] >= min_txn and state["writerTxn"] == state["sequencerTxn"]:
                return int(state["sequencerTxn"])
        await asyncio.sleep(POLL_INTERVAL_S)
    pytest.fail(f"WAL of {table} not applied up to txn {min_txn} in {WAL_APPLY_TIMEOUT_S} s: {state}")


async def _window_rows(connection: asyncpg.Connection, table: str) -> list[tuple[object, ...]]:
    records = await connection.fetch(
        f"SELECT {', '.join(OHLCV_COLUMNS)} FROM {table} WHERE ts >= $1 AND ts < $2 ORDER BY ts, symbol",
        WINDOW_START,
        WINDOW_END,
    )
    return [tuple(record) for record in records]


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


@pytest.fixture
def private_questdb() -> Iterator[devservices.QuestDBServer]:
    """A QuestDB of the test's own, so restarting it disturbs no other test."""
    with devservices.QuestDBServer(
        jvm_options=devservices.QUESTDB_TEST_JVM_OPTIONS, extra_conf=devservices.QUESTDB_TEST_CONF
    ) as server:
        yield server


@pytest.mark.questdb
async def test_questdb_resent_window_is_idempotent(
    questdb: devservices.QuestDBServer | devservices.QuestDBEndpoint,
) -> None:
    """Rows sent over ILP/HTTP are read back exactly over asyncpg, and re-sending them changes nothing."""
    table = _table_name("smoke_ohlcv")
    frame = _ohlcv_frame()
    connection = await asyncpg.connect(questdb.pg_dsn)
    try:
        await _create_ohlcv_table(connection, table)
        await asyncio.to_thread(_send, questdb.ilp_conf, table, frame)
        first_txn = await _wait_applied(connection, table, min_txn=1)
        assert await _window_rows(connection, table) == _expected_rows(frame)

        await asyncio.to_thread(_send, questdb.ilp_conf, table, frame)
        await _wait_applied(connection, table, min_txn=first_txn + 1)  # the re-send was applied, not lost
        assert await connection.fetchval(f"SELECT count() FROM {table}") == len(frame)
        assert await _window_rows(connection, table) == _expected_rows(frame)
    finally:
        await connection.close()


@pytest.mark.questdb
@pytest.mark.slow
async def test_questdb_restart_keeps_rows_and_stop_leaves_no_process(
    private_questdb: devservices.QuestDBServer,
) -> None:
    """Applied rows survive a restart on the same root and ports, and neither restart nor close leaks a java."""
    server = private_questdb
    table = _table_name("smoke_restart")
    frame = _ohlcv_frame(rows_per_symbol=6)
    connection = await asyncpg.connect(server.pg_dsn)
    try:
        await _create_ohlcv_table(connection, table)
        await asyncio.to_thread(_send, server.ilp_conf, table, frame)
        await _wait_applied(connection, table, min_txn=1)
    finally:
        await connection.close()
    endpoint_before, pid_before = server.endpoint, server.pid
    assert pid_before is not None

    server.restart()  # blocking on purpose: the server's parent-death signal stays tied to this (main) thread

    assert server.endpoint == endpoint_before
    assert _process_gone(pid_before)
    connection = await asyncpg.connect(server.pg_dsn)
    try:
        assert await _window_rows(connection, table) == _expected_rows(frame)
    finally:
        await connection.close()
    pid_after = server.pid
    assert pid_after is not None
    server.close()
    assert _process_gone(pid_after)


@pytest.mark.postgres
async def test_postgres_round_trip(postgres: devservices.PostgresServer | devservices.PostgresEndpoint) -> None:
    """The session PostgreSQL accepts asyncpg: a table created and filled is read back row for row."""
    table = _table_name("smoke_pg")
    rows = [(1, "BTC/USDT", 42_000.5), (2, "ETH/USDT", 2_500.25)]
    connection = await asyncpg.connect(postgres.dsn)
    try:
        await connection.execute(f"CREATE TABLE {table} (id INT PRIMARY KEY, symbol TEXT NOT NULL, price FLOAT8)")
        await connection.executemany(f"INSERT INTO {table} VALUES ($1, $2, $3)", rows)
        records = await connection.fetch(f"SELECT id, symbol, price FROM {table} ORDER BY id")
        assert [tuple(record) for record in records] == rows
        assert await connection.fetchval("SELECT current_database()") == postgres.database
    finally:
        await connection.close()


@pytest.mark.parametrize(
    ("endpoint_type", "server_type"),
    [
        (devservices.QuestDBEndpoint, devservices.QuestDBServer),
        (devservices.PostgresEndpoint, devservices.PostgresServer),
    ],
)
def test_endpoint_and_server_offer_the_same_attributes(endpoint_type: type, server_type: type) -> None:
    """A test written against a started server also runs against an endpoint from SEAMLESS_TEST_*_DSN."""
    names = {field.name for field in dataclasses.fields(endpoint_type)}
    names |= {name for name, value in vars(endpoint_type).items() if isinstance(value, property)}
    names = {name for name in names if not name.startswith("_")}
    server_names = set(dir(server_type)) | set(vars(server_type()))  # constructing starts nothing
    assert names - server_names == set()


@pytest.mark.parametrize(
    "endpoint",
    [
        devservices.QuestDBEndpoint("127.0.0.1", http_port=9123, pg_port=8123),
        devservices.QuestDBEndpoint("127.0.0.2", http_port=9000, pg_port=8812, user="u", password="a/b:c@d"),
        devservices.PostgresEndpoint("127.0.0.1", 5433, "postgres", "seamless"),
        devservices.PostgresEndpoint("127.0.0.1", 5433, "app", "seamless", password="p@ss word"),
    ],
)
def test_endpoint_dsn_round_trips(endpoint: devservices.QuestDBEndpoint | devservices.PostgresEndpoint) -> None:
    """The DSN a server prints parses back to the same endpoint, as the conftest reads it from the environment."""
    assert type(endpoint).from_dsn(endpoint.dsn) == endpoint
