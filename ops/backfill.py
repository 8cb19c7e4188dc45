"""``coordinator backfill SERIES... START END``: submit one job per series and, with ``--wait``, watch it finish.

Rules:
1. One job per series over ``[START, END)`` (epoch ms or ISO-8601), at ``--priority``. Without ``--wait`` it
   prints the jobs and exits 0.
2. ``--wait`` polls the jobs every ``--poll-interval`` seconds and draws tqdm bars on stderr: a total line (windows
   done and failed, bars/s, ETA) and one line per series. Bars per second come from each job's completion ratio
   times its bars (windows may be shared with other jobs, so this counts the bars that became available).
3. Exit 0 when every job is done; 1 when a job ended with failed windows (or was cancelled): the failed windows
   are listed with their last error, and the ``scripts/lease_recover.py retry`` command to run once the cause is
   fixed; 3 when the cluster cannot be reached or refuses the token; 130 on Ctrl-C, leaving the jobs running
   (it says so and names them).
4. ``--json`` prints one JSON document on stdout (no bars): the jobs, their failed windows and the exit code.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click

from ops._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_UNREACHABLE,
    EXIT_USAGE,
    cluster_options,
    coordinator_urls,
    parse_range,
    token_from,
)
from provider.core import Job, SeriesKey, interval_ms, ms_to_iso, snap_range

__all__ = ["backfill"]


@dataclass
class Progress:
    """What the command knows so far; it outlives the event loop, so Ctrl-C can still name the jobs."""

    jobs: dict[str, Job] = field(default_factory=dict)
    failed: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def job_bars(job: Job) -> int:
    """Bars of the job's range on its series' grid."""
    step_ms = interval_ms(SeriesKey.parse(job.series).interval)
    start_ms, end_ms = snap_range(job.start, job.end, step_ms)
    return (end_ms - start_ms) // step_ms


class Bars:
    """The tqdm lines of rule 2 (nothing at all with ``enabled=False``)."""

    def __init__(self, jobs: list[Job], *, enabled: bool) -> None:
        self.enabled = enabled
        self.started_s = time.monotonic()
        if not enabled:
            return
        from tqdm import tqdm

        total = sum(j.windows.total for j in jobs)
        self.total = tqdm(total=total, desc="total", unit="win", position=0, file=sys.stderr, dynamic_ncols=True)
        self.lines = {
            j.job_id: tqdm(
                total=max(1, j.windows.total),
                desc=j.series,
                unit="win",
                position=i + 1,
                leave=True,
                file=sys.stderr,
                dynamic_ncols=True,
            )
            for i, j in enumerate(jobs)
        }

    def update(self, jobs: list[Job]) -> None:
        if not self.enabled:
            return
        bars = sum(j.completion_ratio * job_bars(j) for j in jobs)
        elapsed_s = max(time.monotonic() - self.started_s, 1e-6)
        done = sum(j.windows.done for j in jobs)
        failed = sum(j.windows.failed for j in jobs)
        self.total.n = done + failed
        self.total.set_postfix(done=done, failed=failed, bars_per_s=f"{bars / elapsed_s:,.0f}", refresh=False)
        self.total.refresh()
        for job in jobs:
            line = self.lines[job.job_id]
            line.n = job.windows.done + job.windows.failed
            line.set_postfix(state=job.state, failed=job.windows.failed, refresh=False)
            line.refresh()

    def close(self) -> None:
        if self.enabled:
            for line in (*self.lines.values(), self.total):
                line.close()


async def _run(opts: dict[str, Any], progress: Progress) -> int:
    from provider.client import CoordinatorClient

    async with CoordinatorClient(
        opts["urls"], token=opts["token"], client_id=f"backfill-{os.getpid()}", retry_deadline_s=opts["timeout"]
    ) as client:
        for series in opts["series"]:
            job = await client.submit_job(series, opts["start"], opts["end"], priority=opts["priority"])
            progress.jobs[job.job_id] = job
            if not opts["json"]:
                windows = job.windows.total
                click.echo(
                    f"submitted {job.job_id}: {series} {ms_to_iso(job.start)} .. {ms_to_iso(job.end)}, "
                    f"{windows} windows",
                    err=opts["wait"],
                )
        if not opts["wait"]:
            return EXIT_OK
        bars = Bars(list(progress.jobs.values()), enabled=not opts["json"])
        try:
            while True:
                jobs = [await client.get_job(job_id) for job_id in progress.jobs]
                progress.jobs = {job.job_id: job for job in jobs}
                bars.update(jobs)
                if all(job.state != "running" for job in jobs):
                    break
                await asyncio.sleep(opts["poll_interval"])
        finally:
            bars.close()
        for job in progress.jobs.values():
            if job.windows.failed:
                progress.failed[job.job_id] = await client.job_windows(job.job_id, "failed")
    ok = all(job.state == "done" for job in progress.jobs.values())
    return EXIT_OK if ok else EXIT_FAILED


def retry_command(urls: list[str], job_ids: list[str]) -> str:
    return f"python scripts/lease_recover.py --coordinator {','.join(urls)} retry {' '.join(job_ids)}"


def report(opts: dict[str, Any], progress: Progress, code: int) -> None:
    failed_jobs = [job_id for job_id, job in progress.jobs.items() if job.windows.failed]
    if opts["json"]:
        document = {
            "exit_code": code,
            "jobs": [
                {**job.to_dict(), "failed_windows": progress.failed.get(job.job_id, [])}
                for job in progress.jobs.values()
            ],
            "retry_command": retry_command(opts["urls"], failed_jobs) if failed_jobs else None,
        }
        click.echo(json.dumps(document, indent=2))
        return
    if not opts["wait"]:
        return
    for job in progress.jobs.values():
        click.echo(
            f"{job.job_id} {job.series}: {job.state}, {job.windows.done} windows done, {job.windows.failed} failed"
        )
    for job_id, windows in progress.failed.items():
        click.echo(f"failed windows of {job_id}:")
        for window in windows:
            click.echo(
                f"  {window['window_id']}  {ms_to_iso(window['start'])}  attempts {window['attempts']}  "
                f"{window['last_error'] or '-'}"
            )
    if failed_jobs:
        click.echo(f"after fixing the cause, retry them with:\n  {retry_command(opts['urls'], failed_jobs)}")


@click.command()
@click.argument("args", nargs=-1, required=True, metavar="SERIES... START END")
@click.option("--wait", is_flag=True, help="Watch the jobs with progress bars until they finish.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (no bars) for scripts.")
@click.option("--priority", type=int, default=0, show_default=True, help="Job priority (higher is claimed first).")
@click.option(
    "--poll-interval",
    type=click.FloatRange(0.05, 60),
    default=0.5,
    show_default=True,
    help="Seconds between progress polls.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(0.1, 3600),
    default=30.0,
    show_default=True,
    help="Give up on an unreachable cluster after this many seconds.",
)
@cluster_options
def backfill(
    args: tuple[str, ...],
    wait: bool,
    as_json: bool,
    priority: int,
    poll_interval: float,
    timeout: float,
    coordinator: str | None,
    token_file: Path | None,
) -> None:
    """Submit a backfill job per SERIES over [START, END) and, with --wait, show its progress.

    SERIES is ohlcv:SOURCE:SYMBOL:INTERVAL (symbols may contain ':'); START and END are epoch milliseconds or
    ISO-8601 (naive means UTC). Exit codes: 0 done, 1 windows failed (listed, with the retry command),
    2 usage error, 3 cluster unreachable or token refused, 130 interrupted (the jobs keep running).
    """
    if len(args) < 3:
        raise click.UsageError(f"need SERIES... START END; got {len(args)} argument(s): {' '.join(args)}")
    series, start_ms, end_ms = parse_range(args[:-2], args[-2], args[-1])
    opts = {
        "series": series,
        "start": start_ms,
        "end": end_ms,
        "wait": wait,
        "json": as_json,
        "priority": priority,
        "poll_interval": poll_interval,
        "timeout": timeout,
        "urls": coordinator_urls(coordinator),
        "token": token_from(token_file),
    }
    sys.exit(execute(opts))


def execute(opts: dict[str, Any]) -> int:
    from provider.errors import CoordinatorAuthError, CoordinatorBadRequestError, CoordinatorError

    progress = Progress()
    if threading.current_thread() is threading.main_thread():
        # A process started in the background of a non-interactive shell (CI, `cmd &`) inherits SIGINT ignored;
        # asyncio only turns Ctrl-C into KeyboardInterrupt when SIGINT has Python's default handler.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        code = asyncio.run(_run(opts, progress))
    except KeyboardInterrupt:
        names = ", ".join(f"{job_id} ({job.series})" for job_id, job in progress.jobs.items()) or "none submitted"
        click.echo(
            f"\ninterrupted: the jobs keep running on the cluster: {names}. "
            "Watch them with GET /v1/jobs/JOB_ID or cancel with DELETE /v1/jobs/JOB_ID.",
            err=True,
        )
        return EXIT_INTERRUPTED
    except CoordinatorBadRequestError as exc:
        click.echo(f"error: the coordinator refused the job: {exc}", err=True)
        return EXIT_USAGE
    except CoordinatorAuthError as exc:
        click.echo(f"error: the coordinator refused the token ({exc}); pass --token-file", err=True)
        return EXIT_UNREACHABLE
    except CoordinatorError as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_UNREACHABLE
    report(opts, progress, code)
    return code
