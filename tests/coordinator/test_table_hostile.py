"""The lease table at its limits: a cap refuses instead of forgetting anything live, and eviction is O(1) and the
same on every replica (a restored table evicts exactly what the original would)."""

from __future__ import annotations

import pickle

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from coordinator.table import Table
from provider.core import parse_window_id

TTL = 1_000


def restored(t: Table) -> Table:
    """The table a node restarting from a dump would hold (pickled as pysyncobj does)."""
    copy = Table()
    assert copy.import_state(pickle.loads(pickle.dumps(t.export_state(), protocol=2)))
    return copy


def test_a_full_key_table_refuses_a_new_key_and_forgets_nothing_live() -> None:
    """At the cap with every key leased, a new key is refused twice with capacity and a retry hint; no lease is
    lost, the live keys still complete, and once one is finished the new key gets exactly one lease."""
    t = Table()
    tokens = {
        k: t.key_claim(key=f"n:60:{k}", lease_ms=5_000, max_keys=3, now_ms=10).value["lease"]["token"] for k in range(3)
    }
    before = t.snapshot()
    for now in (20, 21):
        refused = t.key_claim(key="n:60:new", lease_ms=TTL, max_keys=3, now_ms=now)
        assert (refused.ok, refused.code, refused.field) == (False, "capacity", "key")
        assert refused.value == {"retry_after_ms": 5_010 - now}  # when the earliest lease ends
        assert "coordinator.max_keys" in refused.message and "release-keys" in refused.message
    assert t.snapshot() == before
    assert t.key_complete(key="n:60:1", token=tokens[1], now_ms=30).ok
    granted = t.key_claim(key="n:60:new", lease_ms=TTL, max_keys=3, now_ms=40)
    assert granted.ok
    assert t.key_claim(key="n:60:new", lease_ms=TTL, max_keys=3, now_ms=41).code == "conflict"
    assert sorted(t.snapshot()["keys"]) == ["n:60:0", "n:60:2", "n:60:new"]  # the finished key made room
    for k in (0, 2):
        assert t.key_complete(key=f"n:60:{k}", token=tokens[k], now_ms=50).ok


def test_idle_keys_are_forgotten_in_the_order_they_became_idle_also_after_a_restart() -> None:
    """Finished, failed and expired keys go oldest-idle first; a key claimed again is live and skipped; a table
    restored from a dump forgets the same keys as the original."""
    t = Table()
    token = {
        k: t.key_claim(key=f"g:1:{k}", lease_ms=TTL, max_keys=4, now_ms=10).value["lease"]["token"] for k in "abcd"
    }
    t.key_fail(key="g:1:c", token=token["c"], reason="x", now_ms=20)
    t.key_complete(key="g:1:a", token=token["a"], now_ms=30)
    t.expire(now_ms=10 + TTL, max_attempts=3)  # b and d expire: idle order is now c, a, b, d
    t.key_claim(key="g:1:a", lease_ms=TTL, max_keys=4, now_ms=TTL + 20)  # a is live again
    twin = restored(t)
    for table in (t, twin):
        for new, now in (("e", 2000), ("f", 2001), ("g", 2002)):
            assert table.key_claim(key=f"g:1:{new}", lease_ms=TTL, max_keys=4, now_ms=now).ok
        assert list(table.snapshot()["keys"]) == ["g:1:a", "g:1:e", "g:1:f", "g:1:g"]
    assert twin.snapshot() == t.snapshot()
    assert t.key_claim(key="g:1:a", lease_ms=TTL, max_keys=4, now_ms=2003).code == "conflict"


def test_a_refused_claim_is_not_remembered_for_its_request_id() -> None:
    """A refusal changes nothing, so the same request id may succeed once there is room."""
    t = Table()
    first = t.key_claim(key="k:1:a", lease_ms=TTL, max_keys=1, now_ms=10)
    args = {"key": "k:1:b", "lease_ms": TTL, "max_keys": 1, "client_id": "c", "request_id": "r"}
    assert t.key_claim(**args, now_ms=20).code == "capacity"
    t.key_complete(key="k:1:a", token=first.value["lease"]["token"], now_ms=30)
    assert t.key_claim(**args, now_ms=40).ok


def test_a_bad_cap_is_invalid() -> None:
    assert Table().key_claim(key="k:1:a", lease_ms=TTL, max_keys=0, now_ms=1).field == "max_keys"


