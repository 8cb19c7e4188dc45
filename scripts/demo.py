"""`make demo`: the whole system on loopback in about a minute, then everything it started is stopped.

It starts three `coordinator serve` nodes, an autoscaled `worker run` pool, embedded SQLite storage and the
offline synthetic exchange; submits a multi-symbol backfill; shows a progress bar driven by the cluster's
completion ratio; reads the bars back through the provider; prints a summary. Ctrl-C stops everything too.

Point it at a real exchange and QuestDB with ``--source binance --storage questdb://admin:quest@HOST:8812/``.
Run it from the repository root as ``python -m scripts.demo`` (what `make demo` does): the processes' command
lines come from the development harness (devkit.launcher).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tqdm import tqdm

from devkit.launcher import peers_of, serve_argv, worker_argv
from devkit.ports import LOOPBACK, free_ports

ROOT = Path(__file__).resolve().parent.parent
DAY_MS = 86_400_000


class Stack:
    """The processes the demo started; :meth:`stop` ends all of them, gently first."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self.urls: list[str] = []

    def spawn(self, argv: list[str], log_name: str) -> subprocess.Popen[bytes]:
        log = open(self.data_dir / f"{log_name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen(
            argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def start_cluster(self, nodes: int = 3) -> None:
        addresses = [f"{LOOPBACK}:{port}" for port in free_ports(2 * nodes)]
        raft, http = addresses[:nodes], addresses[nodes:]
        self.urls = [f"http://{h}" for h in http]
        for i in range(nodes):
            node_dir = self.data_dir / f"node{i + 1}"
            node_dir.mkdir(parents=True, exist_ok=True)
            argv = serve_argv(
                node_id=f"n{i + 1}",
                raft=raft[i],
                peers=peers_of(raft, i),
                http=http[i],
                data_dir=node_dir,
                config=self.data_dir / "demo.yml",
            )
            self.spawn(argv, f"coordinator-n{i + 1}")

    def start_workers(self, autoscale: str, source: str, storage: str) -> None:
        argv = worker_argv(
            coordinators=self.urls,
            source=source,
            storage=storage,
            autoscale=autoscale,
            config=self.data_dir / "demo.yml",
            worker_id="demo",
        )
        self.spawn(argv, "workers")

    def stop(self, grace_s: float = 15.0) -> None:
        for proc in reversed(self.procs):  # workers first, then coordinators
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for proc in self.procs:
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


async def wait_for_leader(client: Any, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(Exception):
            info = await client.cluster()
            if info.get("leader"):
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the coordinator cluster elected no leader in 30 s; see demo-data/*.log")
        await asyncio.sleep(0.2)


async def backfill(stack: Stack, args: argparse.Namespace, series: list[str], start: int, end: int) -> None:
    from provider.client import CoordinatorClient

    async with CoordinatorClient(stack.urls, retry_deadline_s=30) as client:
        await wait_for_leader(client)
        stack.start_workers(args.workers, args.source, args.storage)
        jobs = [await client.submit_job(s, start, end) for s in series]
        total = sum(j.windows.total for j in jobs)
        with tqdm(total=total, unit="win", desc="backfill", dynamic_ncols=True, mininterval=0.5) as bar:
            while True:
                jobs = [await client.get_job(j.job_id) for j in jobs]
                done = sum(j.windows.done for j in jobs)
                bar.update(done - bar.n)
                ratio = sum(j.completion_ratio for j in jobs) / len(jobs)
                bar.set_postfix(ratio=f"{ratio:.2f}", failed=sum(j.windows.failed for j in jobs))
                if all(j.state != "running" for j in jobs):
                    break
                await asyncio.sleep(0.25)
        failed = [j for j in jobs if j.state != "done"]
        if failed:
            raise RuntimeError(f"jobs did not finish: {[(j.job_id, j.state) for j in failed]}")


async def read_back(args: argparse.Namespace, series: list[str], start: int, end: int) -> list[list[Any]]:
    from provider import DataAvailabilityStrategy, LocalFolderReportSink, SeamlessDataProvider
    from provider.core.obs import configure_logging
    from provider.storage import open_storage

    configure_logging("demo", level="WARNING", json=False)

    rows = []
    storage = await open_storage(args.storage)
    # FAIL_FAST: everything must already be in storage; this is the read a strategy does after the backfill.
    provider = SeamlessDataProvider(
        strategy=DataAvailabilityStrategy.FAIL_FAST,
        storage_source=storage,
        report_sink=LocalFolderReportSink(args.data_dir / "reports"),
    )
    try:
        for key in series:
            frame = await provider.fetch(start, end, node_id=key)
            report = provider.last_conformance_report
            flags = dict(report.flag_counts) if report is not None else {}
            coverage = await storage.coverage(key)
            covered = sum(e - s for s, e in coverage) / max(1, end - start)
            detail = ", ".join(f"{k}={v}" for k, v in sorted(flags.items())) or "-"
            rows.append([key, len(frame), f"{min(covered, 1.0):.0%}", detail])
    finally:
        await provider.aclose()
        await storage.aclose()
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--symbols", default="BTC/USDT,ETH/USDT,SOL/USDT,BNB/USDT", help="comma separated")
    parser.add_argument("--interval", default="1m")
    parser.add_argument("--days", type=int, default=30, help="history to backfill, ending 2024-03-01")
    parser.add_argument("--source", default="synthetic:7?gaps=0.001", help="source spec for the workers")
    parser.add_argument("--storage", default=None, help="storage DSN [default: SQLite in demo-data/]")
    parser.add_argument("--workers", default="2:4", help="autoscale bounds MIN:MAX")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "demo-data")
    args = parser.parse_args()

    shutil.rmtree(args.data_dir, ignore_errors=True)
    args.data_dir.mkdir(parents=True)
    args.storage = args.storage or f"sqlite:///{args.data_dir / 'demo.db'}"
    (args.data_dir / "demo.yml").write_text(
        "seamless_data_provider:\n  backfill_config:\n    distributed_lease_ttl_ms: 15000\n    window_bars: 1440\n"
        "worker:\n  concurrency: 4\n  autoscale_windows_per_worker: 8\n  autoscale_interval_ms: 1000\n"
    )
    source_name = args.source.partition(":")[0]
    series = [f"ohlcv:{source_name}:{s}:{args.interval}" for s in args.symbols.split(",")]
    end = 1_709_251_200_000  # 2024-03-01T00:00:00Z
    start = end - args.days * DAY_MS
    stack = Stack(args.data_dir)
    started = time.monotonic()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    try:
        print(f"starting 3 coordinators and a {args.workers} worker pool (logs in {args.data_dir}/)")
        stack.start_cluster()
        asyncio.run(backfill(stack, args, series, start, end))
        took_s = time.monotonic() - started
        rows = asyncio.run(read_back(args, series, start, end))
    except KeyboardInterrupt:
        print("\ninterrupted; stopping everything")
        return 130
    finally:
        stack.stop()
    print()
    print(f"{'series':<34} {'bars':>8} {'coverage':>9}  conformance flags")
    for key, bars, covered, detail in rows:
        print(f"{key:<34} {bars:>8,} {covered:>9}  {detail}")
    print(
        f"\n{len(series)} series x {args.days} days of {args.interval} bars backfilled in {took_s:.1f} s and read back"
        " through the provider; every process the demo started is stopped."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
