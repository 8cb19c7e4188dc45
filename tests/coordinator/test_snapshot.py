"""The compact snapshot format (coordinator/_snapshot.py): round trips, migration of format-1 dumps, rejection."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import pytest

from coordinator._records import WindowRec
from coordinator._snapshot import MAGIC, decode, encode
from coordinator.table import Table

S1 = "ohlcv:binance:BTC/USDT:1m"
S2 = "ohlcv:binance:ETH/USDT:1h"
MIN = 60_000
FIXTURE = Path(__file__).parent / "fixtures" / "table-format1.pickle.gz"


TRACE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def dump_and_load(t: Table) -> Table:
    """What pysyncobj does: pickle the consumer's state into the dump (protocol 2), unpickle it, import it."""
    restored = Table()
    data = pickle.loads(pickle.dumps(t.export_state(), protocol=2))
    assert isinstance(data, bytes) and data.startswith(MAGIC)
    assert restored.import_state(data)
    return restored


def rich_table() -> Table:
    """Every kind of state: jobs (running, cancelled, retired), leases, backoff, errors, keys, dedup, nodes."""
    t = Table()
    t.submit_job(series=S1, start=0, end=60 * MIN, priority=2, window_bars=15, max_windows=100, now_ms=1)
    t.submit_job(series=S2, start=0, end=8 * 60 * MIN, window_bars=2, max_windows=100, now_ms=2)
    t.submit_job(series=S1, start=30 * MIN, end=90 * MIN, window_bars=15, max_windows=100, now_ms=3, trace=TRACE)
    leases = t.claim(worker_id="w", max_windows=5, ttl_ms=10_000, now_ms=10, client_id="c", request_id="r").value
    first, second, third = leases["leases"][:3]
    assert t.complete(lease_id=first["lease_id"], token=first["token"], rows=15, now_ms=20).ok
    args: dict[str, Any] = {"reason": "boom é", "retryable": True, "max_attempts": 3, "retry_backoff_ms": 5_000}
    assert t.fail(lease_id=second["lease_id"], token=second["token"], now_ms=30, **args).ok
    assert t.renew(lease_id=third["lease_id"], token=third["token"], ttl_ms=20_000, now_ms=40).ok
    old = t.submit_job(series=S2, start=100 * 3_600_000, end=102 * 3_600_000, window_bars=2, max_windows=9, now_ms=41)
    assert t.cancel_job(job_id=old.value["job"]["job_id"], now_ms=42).ok
    assert t.retire(retention_ms=0, now_ms=43).value["retired"] == [old.value["job"]["job_id"]]
    assert t.key_claim(key="node:60:0:60000:x", lease_ms=30_000, now_ms=50).ok
    assert t.announce(node_id="n0", raft="127.0.0.1:1", http="127.0.0.1:2").ok
    return t


def drive(t: Table) -> list[Any]:
    """The same commands on two tables must give the same answers: claim order, backoff, expiry, dedup."""
    out = []
    out.append(t.claim(worker_id="w", max_windows=3, ttl_ms=1_000, now_ms=100, client_id="c", request_id="r"))
    out.append(t.claim(worker_id="w2", max_windows=50, ttl_ms=1_000, now_ms=6_000))
    out.append(t.expire(now_ms=30_000, max_attempts=3))
    out.append(t.claim(worker_id="w3", max_windows=50, ttl_ms=1_000, now_ms=40_000))
    out.append(t.submit_job(series=S1, start=0, end=60 * MIN, priority=2, window_bars=15, max_windows=100, now_ms=1))
    return [(r.ok, r.value, r.code) for r in out]


def test_a_round_trip_restores_an_equal_table_that_behaves_the_same() -> None:
    """Everything observable survives, and derived state (heaps, ranks, index) is rebuilt to the same behaviour."""
    t = rich_table()
    restored = dump_and_load(t)
    assert restored.snapshot() == t.snapshot()
    assert restored.stats() == t.stats() and restored.jobs() == t.jobs()
    assert restored.next_expiry_ms() == t.next_expiry_ms() and restored.clock_ms == t.clock_ms
    assert drive(restored) == drive(t)
    assert restored.snapshot() == t.snapshot()