class KeyCaps(RuleBasedStateMachine):
    """Random claims, finishes, expiries and restarts against a model of a capped key table."""

    CAP = 4

    def __init__(self) -> None:
        super().__init__()
        self.t = Table()
        self.now = 1
        self.live: dict[str, int] = {}  # key -> token of its live lease
        self.known: list[str] = []  # every key the table remembers, oldest change first

    def _touch(self, key: str) -> None:
        if key in self.known:
            self.known.remove(key)
        self.known.append(key)

    @rule(k=st.integers(0, 7), dt=st.integers(0, 300))
    def claim(self, k: int, dt: int) -> None:
        self.now += dt
        key = f"q:1:{k}"
        self._reap()
        result = self.t.key_claim(key=key, lease_ms=TTL, max_keys=self.CAP, now_ms=self.now)
        if key in self.live:
            assert result.code == "conflict"
            return
        if key not in self.known and len(self.known) >= self.CAP:
            idle = [known for known in self.known if known not in self.live]
            if not idle:
                assert result.code == "capacity" and result.value["retry_after_ms"] >= 1000
                return
            self.known.remove(idle[0])
        assert result.ok, result.message
        self.live[key] = result.value["lease"]["token"]
        self._touch(key)

    @rule(i=st.integers(0, 100), done=st.booleans())
    def finish(self, i: int, done: bool) -> None:
        if not self.live:
            return
        key = sorted(self.live)[i % len(self.live)]
        token = self.live.pop(key)
        if done:
            assert self.t.key_complete(key=key, token=token, now_ms=self.now).ok
        else:
            assert self.t.key_fail(key=key, token=token, reason="r", now_ms=self.now).ok
        self._touch(key)

    @rule(dt=st.integers(0, 1500))
    def expire(self, dt: int) -> None:
        self.now += dt
        self._reap()

    def _reap(self) -> None:
        expired = self.t.expire(now_ms=self.now, max_attempts=3).value["expired"]
        for key in (e["key"] for e in expired if e["key"]):  # in the order the table expired them
            self.live.pop(key)
            self._touch(key)

    @rule()
    def restart(self) -> None:
        twin = restored(self.t)
        assert twin.snapshot() == self.t.snapshot()
        self.t = twin

    @invariant()
    def the_table_holds_the_model(self) -> None:
        keys = self.t.snapshot()["keys"]
        assert list(keys) == self.known and len(keys) <= self.CAP
        assert {k: tok for k, (state, tok) in keys.items() if state == "leased"} == self.live


