"""Coordinator throughput, latency and failover, against a 3-node etcd 3.4 cluster measured in the same run.

What is measured:
- Throughput: 64 concurrent clients each loop "claim 1 window, complete it" through the HTTP API of a 3-node
  ``coordinator serve`` cluster (clients talk to the leader, as the client library does after a 421 hint);
  windows leased-and-completed per second, and p50/p99 latency of every HTTP request. Then the same with claims
  of 4 windows (a worker's default concurrency), each window still completed by its own request. The server
  and client CPU time per window are reported too: on a shared machine they are steadier than rates.
- The same 64-client load against a 3-node etcd 3.4 cluster: one lease grant + one lease revoke per "window"
  through etcd's JSON gateway (``/v3/lease/grant``, ``/v3/lease/revoke``), on the leader. etcd fsyncs its WAL on
  every commit while pysyncobj never fsyncs (crash-safe, not power-loss-safe): so etcd also runs with its data
  dir on tmpfs, which removes the fsync cost and is the like-for-like durability baseline.
- Elections during the throughput runs (Raft terms started): with a healthy leader there should be none.
- Failover: median and max over ``--kills`` (default 20) kill -9 of the coordinator leader, from the kill to the
  first claim acknowledged by a survivor, while 8 clients keep claiming through all nodes, and the terms each
  election took (``_failover.py``; each kill waits until every node caught up, so it is a single fault); terms
  started outside those windows (the killed node's restart and catch-up) are counted as elections between kills.
- Read path: GET /v1/jobs/{id} on the leader and on a follower, linearizable (the default: a read barrier on the
  leader, forwarded by a follower) against ``?consistency=stale`` (the node's own replica): sequential p50 and
  the rate of ``--read-clients`` concurrent readers.

Run: ``.venv/bin/python -m bench.bench_coordinator [--duration 8] [--clients 64] [--kills 20] [--max-windows 1]``;
``--only failover`` runs the leader kills alone.
Prints a markdown table and a ``RESULT {json}`` line. Needs ``etcd`` (Debian ``etcd-server``) for the baseline;
it is installed with apt-get when missing, or skipped with ``--no-etcd``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._common import emit, table
from bench._failover import caught_up, coordinator_leader, failover_once, get_json, read_cost, terms
from devkit.launcher import peers_of, serve_argv
from devkit.ports import LOOPBACK, free_port

HOST = LOOPBACK
CONFIG = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 60_000, "window_bars": 1}},
    "coordinator": {"max_windows_per_job": 10_000_000},
}
JOB_WINDOWS = 20_000
Cycle = Callable[[aiohttp.ClientSession, str, int, list[float]], Awaitable[int]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


# -- clusters -------------------------------------------------------------------------------------------------------


class Cluster:
    """Three server processes; ``urls`` are their client endpoints."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.args: list[list[str]] = []
        self.urls: list[str] = []
        self.procs: list[subprocess.Popen[bytes] | None] = []

    def start(self, i: int) -> None:
        with (self.root / f"node{i}.log").open("ab") as log:
            self.procs[i] = subprocess.Popen(self.args[i], stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, i: int) -> None:
        proc = self.procs[i]
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def stop(self) -> None:
        for i in range(len(self.procs)):
            self.kill(i)

    def cpu_s(self) -> float:
        """User + system CPU seconds used so far by the live server processes (Linux /proc)."""
        total = 0
        for proc in self.procs:
            if proc is not None and proc.poll() is None:
                fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])
        return total / os.sysconf("SC_CLK_TCK")


def coordinator_cluster(root: Path, log_level: str) -> Cluster:
    (root / "config.yaml").write_text(yaml.safe_dump(CONFIG))
    rafts = [f"{HOST}:{free_port()}" for _ in range(3)]
    cluster = Cluster(root)
    for i in range(3):
        port = free_port()
        cluster.urls.append(f"http://{HOST}:{port}")
        cluster.args.append(
            serve_argv(
                node_id=f"n{i}",
                raft=rafts[i],
                peers=peers_of(rafts, i),
                http=f"{HOST}:{port}",
                data_dir=root / f"data{i}",
                config=root / "config.yaml",
                log_level=log_level,
            )
        )
        cluster.procs.append(None)
    for i in range(3):
        cluster.start(i)
    return cluster


