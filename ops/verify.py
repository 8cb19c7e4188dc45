"""``coordinator verify [SERIES START END] --storage DSN``: check stored bars against the ledger, the bar contract
and (optionally) the source; ``--repair`` re-queues the windows that differ through the coordinator.

Rules:
1. Scope: one series and range, or, without them, every job the cluster knows (``--coordinator``), each over its
   own range. Windows are the cluster's (``--window-bars``, default the ``--config`` file's or 900).
2. Checks (``ops._verify_checks``): ledger vs bars, duplicates / off-grid / non-finite rows, and with ``--source``
   a re-fetch compared bar by bar within ``--tolerance`` (relative). ``--sample N`` re-fetches N covered windows
   spread evenly over the range instead of all; fetches run one at a time through the source's rate budget.
3. ``--repair`` (needs ``--coordinator`` and an operator token): a window with a ``duplicate_ts`` finding first
   has its duplicates merged in the storage (``storage.remove_duplicates``: a rewrite replaces bars but cannot
   remove a duplicate already stored); then each window with findings is re-queued
   (``POST /v1/windows/{id}/requeue``; a window the cluster never knew gets a job of its own), so a worker
   rewrites it; writes replace a window whole and are idempotent. ``--wait`` waits for those windows' jobs.
4. Output: a table (or ``--json``), exit 0 clean, 1 findings, 2 usage, 3 storage / source / cluster unreachable.
   ``--metrics-file F`` writes the last verification's figures in the Prometheus text format (for node_exporter's
   textfile collector): ``seamless_verify_last_run_timestamp_seconds``, ``seamless_verify_windows_checked``,
   ``seamless_verify_windows_differing``, ``seamless_verify_findings{kind}``.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from ops._common import EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE, cluster_options, parse_range
from ops._verify_checks import WindowCheck, compare_to_source, plan_windows, stored_findings
from provider.core import STORAGE_DSN_ENV, SeriesKey, interval_ms, ms_to_iso, wall_clock_ms

__all__ = ["verify", "verify_metrics"]


def verify_metrics(checks: list[WindowCheck], registry: Any = None) -> Any:
    """A registry holding the figures of one verification (rule 4)."""
    from prometheus_client import Gauge

    from provider.core.obs import new_registry

    registry = registry if registry is not None else new_registry()
    Gauge("seamless_verify_last_run_timestamp_seconds", "Unix time of the last verify", registry=registry).set(
        wall_clock_ms() / 1000
    )
    Gauge("seamless_verify_windows_checked", "Windows the last verify checked", registry=registry).set(len(checks))
    Gauge("seamless_verify_windows_differing", "Windows with findings", registry=registry).set(
        sum(bool(c.findings) for c in checks)
    )
    findings = Gauge("seamless_verify_findings", "Rows concerned by each finding kind", ["kind"], registry=registry)
    for check in checks:
        for finding in check.findings:
            findings.labels(kind=finding.kind).inc(finding.count)
    return registry


def _sample(checks: list[WindowCheck], sample: int | None) -> list[WindowCheck]:
    covered = [c for c in checks if c.covered]
    if sample is None or sample >= len(covered):
        return covered
    step = len(covered) / sample
    return [covered[int(i * step)] for i in range(sample)]


async def _check_series(
    storage: Any, source: Any, series: str, start_ms: int, end_ms: int, opts: dict[str, Any]
) -> list[WindowCheck]:
    step_ms = interval_ms(SeriesKey.parse(series).interval)
    coverage = await storage.coverage(series, start_ms, end_ms)
    checks = plan_windows(series, start_ms, end_ms, step_ms, opts["window_bars"], coverage)
    frame = await storage.read(series, checks[0].start_ms, checks[-1].end_ms) if checks else None
    if frame is None:
        return checks
    stored_findings(checks, frame, coverage, step_ms)
    if source is not None:
        for check in _sample(checks, opts["sample"]):
            fetched = await source.fetch(series, check.start_ms, check.end_ms)
            compare_to_source(check, frame, fetched, opts["tolerance"])
    return checks


async def _scope(opts: dict[str, Any], client: Any) -> list[tuple[str, int, int]]:
    if opts["series"] is not None:
        return [(opts["series"], opts["start"], opts["end"])]
    if client is None:
        raise click.UsageError("give SERIES START END, or --coordinator to verify every job's range")
    return sorted({(job.series, job.start, job.end) for job in await client.list_jobs()})


async def _repair(client: Any, storage: Any, checks: list[WindowCheck], opts: dict[str, Any]) -> list[dict[str, Any]]:
    from provider.errors import CoordinatorNotFoundError

    done = []
    for check in checks:
        if not check.findings:
            continue
        kinds = sorted({f.kind for f in check.findings})
        merged = ""
        if "duplicate_ts" in kinds and hasattr(storage, "remove_duplicates"):
            stamps = await storage.remove_duplicates(check.series, check.start_ms, check.end_ms)
            merged = f"{stamps} duplicated stamps merged, "
        try:
            answer = await client.requeue(check.window_id, f"verify: {', '.join(kinds)}")
            action, state = f"{merged}requeued", answer.get("state")
        except CoordinatorNotFoundError:
            job = await client.submit_job(check.series, check.start_ms, check.end_ms, priority=opts["priority"])
            action, state = f"{merged}submitted {job.job_id}", job.state
        done.append({"window_id": check.window_id, "action": action, "state": state})
    if opts["wait"] and done:
        series = {c.series for c in checks if c.findings}
        deadline = time.monotonic() + opts["timeout"]
        while any(j.state == "running" and j.series in series for j in await client.list_jobs()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"repair not finished after {opts['timeout']} s")
            await asyncio.sleep(0.2)
    return done


async def _run(opts: dict[str, Any]) -> tuple[list[WindowCheck], list[dict[str, Any]]]:
    from provider.client import CoordinatorClient
    from provider.sources import open_source
    from provider.storage import open_storage

    client = None
    if opts["urls"]:
        client = CoordinatorClient(opts["urls"], token=opts["token"], client_id=f"verify-{os.getpid()}")
    storage = await open_storage(opts["storage_dsn"])
    source = open_source(opts["source"]) if opts["source"] else None
    try:
        checks: list[WindowCheck] = []
        for series, start_ms, end_ms in await _scope(opts, client):
            checks += await _check_series(storage, source, series, start_ms, end_ms, opts)
        repaired = await _repair(client, storage, checks, opts) if opts["repair"] and client is not None else []
        return checks, repaired
    finally:
        for closer in (storage.aclose, *(x.aclose for x in (source, client) if x is not None)):
            await closer()


def render(checks: list[WindowCheck], repaired: list[dict[str, Any]]) -> str:
    rows = [
        (c.series, ms_to_iso(c.start_ms), c.window_id, f.kind, str(f.count), ms_to_iso(f.example_ms or c.start_ms))
        for c in checks
        for f in c.findings
    ]
    lines = []
    if rows:
        head = ("SERIES", "WINDOW", "WINDOW_ID", "FINDING", "ROWS", "FIRST")
        widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
        lines += ["  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    differing = sum(bool(c.findings) for c in checks)
    compared = sum(c.compared for c in checks)
    lines.append(
        f"{len(checks)} windows checked ({sum(c.covered for c in checks)} covered, {compared} compared with the "
        f"source, {sum(c.bars for c in checks)} bars stored): {differing} with findings"
    )
    lines += [f"repair: {r['window_id']} {r['action']} ({r['state']})" for r in repaired]
    return "\n".join(lines)


@click.command()
@click.argument("scope", nargs=-1, metavar="[SERIES START END]")
@click.option(
    "--storage",
    "storage_dsn",
    default=None,
    metavar="DSN",
    envvar=STORAGE_DSN_ENV,
    show_envvar=True,
    help="The storage the workers write to (a password here shows in ps: prefer --storage-file or the variable).",
)
@click.option(
    "--storage-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the storage DSN (its first non-comment line); wins over --storage.",
)
@click.option("--source", default=None, metavar="SPEC", help="Re-fetch covered windows from this source and compare.")
@click.option("--sample", type=click.IntRange(1), default=None, help="Re-fetch only N covered windows [default: all].")
@click.option(
    "--tolerance", type=click.FloatRange(0), default=1e-9, show_default=True, help="Relative tolerance of values."
)
@click.option("--window-bars", type=click.IntRange(1), default=None, help="The cluster's window_bars [default: 900].")
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML config: window_bars is read from it.",
)
@click.option("--repair", is_flag=True, help="Re-queue the windows with findings through the coordinator.")
@click.option("--wait", is_flag=True, help="With --repair: wait until the re-queued windows are rewritten.")
@click.option("--priority", type=int, default=1000, show_default=True, help="Priority of repair jobs.")
@click.option("--timeout", type=click.FloatRange(0.1), default=120.0, show_default=True, help="--wait deadline (s).")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the last verification's metrics here (Prometheus text format).",
)
@cluster_options
def verify(scope: tuple[str, ...], **kwargs: Any) -> None:
    """Check stored bars: ledger vs bars, duplicates / off-grid / non-finite rows, and with --source the bars
    themselves; --repair re-queues the windows that differ. Exit 0 clean, 1 findings, 2 usage, 3 unreachable."""
    sys.exit(execute(scope, kwargs))


def execute(scope: tuple[str, ...], kw: dict[str, Any]) -> int:
    from ops._common import coordinator_urls, token_from
    from provider.core import load_config

    if scope and len(scope) != 3:
        raise click.UsageError(f"give SERIES START END (3 arguments) or none; got {len(scope)}: {' '.join(scope)}")
    opts: dict[str, Any] = {"series": None, "start": None, "end": None, **kw}
    if scope:
        series, opts["start"], opts["end"] = parse_range(scope[:1], scope[1], scope[2])
        opts["series"] = series[0]
    if kw["window_bars"] is None:
        config = load_config(kw["config_path"])
        opts["window_bars"] = config.seamless_data_provider.backfill_config.window_bars
    if kw["storage_file"] is not None:
        from provider.storage import read_dsn_file

        opts["storage_dsn"] = read_dsn_file(kw["storage_file"])
    if not opts["storage_dsn"]:
        raise click.UsageError(f"give --storage DSN, --storage-file FILE or ${STORAGE_DSN_ENV}")
    if kw["repair"] and not (kw["coordinator"] or os.environ.get("SEAMLESS_COORDINATOR_URL")):
        raise click.UsageError("--repair needs --coordinator (or $SEAMLESS_COORDINATOR_URL)")
    want_cluster = kw["repair"] or not scope or kw["coordinator"]
    opts["urls"] = coordinator_urls(kw["coordinator"]) if want_cluster else None
    opts["token"] = token_from(kw["token_file"])
    try:
        checks, repaired = asyncio.run(_run(opts))
    except (OSError, TimeoutError) as exc:
        click.echo(f"error: {exc}", err=True)
        return EXIT_UNREACHABLE
    except Exception as exc:
        from provider.errors import SeamlessError

        if not isinstance(exc, SeamlessError):
            raise
        click.echo(f"error: {exc}", err=True)
        return EXIT_UNREACHABLE
    if kw["metrics_file"] is not None:
        from prometheus_client import write_to_textfile

        write_to_textfile(str(kw["metrics_file"]), verify_metrics(checks))
    if kw["as_json"]:
        document = {
            "windows": [c.to_dict() for c in checks if c.findings],
            "repaired": repaired,
            "checked": len(checks),
            "differing": sum(bool(c.findings) for c in checks),
        }
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(render(checks, repaired))
    return EXIT_FAILED if any(c.findings for c in checks) else EXIT_OK