KeyCaps.TestCase.settings = settings(
    max_examples=150, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
test_key_caps = KeyCaps.TestCase


def test_a_small_submission_does_not_reorder_the_whole_queue(monkeypatch) -> None:
    """A one-window job joining a large pending queue is pushed, not merged by a heapify of every window
    (O(pending) on the apply thread, which caused elections at 10^6 pending); claims still come in rank order."""
    import heapq

    import coordinator.table as table_module

    t = Table()
    series = "ohlcv:ex:AAA/USD:1m"
    assert t.submit_job(series=series, start=0, end=1000 * 60_000, window_bars=1, max_windows=1000, now_ms=1).ok
    heapified: list[int] = []
    monkeypatch.setattr(table_module.heapq, "heapify", lambda heap: heapified.append(len(heap)) or heapq.heapify(heap))
    late = t.submit_job(
        series=series, start=5000 * 60_000, end=5001 * 60_000, window_bars=1, max_windows=1, priority=5, now_ms=2
    )
    assert late.ok and heapified == []
    claimed = t.claim(worker_id="w", max_windows=2, ttl_ms=TTL, now_ms=3).value["leases"]
    assert [parse_window_id(lease["window_id"])[1] for lease in claimed] == [5000 * 60_000, 0]


def test_a_request_id_replayed_with_another_body_is_a_conflict() -> None:
    """The leader tags each request id with its arguments' fingerprint: the same id and body gets the first answer,
    another body (or command) is a conflict that changes nothing, and an id without a tag (an older journal) is
    matched by id alone."""
    from coordinator._state import FINGERPRINT_SEP, fingerprint

    t = Table()

    def claim(key: str, request_id: str, now: int, tag: bool = True) -> object:
        args = {"key": key, "lease_ms": TTL}
        rid = f"{request_id}{FINGERPRINT_SEP}{fingerprint('key_claim', args)}" if tag else request_id
        return t.key_claim(**args, now_ms=now, client_id="c", request_id=rid)

    first = claim("k:1:a", "r1", 10)
    assert claim("k:1:a", "r1", 11) == first
    before = t.snapshot()
    other = claim("k:1:b", "r1", 12)
    assert other.code == "conflict" and "another key_claim body" in other.message and t.snapshot() == before
    complete = t.key_complete(key="k:1:a", token=1, now_ms=13, client_id="c", request_id=f"r1{FINGERPRINT_SEP}x")
    assert complete.code == "conflict" and "was used for key_claim" in complete.message
    legacy = claim("k:1:c", "r2", 14, tag=False)
    assert legacy.ok and claim("k:1:d", "r2", 15, tag=False) == legacy
    assert (
        restored(t)
        .key_claim(key="k:1:b", lease_ms=TTL, now_ms=16, client_id="c", request_id=f"r1{FINGERPRINT_SEP}other")
        .code
        == "conflict"
    )  # the tag survives a dump


def test_jobs_come_in_pages_that_cover_every_job_once() -> None:
    """Following next-page cursors yields every job once in submission order, with the state and series filters
    applied inside the page (a page is never padded with other jobs)."""
    t = Table()
    names = ("ohlcv:ex:AAA/USD:1m", "ohlcv:ex:BBB/USD:1m")
    for k in range(25):
        assert t.submit_job(
            series=names[k % 2], start=k * 60_000, end=(k + 1) * 60_000, window_bars=1, max_windows=1, now_ms=1
        ).ok
    t.cancel_job(job_id="job-4", now_ms=2)
    seen: list[str] = []
    cursor = 0
    while True:
        page, cursor_next = t.jobs_page(10, cursor)
        assert len(page) <= 10
        seen += [job["job_id"] for job in page]
        if cursor_next is None:
            break
        cursor = cursor_next
    assert seen == [f"job-{k}" for k in range(1, 26)]
    page, more = t.jobs_page(100, 0, series=names[1])
    assert [job["job_id"] for job in page] == [f"job-{k}" for k in range(2, 26, 2)] and more is None
    page, more = t.jobs_page(100, 0, state="cancelled")
    assert [job["job_id"] for job in page] == ["job-4"] and more is None


def _job(t: Table, k: int, owner: str, limits: dict[str, int], windows: int = 1, now: int = 10) -> object:
    return t.submit_job(
        series="ohlcv:ex:ADM/USD:1m",
        start=k * 60_000,
        end=(k + windows) * 60_000,
        window_bars=1,
        max_windows=1000,
        owner=owner,
        limits=limits,
        now_ms=now,
    )


def test_a_client_at_its_limits_is_refused_and_others_are_not() -> None:
    """A client with `live_jobs` running jobs, or whose outstanding windows would pass the limit, gets capacity
    with a retry hint and nothing changes; an identical resubmission still answers; another client is unaffected;
    finishing work makes room again."""
    t = Table()
    limits = {"live_jobs": 2, "outstanding_windows": 10}
    assert _job(t, 0, "alice", limits).ok and _job(t, 1, "alice", limits, windows=3).ok
    before = t.snapshot()
    third = _job(t, 10, "alice", limits)
    assert third.code == "capacity" and third.value["retry_after_ms"] > 0
    assert "coordinator.max_live_jobs_per_client" in third.message and t.snapshot() == before
    again = _job(t, 1, "alice", limits, windows=3)
    assert again.ok and again.value["created"] is False
    assert _job(t, 20, "bob", limits, windows=10).ok
    assert _job(t, 40, "bob", {"live_jobs": 5, "outstanding_windows": 10}).code == "capacity"  # 10 + 1 > 10
    assert t._owners == {"alice": [2, 4], "bob": [1, 10]}
    leases = t.claim(worker_id="w", max_windows=1, ttl_ms=TTL, now_ms=20).value["leases"]  # alice's first window
    assert t._owners["alice"] == [2, 4]  # leased is still outstanding
    t.complete(lease_id=leases[0]["lease_id"], token=leases[0]["token"], rows=1, now_ms=21)
    assert t._owners["alice"] == [1, 3] and _job(t, 10, "alice", limits).ok
    t.cancel_job(job_id="job-3", now_ms=22)
    assert "bob" not in t._owners


def test_a_format_2_dump_loads_with_jobs_that_count_against_no_one() -> None:
    """Dumps written before owners were recorded (format 2, a fixture written by that code) load unchanged."""
    from pathlib import Path

    from coordinator._snapshot import decode

    old = decode((Path(__file__).parent / "fixtures" / "table-format2.dump").read_bytes())
    assert old is not None
    t = Table()
    s = "ohlcv:ex:AAA/USD:1m"
    t.submit_job(series=s, start=0, end=60 * 60_000, window_bars=15, max_windows=100, now_ms=1)
    t.submit_job(series=s, start=30 * 60_000, end=120 * 60_000, window_bars=15, max_windows=100, priority=3, now_ms=2)
    leases = t.claim(worker_id="w", max_windows=3, ttl_ms=10_000, now_ms=3).value["leases"]
    t.complete(lease_id=leases[0]["lease_id"], token=leases[0]["token"], rows=15, now_ms=4)
    t.key_claim(key="n:60:0", lease_ms=5000, now_ms=5)
    assert old.snapshot() == t.snapshot() and old._owners == {}
    assert restored(t).snapshot() == t.snapshot()