def etcd_cluster(root: Path) -> Cluster:
    peers = [free_port() for _ in range(3)]
    initial = ",".join(f"e{i}=http://{HOST}:{p}" for i, p in enumerate(peers))
    cluster = Cluster(root)
    for i in range(3):
        client = free_port()
        cluster.urls.append(f"http://{HOST}:{client}")
        cluster.args.append(
            [
                "etcd",
                "--name",
                f"e{i}",
                "--data-dir",
                str(root / f"e{i}"),
                "--listen-client-urls",
                f"http://{HOST}:{client}",
                "--advertise-client-urls",
                f"http://{HOST}:{client}",
                "--listen-peer-urls",
                f"http://{HOST}:{peers[i]}",
                "--initial-advertise-peer-urls",
                f"http://{HOST}:{peers[i]}",
                "--initial-cluster",
                initial,
                "--initial-cluster-state",
                "new",
                "--initial-cluster-token",
                "bench",
                "--log-level",
                "error",
            ]
        )
        cluster.procs.append(None)
    for i in range(3):
        cluster.start(i)
    return cluster


async def etcd_leader(session: aiohttp.ClientSession, cluster: Cluster, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for url in cluster.urls:
            try:
                _, status = await get_json(session, "POST", url + "/v3/maintenance/status", {})
                if status["header"]["member_id"] == status["leader"]:
                    return url
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
                pass
        await asyncio.sleep(0.1)
    raise RuntimeError("etcd elected no leader in time")


# -- load -----------------------------------------------------------------------------------------------------------


def coordinator_cycle(max_windows: int) -> Cycle:
    async def cycle(session: aiohttp.ClientSession, url: str, k: int, latencies: list[float]) -> int:
        started = time.perf_counter()
        async with session.post(
            url + "/v1/windows/claim", json={"worker_id": f"w{k}", "max_windows": max_windows}
        ) as r:
            leases = (await r.json())["leases"] if r.status == 200 else []
        latencies.append(time.perf_counter() - started)
        for lease in leases:
            started = time.perf_counter()
            body = {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 1}
            async with session.post(url + "/v1/windows/complete", json=body) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"complete answered {r.status}")
            latencies.append(time.perf_counter() - started)
        return len(leases)

    return cycle


async def etcd_cycle(session: aiohttp.ClientSession, url: str, k: int, latencies: list[float]) -> int:
    started = time.perf_counter()
    async with session.post(url + "/v3/lease/grant", json={"TTL": 60}) as r:
        lease_id = (await r.json(content_type=None))["ID"]
    latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    async with session.post(url + "/v3/lease/revoke", json={"ID": lease_id}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"revoke answered {r.status}")
    latencies.append(time.perf_counter() - started)
    return 1


async def run_load(
    url: str, cycle: Cycle, clients: int, duration_s: float, cluster: Cluster, warmup_s: float = 1.0
) -> dict[str, Any]:
    """``clients`` tasks loop ``cycle`` on ``url``; only the window after the warm-up is counted."""
    done = 0
    latencies: list[float] = []
    counting = False
    stop = False

    async def client(session: aiohttp.ClientSession, k: int) -> None:
        nonlocal done
        while not stop:
            mine: list[float] = []
            n = await cycle(session, url, k, mine)
            if counting:
                done += n
                latencies.extend(mine)

    connector = aiohttp.TCPConnector(limit=clients + 8)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.create_task(client(session, k)) for k in range(clients)]
        await asyncio.sleep(warmup_s)
        counting, started, cpu_started, own_started = True, time.perf_counter(), cluster.cpu_s(), time.process_time()
        await asyncio.sleep(duration_s)
        counting, elapsed, cpu_s = False, time.perf_counter() - started, cluster.cpu_s() - cpu_started
        own_s = time.process_time() - own_started
        stop = True
        await asyncio.gather(*tasks)
    return {
        "windows_per_s": done / elapsed,
        "p50_ms": percentile(latencies, 0.5) * 1000,
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "requests": len(latencies),
        "server_cpu_ms_per_window": cpu_s * 1000 / max(done, 1),
        "client_cpu_ms_per_window": own_s * 1000 / max(done, 1),
    }


