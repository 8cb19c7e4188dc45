"""Coverage known complete is remembered per series (storage contract rule 8), and QuestDB skips the WAL wait for
ranges whose bars are known applied (QuestDB rule 6): a repeated fetch of stored bars costs one query."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from provider.storage import open_storage

from .conftest import unique_table, with_option

M = 60_000
T0 = 1_700_000_000_000 // M * M
SERIES = "ohlcv:binance:BTC/USDT:1m"


async def test_coverage_known_complete_is_answered_from_memory(storage_dsn: str, make_bars: Any) -> None:
    async with await open_storage(storage_dsn) as storage:
        await storage.write_window(SERIES, T0, T0 + 60 * M, make_bars(T0, 60))
        assert await storage.coverage(SERIES, T0 + 10 * M, T0 + 20 * M) == [(T0 + 10 * M, T0 + 20 * M)]
        assert storage.coverage_memo_hits == 1
        # Partly outside what is known: asked of the ledger, answered exactly.
        assert await storage.coverage(SERIES, T0 - 10 * M, T0 + 20 * M) == [(T0, T0 + 20 * M)]
        assert storage.coverage_memo_hits == 1
        assert await storage.coverage(SERIES, T0 + 60 * M, T0 + 70 * M) == []
        assert await storage.coverage("ohlcv:binance:ETH/USDT:1m", T0, T0 + 10 * M) == []
        assert storage.coverage_memo_hits == 1


async def test_a_window_another_storage_writes_extends_what_is_known(shared_dsn: str, make_bars: Any) -> None:
    async with await open_storage(shared_dsn) as first, await open_storage(shared_dsn) as second:
        await first.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10))
        assert await first.coverage(SERIES, T0, T0 + 20 * M) == [(T0, T0 + 10 * M)]
        await second.write_window(SERIES, T0 + 10 * M, T0 + 20 * M, make_bars(T0 + 10 * M, 10))
        assert await first.coverage(SERIES, T0, T0 + 20 * M) == [(T0, T0 + 20 * M)]
        assert await first.coverage(SERIES, T0 + 5 * M, T0 + 15 * M) == [(T0 + 5 * M, T0 + 15 * M)]
        assert first.coverage_memo_hits == 1


async def test_forget_coverage_after_ledger_rows_were_removed_out_of_band(tmp_path: Any, make_bars: Any) -> None:
    """The memo is exact while the ledger only grows; a caller that deletes ledger rows by hand forgets it."""
    path = tmp_path / "store.db"
    async with await open_storage(f"sqlite:///{path}") as storage:
        await storage.write_window(SERIES, T0, T0 + 10 * M, make_bars(T0, 10))
        with sqlite3.connect(path) as db:
            db.execute("DELETE FROM ohlcv_windows")
        assert await storage.coverage(SERIES, T0, T0 + 10 * M) == [(T0, T0 + 10 * M)]  # remembered
        storage.forget_coverage(SERIES)
        assert await storage.coverage(SERIES, T0, T0 + 10 * M) == []
        storage.forget_coverage()


@pytest.mark.questdb
async def test_questdb_reads_of_settled_ranges_skip_the_wal_wait(questdb: Any, make_bars: Any) -> None:
    """A range a ledger answer vouched for before a completed wait, or that this storage wrote, is read without
    waiting; a range nobody vouched for still waits."""
    dsn = with_option(questdb.dsn, f"table={unique_table()}")
    async with await open_storage(dsn) as writer, await open_storage(dsn) as reader:
        await writer.write_window(SERIES, T0, T0 + 60 * M, make_bars(T0, 60))
        assert len(await writer.read(SERIES, T0, T0 + 60 * M)) == 60
        assert writer.wal_waits_skipped == 1  # its own write applied
        assert len(await reader.read(SERIES, T0, T0 + 60 * M)) == 60
        assert reader.wal_waits_skipped == 0  # nothing vouched yet: waits
        assert await reader.coverage(SERIES, T0, T0 + 60 * M) == [(T0, T0 + 60 * M)]
        await reader.read(SERIES, T0, T0 + 60 * M)  # waits once more: the answer came after the last wait
        assert reader.wal_waits_skipped == 0
        frame = await reader.read(SERIES, T0 + 10 * M, T0 + 30 * M)
        assert reader.wal_waits_skipped == 1 and len(frame) == 20
        await reader.read(SERIES, T0, T0 + 61 * M)  # beyond what is settled
        assert reader.wal_waits_skipped == 1
