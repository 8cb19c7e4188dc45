"""The lease table: a pure, deterministic state machine of backfill jobs, windows and fenced leases.

Like h11's ``_state.py`` it contains no I/O whatsoever. Raft (``coordinator/raft.py``) replicates the commands;
every replica applies them in the same order and reaches the same state.

Rules (DESIGN.md section 4):
1. Ordered: a claim takes pending windows by job priority (desc), then job submission order, then window start.
   A window shared by several jobs takes the best rank among its live jobs. One claim may take several windows.
2. Fenced: every grant (window or QMTL key) takes the next value of one counter, so tokens strictly increase;
   the counter is replicated state, so it survives leader changes and restarts with the log and the dump.
3. TTL: the caller stamps ``now_ms`` and the TTL into each command; apply functions never read a clock.
4. Stale claims: ``expire(now_ms)`` returns each lease past its expiry to pending (attempt counted) or, after
   ``max_attempts`` grants, marks its window failed, and counts it. Nothing expires a lease implicitly: until
   the leader's reaper runs ``expire``, a late renew or complete still succeeds.
5. ``renew``/``complete``/``fail`` with a token that is not the window's current lease return ``lease_lost``
   and change nothing. ``complete`` is idempotent for the same token.
6. Windows are keyed by (series, start) and shared across jobs: a job creates only windows not yet known. The
   window span of a series is fixed by its first job (``window_bars`` x interval); later jobs of the series use
   that grid even if the configured ``window_bars`` changed. A job's ratio is its done windows / its windows.
   Failed windows of a job can be retried; a job can be cancelled (its windows stay, but are no longer offered
   unless another live job covers them).
7. Finished jobs retire after the retention period (``_retire.py``): their windows leave the table, a summary
   stays.
8. Every command returns a :class:`Result`; errors are values (``invalid``, ``not_found``, ``conflict``,
   ``lease_lost``) and leave the state unchanged.
9. Memory: a window's job ids are a tuple shared by the windows of one job; a change replaces the tuple.
10. Cost: every command costs O(what it touches x log n), never O(table): a submission costs its windows, a
    claim the windows it takes (plus stale heap entries it drops, each once), a key claim O(1) (``_keyed.py``).
11. Admission: a submission names its ``owner`` and the leader stamps the per-client ``limits``; an owner already
    at ``live_jobs`` running jobs, or whose outstanding windows plus the new job's would pass
    ``outstanding_windows``, is refused with ``capacity`` (HTTP 429) and nothing changes. Resubmitting an
    identical live job is never refused (it creates nothing).
12. Metrics figures cost O(running jobs), not O(jobs ever submitted) (``_state.py`` rule 7).
13. A replicated command is a method marked ``@command`` (``_commands.py``); :data:`COMMANDS` is built from them.
14. Window states move only along the lifecycle table of ``_lifecycle.py``, asked before anything is mutated; the
    operator actions (release, requeue, mark_done) live in ``_operator.py``.
"""

from __future__ import annotations

import heapq
import struct
import zlib
from collections.abc import Mapping
from typing import Any

from coordinator._commands import CommandFn, command, commands_of
from coordinator._lifecycle import (
    CLAIM,
    COMPLETE,
    EXPIRE_FINAL,
    EXPIRE_RETRY,
    FAIL_FINAL,
    FAIL_RETRY,
    REOPEN,
    RETRY,
)
from coordinator._operator import OperatorCommands
from coordinator._records import (
    DONE,
    LEASED,
    PENDING,
    JobRec,
    LeaseRec,
    Result,
    SeriesRec,
    lease_id_of,
    token_of_lease_id,
)
from coordinator._retire import RetireCommands
from coordinator._snapshot import SnapshotBlob, decode
from coordinator._state import (
    DONE_TOKENS_MAX,
    MAX_TTL_MS,
    claim_rank,
    invalid,
    is_int,
    is_text,
    lease_lost,
    not_found,
    window_value,
)
from coordinator._windows import Window
from provider.core import SeriesKey, retry_delay_bounds_ms, snap_range, window_id

