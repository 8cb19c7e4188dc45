"""State and shared mechanics of the lease table; the commands live in ``table.py`` and ``_keyed.py``.

Rules:
1. Time is an argument. The table clock is ``max(previous now_ms, now_ms)``, so time never runs backwards even
   when two leaders' wall clocks disagree; it only moves when a command succeeds.
2. Commands validate everything before they mutate anything, so an illegal command returns an error result and
   leaves the state unchanged. Nothing here raises on bad input.
3. Request de-duplication: a command carrying ``(client_id, request_id)`` is remembered with its successful
   result; a duplicate returns that result without running again. Entries are evicted oldest first, beyond
   ``DEDUP_MAX_ENTRIES`` or ``DEDUP_TTL_MS`` of table time, so eviction is deterministic on every replica.
   The leader appends ``FINGERPRINT_SEP`` and :func:`fingerprint` of the command's arguments to the request id
   (``node.py``); a request id replayed with another body, or for another command, is a ``conflict`` and never
   returns the first caller's answer. Ids without a fingerprint (older journals) are matched by id alone.
4. Claim order lives in a heap of ``(-priority, job seq, start, series)`` entries with lazy deletion: an entry
   is valid only while its window is pending and still has that rank. The windows a job creates enter it as one
   run entry ``(-priority, job seq, start, series, end)`` that stands for every window of ``[start, end)`` (a
   claim takes the first and puts the rest back), so the heap holds O(jobs + windows touched since), not one
   entry per window. Windows in retry backoff wait in a second heap ordered by ``not_before_ms``. Lease expiries
   live in a third heap, also lazily cleaned.
5. Pure: no I/O, clock, randomness, logging, asyncio or pysyncobj (DESIGN.md section 1).
6. Per-client load: ``_owners[owner] = [live jobs, outstanding windows]`` over the owner's running jobs (outstanding
   = pending + leased windows of each job, counted per job), kept in step wherever a job's counts change, so the
   admission limits of ``submit_job`` cost O(1). Derived: rebuilt from the jobs when a snapshot is loaded.
7. Metrics figures (:meth:`TableState.stats`) cost O(running jobs), never O(jobs ever submitted): the running jobs
   are kept in ``_running`` as their window counts change (``_track``, at no cost to a claim, which moves a window
   from pending to leased and leaves its jobs running) and retired jobs are counted as they retire. Both are derived
   state: snapshots rebuild them, and figures never depend on their order (jobs are ranked by :func:`claim_rank`).
8. A window's state changes only in :meth:`TableState._move`, along the lifecycle table of ``_lifecycle.py``; a
   command asks :meth:`TableState._can` before it mutates anything (``_lifecycle.py`` rule 2).
"""

from __future__ import annotations

import hashlib
import heapq
import json
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from coordinator._lifecycle import next_state
from coordinator._records import (
    DONE,
    FAILED,
    LEASED,
    PENDING,
    JobRec,
    KeyRec,
    LeaseRec,
    Result,
    SeriesRec,
    lease_id_of,
)
from coordinator._windows import Window, WindowStore
from provider.core import window_id

__all__ = [
    "DEDUP_MAX_ENTRIES",
    "DEDUP_TTL_MS",
    "FINGERPRINT_SEP",
    "TableState",
    "claim_rank",
    "fingerprint",
    "window_value",
]

#: Remembered (client, request) results; enough for every retry of a commit timeout at thousands of commits/s.
DEDUP_MAX_ENTRIES = 50_000
#: Table time a remembered result is kept.
DEDUP_TTL_MS = 120_000
#: Tokens of completed leases kept for idempotent completes.
DONE_TOKENS_MAX = 50_000
#: Longest lease or TTL a command may ask for.
MAX_TTL_MS = 86_400_000
MAX_TEXT_CHARS = 1000

Command = Callable[[int], Result]
_OUTSTANDING = frozenset({PENDING, LEASED})
#: Separates a request id from the fingerprint of its command's arguments (rule 3); not printable, so no client
#: id can contain it (the API accepts printable ids only).
FINGERPRINT_SEP = "\x1f"


