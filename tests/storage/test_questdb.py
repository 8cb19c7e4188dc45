"""QuestDB specifics against real servers: schema, restarts, suspended WAL tables, QMTL-style DSNs."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import pytest
from pandas.testing import assert_frame_equal

from provider.frames import empty_frame
from provider.storage import SchemaMismatchError, WalSuspendedError, open_storage
from provider.storage._sql import ms_to_naive

pytestmark = pytest.mark.questdb

M = 60_000
T0 = 1_704_067_200_000
SERIES = "ohlcv:binance:BTC/USDT:1m"


def dsn_for(server: Any, table: str) -> str:
    return f"{server.dsn}&table={table}"


async def test_tables_are_wal_partitioned_by_day_with_dedup_keys(questdb, fresh_table):
    """The bar table is a WAL table partitioned by day whose DEDUP UPSERT KEYS are ts and series."""
    storage = await open_storage(dsn_for(questdb, fresh_table))
    await storage.aclose()
    conn = await asyncpg.connect(questdb.pg_dsn)
    try:
        sql = "SELECT table_name, partitionBy, walEnabled, dedup, designatedTimestamp FROM tables()"
        tables = {row["table_name"]: row for row in await conn.fetch(sql)}
        bars, ledger = tables[fresh_table], tables[f"{fresh_table}_windows"]
        assert (bars["partitionBy"], bars["walEnabled"], bars["dedup"], bars["designatedTimestamp"]) == (
            "DAY",
            True,
            True,
            "ts",
        )
        assert (ledger["walEnabled"], ledger["dedup"]) == (True, True)
        keys = await conn.fetch(f"SELECT \"column\" FROM table_columns('{fresh_table}') WHERE upsertKey")
        assert sorted(row[0] for row in keys) == ["series", "ts"]
    finally:
        await conn.close()


async def test_postgresql_dsn_with_kind_questdb_reads_and_writes(questdb, fresh_table, make_bars):
    """The QMTL-style postgresql://admin:quest@host:port/qdb DSN plus kind='questdb' is a working QuestDB store."""
    dsn = f"{questdb.pg_dsn}?http_port={questdb.http_port}&table={fresh_table}"
    storage = await open_storage(dsn, kind="questdb")
    try:
        assert storage.kind == "questdb"
        frame = make_bars(T0, 5)
        await storage.write_window(SERIES, T0, T0 + 5 * M, frame)
        assert len(await storage.read(SERIES, T0, T0 + 5 * M)) == 5
    finally:
        await storage.aclose()


async def test_storages_opened_one_after_another_reuse_senders(questdb, fresh_table, make_bars):
    """Thirty storages opened, written and closed in a row (a provider per request) share the process's senders:
    far fewer than 25 are established, so the client's reconnection-burst warning (an error under this suite's
    filterwarnings) cannot fire; and three rounds of eight windows in flight establish no more senders than are
    ever in flight at once. One table throughout: the pool is per server, not per table, and every new table
    reserves disk on the server."""
    from provider.storage._questdb_ingest import SenderPool

    first = await open_storage(dsn_for(questdb, fresh_table))
    await first.aclose()
    pool = next(pool for conf, pool in SenderPool._pools.items() if f":{questdb.http_port};" in conf)
    before = pool.created
    for index in range(30):
        storage = await open_storage(dsn_for(questdb, fresh_table))
        try:
            await storage.write_window(
                SERIES, T0 + index * 5 * M, T0 + (index + 1) * 5 * M, make_bars(T0 + index * 5 * M, 5)
            )
        finally:
            await storage.aclose()
    assert pool.created - before <= 2  # bars and ledger flushed together need two senders at most
    storage = await open_storage(dsn_for(questdb, fresh_table))
    before_rounds = pool.created
    try:
        for round_ in range(3):
            start = T0 + (30 + round_ * 8) * 5 * M
            await asyncio.gather(
                *(
                    storage.write_window(
                        SERIES, start + k * 5 * M, start + (k + 1) * 5 * M, make_bars(start + k * 5 * M, 5)
                    )
                    for k in range(8)
                )
            )
        # A window flushes its bars, then its ledger row, so no more than eight senders are ever held at once, and
        # the pool keeps up to sixteen idle. 48 flushes therefore establish at most eight senders, however the
        # threads interleave (round one need not reach the peak: a later round may add one, never more than 8).
        assert pool.created - before_rounds <= 8
    finally:
        await storage.aclose()


async def test_an_existing_foreign_table_is_reported(questdb, fresh_table):
    """A table of that name with other columns raises SchemaMismatchError naming the missing columns."""
    conn = await asyncpg.connect(questdb.pg_dsn)
    try:
        await conn.execute(
            f"CREATE TABLE {fresh_table} (sym SYMBOL, ts TIMESTAMP, price DOUBLE) TIMESTAMP(ts) PARTITION BY DAY WAL"
        )
    finally:
        await conn.close()
    with pytest.raises(SchemaMismatchError) as caught:
        await open_storage(dsn_for(questdb, fresh_table))
    assert caught.value.table == fresh_table
    assert "series" in caught.value.missing and "close" in caught.value.missing


