"""The WAL-apply wait, driven by scripted wal_tables() answers (no server): it waits, times out, reports, shares."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from provider.storage import StorageUnavailableError, WalApplyTimeoutError, WalSuspendedError
from provider.storage._questdb_ingest import WalMonitor

Answer = dict[str, tuple[bool, int, int]]  # table -> (suspended, writerTxn, sequencerTxn)


class ScriptedPool:
    """Answers wal_tables() queries from a list of per-table answers, the last one repeated."""

    def __init__(self, answers: list[Answer], error: str = "", latency_s: float = 0.0) -> None:
        self.answers = answers
        self.error = error
        self.latency_s = latency_s
        self.queries = 0

    async def fetch(self, sql: str, *args: Any, what: str) -> list[dict[str, Any]]:
        assert "wal_tables()" in sql and args == ("bars", "ledger")
        answer = self.answers[min(self.queries, len(self.answers) - 1)]
        self.queries += 1
        await asyncio.sleep(self.latency_s)
        return [
            {
                "name": name,
                "suspended": suspended,
                "writerTxn": writer,
                "sequencerTxn": sequencer,
                "errorTag": "DISK FULL" if self.error and suspended else "",
                "errorMessage": self.error if suspended else "",
            }
            for name, (suspended, writer, sequencer) in answer.items()
        ]


def bars(suspended: bool, writer: int, sequencer: int) -> Answer:
    return {"bars": (suspended, writer, sequencer), "ledger": (False, 1, 1)}


def monitor(pool: ScriptedPool, timeout_ms: int = 2_000) -> WalMonitor:
    return WalMonitor(pool, ("bars", "ledger"), timeout_ms=timeout_ms, target="questdb://h:1/")  # type: ignore[arg-type]


async def test_waits_until_the_writer_reaches_the_sequencer():
    """wait_applied polls until writerTxn reaches the sequencerTxn seen after the flush."""
    pool = ScriptedPool([bars(False, 3, 5), bars(False, 4, 6), bars(False, 5, 7)])
    await monitor(pool).wait_applied("bars")
    assert pool.queries == 3


async def test_returns_at_once_when_nothing_is_pending():
    """An applied table costs one status query."""
    pool = ScriptedPool([bars(False, 9, 9)])
    await monitor(pool).wait_applied("bars")
    assert pool.queries == 1


async def test_waits_for_every_table_asked_for():
    """Waiting on two tables returns only when both writers caught up; one query answers for both."""
    pool = ScriptedPool(
        [
            {"bars": (False, 5, 5), "ledger": (False, 1, 3)},
            {"bars": (False, 5, 6), "ledger": (False, 2, 3)},
            {"bars": (False, 6, 6), "ledger": (False, 3, 4)},
        ]
    )
    await monitor(pool).wait_applied("bars", "ledger")
    assert pool.queries == 3


async def test_gives_up_after_the_bound():
    """A WAL that never applies raises WalApplyTimeoutError (a StorageUnavailableError) with both txns."""
    pool = ScriptedPool([bars(False, 1, 2)])
    with pytest.raises(WalApplyTimeoutError) as caught:
        await monitor(pool, timeout_ms=30).wait_applied("bars")
    assert isinstance(caught.value, StorageUnavailableError)
    assert (caught.value.writer_txn, caught.value.sequencer_txn, caught.value.table) == (1, 2, "bars")
    assert pool.queries >= 2


async def test_suspension_while_waiting_is_reported_with_the_fix():
    """A table that becomes suspended during the wait raises WalSuspendedError with the reason and RESUME WAL."""
    pool = ScriptedPool([bars(False, 1, 2), bars(True, 1, 2)], error="No space left on device")
    with pytest.raises(WalSuspendedError) as caught:
        await monitor(pool).wait_applied("bars")
    assert caught.value.fix == "ALTER TABLE bars RESUME WAL"
    assert "No space left on device" in str(caught.value) and caught.value.fix in str(caught.value)


async def test_a_missing_table_is_named():
    pool = ScriptedPool([{"bars": (False, 1, 1)}])
    with pytest.raises(Exception, match="'ledger' is not a WAL table"):
        await monitor(pool).check("ledger")


async def test_concurrent_waiters_share_status_queries():
    """Eight windows waiting at once cost a handful of queries, not eight per poll round."""
    pool = ScriptedPool([bars(False, 1, 3)] * 3 + [bars(False, 3, 3)], latency_s=0.005)
    wal = monitor(pool)
    committed_at = asyncio.get_running_loop().time()
    await asyncio.gather(*(wal.wait_applied("bars", committed_at=committed_at) for _ in range(8)))
    assert pool.queries <= 5


async def test_a_query_started_before_the_flush_is_not_trusted():
    """Without committed_at, a status query already in flight (maybe from before the flush) is not reused."""
    pool = ScriptedPool([bars(False, 1, 1), bars(False, 1, 2), bars(False, 2, 2)], latency_s=0.01)
    wal = monitor(pool)
    early = asyncio.ensure_future(wal.check("bars"))
    await asyncio.sleep(0.001)  # the check's query is in flight; our "flush" lands now
    await wal.wait_applied("bars")
    await early
    assert pool.queries == 3  # the check's answer (txn 1) did not end the wait; the second one saw txn 2 pending


async def test_a_failed_query_is_not_shared_twice():
    class FailingOnce(ScriptedPool):
        async def fetch(self, sql: str, *args: Any, what: str) -> list[dict[str, Any]]:
            if self.queries == 0:
                self.queries += 1
                raise StorageUnavailableError("questdb", "questdb://h:1/", "connection refused")
            return await super().fetch(sql, *args, what=what)

    pool = FailingOnce([bars(False, 1, 1)])
    wal = monitor(pool)
    with pytest.raises(StorageUnavailableError):
        await wal.check("bars")
    await wal.check("bars")
    assert pool.queries == 2