# -- main -----------------------------------------------------------------------------------------------------------


def ensure_etcd() -> bool:
    if shutil.which("etcd"):
        return True
    print("etcd missing: installing Debian etcd-server with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "etcd-server"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("etcd") is not None


async def bench_coordinator(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    cluster = coordinator_cluster(root, args.log_level)
    try:
        async with aiohttp.ClientSession() as session:
            leader = await coordinator_leader(session, cluster)
            windows = int(args.duration * 2 * 5000) + 20_000
            for k in range(0, windows, JOB_WINDOWS):  # jobs of 20k windows: each is one cheap Raft entry
                status, body = await get_json(
                    session,
                    "POST",
                    leader + "/v1/jobs",
                    {"series": f"ohlcv:bench:S{k}/USDT:1m", "start": 0, "end": JOB_WINDOWS * 60_000},
                    timeout_s=60,
                )
                assert status == 201, body
            job_id = body["job"]["job_id"]
            term_before = await terms(session, cluster)
        load: dict[str, Any] = {}
        if args.only != "failover":
            load = await run_load(leader, coordinator_cycle(args.max_windows), args.clients, args.duration, cluster)
            if args.batch_claims > 1:
                load["batched"] = await run_load(
                    leader, coordinator_cycle(args.batch_claims), args.clients, args.duration, cluster
                )
        kills = []
        async with aiohttp.ClientSession() as session:
            await caught_up(session, cluster)
            load["elections_under_load"] = await terms(session, cluster) - term_before
            if args.only != "failover":
                load["reads"] = await read_cost(session, cluster, job_id, args.read_clients, args.read_duration)
            terms_before_kills = await terms(session, cluster)
            for _ in range(args.kills):
                kills.append(await failover_once(cluster, session))
            terms_after_kills = await terms(session, cluster)
        load["failover_s"] = [seconds for seconds, _ in kills]
        load["failover_terms"] = [elections for _, elections in kills]
        # Terms started outside the kill-to-first-claim windows (restarts, catch-up): spurious elections.
        load["elections_between_kills"] = terms_after_kills - terms_before_kills - sum(load["failover_terms"])
        return load
    finally:
        cluster.stop()


async def bench_etcd(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    cluster = etcd_cluster(root)
    try:
        async with aiohttp.ClientSession() as session:
            leader = await etcd_leader(session, cluster)
        return await run_load(leader, etcd_cycle, args.clients, args.duration, cluster)
    finally:
        cluster.stop()


async def main_async(args: argparse.Namespace) -> None:
    if args.fsync is not None:
        CONFIG["coordinator"]["fsync"] = args.fsync  # type: ignore[index]
    results: dict[str, Any] = {
        "fsync": args.fsync,
        "clients": args.clients,
        "duration_s": args.duration,
        "max_windows": args.max_windows,
        "cpus": os.cpu_count(),
        "load_avg_1m_at_start": os.getloadavg()[0],
    }
    with tempfile.TemporaryDirectory(prefix="bench-coord-") as tmp:
        ours = await bench_coordinator(args, Path(tmp))
    results["coordinator"] = ours
    if args.only == "failover":
        report_failover(results, ours)
        emit("coordinator", results)
        return
    rows: list[list[Any]] = [
        [
            f"coordinator (pysyncobj), claim {args.max_windows}",
            ours["windows_per_s"],
            ours["p50_ms"],
            ours["p99_ms"],
            ours["server_cpu_ms_per_window"],
            "-",
        ]
    ]
    if "batched" in ours:
        b = ours["batched"]
        rows.append(
            [
                f"coordinator (pysyncobj), claim {args.batch_claims}",
                b["windows_per_s"],
                b["p50_ms"],
                b["p99_ms"],
                b["server_cpu_ms_per_window"],
                "-",
            ]
        )
    if not args.no_etcd and ensure_etcd():
        for name, parent in (("etcd 3.4 (disk, fsync)", None), ("etcd 3.4 (tmpfs)", "/dev/shm")):
            with tempfile.TemporaryDirectory(prefix="bench-etcd-", dir=parent) as tmp:
                theirs = await bench_etcd(args, Path(tmp))
            ratio = ours["windows_per_s"] / theirs["windows_per_s"]
            results["etcd_tmpfs" if parent else "etcd_disk"] = {**theirs, "ratio": ratio}
            rows.append(
                [
                    name,
                    theirs["windows_per_s"],
                    theirs["p50_ms"],
                    theirs["p99_ms"],
                    theirs["server_cpu_ms_per_window"],
                    f"{ratio:.2f}x",
                ]
            )
    best = max(ours["windows_per_s"], ours.get("batched", {}).get("windows_per_s", 0.0))
    results["targets_met"] = {"windows_per_s>=1000": best >= 1000}
    print(
        f"\n{args.clients} clients, claim {args.max_windows} + complete per window, {args.duration:.0f} s; "
        f"{os.cpu_count()} CPUs, 1-minute load average at start {results['load_avg_1m_at_start']:.1f}\n"
    )
    print(table(["system", "windows/s", "p50 ms", "p99 ms", "server CPU ms/window", "coordinator / this"], rows))
    report_failover(results, ours)
    print(f"elections during the throughput runs: {ours['elections_under_load']}")
    results["targets_met"]["no_elections_under_load"] = ours["elections_under_load"] == 0
    print(f"\nread path, GET /v1/jobs/{{id}}, {args.read_clients} concurrent readers:\n")
    headers = ["node", "consistency", "sequential p50 ms", "concurrent reads/s", "concurrent p50 ms"]
    keys = ["node", "consistency", "sequential_p50_ms", "concurrent_reads_per_s", "concurrent_p50_ms"]
    print(table(headers, [[row[k] for k in keys] for row in ours["reads"]]))
    emit("coordinator", results)


def report_failover(results: dict[str, Any], ours: dict[str, Any]) -> None:
    """Add the failover median, max and targets to ``results`` and print them."""
    median_failover = statistics.median(ours["failover_s"]) if ours["failover_s"] else float("nan")
    max_failover = max(ours["failover_s"], default=float("nan"))
    results["failover_median_s"] = median_failover
    results["failover_max_s"] = max_failover
    results["load_avg_1m_at_end"] = os.getloadavg()[0]
    targets = results.setdefault("targets_met", {})
    targets["failover_median<=0.6s"] = median_failover <= 0.6
    targets["failover_max<=1.0s"] = max_failover <= 1.0
    kills = ", ".join(f"{s:.2f}" for s in ours["failover_s"])
    print(
        f"\nfailover over {len(ours['failover_s'])} kills (kill -9 leader -> first acknowledged claim): median "
        f"{median_failover:.2f} s, max {max_failover:.2f} s  [{kills}]; terms per election "
        f"{ours['failover_terms']}; elections between kills {ours['elections_between_kills']}; "
        f"1-minute load average {results['load_avg_1m_at_start']:.1f} at start, "
        f"{results['load_avg_1m_at_end']:.1f} at end"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=float, default=8.0, help="measured seconds per system")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--kills", type=int, default=20, help="leader kills for the failover median and max")
    parser.add_argument("--read-clients", type=int, default=32, help="concurrent readers of the read-path cost")
    parser.add_argument("--read-duration", type=float, default=3.0, help="measured seconds per read-path row")
    parser.add_argument("--max-windows", type=int, default=1, help="windows per claim (the etcd comparison)")
    parser.add_argument(
        "--batch-claims",
        type=int,
        default=4,
        help="also measure claims of this many windows (a worker's default concurrency); 1 = skip",
    )
    parser.add_argument("--log-level", default="INFO", help="coordinator log level")
    parser.add_argument("--no-etcd", action="store_true", help="skip the etcd baseline")
    parser.add_argument(
        "--fsync", choices=("always", "batch", "never"), default=None, help="coordinator.fsync of our cluster"
    )
    parser.add_argument(
        "--only",
        choices=["all", "failover"],
        default="all",
        help="failover: only the --kills leader kills (no throughput runs, read path or etcd)",
    )
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