async def test_duplicates_left_by_a_disabled_dedup_are_merged(questdb, fresh_table, make_bars):
    """Rows inserted by hand while DEDUP was disabled survive a rewrite; remove_duplicates leaves one bar per
    stamp (the stored one, not a tombstone), touches no other stamp or series, and a second call finds none."""
    storage = await open_storage(dsn_for(questdb, fresh_table))
    other = "ohlcv:binance:ETH/USDT:1m"
    frame = make_bars(T0, 10)
    try:
        await storage.write_window(SERIES, T0, T0 + 10 * M, frame)
        await storage.write_window(other, T0, T0 + 10 * M, frame)
        conn = await asyncpg.connect(questdb.pg_dsn)
        try:
            await conn.execute(f'ALTER TABLE "{fresh_table}" DEDUP DISABLE')
            for stamp in (T0 + 3 * M, T0 + 7 * M):
                await conn.execute(
                    f'INSERT INTO "{fresh_table}" (series, ts, open, high, low, close, volume) '
                    f'SELECT series, ts, open, high, low, close, volume FROM "{fresh_table}" '
                    "WHERE series = $1 AND ts = $2",
                    SERIES,
                    ms_to_naive(stamp),
                )
            await conn.execute(f'ALTER TABLE "{fresh_table}" DEDUP ENABLE UPSERT KEYS(ts, series)')
        finally:
            await conn.close()
        await storage.write_window(SERIES, T0, T0 + 10 * M, frame)  # a rewrite keeps them: that is the problem
        assert len(await storage.read(SERIES, T0, T0 + 10 * M)) == 12

        assert await storage.remove_duplicates(SERIES, T0, T0 + 10 * M) == 2
        assert_frame_equal(await storage.read(SERIES, T0, T0 + 10 * M), frame)
        assert_frame_equal(await storage.read(other, T0, T0 + 10 * M), frame)
        assert await storage.remove_duplicates(SERIES, T0, T0 + 10 * M) == 0
    finally:
        await storage.aclose()


@pytest.mark.slow
async def test_restart_between_writes_loses_nothing_acknowledged(private_questdb, fresh_table, make_bars):
    """Windows acknowledged before a QuestDB restart are all there after it, and the same object keeps working."""
    storage = await open_storage(dsn_for(private_questdb, fresh_table))
    try:
        before = [make_bars(T0 + k * 100 * M, 100, seed=k) for k in range(3)]
        for k, frame in enumerate(before):
            await storage.write_window(SERIES, T0 + k * 100 * M, T0 + (k + 1) * 100 * M, frame)
        private_questdb.restart()
        after = make_bars(T0 + 300 * M, 100, seed=3)
        await storage.write_window(SERIES, T0 + 300 * M, T0 + 400 * M, after)
        await storage.write_window(SERIES, T0 + 400 * M, T0 + 500 * M, empty_frame())
        got = await storage.read(SERIES, T0, T0 + 500 * M)
        assert len(got) == 400
        assert got["close"].tolist() == [x for f in (*before, after) for x in f["close"].tolist()]
        assert await storage.coverage(SERIES) == [(T0, T0 + 500 * M)]
    finally:
        await storage.aclose()
    fresh = await open_storage(dsn_for(private_questdb, fresh_table))
    try:
        assert len(await fresh.read(SERIES, T0, T0 + 500 * M)) == 400
    finally:
        await fresh.aclose()


@pytest.mark.slow
async def test_suspended_wal_table_is_reported_with_the_fix(private_questdb, fresh_table, make_bars):
    """A suspended table makes writes and reads raise WalSuspendedError carrying RESUME WAL; resuming heals it."""
    storage = await open_storage(dsn_for(private_questdb, fresh_table))
    conn = await asyncpg.connect(private_questdb.pg_dsn)
    try:
        await storage.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10))
        await conn.execute(f"ALTER TABLE {fresh_table} SUSPEND WAL")
        with pytest.raises(WalSuspendedError) as caught:
            await storage.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, make_bars(T0 + 10 * M, 10))
        assert caught.value.fix == f"ALTER TABLE {fresh_table} RESUME WAL"
        assert caught.value.fix in str(caught.value)
        with pytest.raises(WalSuspendedError):
            await storage.read(SERIES, T0, T0 + 20 * M)
        assert await storage.coverage(SERIES) == [(T0, T0 + 10 * M)]
        await conn.execute(caught.value.fix)
        await storage.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, make_bars(T0 + 10 * M, 10))
        assert len(await storage.read(SERIES, T0, T0 + 20 * M)) == 20
        assert await storage.coverage(SERIES) == [(T0, T0 + 20 * M)]
    finally:
        await conn.close()
        await storage.aclose()


def _allocated_bytes(root: Any) -> int:
    """Bytes the files under ``root`` hold on disk (allocated blocks, not apparent sizes)."""
    return sum(path.stat().st_blocks * 512 for path in root.rglob("*") if path.is_file())


async def test_a_new_table_reserves_little_disk_on_the_test_server(private_questdb, fresh_table, make_bars):
    """The suite's QuestDB uses small append pages (devservices.QUESTDB_TEST_CONF): a bars+ledger pair of tables
    with one window costs a few MB, not the ~290 MB of the default 16 MB pages, so suites side by side on one
    machine cannot fill its disk (three did, with the defaults)."""
    before = _allocated_bytes(private_questdb.root)
    storage = await open_storage(dsn_for(private_questdb, fresh_table))
    try:
        await storage.write_window(SERIES, T0, T0 + 5 * M, make_bars(T0, 5))
    finally:
        await storage.aclose()
    grown = _allocated_bytes(private_questdb.root) - before
    assert grown < 32 * 2**20, f"one table pair reserved {grown / 2**20:.0f} MB"