def fingerprint(op: str, kwargs: dict[str, Any]) -> str:
    """A short digest of a command and its arguments (rule 3)."""
    data = json.dumps([op, kwargs], sort_keys=True, separators=(",", ":"), default=repr)
    return hashlib.blake2b(data.encode(), digest_size=8).hexdigest()


def window_value(window: Window) -> dict[str, Any]:
    """A window as the lease commands answer it (``WindowAnswer`` in the OpenAPI document)."""
    return {
        "window_id": window_id(window.series, window.start),
        "state": window.state,
        "attempts": window.attempts,
        "not_before_ms": window.not_before_ms,
    }


def claim_rank(job: JobRec) -> tuple[int, int]:
    """A job's place in claim order (rule 1 of ``table.py``): priority descending, then submission order."""
    return (-job.priority, job.seq)


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_text(value: Any, max_chars: int = MAX_TEXT_CHARS) -> bool:
    return isinstance(value, str) and 0 < len(value) <= max_chars and value.isprintable()


def invalid(field: str, message: str) -> Result:
    return Result.error("invalid", f"{field}: {message}", field)


def not_found(field: str, value: Any) -> Result:
    return Result.error("not_found", f"{field} {value!r} is not known", field)


def lease_lost(lease_id: Any, token: Any) -> Result:
    return Result.error(
        "lease_lost", f"lease {lease_id!r} with token {token!r} is not the current lease; nothing changed", "token"
    )


