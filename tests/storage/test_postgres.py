"""PostgreSQL specifics against a real server: dropped connections, overlapping writers, foreign tables."""

from __future__ import annotations

import asyncio

import asyncpg
import pytest

from provider.storage import SchemaMismatchError, open_storage

pytestmark = pytest.mark.postgres

M = 60_000
T0 = 1_704_067_200_000
SERIES = "ohlcv:binance:BTC/USDT:1m"


def dsn_for(server, table: str) -> str:
    return f"{server.dsn}?table={table}"


async def test_dropped_connections_are_replaced(postgres, fresh_table, make_bars):
    """After the server kills every connection of the pool, the next calls reconnect and succeed.

    Five rounds, because the race this guards (the next query starting while asyncpg is still reading the
    server's FATAL message) needs a few tries to show up; one round missed it about half the time.
    """
    storage = await open_storage(f"{dsn_for(postgres, fresh_table)}&application_name={fresh_table}")
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await storage.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10))
        for k in range(1, 6):
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = $1",
                fresh_table,
            )
            assert killed >= 1
            assert len(await storage.read(SERIES, T0, T0 + 10 * k * M)) == 10 * k
            await storage.write_window(SERIES, T0 + 10 * k * M, T0 + 10 * (k + 1) * M, make_bars(T0 + 10 * k * M, 10))
        assert await storage.coverage(SERIES) == [(T0, T0 + 60 * M)]
    finally:
        await admin.close()
        await storage.aclose()


async def test_concurrent_overlapping_windows_both_land(postgres, fresh_table, make_bars):
    """Writers of overlapping windows with different starts never fail; the bars stay unique and complete."""
    storage = await open_storage(dsn_for(postgres, fresh_table))
    try:
        frame = make_bars(T0, 40)
        writes = [
            storage.write_window(SERIES, T0 + k * 10 * M, T0 + (k * 10 + 20) * M, frame.iloc[k * 10 : k * 10 + 20])
            for k in range(3)
        ]
        assert await asyncio.gather(*writes) == [20, 20, 20]
        got = await storage.read(SERIES, T0, T0 + 40 * M)
        assert got["ts"].is_unique and len(got) == 40
        assert got["close"].tolist() == frame["close"].tolist()
        assert await storage.coverage(SERIES) == [(T0, T0 + 40 * M)]
    finally:
        await storage.aclose()


async def test_an_existing_foreign_table_is_reported(postgres, fresh_table):
    """A table of that name with other columns raises SchemaMismatchError naming the missing columns."""
    admin = await asyncpg.connect(postgres.dsn)
    try:
        await admin.execute(f"CREATE TABLE {fresh_table} (sym text, ts timestamptz, price float8)")
    finally:
        await admin.close()
    with pytest.raises(SchemaMismatchError) as caught:
        await open_storage(dsn_for(postgres, fresh_table))
    assert caught.value.table == fresh_table
    assert caught.value.missing[0] == "series_id"