__all__ = ["COMMANDS", "Result", "Table"]

_MAX_REASON_CHARS = 500
_MAX_WINDOWS_PER_CLAIM = 1000
#: Retry-After of a refusal by the admission limits (jobs take minutes; a client should not hammer).
_ADMISSION_RETRY_MS = 5_000


def _reopens(window: Window, job_end: int, now: int, step: int) -> bool:
    """A window completed before it closed holds bars up to its completion; re-open it when a job needs bars
    that have closed since (workers store closed bars only)."""
    if window.done_at_ms >= window.end:
        return False
    stored_until = (window.done_at_ms // step) * step
    needed_until = min(window.end, job_end, (now // step) * step)
    return stored_until < needed_until


def _first_non_int(**values: Any) -> Result | None:
    for name, value in values.items():
        if not is_int(value):
            return invalid(name, f"{value!r} is not an integer")
    return None


class Table(OperatorCommands, RetireCommands):
    """The lease table. Commands take keyword arguments, ``now_ms`` and an optional (client_id, request_id)."""

    # -- jobs ---------------------------------------------------------------------------------------------------

    @command
    def submit_job(
        self,
        *,
        series: Any,
        start: Any,
        end: Any,
        priority: Any = 0,
        window_bars: Any,
        max_windows: Any,
        now_ms: Any,
        owner: Any = "",
        limits: Any = None,
        trace: Any = "",
        client_id: Any = "",
        request_id: Any = "",
    ) -> Result:
        """Create a job (and the windows not yet known); an identical live job is returned with created=False.
        ``owner`` (the submitter) and ``limits`` (``{"live_jobs", "outstanding_windows"}`` per owner, stamped by
        the leader) are the admission control of rule 11; ``trace`` is the creating request's ``traceparent``."""
        return self._once(
            "submit_job",
            client_id,
            request_id,
            now_ms,
            lambda now: self._submit(series, start, end, priority, window_bars, max_windows, owner, limits, now, trace),
        )

    def _submit(
        self,
        series: Any,
        start: Any,
        end: Any,
        priority: Any,
        window_bars: Any,
        max_windows: Any,
        owner: Any,
        limits: Any,
        now: int,
        trace: Any = "",
    ) -> Result:
        if not isinstance(trace, str) or len(trace) > 128 or not trace.isprintable():
            return invalid("trace", "must be a W3C traceparent text of at most 128 chars, or empty")
        try:
            key = SeriesKey.parse(series)
        except ValueError as exc:
            return invalid("series", str(exc))
        bad = _first_non_int(start=start, end=end, priority=priority, window_bars=window_bars, max_windows=max_windows)
        if bad is not None:
            return bad
        if start >= end:
            return invalid("end", f"end {end} must be after start {start}; the range [start, end) is empty")
        if window_bars < 1 or max_windows < 1:
            return invalid("window_bars", "window_bars and max_windows must be >= 1")
        name, step = str(key), key.interval_ms
        known = self._series.get(name)
        bars = known.window_bars if known is not None else window_bars
        try:
            lo, hi = snap_range(start, end, step)
        except ValueError as exc:
            return invalid("start", str(exc))
        span = step * bars
        w_lo, w_hi = (lo // span) * span, -((-hi) // span) * span
        if (w_hi - w_lo) // span > max_windows:
            count = (w_hi - w_lo) // span
            return invalid(
                "end",
                f"the range covers {count} windows; at most {max_windows} per job "
                "(coordinator.max_windows_per_job): split it into several jobs",
            )
        existing = self._job_index.get((name, lo, hi, priority))
        if existing is not None:
            return Result.success({"job": self._jobs[existing].public(), "created": False})
        refusal = self._over_limits(owner, limits, (w_hi - w_lo) // span)
        if refusal is not None:
            return refusal
        if known is None:
            self._series[name] = SeriesRec(step, bars)
        self._job_seq += 1
        job = JobRec(f"job-{self._job_seq}", self._job_seq, name, lo, hi, priority, w_lo, w_hi, now)
        self._jobs[job.job_id] = job
        self._job_index[(name, lo, hi, priority)] = job.job_id
        self._attach_windows(job, name, step, bars, now)
        job.trace = trace
        if owner:  # charged once its counts are complete (the attach may reopen windows through _move)
            job.owner = owner
            self._charge(owner, 0, job.counts[PENDING] + job.counts[LEASED])
        self._track(job)
        return Result.success({"job": job.public(), "created": True})

    def _over_limits(self, owner: Any, limits: Any, windows: int) -> Result | None:
        """Rule 11: the refusal when ``owner`` may not add a job of ``windows`` windows, else None."""
        if not isinstance(owner, str) or len(owner) > 200:
            return invalid("owner", "must be a string of at most 200 chars")
        if not owner or limits is None:
            return None
        if not isinstance(limits, dict) or not all(is_int(limits.get(k)) for k in ("live_jobs", "outstanding_windows")):
            return invalid("limits", "must be {live_jobs: int, outstanding_windows: int}")
        live, outstanding = self._owners.get(owner, (0, 0))
        if live >= limits["live_jobs"]:
            what = f"{live} running jobs (coordinator.max_live_jobs_per_client = {limits['live_jobs']})"
        elif outstanding + windows > limits["outstanding_windows"]:
            what = (
                f"{outstanding} outstanding windows, and this job adds {windows} "
                f"(coordinator.max_outstanding_windows_per_client = {limits['outstanding_windows']})"
            )
        else:
            return None
        return Result(
            False,
            {"retry_after_ms": _ADMISSION_RETRY_MS},
            "capacity",
            f"{owner} has {what}: wait for jobs to finish, cancel some, or ask the operator to raise the limit",
            "series",
        )

    def _attach_windows(self, job: JobRec, name: str, step: int, bars: int, now: int) -> None:
        """Create the job's unknown windows and join the known ones (re-opening those completed too early). The
        cells without a window become fresh pending windows in whole blocks, each run offered to claims by one
        heap entry (``_state.py`` rule 4): a big job costs O(1) Python objects, not one per window."""
        rank = claim_rank(job)
        span = step * bars
        only_this_job = (job.job_id,)  # one tuple shared by every window this job creates (memory, rule 9)
        joined: dict[tuple[str, ...], tuple[str, ...]] = {}  # and one per job set it joins
        fresh = 0
        for cell in self._windows.cells(name, job.w_lo // span, job.w_hi // span):
            if not isinstance(cell, Window):  # the common case, kept cheap: big jobs are applied in one Raft entry
                ka, kb = cell
                self._windows.fill(name, span, ka, kb, only_this_job)
                heapq.heappush(self._ready, (rank[0], rank[1], ka * span, name, kb * span))
                fresh += kb - ka
                continue
            window = cell
            jobs = window.jobs
            self._set_jobs(window, joined.get(jobs) or joined.setdefault(jobs, (*jobs, job.job_id)), now)
            job.counts[window.state] += 1
            if self._can(window, REOPEN) and _reopens(window, job.end, now, step):
                self._reset(window, REOPEN, now)  # completed before it closed: fetch the bars closed since
        self._window_counts[PENDING] += fresh
        job.counts[PENDING] += fresh

    @command
    def cancel_job(self, *, job_id: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Cancel a job: its windows are no longer offered for it; live leases run out normally."""
        return self._once("cancel_job", client_id, request_id, now_ms, lambda now: self._cancel(job_id, now))

    def _cancel(self, job_id: Any, now: int) -> Result:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return not_found("job_id", job_id)
        if job.cancelled:
            return Result.success({"job": job.public()})
        if job.state == "done":
            return Result.error("conflict", f"job {job_id} is already done", "job_id")
        if job.retired_at_ms:
            return Result.error("conflict", f"job {job_id} is retired", "job_id")
        if job.owner:
            self._charge(job.owner, job.counts[PENDING] + job.counts[LEASED], 0)
        job.cancelled = True
        self._track(job)
        self._job_index.pop((job.series, job.start, job.end, job.priority), None)
        left: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared tuples stay shared (rule 9)
        for window in self._job_windows(job):
            if job.job_id in window.jobs:
                jobs = window.jobs
                self._set_jobs(
                    window, left.get(jobs) or left.setdefault(jobs, tuple(j for j in jobs if j != job.job_id)), now
                )
        return Result.success({"job": job.public()})

    @command
    def retry_job(self, *, job_id: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Reset the failed windows of a job to pending, attempts cleared."""
        return self._once("retry_job", client_id, request_id, now_ms, lambda now: self._retry(job_id, now))

    def _retry(self, job_id: Any, now: int) -> Result:
        job = self._jobs.get(job_id) if isinstance(job_id, str) else None
        if job is None:
            return not_found("job_id", job_id)
        if job.cancelled:
            return Result.error("conflict", f"job {job_id} is cancelled", "job_id")
        if job.retired_at_ms:
            return Result.error("conflict", f"job {job_id} is retired: submit its range again", "job_id")
        requeued = 0
        for window in self._job_windows(job):
            if self._can(window, RETRY):
                self._reset(window, RETRY, now)
                requeued += 1
        return Result.success({"job": job.public(), "requeued": requeued})

    # -- window leases ------------------------------------------------------------------------------------------

    @command
    def claim(
        self,
        *,
        worker_id: Any,
        max_windows: Any = 1,
        ttl_ms: Any,
        now_ms: Any,
        client_id: Any = "",
        request_id: Any = "",
    ) -> Result:
        """Grant up to ``max_windows`` pending windows in rule-1 order, each with a new token."""
        return self._once(
            "claim", client_id, request_id, now_ms, lambda now: self._claim(worker_id, max_windows, ttl_ms, now)
        )

    def _claim(self, worker_id: Any, max_windows: Any, ttl_ms: Any, now: int) -> Result:
        if not is_text(worker_id, 200):
            return invalid("worker_id", "must be a non-empty printable string of at most 200 chars")
        if not is_int(max_windows) or not 1 <= max_windows <= _MAX_WINDOWS_PER_CLAIM:
            return invalid("max_windows", f"must be an integer from 1 to {_MAX_WINDOWS_PER_CLAIM}")
        if not is_int(ttl_ms) or not 1 <= ttl_ms <= MAX_TTL_MS:
            return invalid("ttl_ms", f"must be an integer from 1 to {MAX_TTL_MS}")
        while self._delayed and self._delayed[0][0] <= now:
            heapq.heappush(self._ready, heapq.heappop(self._delayed)[1:])
        granted: list[dict[str, Any]] = []
        while len(granted) < max_windows and self._ready:
            entry = heapq.heappop(self._ready)
            if len(entry) == 5:  # a run (_state.py rule 4): take its first window, put the rest back
                rank0, rank1, start, series, end = entry
                after = start + self._series[series].span_ms
                if after < end:
                    heapq.heappush(self._ready, (rank0, rank1, after, series, end))
                entry = (rank0, rank1, start, series)
            window = self._windows.get((entry[3], entry[2]))
            if window is None or not self._can(window, CLAIM) or window.rank != (entry[0], entry[1]):
                continue
            if window.not_before_ms > now:
                heapq.heappush(self._delayed, (window.not_before_ms, *entry))
                continue
            lease = self._add_lease("window", window.key, worker_id, now, ttl_ms)
            window.lease = lease.token
            window.attempts += 1
            self._move(window, CLAIM)
            granted.append(self._lease_value(window, lease))
        return Result.success({"leases": granted})

    def _current(self, lease_id: Any, token: Any) -> tuple[LeaseRec | None, Result | None]:
        """The live window lease named by (lease_id, token), or the error to return."""
        if not is_int(token) or token < 1:
            return None, invalid("token", f"{token!r} is not an integer >= 1")
        number = token_of_lease_id(lease_id)
        if number == 0 or number > self._token:
            return None, not_found("lease_id", lease_id)
        rec = self._leases.get(number)
        if number != token or rec is None or rec.kind != "window":
            return None, lease_lost(lease_id, token)
        return rec, None

    @command
    def renew(
        self, *, lease_id: Any, token: Any, ttl_ms: Any, now_ms: Any, client_id: Any = "", request_id: Any = ""
    ) -> Result:
        """Extend a live lease to ``now + ttl_ms``."""
        return self._once("renew", client_id, request_id, now_ms, lambda now: self._renew(lease_id, token, ttl_ms, now))

    def _renew(self, lease_id: Any, token: Any, ttl_ms: Any, now: int) -> Result:
        rec, error = self._current(lease_id, token)
        if rec is None:
            return error or lease_lost(lease_id, token)
        if not is_int(ttl_ms) or not 1 <= ttl_ms <= MAX_TTL_MS:
            return invalid("ttl_ms", f"must be an integer from 1 to {MAX_TTL_MS}")
        rec.expires_at_ms = now + ttl_ms
        heapq.heappush(self._expiry, (rec.expires_at_ms, rec.token))
        return Result.success({"lease_id": lease_id, "expires_at_ms": rec.expires_at_ms})

    @command
    def complete(
        self, *, lease_id: Any, token: Any, rows: Any = 0, now_ms: Any, client_id: Any = "", request_id: Any = ""
    ) -> Result:
        """Mark the lease's window done; repeating it with the same token succeeds again."""
        return self._once(
            "complete", client_id, request_id, now_ms, lambda now: self._complete(lease_id, token, rows, now)
        )

    def _complete(self, lease_id: Any, token: Any, rows: Any, now: int) -> Result:
        if not is_int(rows) or rows < 0:
            return invalid("rows", f"{rows!r} is not an integer >= 0")
        rec, error = self._current(lease_id, token)
        if rec is None:
            same = is_int(token) and token_of_lease_id(lease_id) == token
            done = self._done_tokens.get(token) if same else None
            window = self._windows.get(done) if done is not None else None
            if (
                error is not None
                and error.code == "lease_lost"
                and window is not None
                and window.state == DONE
                and window.done_token == token
            ):
                return Result.success({**window_value(window), "rows": window.rows})
            return error or lease_lost(lease_id, token)
        window = self._windows[rec.target]
        if not self._can(window, COMPLETE):
            return lease_lost(lease_id, token)
        del self._leases[rec.token]
        window.lease = 0
        window.done_token = rec.token
        window.done_at_ms = now
        window.rows = rows
        window.last_error = ""
        self._move(window, COMPLETE)
        self._done_tokens[rec.token] = window.key
        while len(self._done_tokens) > DONE_TOKENS_MAX:
            self._done_tokens.popitem(last=False)
        return Result.success({**window_value(window), "rows": rows})

    @command
    def fail(
        self,
        *,
        lease_id: Any,
        token: Any,
        reason: Any,
        retryable: Any,
        max_attempts: Any,
        retry_backoff_ms: Any,
        now_ms: Any,
        client_id: Any = "",
        request_id: Any = "",
    ) -> Result:
        """End a lease with an error: back to pending after a backoff if retryable and attempts remain, else failed."""
        return self._once(
            "fail",
            client_id,
            request_id,
            now_ms,
            lambda now: self._fail(lease_id, token, reason, retryable, max_attempts, retry_backoff_ms, now),
        )

    def _fail(
        self, lease_id: Any, token: Any, reason: Any, retryable: Any, max_attempts: Any, backoff_ms: Any, now: int
    ) -> Result:
        if not isinstance(reason, str):
            return invalid("reason", "must be a string")
        if not isinstance(retryable, bool):
            return invalid("retryable", "must be true or false")
        if not is_int(max_attempts) or max_attempts < 1 or not is_int(backoff_ms) or backoff_ms < 0:
            return invalid("max_attempts", "max_attempts must be >= 1 and retry_backoff_ms >= 0")
        rec, error = self._current(lease_id, token)
        if rec is None:
            return error or lease_lost(lease_id, token)
        window = self._windows[rec.target]
        event = FAIL_RETRY if retryable and window.attempts < max_attempts else FAIL_FINAL
        if not self._can(window, event):
            return lease_lost(lease_id, token)
        del self._leases[rec.token]
        window.lease = 0
        window.last_error = reason[:_MAX_REASON_CHARS]
        if event == FAIL_RETRY:
            delay_ms, _ = retry_delay_bounds_ms(max(window.attempts, 1), backoff_ms, 0.0)
            window.not_before_ms = now + int(delay_ms)
        self._move(window, event)
        self._enqueue(window, now)
        return Result.success(window_value(window))

    @command
    def expire(self, *, now_ms: Any, max_attempts: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Reap every lease whose expiry is <= now: windows go back to pending or, out of attempts, to failed."""
        return self._once("expire", client_id, request_id, now_ms, lambda now: self._expire(max_attempts, now))

    def _expire(self, max_attempts: Any, now: int) -> Result:
        if not is_int(max_attempts) or max_attempts < 1:
            return invalid("max_attempts", "must be an integer >= 1")
        expired: list[dict[str, Any]] = []
        while self._expiry and self._expiry[0][0] <= now:
            expires_at_ms, token = heapq.heappop(self._expiry)
            rec = self._leases.get(token)
            if rec is None or rec.expires_at_ms != expires_at_ms:
                continue
            window = self._windows.get(rec.target) if rec.kind == "window" else None
            event = EXPIRE_RETRY if window is not None and window.attempts < max_attempts else EXPIRE_FINAL
            if rec.kind == "window" and (window is None or not self._can(window, event)):
                continue  # not a move of the lifecycle: the lease is left as it is (_lifecycle.py rule 2)
            del self._leases[token]
            item = {"lease_id": lease_id_of(token), "token": token, "worker_id": rec.worker_id, "kind": rec.kind}
            if window is not None:
                window.lease = 0
                window.not_before_ms = 0
                window.last_error = f"lease {lease_id_of(token)} of {rec.worker_id} expired"
                self._move(window, event)
                self._enqueue(window, now)
                item.update(window_id=window_id(window.series, window.start), state=window.state)
            else:
                self._expire_key(rec.target, token)
                item.update(key=rec.target, state="expired")
            expired.append(item)
        self._stale_claims += len(expired)
        return Result.success({"expired": expired})

    # -- cluster membership --------------------------------------------------------------------------------------

    @command
    def announce(self, *, node_id: Any, raft: Any, http: Any) -> Result:
        """Record a node's HTTP address under its Raft address, so followers can forward to the leader."""
        if not (is_text(node_id, 200) and is_text(raft, 300) and is_text(http, 300)):
            return invalid("node_id", "node_id, raft and http must be non-empty strings")
        self._nodes[raft] = {"node_id": node_id, "http": http}
        return Result.success({"raft": raft})

    @command
    def barrier(self, **_: Any) -> Result:
        """The read barrier: a no-op whose commit proves that this leader's applied state holds every write
        acknowledged before it (linearizable reads, docs/coordinator.md). It changes nothing, not even the clock."""
        return Result.success({})

    # -- persistence (pysyncobj full dump) ---------------------------------------------------------------------

    def export_state(self) -> SnapshotBlob:
        """The state for the Raft dump: pickled as compact format-2 bytes (``_snapshot.py``) by the forked writer,
        so the node pays nothing here."""
        return SnapshotBlob(self)

    def import_state(self, data: Any) -> bool:
        """Replace the state with a dump's (format 2 bytes, or a format-1 dict once, for migration); returns False
        (and keeps the state) when the dump is not ours."""
        try:
            loaded = decode(data)
        except (ValueError, KeyError, TypeError, IndexError, struct.error, zlib.error):
            return False
        if loaded is None:
            return False
        self.__dict__.update(loaded.__dict__)
        self._windows.sets.rank_of = self._rank_of  # ranks of new job sets come from this table's jobs
        return True


#: The replicated commands by name (``_commands.py``): the one list Raft applies from.
COMMANDS: Mapping[str, CommandFn] = commands_of(Table)
