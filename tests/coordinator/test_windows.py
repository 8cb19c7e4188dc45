"""The window store (coordinator/_windows.py): blocks, holes, coalescing, splitting, and tables built on it."""

from __future__ import annotations

import pickle

from coordinator._windows import Window, WindowStore
from coordinator.table import Table

S = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
SPAN = 15 * MIN


def store() -> WindowStore:
    return WindowStore(lambda jobs: (0, len(jobs)) if jobs else None)


def test_adjacent_fills_coalesce_into_one_block_and_gaps_make_new_ones() -> None:
    s = store()
    s.fill(S, SPAN, 0, 10, ("a",))
    s.fill(S, SPAN, 10, 25, ("b",))  # starts where the first ends: the same block grows
    s.fill(S, SPAN, 40, 45, ("c",))
    assert [(b.k0, b.n) for b in s.blocks] == [(0, 25), (40, 5)]
    assert len(s) == 30
    assert s[(S, 12 * SPAN)].jobs == ("b",) and s[(S, 41 * SPAN)].jobs == ("c",)
    assert s.get((S, 30 * SPAN)) is None and s.get((S, 12 * SPAN + 1)) is None and s.get(("other", 0)) is None
    w = s[(S, 3 * SPAN)]
    assert (w.start, w.end, w.state, w.attempts, w.rows, w.last_error) == (3 * SPAN, 4 * SPAN, "pending", 0, -1, "")


def test_cells_report_windows_and_missing_runs_in_order_and_fill_takes_holes_and_gaps() -> None:
    s = store()
    s.fill(S, SPAN, 0, 6, ("a",))
    s.fill(S, SPAN, 10, 12, ("a",))
    s.remove(s[(S, 2 * SPAN)])
    s.remove(s[(S, 3 * SPAN)])
    cells = s.cells(S, 1, 14)
    shape = [c.start // SPAN if isinstance(c, Window) else c for c in cells]
    assert shape == [1, (2, 4), 4, 5, (6, 10), 10, 11, (12, 14)]
    for cell in cells:
        if not isinstance(cell, Window):
            s.fill(S, SPAN, cell[0], cell[1], ("b",))
    assert len(s) == 14 and [w.start // SPAN for w in s.in_range(S, 0, 14)] == list(range(14))
    assert s[(S, 2 * SPAN)].jobs == ("b",) and s[(S, 2 * SPAN)].state == "pending"


def test_fields_are_written_through_the_view_and_shared_job_tuples_are_interned() -> None:
    s = store()
    s.fill(S, SPAN, 0, 3, ("a",))
    w = s[(S, SPAN)]
    w.state, w.attempts, w.lease, w.rows, w.last_error = "leased", 2, 7, 15, "boom"
    w.jobs = ("a", "b")
    again = s[(S, SPAN)]
    assert again == w and again is not w
    assert (again.state, again.attempts, again.lease, again.rows, again.last_error) == ("leased", 2, 7, 15, "boom")
    s[(S, 2 * SPAN)].jobs = ("a", "b")
    assert s[(S, 2 * SPAN)].jobs is again.jobs and again.rank == (0, 2)
    again.last_error = ""
    assert s[(S, SPAN)].last_error == "" and not s.blocks[0].errors


def test_settle_drops_empty_blocks_and_splits_mostly_empty_ones() -> None:
    s = store()
    s.fill(S, SPAN, 0, 200, ("a",))
    s.fill(S, SPAN, 300, 310, ("a",))
    for k in range(300, 310):
        s.remove(s[(S, k * SPAN)])
    for k in range(20, 180):  # 160 of 200 gone, in one run: the block splits around it
        s.remove(s[(S, k * SPAN)])
    s.remove(s[(S, 5 * SPAN)])  # a short hole stays inside its piece
    s[(S, 190 * SPAN)].last_error = "kept"
    s.settle()
    assert [(b.k0, b.n, b.live) for b in s.blocks] == [(0, 20, 19), (180, 20, 20)]
    assert len(s) == 39 and s.get((S, 5 * SPAN)) is None and s[(S, 6 * SPAN)].state == "pending"
    assert s[(S, 190 * SPAN)].last_error == "kept"
    for window in list(s.values()):
        s.remove(window)
    s.settle()
    assert s.blocks == [] and len(s) == 0


def test_a_table_with_holes_and_split_blocks_survives_a_dump_and_goes_on_the_same() -> None:
    """Retirement leaves holes; a dump keeps them as holes; the restored table claims in the same order."""
    t = Table()
    old = t.submit_job(series=S, start=0, end=300 * SPAN, window_bars=15, max_windows=1000, now_ms=1)
    keep = t.submit_job(series=S, start=280 * SPAN, end=320 * SPAN, window_bars=15, max_windows=1000, now_ms=2)
    assert old.ok and keep.ok
    assert t.cancel_job(job_id=old.value["job"]["job_id"], now_ms=3).ok
    assert t.retire(retention_ms=0, now_ms=4).value["windows_dropped"] == 280
    assert [(b.k0, b.n) for b in t._windows.blocks] == [(280, 40)]
    restored = Table()
    assert restored.import_state(pickle.loads(pickle.dumps(t.export_state(), protocol=2)))
    assert restored.snapshot() == t.snapshot()
    for table in (t, restored):
        leases = table.claim(worker_id="w", max_windows=50, ttl_ms=1000, now_ms=5).value["leases"]
        assert [lease["start"] for lease in leases] == [k * SPAN for k in range(280, 320)]
    again = t.submit_job(series=S, start=0, end=10 * SPAN, window_bars=15, max_windows=1000, now_ms=6)
    assert again.value["job"]["windows"]["pending"] == 10  # the retired range comes back as fresh windows
