"""Jobs remember the trace of the request that created them; claims hand it to the workers (issue 18)."""

from __future__ import annotations

from pathlib import Path

from coordinator._snapshot import decode, encode
from coordinator.table import Table
from provider.core import Lease
from provider.core.errors import WireFormatError

S = "ohlcv:ex:AAA/USD:1m"
MIN = 60_000
TRACE_A = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
TRACE_B = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
FIXTURES = Path(__file__).parent / "fixtures"


def test_a_claimed_window_names_its_traced_jobs_best_ranked_first() -> None:
    """Overlapping jobs: the lease lists the higher-priority job's trace first, then the other's."""
    t = Table()
    t.submit_job(series=S, start=0, end=60 * MIN, window_bars=15, max_windows=100, now_ms=1, trace=TRACE_A)
    t.submit_job(series=S, start=0, end=30 * MIN, window_bars=15, max_windows=100, priority=5, now_ms=2, trace=TRACE_B)
    leases = t.claim(worker_id="w", max_windows=4, ttl_ms=10_000, now_ms=3).value["leases"]
    assert [lease["traces"] for lease in leases] == [[TRACE_B, TRACE_A]] * 2 + [[TRACE_A]] * 2
    parsed = Lease.from_dict(leases[0])
    assert parsed.traces == (TRACE_B, TRACE_A)
    assert Lease.from_dict(parsed.to_dict()) == parsed


def test_untraced_jobs_send_no_traces_field_so_older_workers_still_parse_leases() -> None:
    """A job created without a trace: the lease has no ``traces`` key at all, and a model round trip keeps it out."""
    t = Table()
    t.submit_job(series=S, start=0, end=15 * MIN, window_bars=15, max_windows=100, now_ms=1)
    (lease,) = t.claim(worker_id="w", max_windows=1, ttl_ms=10_000, now_ms=2).value["leases"]
    assert "traces" not in lease
    assert "traces" not in Lease.from_dict(lease).to_dict()


def test_a_trace_that_is_not_text_is_refused_naming_the_field() -> None:
    """The table refuses a non-text or oversized trace as ``invalid`` on ``trace``; nothing is created."""
    t = Table()
    for bad in (7, "x" * 129, "tab\there"):
        r = t.submit_job(series=S, start=0, end=15 * MIN, window_bars=15, max_windows=100, now_ms=1, trace=bad)
        assert (r.ok, r.code, r.field) == (False, "invalid", "trace")
    assert t.snapshot()["jobs"] == {}


def test_a_lease_with_a_bad_traces_list_is_a_wire_error() -> None:
    """A lease whose ``traces`` is not a short list of short strings is refused naming the field."""
    good = {
        "lease_id": "lease-1",
        "window_id": "w",
        "token": 1,
        "series": S,
        "start": 0,
        "end": MIN,
        "attempt": 1,
        "expires_at_ms": 5,
    }
    for bad in ("00-abc", [TRACE_A] * 9, [7], ["x" * 200]):
        try:
            Lease.from_dict({**good, "traces": bad})
        except WireFormatError as exc:
            assert exc.field == "traces"
        else:
            raise AssertionError(f"traces={bad!r} was accepted")


def test_traces_survive_a_snapshot_and_a_format_3_dump_loads_with_untraced_jobs() -> None:
    """Format 4 keeps each job's trace; a format-3 dump (a fixture written by the release before traces) loads,
    its jobs untraced and its owners kept."""
    t = Table()
    t.submit_job(series=S, start=0, end=60 * MIN, window_bars=15, max_windows=100, now_ms=1, trace=TRACE_A)
    back = decode(encode(t))
    assert back is not None and back._jobs["job-1"].trace == TRACE_A
    assert back.snapshot() == t.snapshot()

    old = decode((FIXTURES / "table-format3.dump").read_bytes())
    assert old is not None
    lim = {"live_jobs": 10, "outstanding_windows": 1000}
    same = Table()
    same.submit_job(
        series=S, start=0, end=60 * MIN, window_bars=15, max_windows=100, now_ms=1, owner="alice", limits=lim
    )
    same.submit_job(
        series=S,
        start=30 * MIN,
        end=120 * MIN,
        window_bars=15,
        max_windows=100,
        priority=3,
        now_ms=2,
        owner="bob",
        limits=lim,
    )
    leases = same.claim(worker_id="w", max_windows=3, ttl_ms=10_000, now_ms=3).value["leases"]
    same.complete(lease_id=leases[0]["lease_id"], token=leases[0]["token"], rows=15, now_ms=4)
    same.key_claim(key="n:60:0", lease_ms=5000, now_ms=5)
    assert old.snapshot() == same.snapshot()
    assert {j.trace for j in old._jobs.values()} == {""}
    assert old._owners == same._owners and set(old._owners) == {"alice", "bob"}