def test_a_format1_dump_from_the_first_release_loads_once_and_is_rewritten_in_format2() -> None:
    """The committed fixture (gzip + pickle, written by the code of the first release) loads; then a format-2 round
    trip keeps it equal."""
    with gzip.open(FIXTURE, "rb") as f:
        data = pickle.load(f)
    assert isinstance(data, dict) and data["format"] == 1
    t = Table()
    assert t.import_state(data)
    jobs = {j["job_id"]: j for j in t.jobs()}
    assert [j["state"] for j in jobs.values()] == ["running", "running", "cancelled"]
    assert jobs["job-1"]["windows"] == {"pending": 2, "leased": 1, "done": 1, "failed": 0}
    assert jobs["job-2"]["windows"] == {"pending": 3, "leased": 0, "done": 0, "failed": 0}
    assert t.token_floor == 4 and len(t.snapshot()["windows"]) == 9
    assert [i["kind"] for i in t.lease_infos(0)] == ["window", "key"]
    assert t.nodes() == {"127.0.0.1:1": {"node_id": "n0", "http": "127.0.0.1:2"}}
    again = t.submit_job(
        series=S2,
        start=0,
        end=10 * 3_600_000,
        window_bars=4,
        max_windows=1000,
        now_ms=9_999,
        client_id="c",
        request_id="r1",
    )
    assert again.value["job"]["job_id"] == "job-2"  # the remembered result came along
    restored = dump_and_load(t)
    assert restored.snapshot() == t.snapshot()
    assert drive(restored) == drive(t)


def test_the_format_is_much_smaller_than_the_pickle_it_replaces() -> None:
    """At 20,000 windows the dump's gzip'd pickle is at most a third of format 1's."""
    t = Table()
    for k in range(4):
        t.submit_job(
            series=S1, start=k * 5_000 * MIN, end=(k + 1) * 5_000 * MIN, window_bars=1, max_windows=5_000, now_ms=1
        )
    t.claim(worker_id="w", max_windows=1000, ttl_ms=1_000, now_ms=2)
    new = gzip.compress(pickle.dumps(t.export_state(), protocol=2))
    old_windows = {}  # what format 1 pickled: a record object per window
    for key, window in t._windows.items():
        rec = old_windows[key] = WindowRec(window.series, window.start, window.end)
        rec.state, rec.attempts, rec.lease, rec.jobs = window.state, window.attempts, window.lease, list(window.jobs)
    old = gzip.compress(pickle.dumps({"format": 1, "windows": old_windows}, protocol=2))
    assert len(new) * 3 <= len(old), (len(new), len(old))


@pytest.mark.parametrize(
    "data",
    [None, b"", b"garbage", MAGIC + b"not zlib", {"format": 99, "state": {}}, {"format": 1, "state": {"x": 1}}, 7],
)
def test_foreign_or_corrupt_data_is_refused_and_the_state_kept(data: Any) -> None:
    """import_state returns False and keeps the table; it never raises (it runs on pysyncobj's thread)."""
    t = rich_table()
    before = t.snapshot()
    assert not t.import_state(data)
    assert t.snapshot() == before


def test_decode_rejects_another_format_number() -> None:
    """A future format is not misread as this one."""
    blob = encode(rich_table())
    assert decode(blob) is not None
    assert decode(blob.replace(MAGIC, b"SDPTBL\x00\x09", 1)) is None


def test_windows_of_one_job_share_one_job_id_tuple_before_and_after_a_restart() -> None:
    """Memory: the job ids of a window are one tuple per job set, not a list per window (docs/benchmarks.md)."""
    t = Table()
    t.submit_job(series=S1, start=0, end=600 * MIN, window_bars=15, max_windows=100, now_ms=1)
    t.submit_job(series=S1, start=300 * MIN, end=900 * MIN, window_bars=15, max_windows=100, now_ms=2)
    for table in (t, dump_and_load(t)):
        windows = table._windows
        only_first, shared = windows[(S1, 0)].jobs, windows[(S1, 300 * MIN)].jobs
        assert only_first == ("job-1",) and shared == ("job-1", "job-2")
        assert all(windows[(S1, k * 15 * MIN)].jobs is only_first for k in range(20))
        assert all(windows[(S1, k * 15 * MIN)].jobs is shared for k in range(20, 40))


def test_a_format4_dump_of_the_row_per_window_release_loads_into_blocks() -> None:
    """The committed fixture was written by the code before the window blocks (format 4: a row per window) from
    ``rich_table()``; it loads into the same table, behaves the same, and is rewritten in the current format."""
    old = decode((FIXTURE.parent / "table-format4.dump").read_bytes())
    assert old is not None
    t = rich_table()
    assert old.snapshot() == t.snapshot()
    assert old.stats() == t.stats() and old.next_expiry_ms() == t.next_expiry_ms()
    loaded = Table()
    assert loaded.import_state((FIXTURE.parent / "table-format4.dump").read_bytes())
    assert drive(loaded) == drive(t)
    again = dump_and_load(loaded)
    assert again.snapshot() == loaded.snapshot() and encode(again).startswith(MAGIC)
