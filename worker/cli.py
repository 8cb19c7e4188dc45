"""``worker run``: the backfill worker daemon, or with ``--autoscale MIN:MAX`` a supervisor of a worker pool.

Precedence: flags override the ``--config`` file, the file overrides defaults. This module is the only one in
worker/ that reads the environment, installs signal handlers or builds objects from flags.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from prometheus_client import CollectorRegistry, Gauge

from provider.core import STORAGE_DSN_ENV, AppConfig, ConfigError, load_config
from provider.core.obs import configure_logging, get_logger, new_registry, run_service
from provider.core.tracing import configure_tracing
from provider.metrics_http import MetricsServer, serve_metrics
from worker.autoscale import AutoscalePolicy, Supervisor, parse_autoscale, python_argv
from worker.budget_wiring import SharedBudgets
from worker.metrics import WorkerMetrics
from worker.storage_watch import watch_storage

log = get_logger("worker.cli")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Seamless backfill workers: claim windows from the coordinator, fetch bars, store them."""


@main.command()
@click.option(
    "--coordinator",
    "coordinator_urls",
    required=True,
    metavar="URL[,URL...]",
    help="Coordinator base URLs, comma separated (any node; the client follows the leader).",
)
@click.option(
    "--source",
    default="synthetic",
    show_default=True,
    metavar="SOURCE",
    help="synthetic[:SEED], binance[:BASE_URL] or ccxt:EXCHANGE_ID (or a plug-in).",
)
@click.option(
    "--fallback-source",
    "fallback_sources",
    multiple=True,
    metavar="SOURCE",
    help="Tried in order when --source fails a window after its retries (repeatable) "
    "[default: worker.fallback_sources from --config].",
)
@click.option(
    "--storage",
    "storage_dsn",
    default=None,
    metavar="DSN",
    envvar=STORAGE_DSN_ENV,
    show_envvar=True,
    help="questdb://USER:PASS@HOST:PGPORT/?http_port=9000, postgresql://... or sqlite:///path.db "
    "[default: storage.dsn from --config, else sqlite:///seamless.db]. A password here shows in ps: prefer "
    "--storage-file, the environment variable or --config.",
)
@click.option(
    "--storage-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File holding the storage DSN (its first non-comment line), e.g. a mounted secret; wins over --storage.",
)
@click.option("--worker-id", default=None, help="Stable id for logs and leases [default: HOST-PID].")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 256),
    default=None,
    help="Windows in progress at once [default: worker.concurrency, 4].",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="YAML config file (DESIGN.md section 3).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File whose first token is sent as the bearer token (role 'worker').",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="Serve /metrics and /healthz on 127.0.0.1:PORT (0 picks a free port).",
)
@click.option("--metrics-host", default="127.0.0.1", show_default=True, help="Bind address of the metrics server.")
@click.option(
    "--autoscale",
    default=None,
    metavar="MIN:MAX",
    help="Supervise MIN..MAX worker processes, sized by the cluster's pending windows.",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def run(**opts: Any) -> None:
    """Run a worker (or, with --autoscale, a pool of them) until SIGTERM or Ctrl-C."""
    configure_logging("worker", level=opts["log_level"])
    try:
        config = load_config(opts["config_path"])
        _resolve_storage(opts)
        if opts["autoscale"]:
            bounds = parse_autoscale(opts["autoscale"])
            code = run_service(_supervise(opts, config, bounds))
        else:
            code = run_service(_run_worker(opts, config))
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    sys.exit(code)


def _resolve_storage(opts: dict[str, Any]) -> None:
    """``--storage-file`` wins over ``--storage`` / ``$SEAMLESS_STORAGE_DSN``; a secret typed on the command line is
    warned about (every local user sees it in ps). Pool children get the DSN through the environment."""
    from provider.storage import read_dsn_file, shows_password

    if opts["storage_file"] is not None:
        opts["storage_dsn"] = read_dsn_file(opts["storage_file"])
    elif opts["storage_dsn"] and shows_password(opts["storage_dsn"]):
        source = click.get_current_context().get_parameter_source("storage_dsn")
        if source is ParameterSource.COMMANDLINE:
            log.warning(
                "worker.password_on_command_line",
                advice=f"every local user can read it in ps: use --storage-file, ${STORAGE_DSN_ENV} or --config",
            )
    if opts["storage_dsn"]:
        os.environ[STORAGE_DSN_ENV] = opts["storage_dsn"]  # what --autoscale children read, not their argv


def _stop_on_signals(stop: Any) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop)


def _token(opts: dict[str, Any]) -> str | None:
    from provider.client import read_token_file

    return read_token_file(opts["token_file"]) if opts["token_file"] else None


def _note_retry(metrics: WorkerMetrics, event: Any) -> None:
    metrics.retries.labels(source=event.source).inc()
    log.warning(
        "source.retry", source=event.source, retry=event.retry, delay_s=round(event.delay_s, 3), error=str(event.error)
    )