class TableState:
    """The replicated state plus the helpers every command uses. Construct :class:`coordinator.table.Table`."""

    def __init__(self) -> None:
        self._clock_ms = 0
        #: The fencing counter: the last token granted. Tokens are never reused.
        self._token = 0
        self._job_seq = 0
        self._stale_claims = 0
        self._series: dict[str, SeriesRec] = {}
        self._windows = WindowStore(self._rank_of)
        self._jobs: dict[str, JobRec] = {}
        self._job_index: dict[tuple[str, int, int, int], str] = {}
        self._leases: dict[int, LeaseRec] = {}
        self._keys: OrderedDict[str, KeyRec] = OrderedDict()
        #: Keys without a live lease, in ``_keys`` order (derived; ``_keyed.py`` rule 4).
        self._idle_keys: OrderedDict[str, None] = OrderedDict()
        self._groups: dict[str, list[int]] = {}
        self._window_counts = {PENDING: 0, LEASED: 0, DONE: 0, FAILED: 0}
        #: owner -> [live jobs, outstanding windows] (derived; rule 6).
        self._owners: dict[str, list[int]] = {}
        self._nodes: dict[str, dict[str, str]] = {}
        #: Running jobs by id (derived, rule 7).
        self._running: dict[str, JobRec] = {}
        #: Jobs retired so far (derived, rule 7).
        self._jobs_retired = 0
        #: Single entries (rank, start, series) and run entries (rank, start, series, end): rule 4.
        self._ready: list[tuple[Any, ...]] = []
        self._delayed: list[tuple[int, int, int, int, str]] = []
        self._expiry: list[tuple[int, int]] = []
        self._done_tokens: OrderedDict[int, tuple[str, int]] = OrderedDict()
        self._dedup: OrderedDict[tuple[str, str], tuple[str, int, Result]] = OrderedDict()

    # -- command plumbing -------------------------------------------------------------------------------------

    def _once(self, op: str, client_id: Any, request_id: Any, now_ms: Any, run: Command) -> Result:
        """Run ``run(now)`` once per (client_id, request_id); remember successes; advance the clock on success."""
        if not is_int(now_ms) or now_ms < 0:
            return invalid("now_ms", "must be an integer >= 0")
        if not isinstance(client_id, str) or not isinstance(request_id, str):
            return invalid("request_id", "client_id and request_id must be strings")
        request_id, _, body = request_id.partition(FINGERPRINT_SEP)
        key = (client_id, request_id) if client_id and request_id else None
        tag = f"{op}{FINGERPRINT_SEP}{body}" if body else op
        if key is not None:
            seen = self._dedup.get(key)
            if seen is not None:
                seen_op, _, seen_body = seen[0].partition(FINGERPRINT_SEP)
                if seen_op != op:
                    return Result.error("conflict", f"request id {request_id!r} was used for {seen_op}", "request_id")
                if body and seen_body and body != seen_body:
                    return Result.error(
                        "conflict",
                        f"request id {request_id!r} was already used for another {op} body: use a new "
                        "X-Request-Id for a new request, the same one only to retry the same request",
                        "request_id",
                    )
                return seen[2]
        now = max(self._clock_ms, now_ms)
        result = run(now)
        if result.ok:
            self._clock_ms = now
            if key is not None:
                self._remember(key, tag, now, result)
        return result

    def _remember(self, key: tuple[str, str], op: str, now: int, result: Result) -> None:
        self._dedup[key] = (op, now, result)
        horizon = now - DEDUP_TTL_MS
        while self._dedup:
            first = next(iter(self._dedup.values()))
            if len(self._dedup) <= DEDUP_MAX_ENTRIES and first[1] >= horizon:
                break
            self._dedup.popitem(last=False)

    def _new_token(self) -> int:
        self._token += 1
        return self._token

    def _add_lease(self, kind: str, target: Any, worker_id: str, now: int, ttl_ms: int) -> LeaseRec:
        token = self._new_token()
        rec = LeaseRec(token, kind, target, worker_id, now, now + ttl_ms)
        self._leases[token] = rec
        heapq.heappush(self._expiry, (rec.expires_at_ms, token))
        return rec

    def _can(self, window: Window, event: str) -> bool:
        """Whether ``event`` is a legal move of ``window`` now (``_lifecycle.py``): asked before any mutation."""
        return next_state(window.state, event) is not None

    def _move(self, window: Window, event: str) -> None:
        """Move ``window`` along the lifecycle table (rule 8) and keep every count in step; an illegal move (which
        the caller has ruled out with :meth:`_can`) changes nothing."""
        state = next_state(window.state, event)
        old = window.state
        if state is None or old == state:
            return
        window.state = state
        self._window_counts[old] -= 1
        self._window_counts[state] += 1
        load_change = (state in _OUTSTANDING) - (old in _OUTSTANDING)
        for job_id in window.jobs:
            job = self._jobs[job_id]
            counts = job.counts
            if load_change and job.owner and not job.cancelled:
                before = counts[PENDING] + counts[LEASED]
                self._charge(job.owner, before, before + load_change)
            counts[old] -= 1
            counts[state] += 1
            if load_change:  # only then may a job start or stop running (rule 7)
                self._track(job)

    def _reset(self, window: Window, event: str, now: int) -> None:
        """A move that starts the window afresh (requeue, mark done, job retry, reopen): lease revoked, attempts,
        backoff and error cleared."""
        self._drop_window_lease(window)
        window.attempts = 0
        window.not_before_ms = 0
        window.done_token = 0
        window.last_error = ""
        self._move(window, event)
        self._enqueue(window, now)

    def _lease_value(self, window: Window, lease: LeaseRec) -> dict[str, Any]:
        """A granted window as the claim answers it (the wire shape of :class:`provider.core.Lease`)."""
        value = {
            "lease_id": lease_id_of(lease.token),
            "window_id": window_id(window.series, window.start),
            "token": lease.token,
            "series": window.series,
            "start": window.start,
            "end": window.end,
            "attempt": window.attempts,
            "expires_at_ms": lease.expires_at_ms,
        }
        traces = self._traces(window)
        if traces:  # only then: workers older than tracing reject unknown fields
            value["traces"] = traces
        return value

    def _traces(self, window: Window) -> list[str]:
        """The ``traceparent`` of each traced job of ``window``, the claim-ranking job first (at most 8)."""
        jobs = [self._jobs[job_id] for job_id in window.jobs]
        traced = sorted((j for j in jobs if j.trace), key=lambda j: (-j.priority, j.seq))
        return [j.trace for j in traced[:8]]

    def _track(self, job: JobRec) -> None:
        """Keep ``_running`` in step with a job whose counts or cancellation changed (rule 7)."""
        if job.state == "running":
            self._running[job.job_id] = job
        else:
            self._running.pop(job.job_id, None)

    def _charge(self, owner: str, before: int, after: int) -> None:
        """Rule 6: one of ``owner``'s jobs went from ``before`` to ``after`` outstanding windows."""
        load = self._owners.get(owner)
        if load is None:
            load = self._owners[owner] = [0, 0]
        load[0] += (after > 0) - (before > 0)
        load[1] += after - before
        if load == [0, 0]:
            del self._owners[owner]

    def _enqueue(self, window: Window, now: int) -> None:
        """Offer a pending window to claims (again); stale heap entries are skipped when popped."""
        if window.rank is None or window.state != PENDING:
            return
        entry = (window.rank[0], window.rank[1], window.start, window.series)
        if window.not_before_ms > now:
            heapq.heappush(self._delayed, (window.not_before_ms, *entry))
        else:
            heapq.heappush(self._ready, entry)

    def _rank_of(self, jobs: tuple[str, ...]) -> tuple[int, int] | None:
        """The claim rank of a window covered by ``jobs``: the best of theirs (``_windows.py`` rule 4)."""
        return min((claim_rank(self._jobs[job_id]) for job_id in jobs), default=None)

    def _set_jobs(self, window: Window, jobs: tuple[str, ...], now: int) -> None:
        """Give ``window`` a new job set; offer it to claims again when that changes its rank."""
        before = window.rank
        window.jobs = jobs
        if window.rank != before:
            self._enqueue(window, now)

    def _job_windows(self, job: JobRec) -> list[Window]:
        span = self._series[job.series].span_ms
        return list(self._windows.in_range(job.series, job.w_lo // span, job.w_hi // span))

    def _drop_window_lease(self, window: Window) -> None:
        if window.lease:
            self._leases.pop(window.lease, None)
            window.lease = 0

    # -- queries (read-only) ----------------------------------------------------------------------------------

    @property
    def token_floor(self) -> int:
        """The last token granted; every future grant is greater."""
        return self._token

    @property
    def clock_ms(self) -> int:
        return self._clock_ms

    def job(self, job_id: str) -> dict[str, Any] | None:
        job = self._jobs.get(job_id)
        return job.public() if job is not None else None

    def job_windows(self, job_id: str, state: str | None = None) -> list[dict[str, Any]] | None:
        """The windows of a job (in ``state`` when given) in start order, or None for an unknown job."""
        job = self._jobs.get(job_id)
        if job is None:
            return None
        if job.retired_at_ms:
            return []
        found = [
            self.window_info(window.series, window.start)
            for window in self._job_windows(job)
            if job_id in window.jobs and (state is None or window.state == state)
        ]
        return [w for w in found if w is not None]

    def jobs(self) -> list[dict[str, Any]]:
        return [job.public() for job in self._jobs.values()]

    def jobs_page(
        self, limit: int, after_seq: int = 0, state: str | None = None, series: str | None = None
    ) -> tuple[list[dict[str, Any]], int | None]:
        """Up to ``limit`` jobs with a submission number above ``after_seq`` (in submission order), filtered by
        ``state`` and ``series``, and the cursor of the next page (None on the last page)."""
        page: list[dict[str, Any]] = []
        last_seq = after_seq
        for job in self._jobs.values():
            if job.seq <= after_seq or (series is not None and job.series != series):
                continue
            if state is not None and job.state != state:
                continue
            if len(page) == limit:
                return page, last_seq
            page.append(job.public())
            last_seq = job.seq
        return page, None

    def pending_count(self) -> int:
        return self._window_counts[PENDING]

    def next_expiry_ms(self) -> int | None:
        """The earliest lease expiry (possibly of a lease renewed since: then an expire command just cleans up)."""
        return self._expiry[0][0] if self._expiry else None

    def nodes(self) -> dict[str, dict[str, str]]:
        return {raft: dict(info) for raft, info in self._nodes.items()}

    def lease_infos(self, now_ms: int, *, stale_only: bool = False) -> list[dict[str, Any]]:
        """Live leases in the shape of :class:`provider.core.LeaseInfo`, oldest first."""
        infos = []
        for token in sorted(self._leases):
            rec = self._leases[token]
            stale = rec.expires_at_ms <= now_ms
            if stale_only and not stale:
                continue
            info: dict[str, Any] = {
                "lease_id": lease_id_of(token),
                "kind": rec.kind,
                "worker_id": rec.worker_id,
                "token": token,
                "granted_at_ms": rec.granted_at_ms,
                "expires_at_ms": rec.expires_at_ms,
                "stale": stale,
                "window_id": None,
                "key": None,
            }
            if rec.kind == "window":
                info["window_id"] = window_id(rec.target[0], rec.target[1])
            else:
                info["key"] = rec.target
            infos.append(info)
        return infos

    def window_info(self, series: str, start: int) -> dict[str, Any] | None:
        window = self._windows.get((series, start))
        if window is None:
            return None
        return {
            "window_id": window_id(series, start),
            "series": series,
            "start": window.start,
            "end": window.end,
            "state": window.state,
            "attempts": window.attempts,
            "not_before_ms": window.not_before_ms,
            "lease_token": window.lease,
            "rows": window.rows,
            "last_error": window.last_error,
            "jobs": list(window.jobs),
        }

    def stats(self, max_jobs: int | None = None) -> dict[str, Any]:
        """Figures for metrics: windows by state, live leases, stale claims, retired jobs, and the running jobs'
        progress. ``jobs_running`` lists the first ``max_jobs`` running jobs in claim order (every one when None) as
        ``(job_id, series, done windows, windows)``; ``jobs_other`` sums the others as ``(jobs, done, windows)``.
        Costs O(running jobs) (rule 7)."""
        running = self._running
        if max_jobs is None or len(running) <= max_jobs:
            shown = sorted(running.values(), key=claim_rank)
        else:
            shown = heapq.nsmallest(max_jobs, running.values(), key=claim_rank)
        done = windows = 0
        for job in running.values():
            counts = job.counts
            done += counts[DONE]
            windows += counts[PENDING] + counts[LEASED] + counts[DONE] + counts[FAILED]
        listed = [(job.job_id, job.series, job.counts[DONE], job.total) for job in shown]
        for _, _, job_done, job_windows in listed:
            done -= job_done
            windows -= job_windows
        return {
            "windows": dict(self._window_counts),
            "leases_active": len(self._leases),
            "stale_claims_total": self._stale_claims,
            "token": self._token,
            "jobs_running": listed,
            "jobs_other": (len(running) - len(listed), done, windows),
            "jobs_retired": self._jobs_retired,
        }

    def snapshot(self) -> dict[str, Any]:
        """The whole observable state as plain data; equal snapshots mean equal tables (for tests)."""
        return {
            "token": self._token,
            "stale": self._stale_claims,
            "jobs": {jid: (j.public(), j.cancelled, j.owner, j.trace) for jid, j in self._jobs.items()},
            "windows": {
                k: (w.state, w.attempts, w.not_before_ms, w.lease, w.done_token, w.rows, tuple(w.jobs))
                for k, w in self._windows.items()
            },
            "leases": {
                t: (r.kind, r.target, r.worker_id, r.granted_at_ms, r.expires_at_ms) for t, r in self._leases.items()
            },
            "keys": {k: (r.state, r.token) for k, r in self._keys.items()},
            "nodes": self.nodes(),
        }
