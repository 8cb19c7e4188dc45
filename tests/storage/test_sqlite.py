"""SQLite specifics: WAL journal, and several processes writing one file at once lose nothing."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import textwrap
from pathlib import Path

import pytest

from devkit.sqlite_locks import held_write_lock
from provider.frames import frame_from_arrays
from provider.storage import SchemaMismatchError, StorageUnavailableError, open_storage

M = 60_000
T0 = 1_704_067_200_000
SERIES = "ohlcv:binance:BTC/USDT:1m"

WRITER = textwrap.dedent(
    """
    import asyncio, sys
    import numpy as np
    from provider.frames import frame_from_arrays
    from provider.storage import open_storage

    async def main(dsn, first, count):
        storage = await open_storage(dsn)
        try:
            for k in range(first, first + count):
                start = {t0} + k * 20 * {m}
                ts = start + np.arange(20) * {m}
                await storage.write_window("{series}", start, start + 20 * {m}, frame_from_arrays(ts, *[ts * 1.0] * 5))
        finally:
            await storage.aclose()

    asyncio.run(main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
    """
).format(t0=T0, m=M, series=SERIES)


async def test_database_uses_the_wal_journal(tmp_path: Path):
    """The file is switched to WAL mode, so readers never block the writer and processes can share it."""
    storage = await open_storage(f"sqlite:///{tmp_path / 'wal.db'}")
    await storage.aclose()
    with sqlite3.connect(tmp_path / "wal.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_parent_directories_are_created(tmp_path: Path):
    """A DSN pointing into a missing directory creates it."""
    storage = await open_storage(f"sqlite:///{tmp_path / 'a' / 'b' / 'c.db'}")
    await storage.aclose()
    assert (tmp_path / "a" / "b" / "c.db").is_file()


async def test_openers_racing_to_switch_a_new_file_to_wal_all_succeed(tmp_path: Path):
    """Six storages opening one new file at once all open, and the file ends in WAL mode. Forty rounds, because
    before rule 4 about one round in eight failed with "database is locked"."""
    for round_ in range(40):
        path = tmp_path / f"race{round_}.db"
        storages = await asyncio.gather(*(open_storage(f"sqlite:///{path}") for _ in range(6)))
        for storage in storages:
            await storage.aclose()
        with sqlite3.connect(path) as conn:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        conn.close()


async def test_an_opener_waits_for_a_rollback_journal_writer_before_switching_to_wal(tmp_path: Path):
    """A file in SQLite's default rollback journal whose writer holds its lock (what a racing opener does in the
    middle of its switch) makes SQLite refuse the WAL switch at once; the storage waits for the writer, opens, and
    sees the writer's row."""
    path = tmp_path / "rollback.db"
    with held_write_lock(path):
        storage = await open_storage(f"sqlite:///{path}")
        await storage.aclose()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("SELECT text FROM notes").fetchall() == [("kept",)]
    conn.close()


async def test_a_wal_switch_blocked_past_busy_timeout_is_reported(tmp_path: Path):
    """An opener that cannot switch the file to WAL within busy_timeout_ms (another connection holds it in a
    rollback-journal transaction) gets StorageUnavailableError naming the file, and opens once the lock is gone."""
    path = tmp_path / "held.db"
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("CREATE TABLE notes (text TEXT)")
        blocker.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StorageUnavailableError, match=r"held\.db.*locked"):
            await open_storage(f"sqlite:///{path}?busy_timeout_ms=50")
        blocker.execute("COMMIT")
        await (await open_storage(f"sqlite:///{path}?busy_timeout_ms=50")).aclose()
    finally:
        blocker.close()


@pytest.mark.slow
async def test_processes_writing_one_file_at_once_lose_no_rows(tmp_path: Path):
    """Three processes started together on a file that does not exist yet, writing 10 windows each, leave all 600
    bars and full coverage."""
    dsn = f"sqlite:///{tmp_path / 'shared.db'}"
    procs = [
        await asyncio.create_subprocess_exec(sys.executable, "-c", WRITER, dsn, str(first), "10")
        for first in (0, 10, 20)
    ]
    codes = await asyncio.wait_for(asyncio.gather(*(proc.wait() for proc in procs)), timeout=60)
    assert codes == [0, 0, 0]
    storage = await open_storage(dsn)
    try:
        got = await storage.read(SERIES, T0, T0 + 600 * M)
        assert len(got) == 600
        assert got["ts"].is_unique and got["ts"].is_monotonic_increasing
        assert (got["close"].to_numpy() == (got["ts"].astype("int64") // 1_000_000).to_numpy()).all()
        assert await storage.coverage(SERIES) == [(T0, T0 + 600 * M)]
    finally:
        await storage.aclose()


async def test_an_existing_foreign_table_is_reported(tmp_path: Path):
    """A table of that name with other columns raises SchemaMismatchError."""
    with sqlite3.connect(tmp_path / "other.db") as conn:
        conn.execute("CREATE TABLE ohlcv (sym TEXT, ts INTEGER, price REAL)")
    with pytest.raises(SchemaMismatchError) as caught:
        await open_storage(f"sqlite:///{tmp_path / 'other.db'}")
    assert caught.value.missing[0] == "series_id"


async def test_a_locked_database_is_reported_as_unavailable(tmp_path: Path):
    """A writer blocked longer than busy_timeout_ms gets StorageUnavailableError, not a hang."""
    dsn = f"sqlite:///{tmp_path / 'locked.db'}?busy_timeout_ms=50"
    storage = await open_storage(dsn)
    blocker = sqlite3.connect(tmp_path / "locked.db", isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        frame = frame_from_arrays([T0], [1.0], [1.0], [1.0], [1.0], [1.0])
        with pytest.raises(StorageUnavailableError, match="locked"):
            await storage.write_window(SERIES, T0, T0 + M, frame)
        blocker.execute("ROLLBACK")
        assert await storage.write_window(SERIES, T0, T0 + M, frame) == 1
    finally:
        blocker.close()
        await storage.aclose()
