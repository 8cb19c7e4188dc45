"""Job retention: finished jobs leave the lease table after ``retention_ms``, keeping a summary (DESIGN.md 4).

Rules:
1. ``retire(retention_ms, now_ms)`` is a replicated command driven by the leader's clock, like ``expire``: the
   leader stamps ``now_ms``; nothing here reads a clock. It never raises and returns a :class:`Result`.
2. A job is finished when it is done, failed or cancelled. The sweep stamps ``finished_at_ms`` the first time it
   sees a job finished and clears the stamp when the job runs again (a later job re-opened one of its windows).
   A job finished for ``retention_ms`` or longer is retired: ``retired_at_ms`` is set, its counts freeze, and it
   leaves the windows it covers and the job index (so an identical submission creates a new job).
3. A window leaves the table once no live job covers it any more and it holds no live lease. A window shared
   with a running job, or a finished job not yet retired, stays. A leased window without a live job (of a
   cancelled job) stays until a later sweep finds it without lease.
4. The series grid (``window_bars``) stays, so a later job over the same range uses the same window ids; its
   windows are created afresh as pending. Coverage truth is the storage ledger: the provider submits only what
   storage lacks, and workers store idempotently.
5. Dropped windows leave holes in their blocks, and the store settles them at the end of the command: empty
   blocks go, mostly empty ones are split (``_windows.py`` rule 2). Single claim-heap entries and remembered tokens
   of completes that point at dropped windows are forgotten, and so are run entries with no window left.
6. One command drops about ``MAX_DROPPED_PER_COMMAND`` windows at most (it stops before the next job once it
   dropped that many, answering ``more: true``): the apply holds every node like a job submission of that size
   does (0.35 s for 100,000 windows, below the election timeout). The leader sweeps again at once.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from typing import Any

from coordinator._commands import command
from coordinator._records import LEASED, JobRec, Result
from coordinator._state import TableState, invalid, is_int

__all__ = ["RetireCommands"]

#: A command stops retiring further jobs once it dropped this many windows (rule 6).
MAX_DROPPED_PER_COMMAND = 100_000


class RetireCommands(TableState):
    """The retention command of the table and its read-only "is a sweep due" query."""

    @command
    def retire(self, *, retention_ms: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Stamp newly finished jobs and retire those finished for ``retention_ms`` or longer."""
        return self._once("retire", client_id, request_id, now_ms, lambda now: self._retire(retention_ms, now))

    def _retire(self, retention_ms: Any, now: int) -> Result:
        if not is_int(retention_ms) or retention_ms < 0:
            return invalid("retention_ms", "must be an integer >= 0")
        stamped = 0
        retired: list[str] = []
        dropped = 0
        more = False
        for job in self._jobs.values():
            if job.retired_at_ms:
                continue
            if dropped >= MAX_DROPPED_PER_COMMAND:
                more = True
                break
            if job.state == "running":
                job.finished_at_ms = 0
                continue
            if not job.finished_at_ms:
                job.finished_at_ms = now
                stamped += 1
            if now - job.finished_at_ms >= retention_ms:
                dropped += self._retire_job(job, now)
                retired.append(job.job_id)
        if dropped:
            self._windows.settle()
            self._forget_dropped()
        return Result.success({"stamped": stamped, "retired": retired, "windows_dropped": dropped, "more": more})

    def _forget_dropped(self) -> None:
        """Entries that point at dropped windows: claim-heap entries of windows never claimed (cancelled jobs) and
        tokens of completes, which can only answer lease_lost now. Kept, they would also pin the memory of the
        windows around them (the allocator returns a page only when nothing on it is alive)."""
        windows = self._windows
        self._ready = [e for e in self._ready if self._entry_alive(e)]
        heapq.heapify(self._ready)
        self._delayed = [e for e in self._delayed if (e[4], e[3]) in windows]
        heapq.heapify(self._delayed)
        self._done_tokens = OrderedDict((tok, key) for tok, key in self._done_tokens.items() if key in windows)

    def _entry_alive(self, entry: tuple[Any, ...]) -> bool:
        """Whether a claim-heap entry still points at a window: a single entry's own, any of a run's."""
        if len(entry) == 4:
            return (entry[3], entry[2]) in self._windows
        span = self._series[entry[3]].span_ms
        return next(self._windows.in_range(entry[3], entry[2] // span, entry[4] // span), None) is not None

    def _retire_job(self, job: JobRec, now: int) -> int:
        """Retire one finished job; returns how many windows left the table."""
        job.retired_at_ms = now
        self._jobs_retired += 1
        if self._job_index.get((job.series, job.start, job.end, job.priority)) == job.job_id:
            del self._job_index[(job.series, job.start, job.end, job.priority)]
        dropped = 0
        left: dict[tuple[str, ...], tuple[str, ...]] = {}  # shared job-id tuples stay shared (table.py rule 9)
        for window in self._job_windows(job):
            if job.job_id in window.jobs:
                jobs = window.jobs
                self._set_jobs(
                    window, left.get(jobs) or left.setdefault(jobs, tuple(j for j in jobs if j != job.job_id)), now
                )
            if window.jobs or window.state == LEASED:
                continue
            self._window_counts[window.state] -= 1
            self._windows.remove(window)
            dropped += 1
        return dropped

    # -- queries (read-only) ----------------------------------------------------------------------------------

    def retire_due(self, now_ms: int, retention_ms: int) -> bool:
        """Whether a ``retire`` command would change anything at ``now_ms`` (the leader asks before submitting)."""
        for job in self._jobs.values():
            if job.retired_at_ms:
                continue
            running = job.state == "running"
            if running != (job.finished_at_ms == 0):
                return True
            if not running and now_ms - job.finished_at_ms >= retention_ms:
                return True
        return False