async def _run_worker(opts: dict[str, Any], config: AppConfig) -> int:
    from provider.client import CoordinatorClient
    from provider.storage import open_storage
    from worker.daemon import Worker, WorkerSettings

    worker_cfg = config.worker
    if opts["concurrency"]:
        worker_cfg = dataclasses.replace(worker_cfg, concurrency=opts["concurrency"])
    backfill = config.seamless_data_provider.backfill_config
    worker_id = opts["worker_id"] or f"{socket.gethostname()}-{os.getpid()}"
    configure_tracing("seamless-worker", instance=worker_id)
    settings = WorkerSettings.from_config(worker_id, worker_cfg, backfill)
    metrics = WorkerMetrics()
    storage = await open_storage(opts["storage_dsn"] or config.storage.dsn)
    source, limits = _open_sources(opts, config, metrics)
    client = CoordinatorClient(opts["coordinator_urls"], token=_token(opts), client_id=worker_id)
    worker = Worker(
        settings,
        coordinator=client,
        source=source,
        storage=storage,
        metrics=metrics,
        fetch_rate_per_s=limits[opts["source"]].budget.requests_per_s,
    )
    budget = SharedBudgets.start(opts, config, worker_id, limits, metrics, _token(opts), worker.budget_changed)
    _stop_on_signals(worker.stop)
    runner = await _serve_metrics(opts, metrics.registry) if opts["metrics_port"] is not None else None
    watch = asyncio.create_task(
        watch_storage(storage, metrics, interval_s=worker_cfg.storage_check_interval_ms / 1000), name="storage-watch"
    )
    leaver = asyncio.create_task(budget.leave_after(worker.source_done()), name="budget-leave")
    try:
        await worker.run()
    finally:
        leaver.cancel()
        await budget.leave()
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        for closer in (client.aclose, source.aclose, storage.aclose):
            with contextlib.suppress(Exception):
                await closer()
        if runner is not None:
            await runner.aclose()
    return 0


def _open_sources(opts: dict[str, Any], config: AppConfig, metrics: WorkerMetrics) -> tuple[Any, dict[str, Any]]:
    """``--source``, or a :class:`FallbackSource` of it and the fallbacks (flags win over the config file); and the
    limits of each spec (a shared budget retunes them)."""
    from provider.sources import FallbackSource, SourceLimits, open_source

    specs = [opts["source"], *(opts["fallback_sources"] or config.worker.fallback_sources)]
    limits = {spec: SourceLimits.from_worker_config(config.worker) for spec in dict.fromkeys(specs)}
    sources = [
        open_source(
            spec,
            limits=limits[spec],
            retry=config.seamless_data_provider.backfill_config,
            on_retry=lambda event: _note_retry(metrics, event),
        )
        for spec in specs
    ]
    if len(sources) == 1:
        return sources[0], limits
    return FallbackSource(sources, names=specs), limits


async def _serve_metrics(opts: dict[str, Any], registry: CollectorRegistry) -> MetricsServer:
    server = await serve_metrics(registry, port=opts["metrics_port"], host=opts["metrics_host"])
    log.info("worker.metrics_listening", address=server.url)
    return server


def _child_argv(opts: dict[str, Any], index: int) -> list[str]:
    argv = [*python_argv(), "run", "--coordinator", opts["coordinator_urls"], "--source", opts["source"]]
    base_id = opts["worker_id"] or f"{socket.gethostname()}-{os.getpid()}"
    argv += ["--worker-id", f"{base_id}-w{index}", "--log-level", opts["log_level"]]
    for flag, key in (
        ("--concurrency", "concurrency"),
        ("--config", "config_path"),
        ("--token-file", "token_file"),
    ):
        if opts[key] is not None:
            argv += [flag, str(opts[key])]
    for spec in opts["fallback_sources"] or ():
        argv += ["--fallback-source", spec]
    if opts["metrics_port"]:
        argv += ["--metrics-port", str(opts["metrics_port"] + 1 + index)]
    return argv


async def _supervise(opts: dict[str, Any], config: AppConfig, bounds: tuple[int, int]) -> int:
    from provider.client import CoordinatorClient

    client = CoordinatorClient(opts["coordinator_urls"], token=_token(opts), retry_deadline_s=5)

    async def backlog() -> tuple[int, int]:
        jobs = await client.list_jobs()
        running = [j for j in jobs if j.state == "running"]
        return sum(j.windows.pending for j in running), sum(j.windows.leased for j in running)

    policy = AutoscalePolicy(bounds[0], bounds[1], config.worker.autoscale_windows_per_worker)
    supervisor = Supervisor(
        policy=policy,
        child_argv=lambda index: _child_argv(opts, index),
        backlog=backlog,
        interval_s=config.worker.autoscale_interval_ms / 1000,
        grace_s=config.worker.shutdown_grace_ms / 1000,
    )
    _stop_on_signals(supervisor.stop)
    registry = new_registry()
    Gauge("worker_pool_size", "Worker processes the supervisor runs.", registry=registry).set_function(
        lambda: len(supervisor.children)
    )
    Gauge("worker_pool_restarts", "Crashed worker processes restarted.", registry=registry).set_function(
        lambda: supervisor.restarts
    )
    runner = await _serve_metrics(opts, registry) if opts["metrics_port"] is not None else None
    try:
        await supervisor.run()
    finally:
        await client.aclose()
        if runner is not None:
            await runner.aclose()
    return 0


if __name__ == "__main__":
    main()
