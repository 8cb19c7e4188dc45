"""QuestDB's two bar readers (PG wire and HTTP Parquet export): the same frame whichever serves, hostile series
names quoted safely on the path that takes no bind parameters, and the reader picked by the request's size."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import numpy as np
import pandas as pd
import pytest

from provider.storage import open_storage
from provider.storage._questdb_read import sql_literal
from provider.storage.errors import StorageError
from tests.security.test_hostile_symbols import hostile_symbols

from .conftest import unique_table, with_option

pytestmark = pytest.mark.questdb

M = 60_000
T0 = 1_700_000_000_000 // M * M


def test_sql_literal_doubles_quotes_and_refuses_nul() -> None:
    assert sql_literal("it's") == "'it''s'"
    assert sql_literal("back\\slash\\'") == "'back\\slash\\'''"
    with pytest.raises(StorageError, match="NUL"):
        sql_literal("a\x00b")


@pytest.fixture
async def two_readers(questdb: Any) -> AsyncIterator[tuple[Any, Any, str]]:
    """Two storages on the same tables: one reads everything over the PG wire, one over the Parquet export."""
    table = unique_table()
    base = with_option(questdb.dsn, f"table={table}")
    pg = await open_storage(with_option(base, "parquet_min_bars=1000000000"))
    parquet = await open_storage(with_option(base, "parquet_min_bars=0"))
    try:
        yield pg, parquet, table
    finally:
        await pg.aclose()
        await parquet.aclose()


def _served(storage: Any) -> dict[str, int]:
    return dict(storage._reader.served)


async def test_every_reader_returns_identical_frames(
    two_readers: tuple[Any, Any, str], questdb: Any, make_bars: Any
) -> None:
    """Gaps, a replaced window (tombstones), an empty range, values at the edge of float64, more rows than one
    socket read: the same frame from our PG wire reader, from asyncpg (its fallback) and from the export."""
    pg, parquet, table = two_readers
    fallback = await open_storage(with_option(questdb.dsn, f"table={table}&parquet_min_bars=1000000000"))
    fallback._reader.wire_enabled = False
    try:
        series = "ohlcv:binance:BTC/USDT:1m"
        bars = make_bars(T0, 6000, skip=(3, 4, 150))
        bars.loc[10, "open"] = 0.0
        bars.loc[11, "volume"] = 1e300
        bars.loc[12, "low"] = 5e-324
        await pg.write_window(series, T0, T0 + 6000 * M, bars)
        await pg.write_window(series, T0 + 100 * M, T0 + 200 * M, make_bars(T0 + 100 * M, 100, seed=2, skip=(7,)))
        for lo, hi in ((T0, T0 + 6000 * M), (T0 + 50 * M, T0 + 120 * M), (T0 + 3 * M, T0 + 5 * M), (T0 - M, T0)):
            a, b, c = (
                await pg.read(series, lo, hi),
                await parquet.read(series, lo, hi),
                await fallback.read(series, lo, hi),
            )
            pd.testing.assert_frame_equal(a, b, check_exact=True)
            pd.testing.assert_frame_equal(a, c, check_exact=True)
            assert list(b.dtypes.astype(str)) == ["datetime64[ns, UTC]", *["float64"] * 5]
            assert isinstance(b.index, pd.RangeIndex) and b.index.start == 0
        full = await parquet.read(series, T0, T0 + 6000 * M)
        assert len(full) == 6000 - 2 - 1  # bars 3 and 4 were never written; 107 is missing from the replacement
        assert full["low"].iloc[12] == 5e-324 and full["volume"].iloc[11] == 1e300
        assert _served(pg)["parquet"] == 0 and _served(pg)["pg"] == 4 and _served(pg)["asyncpg"] == 0
        assert _served(parquet)["parquet"] == 5 and _served(parquet)["pg"] == 0
        assert _served(fallback)["asyncpg"] == 4
    finally:
        await fallback.aclose()


async def test_hostile_series_names_through_the_parquet_export(
    two_readers: tuple[Any, Any, str], questdb: Any, make_bars: Any
) -> None:
    """Quotes, ``;``, ``--``, backslashes, placeholders and unicode in the series name: each series reads back
    its own bars over the export (no other series' bars, no error), and a canary table survives."""
    pg, parquet, table = two_readers
    canary = f"canary_{secrets.token_hex(4)}"
    conn = await asyncpg.connect(questdb.pg_dsn)
    try:
        await conn.execute(f"CREATE TABLE {canary} (v STRING)")
        await conn.execute(f"INSERT INTO {canary} VALUES ('alive')")
        names = [f"ohlcv:binance:{symbol}:1m" for symbol in hostile_symbols(canary)]
        for seed, name in enumerate(names):
            await pg.write_window(name, T0, T0 + 30 * M, make_bars(T0, 30, seed=seed))
        for seed, name in enumerate(names):
            frame = await parquet.read(name, T0, T0 + 30 * M)
            pd.testing.assert_frame_equal(frame, make_bars(T0, 30, seed=seed), check_exact=True)
            pd.testing.assert_frame_equal(frame, await pg.read(name, T0, T0 + 30 * M), check_exact=True)
        assert _served(parquet)["parquet"] == len(names)
        assert [row[0] for row in await conn.fetch(f"SELECT v FROM {canary}")] == ["alive"]
        stored = {row[0] for row in await conn.fetch(f'SELECT DISTINCT series FROM "{table}"')}
        assert stored == set(names)
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {canary}")
        await conn.close()


async def test_the_reader_is_picked_by_the_size_of_the_request(questdb: Any, make_bars: Any) -> None:
    """Up to ``parquet_min_bars`` grid slots over the PG wire, more over the export; the frames agree."""
    dsn = with_option(questdb.dsn, f"table={unique_table()}&parquet_min_bars=100")
    async with await open_storage(dsn) as storage:
        series = "ohlcv:binance:ETH/USDT:1m"
        await storage.write_window(series, T0, T0 + 200 * M, make_bars(T0, 200))
        small = await storage.read(series, T0, T0 + 100 * M)
        assert _served(storage) == {"pg": 1, "parquet": 0, "export_busy": 0, "asyncpg": 0}
        large = await storage.read(series, T0, T0 + 101 * M)
        assert _served(storage) == {"pg": 1, "parquet": 1, "export_busy": 0, "asyncpg": 0}
        pd.testing.assert_frame_equal(large.iloc[:100], small, check_exact=True)
        assert np.array_equal(large["ts"].astype("int64").to_numpy()[-1:], [(T0 + 100 * M) * 1_000_000])


@pytest.mark.parametrize(("keepalive_ms", "connections"), [(None, 1), (0, 3)])
async def test_exports_reuse_an_idle_connection_unless_keepalive_is_off(
    questdb: Any, make_bars: Any, keepalive_ms: int | None, connections: int
) -> None:
    """Rule 4: by default an export rides the connection the previous one left idle (a fresh one cost 1-3 ms at
    10^4-10^5 bars); ``export_keepalive_ms=0`` opens one per export. The frames are the same either way."""
    options = f"table={unique_table()}&parquet_min_bars=0"
    if keepalive_ms is not None:
        options += f"&export_keepalive_ms={keepalive_ms}"
    async with await open_storage(with_option(questdb.dsn, options)) as storage:
        series = "ohlcv:binance:ADA/USDT:1m"
        await storage.write_window(series, T0, T0 + 30 * M, make_bars(T0, 30))
        for _ in range(3):
            frame = await storage.read(series, T0, T0 + 30 * M)
            pd.testing.assert_frame_equal(frame, make_bars(T0, 30), check_exact=True)
        assert _served(storage) == {"pg": 0, "parquet": 3, "export_busy": 0, "asyncpg": 0}
        assert storage._reader.export_connections == connections


async def test_an_export_refused_for_the_connection_limit_is_served_over_the_pg_wire(
    questdb: Any, make_bars: Any
) -> None:
    """Idle keep-alive connections of other clients fill QuestDB's export connection limit: the read still
    returns the bars, over the PG wire (rule 5), instead of failing."""
    dsn = with_option(questdb.dsn, f"table={unique_table()}&parquet_min_bars=0")
    kept: list[aiohttp.ClientSession] = []  # each holds one idle keep-alive connection that counts
    async with await open_storage(dsn) as storage:
        try:
            series = "ohlcv:binance:SOL/USDT:1m"
            await storage.write_window(series, T0, T0 + 50 * M, make_bars(T0, 50))
            url = f"http://{questdb.host}:{questdb.http_port}/exp"
            statuses: list[int] = []
            while len(statuses) < 16 and 429 not in statuses:
                kept.append(aiohttp.ClientSession())
                async with kept[-1].get(url, params={"query": "SELECT 1", "fmt": "parquet"}) as response:
                    await response.read()
                    statuses.append(response.status)
            assert 429 in statuses, statuses
            frame = await storage.read(series, T0, T0 + 50 * M)
            pd.testing.assert_frame_equal(frame, make_bars(T0, 50), check_exact=True)
            assert _served(storage) == {"pg": 1, "parquet": 0, "export_busy": 1, "asyncpg": 0}
        finally:
            for session in kept:
                await session.close()


@pytest.fixture
async def chunked(two_readers: tuple[Any, Any, str]) -> tuple[Any, Any, str]:
    """The two readers of ``two_readers``, the export one asking for 7 grid slots per request."""
    pg, parquet, table = two_readers
    parquet._reader.chunk_bars = 7
    return pg, parquet, table


async def test_a_chunked_export_returns_the_frame_of_one_request(chunked: tuple[Any, Any, str], make_bars: Any) -> None:
    """Chunks of 7 slots tile the request: gaps on and beside a seam, an off-grid start and end, a range that is
    one chunk, a range ending on a seam: no bar dropped or doubled, and the same frame as the PG wire's."""
    pg, parquet, _ = chunked
    series = "ohlcv:binance:BTC/USDT:1m"
    bars = make_bars(T0, 100, skip=(6, 7, 13, 14, 50))  # 7 and 14 open the second and third chunk
    await pg.write_window(series, T0, T0 + 100 * M, bars)
    cases = [(T0, T0 + 100 * M), (T0 + M // 2, T0 + 99 * M + 1), (T0, T0 + 7 * M), (T0 + 3 * M, T0 + 21 * M)]
    for lo, hi in cases:
        frame = await parquet.read(series, lo, hi)
        pd.testing.assert_frame_equal(frame, await pg.read(series, lo, hi), check_exact=True)
        stamps = frame["ts"].astype("int64").to_numpy() // 1_000_000
        expected = bars["ts"].astype("int64").to_numpy() // 1_000_000
        assert np.array_equal(stamps, expected[(expected >= lo) & (expected < hi)])
    assert _served(parquet) == {"pg": 0, "parquet": len(cases), "export_busy": 0, "asyncpg": 0}


async def test_a_sparse_chunked_export_keeps_only_its_rows(chunked: tuple[Any, Any, str], make_bars: Any) -> None:
    """Three bars in a range of 10,000 slots: the frame holds three rows (the preallocation is compacted), and
    a range with no bar at all gives the empty contract frame."""
    pg, parquet, _ = chunked
    series = "ohlcv:binance:XRP/USDT:1m"
    bars = make_bars(T0, 3)
    await pg.write_window(series, T0, T0 + 10_000 * M, bars)
    frame = await parquet.read(series, T0, T0 + 10_000 * M)
    pd.testing.assert_frame_equal(frame, bars, check_exact=True)
    assert frame["close"].to_numpy().base is None or frame["close"].to_numpy().base.size <= 3 * 5
    empty = await parquet.read(series, T0 + 10 * M, T0 + 10_000 * M)
    pd.testing.assert_frame_equal(empty, await pg.read(series, T0 + 10 * M, T0 + 10_000 * M), check_exact=True)
    assert len(empty) == 0


async def test_hostile_series_names_through_the_chunked_export(chunked: tuple[Any, Any, str], make_bars: Any) -> None:
    """Every hostile name of tests/security read back through several export requests: its own bars only."""
    pg, parquet, table = chunked
    names = [f"ohlcv:binance:{symbol}:1m" for symbol in hostile_symbols(f"canary_{table}")]
    for seed, name in enumerate(names):
        await pg.write_window(name, T0, T0 + 30 * M, make_bars(T0, 30, seed=seed))
    for seed, name in enumerate(names):
        pd.testing.assert_frame_equal(
            await parquet.read(name, T0, T0 + 30 * M), make_bars(T0, 30, seed=seed), check_exact=True
        )
    assert _served(parquet)["parquet"] == len(names)
