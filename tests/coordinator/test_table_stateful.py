"""Hypothesis stateful test: the lease table against a simple model of windows, jobs and leases."""

from __future__ import annotations

import pickle
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from coordinator.table import Table
from provider.core import window_id

SERIES = ("ohlcv:ex:AAA/USD:1m", "ohlcv:ex:BBB/USD:1h")
INTERVALS = (60_000, 3_600_000)
BARS = 2
TTL = 1_000
MAX_ATTEMPTS = 3
BACKOFF = 100
#: Small per-client limits, so that the machine reaches them (table.py rule 11).
ALICE_LIMITS = {"live_jobs": 3, "outstanding_windows": 8}


@dataclass
class MWindow:
    series: str
    start: int
    state: str = "pending"
    attempts: int = 0
    token: int = 0
    expires: int = 0
    not_before: int = 0
    done_token: int = 0
    jobs: list[str] = field(default_factory=list)


@dataclass
class MJob:
    job_id: str
    seq: int
    priority: int
    key: tuple[str, int, int, int]
    windows: list[tuple[str, int]]
    cancelled: bool = False
    retired: dict[str, int] | None = None  # the frozen counts once retired


class LeaseTableMachine(RuleBasedStateMachine):
    """Drives the table with random commands and checks each answer against the model."""

    def __init__(self) -> None:
        super().__init__()
        self.t = Table()
        self.now = 1
        self.token = 0
        self.jobs: list[MJob] = []
        self.windows: dict[tuple[str, int], MWindow] = {}
        self.issued: list[tuple[str, int, tuple[str, int]]] = []  # every lease ever granted: (id, token, window)
        self.keys: dict[str, tuple[int, int]] = {}  # live keyed leases: key -> (token, expires)

    # -- helpers ---------------------------------------------------------------------------------------------------

    def rank(self, w: MWindow) -> tuple[int, int] | None:
        ranks = [(-j.priority, j.seq) for j in self.jobs if j.job_id in w.jobs]
        return min(ranks) if ranks else None

    def expect_unchanged(self, result: Any, code: str, before: dict[str, Any]) -> None:
        assert not result.ok and result.code == code, result
        assert self.t.snapshot() == before

    def current(self, token: int, key: tuple[str, int]) -> bool:
        w = self.windows.get(key)  # a retired job's windows leave the table
        return w is not None and w.state == "leased" and w.token == token

    def counts(self, job: MJob) -> dict[str, int]:
        states = [self.windows[c].state for c in job.windows]
        return {s: states.count(s) for s in ("pending", "leased", "done", "failed")}

    # -- rules -----------------------------------------------------------------------------------------------------

    @rule(
        s=st.sampled_from([0, 1]),
        lo=st.integers(0, 8),
        n=st.integers(1, 5),
        priority=st.integers(0, 2),
        owner=st.sampled_from(["", "alice", "bob"]),
    )
    def submit(self, s: int, lo: int, n: int, priority: int, owner: str) -> None:
        series, step = SERIES[s], INTERVALS[s]
        start, end = lo * step, (lo + n) * step
        running, outstanding = self._load(owner)  # before the command
        result = self.t.submit_job(
            series=series,
            start=start,
            end=end,
            priority=priority,
            window_bars=BARS,
            max_windows=100,
            owner=owner,
            limits=ALICE_LIMITS if owner == "alice" else None,
            now_ms=self.now,
        )
        key = (series, start, end, priority)
        live = [j for j in self.jobs if j.key == key and not j.cancelled and j.retired is None]
        if live:
            assert result.ok and not result.value["created"] and result.value["job"]["job_id"] == live[0].job_id
            return
        span = step * BARS
        cells = [(series, k * span) for k in range(start // span, -(-end // span))]
        # drive alice to her caps: a refusal exactly when the recount says she is at one
        at_cap = running >= ALICE_LIMITS["live_jobs"] or outstanding + len(cells) > ALICE_LIMITS["outstanding_windows"]
        if owner == "alice" and at_cap:
            assert result.code == "capacity", result
            return
        assert result.ok, result
        job = MJob(f"job-{len(self.jobs) + 1}", len(self.jobs) + 1, priority, key, cells)
        assert result.value["created"] and result.value["job"]["job_id"] == job.job_id
        self.jobs.append(job)
        for cell in cells:
            self.windows.setdefault(cell, MWindow(*cell)).jobs.append(job.job_id)

    @rule(n=st.integers(1, 4), dt=st.integers(0, 400))
    def claim(self, n: int, dt: int) -> None:
        self.now += dt
        ready = [
            w
            for w in self.windows.values()
            if w.state == "pending" and w.not_before <= self.now and self.rank(w) is not None
        ]
        ready.sort(key=lambda w: (self.rank(w), w.start, w.series))
        result = self.t.claim(worker_id="w", max_windows=n, ttl_ms=TTL, now_ms=self.now)
        assert result.ok
        got = result.value["leases"]
        assert [(g["series"], g["start"]) for g in got] == [(w.series, w.start) for w in ready[:n]]
        for g, w in zip(got, ready, strict=False):
            assert g["token"] == self.token + 1, "tokens strictly increase, by one per grant"
            self.token = g["token"]
            w.state, w.token, w.expires = "leased", g["token"], self.now + TTL
            w.attempts += 1
            assert g["attempt"] == w.attempts
            self.issued.append((g["lease_id"], g["token"], (w.series, w.start)))

    @precondition(lambda self: self.issued)
    @rule(i=st.integers(0, 10_000), dt=st.integers(0, 400))
    def renew(self, i: int, dt: int) -> None:
        lease_id, token, key = self.issued[i % len(self.issued)]
        self.now += dt
        before = self.t.snapshot()
        result = self.t.renew(lease_id=lease_id, token=token, ttl_ms=TTL, now_ms=self.now)
        if not self.current(token, key):
            self.expect_unchanged(result, "lease_lost", before)
            return
        assert result.ok and result.value["expires_at_ms"] == self.now + TTL
        self.windows[key].expires = self.now + TTL

    @precondition(lambda self: self.issued)
    @rule(i=st.integers(0, 10_000))
    def complete(self, i: int) -> None:
        lease_id, token, key = self.issued[i % len(self.issued)]
        w = self.windows.get(key)
        before = self.t.snapshot()
        result = self.t.complete(lease_id=lease_id, token=token, rows=1, now_ms=self.now)
        if w is not None and self.current(token, key):
            assert result.ok
            w.state, w.token, w.done_token = "done", 0, token
        elif w is not None and w.state == "done" and w.done_token == token:
            assert result.ok and self.t.snapshot() == before
        else:
            self.expect_unchanged(result, "lease_lost", before)

    @precondition(lambda self: self.issued)
    @rule(i=st.integers(0, 10_000), retryable=st.booleans())
    def fail(self, i: int, retryable: bool) -> None:
        lease_id, token, key = self.issued[i % len(self.issued)]
        before = self.t.snapshot()
        result = self.t.fail(
            lease_id=lease_id,
            token=token,
            reason="x",
            retryable=retryable,
            max_attempts=MAX_ATTEMPTS,
            retry_backoff_ms=BACKOFF,
            now_ms=self.now,
        )
        if not self.current(token, key):
            self.expect_unchanged(result, "lease_lost", before)
            return
        assert result.ok
        w = self.windows[key]
        w.token = 0
        if retryable and w.attempts < MAX_ATTEMPTS:
            w.state, w.not_before = "pending", self.now + BACKOFF * 2 ** (w.attempts - 1)
        else:
            w.state = "failed"
        assert result.value["state"] == w.state

    @rule(dt=st.integers(0, 1500))
    def expire(self, dt: int) -> None:
        self.now += dt
        due = {w.token: w for w in self.windows.values() if w.state == "leased" and w.expires <= self.now}
        due_keys = {k: v for k, v in self.keys.items() if v[1] <= self.now}
        result = self.t.expire(now_ms=self.now, max_attempts=MAX_ATTEMPTS)
        assert result.ok
        assert sorted(e["token"] for e in result.value["expired"]) == sorted([*due, *(v[0] for v in due_keys.values())])
        for k in due_keys:
            del self.keys[k]
        for w in due.values():
            w.state, w.token, w.not_before = ("pending" if w.attempts < MAX_ATTEMPTS else "failed"), 0, 0

    @precondition(lambda self: self.jobs)
    @rule(i=st.integers(0, 1000))
    def cancel(self, i: int) -> None:
        job = self.jobs[i % len(self.jobs)]
        result = self.t.cancel_job(job_id=job.job_id, now_ms=self.now)
        if job.retired is not None and not job.cancelled:
            assert result.code == "conflict"
            return
        states = [] if job.cancelled else [self.windows[c].state for c in job.windows]
        if not job.cancelled and all(s == "done" for s in states):
            assert result.code == "conflict"
            return
        assert result.ok
        if not job.cancelled:
            job.cancelled = True
            for cell in job.windows:
                self.windows[cell].jobs.remove(job.job_id)

    @precondition(lambda self: self.jobs)
    @rule(i=st.integers(0, 1000))
    def retry(self, i: int) -> None:
        job = self.jobs[i % len(self.jobs)]
        result = self.t.retry_job(job_id=job.job_id, now_ms=self.now)
        if job.cancelled or job.retired is not None:
            assert result.code == "conflict"
            return
        failed = [self.windows[c] for c in job.windows if self.windows[c].state == "failed"]
        assert result.ok and result.value["requeued"] == len(failed)
        for w in failed:
            w.state, w.attempts, w.not_before, w.done_token = "pending", 0, 0, 0

    @precondition(lambda self: self.issued)
    @rule(i=st.integers(0, 10_000))
    def release(self, i: int) -> None:
        lease_id, token, key = self.issued[i % len(self.issued)]
        before = self.t.snapshot()
        result = self.t.release(lease_id=lease_id, now_ms=self.now)
        if not self.current(token, key):
            self.expect_unchanged(result, "lease_lost", before)
            return
        w = self.windows[key]
        assert result.ok and result.value["state"] == "pending"
        w.state, w.token, w.not_before, w.attempts = "pending", 0, 0, w.attempts - 1

    @precondition(lambda self: self.windows)
    @rule(i=st.integers(0, 10_000), done=st.booleans())
    def operate(self, i: int, done: bool) -> None:
        key = sorted(self.windows)[i % len(self.windows)]
        w = self.windows[key]
        op = self.t.mark_done if done else self.t.requeue
        result = op(window_id=window_id(*key), reason="model", now_ms=self.now)
        assert result.ok
        w.state, w.token, w.attempts, w.not_before, w.done_token = ("done" if done else "pending"), 0, 0, 0, 0

    @rule(dt=st.integers(0, 600))
    def retire(self, dt: int) -> None:
        """Retention 0: every finished job retires; windows no live job covers and no lease holds leave."""
        self.now += dt
        result = self.t.retire(retention_ms=0, now_ms=self.now)
        assert result.ok
        expected: list[str] = []
        for job in self.jobs:
            if job.retired is not None:
                continue
            counts = {} if job.cancelled else self.counts(job)
            if not job.cancelled and (counts["pending"] or counts["leased"]):
                continue
            expected.append(job.job_id)
            job.retired = counts
            for cell in job.windows:
                w = self.windows.get(cell)
                if w is None:
                    continue
                if job.job_id in w.jobs:
                    w.jobs.remove(job.job_id)
                if not w.jobs and w.state != "leased":
                    del self.windows[cell]
        assert result.value["retired"] == expected

    @rule()
    def restart(self) -> None:
        """A node restarting from a dump (pickled as pysyncobj does) goes on exactly like the original."""
        restored = Table()
        assert restored.import_state(pickle.loads(pickle.dumps(self.t.export_state(), protocol=2)))
        assert restored.snapshot() == self.t.snapshot() and restored.stats() == self.t.stats()
        self.t = restored

    @rule(k=st.integers(0, 3), dt=st.integers(0, 600))
    def key_claim(self, k: int, dt: int) -> None:
        self.now += dt
        key = f"node:60:{k}"
        result = self.t.key_claim(key=key, lease_ms=TTL, now_ms=self.now)
        held = self.keys.get(key)
        if held is not None and held[1] > self.now:
            assert result.code == "conflict"
            return
        assert result.ok and result.value["lease"]["token"] == self.token + 1, "keys share the one token counter"
        self.token += 1
        self.keys[key] = (self.token, self.now + TTL)

    @rule(choice=st.integers(0, 7))
    def illegal(self, choice: int) -> None:
        before = self.t.snapshot()
        commands: list[Any] = [
            lambda: self.t.claim(worker_id="w", max_windows=0, ttl_ms=TTL, now_ms=self.now),
            lambda: self.t.renew(lease_id=f"lease-{self.token + 1}", token=self.token + 1, ttl_ms=TTL, now_ms=self.now),
            lambda: self.t.complete(lease_id="lease-1", token="1", rows=1, now_ms=self.now),
            lambda: self.t.submit_job(
                series=SERIES[0], start=600_000, end=60_000, window_bars=BARS, max_windows=100, now_ms=self.now
            ),
            lambda: self.t.submit_job(
                series="ohlcv:bad", start=0, end=60_000, window_bars=BARS, max_windows=100, now_ms=self.now
            ),
            lambda: self.t.cancel_job(job_id="job-0", now_ms=self.now),
            lambda: self.t.requeue(window_id="w_AAAA", reason="x", now_ms=self.now),
            lambda: self.t.fail(
                lease_id="lease-1",
                token=1,
                reason="x",
                retryable=1,
                max_attempts=3,
                retry_backoff_ms=0,
                now_ms=self.now,
            ),
        ]
        result = commands[choice]()
        assert not result.ok and result.code in {"invalid", "not_found"}
        assert self.t.snapshot() == before

    # -- invariants ------------------------------------------------------------------------------------------------

    @invariant()
    def windows_match_the_model(self) -> None:
        for key, w in self.windows.items():
            info = self.t.window_info(*key)
            assert info is not None
            assert (info["state"], info["attempts"], info["lease_token"]) == (w.state, w.attempts, w.token), key

    @invariant()
    def no_window_has_two_live_leases(self) -> None:
        infos = self.t.lease_infos(self.now)
        assert sorted((i["key"], i["token"]) for i in infos if i["kind"] == "key") == sorted(
            (k, v[0]) for k, v in self.keys.items()
        )
        live = [i for i in infos if i["kind"] == "window"]
        window_ids = [i["window_id"] for i in live]
        assert len(window_ids) == len(set(window_ids))
        assert sorted(i["token"] for i in live) == sorted(w.token for w in self.windows.values() if w.token)
        assert self.t.token_floor == self.token

    def _load(self, owner: str) -> tuple[int, int]:
        """``owner``'s running jobs and their pending + leased windows, recounted from the jobs."""
        running = outstanding = 0
        for public in self.t.jobs():
            left = public["windows"]["pending"] + public["windows"]["leased"]
            if self.t._jobs[public["job_id"]].owner == owner and public["state"] == "running" and left:
                running += 1
                outstanding += left
        return running, outstanding

    @invariant()
    def each_clients_load_is_its_running_jobs(self) -> None:
        """The per-client admission figures kept in step (_state.py rule 6) equal a recount from the jobs."""
        expected = {owner: list(self._load(owner)) for owner in ("alice", "bob")}
        assert self.t._owners == {owner: load for owner, load in expected.items() if load != [0, 0]}

    @invariant()
    def completion_ratio_is_done_over_total(self) -> None:
        for job in self.jobs:
            public = self.t.job(job.job_id)
            assert public is not None
            if job.cancelled:
                assert public["state"] == "cancelled"
                continue
            if job.retired is not None:
                assert public["retired"] is True and public["windows"] == job.retired
                continue
            assert "retired" not in public
            states = [self.windows[c].state for c in job.windows]
            assert public["windows"] == {s: states.count(s) for s in ("pending", "leased", "done", "failed")}
            assert public["completion_ratio"] == states.count("done") / len(states)

    @invariant()
    def metrics_figures_match_the_model(self) -> None:
        """stats(2) lists the two running jobs first in claim order and sums the other running jobs; it counts the
        retired jobs (the figures are kept incrementally: this checks them after every command)."""
        running = []
        for job in self.jobs:
            counts = {} if job.cancelled or job.retired is not None else self.counts(job)
            if counts.get("pending") or counts.get("leased"):
                running.append(((-job.priority, job.seq), job.job_id, job.key[0], counts["done"], len(job.windows)))
        running.sort()
        stats = self.t.stats(2)
        assert stats["jobs_running"] == [r[1:] for r in running[:2]]
        rest = running[2:]
        assert stats["jobs_other"] == (len(rest), sum(r[3] for r in rest), sum(r[4] for r in rest))
        assert stats["jobs_retired"] == sum(1 for job in self.jobs if job.retired is not None)


LeaseTableMachine.TestCase.settings = settings(
    max_examples=120, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)
TestLeaseTable = LeaseTableMachine.TestCase
TestLeaseTable.__doc__ = "Random command sequences keep the table equal to the model and its invariants true."
