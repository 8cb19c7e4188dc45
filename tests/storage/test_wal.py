"""The WAL-apply wait, driven by scripted wal_tables() answers (no server): it waits, times out or reports."""

from __future__ import annotations

from typing import Any

import pytest

from provider.storage import StorageUnavailableError, WalApplyTimeoutError, WalSuspendedError
from provider.storage._questdb_ingest import WalMonitor


class ScriptedPool:
    """Answers wal_tables() queries from a list of (suspended, writerTxn, sequencerTxn) tuples, last one repeated."""

    def __init__(self, answers: list[tuple[bool, int, int]], error: str = "") -> None:
        self.answers = answers
        self.error = error
        self.queries = 0

    async def fetchrow(self, sql: str, *args: Any, what: str) -> dict[str, Any]:
        assert "wal_tables()" in sql and args == ("bars",)
        suspended, writer, sequencer = self.answers[min(self.queries, len(self.answers) - 1)]
        self.queries += 1
        return {
            "suspended": suspended,
            "writerTxn": writer,
            "sequencerTxn": sequencer,
            "errorTag": "DISK FULL" if self.error else "",
            "errorMessage": self.error,
        }


def monitor(pool: ScriptedPool, timeout_ms: int = 2_000) -> WalMonitor:
    return WalMonitor(pool, timeout_ms=timeout_ms, target="questdb://h:1/")  # type: ignore[arg-type]


async def test_waits_until_the_writer_reaches_the_sequencer():
    """wait_applied polls until writerTxn reaches the sequencerTxn seen after the flush."""
    pool = ScriptedPool([(False, 3, 5), (False, 4, 6), (False, 5, 7)])
    await monitor(pool).wait_applied("bars")
    assert pool.queries == 3


async def test_returns_at_once_when_nothing_is_pending():
    """An applied table costs one status query."""
    pool = ScriptedPool([(False, 9, 9)])
    await monitor(pool).wait_applied("bars")
    assert pool.queries == 1


async def test_gives_up_after_the_bound():
    """A WAL that never applies raises WalApplyTimeoutError (a StorageUnavailableError) with both txns."""
    pool = ScriptedPool([(False, 1, 2)])
    with pytest.raises(WalApplyTimeoutError) as caught:
        await monitor(pool, timeout_ms=30).wait_applied("bars")
    assert isinstance(caught.value, StorageUnavailableError)
    assert (caught.value.writer_txn, caught.value.sequencer_txn, caught.value.table) == (1, 2, "bars")
    assert pool.queries >= 2


async def test_suspension_while_waiting_is_reported_with_the_fix():
    """A table that becomes suspended during the wait raises WalSuspendedError with the reason and RESUME WAL."""
    pool = ScriptedPool([(False, 1, 2), (True, 1, 2)], error="No space left on device")
    with pytest.raises(WalSuspendedError) as caught:
        await monitor(pool).wait_applied("bars")
    assert caught.value.fix == "ALTER TABLE bars RESUME WAL"
    assert "No space left on device" in str(caught.value) and caught.value.fix in str(caught.value)
