"""Coordinator cost curves as the lease table grows from 10,000 to 1,000,000 windows, each beside a same-run baseline.

One 3-node ``coordinator serve`` cluster (bench_coordinator.py's helpers) grows its lease table through
``POST /v1/jobs`` in jobs of 20,000 one-bar windows (one Raft entry each). At every size, in this order:

- submit: commit time of each 20,000-window job submitted to reach the size (median), and elections meanwhile.
- memory: VmRSS of each node (/proc/PID/status) minus the same node's RSS before any job, per window.
- throughput: 64 clients loop "claim 1 window, complete it" on the leader (bench_coordinator's load), median of
  ``--runs`` runs of ``--duration`` s: windows leased-and-completed per second and p99 request latency; the ratio
  is against the smallest size of the same run.
- compaction: pysyncobj compacts its log into a full dump written by a forked child once the log holds
  ``coordinator.log_compaction_min_entries`` entries (default 50,000) or every 300 s. To see it at every size,
  all three nodes are killed (-9) and restarted with the minimum, 100, so they compact back to back; a light
  load (16 clients) runs until every node has written a dump during it (``--compaction-max-s`` at most).
  Reported: how long a dump takes (the lifetime of ``raft.dump.tmp``), the longest request and the longest gap
  between two completions the clients saw, and term increments (elections). Baseline: the same light load just
  before, with the default setting.
  The restarts are timed too (kill -9 of all nodes -> first claim acknowledged), first replaying the journal,
  then loading the dump; then the cluster runs on with the default setting.
- failover: kill -9 of the leader -> first claim acknowledged by a survivor (bench_coordinator's
  ``failover_once``), median of ``--kills`` (3 at 1,000,000 windows, where each restarted node reloads the table).
- full GC pauses: a ``sitecustomize`` put on the nodes' PYTHONPATH logs every full (generation 2) collection of
  CPython's cyclic GC longer than 20 ms; each stops the whole node, Raft heartbeats included. The longest pause
  of each phase is shown next to its elections. Nothing else in the nodes changes.

A last table submits single jobs of 10,000 ... 200,000 windows to a fresh cluster: a job is applied in one Raft
entry, so its commit time and the elections it causes show the largest job one entry can carry.

At 10,000 windows the load completes most of the table, so jobs of ``TOPUP_WINDOWS`` top it up whenever fewer
than ``TOPUP_BELOW`` windows are pending: sizes are the windows in the table when each point starts.

Run: ``.venv/bin/python -m bench.bench_coordinator_scale [--sizes 10000 100000 1000000] [--runs 5]``.
Prints markdown tables and a ``RESULT {json}`` line; about 6-7 minutes on 2 cores. Small first try:
``--sizes 5000 20000 --runs 2 --kills 1 --job-sizes 10000 --compaction-max-s 15`` (under a minute).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import copy
import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._cluster_probes import CompactionWatch, GcProbe, node_rss
from bench._common import emit, table
from bench._failover import coordinator_leader, failover_once, get_json
from bench.bench_coordinator import (
    CONFIG,
    Cluster,
    coordinator_cluster,
    coordinator_cycle,
    percentile,
    run_load,
)

JOB_WINDOWS = 20_000
TOPUP_WINDOWS = 5_000
TOPUP_BELOW = 4_000
COMPACT_EVERY_MIN = 100  # the smallest coordinator.log_compaction_min_entries the config accepts
LIGHT_CLIENTS = 16
MINUTE_MS = 60_000


def write_config(root: Path, compaction_entries: int | None) -> None:
    """Rewrite the cluster's config file; nodes read it when they (re)start."""
    config: dict[str, Any] = copy.deepcopy(CONFIG)
    if compaction_entries is not None:
        config["coordinator"]["log_compaction_min_entries"] = compaction_entries
    (root / "config.yaml").write_text(yaml.safe_dump(config))


# -- cluster helpers --------------------------------------------------------------------------------------------


async def max_term(session: aiohttp.ClientSession, cluster: Cluster) -> int:
    terms = [0]
    for url in cluster.urls:
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
            terms.append(int((await get_json(session, "GET", url + "/v1/cluster"))[1]["term"]))
    return max(terms)


async def windows_by_state(session: aiohttp.ClientSession, url: str) -> dict[str, int]:
    _, body = await get_json(session, "GET", url + "/v1/jobs", timeout_s=30)
    totals = {"pending": 0, "leased": 0, "done": 0, "failed": 0}
    for job in body["jobs"]:
        for state, count in job["windows"].items():
            totals[state] += count
    return totals


class Grower:
    """Submits jobs of distinct series (so every window is new); follows the leader across elections."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.windows = 0
        self.jobs = 0

    async def submit(self, session: aiohttp.ClientSession, windows: int) -> float:
        """Seconds until the job's 201 (retries after a leader change count in)."""
        body = {"series": f"ohlcv:bench:J{self.jobs}/USDT:1m", "start": 0, "end": windows * MINUTE_MS}
        started = time.perf_counter()
        while True:
            leader = await coordinator_leader(session, self.cluster, timeout_s=120)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                status, answer = await get_json(session, "POST", leader + "/v1/jobs", body, timeout_s=120)
                if status in (200, 201):
                    break
                if status not in (421, 503):
                    raise RuntimeError(f"POST /v1/jobs answered {status}: {answer}")
        self.jobs += 1
        self.windows += windows
        return time.perf_counter() - started

    async def grow_to(self, session: aiohttp.ClientSession, size: int) -> list[float]:
        samples = []
        while self.windows < size:
            samples.append(await self.submit(session, min(JOB_WINDOWS, size - self.windows)))
        return samples

    async def top_up(self, session: aiohttp.ClientSession) -> None:
        leader = await coordinator_leader(session, self.cluster)
        if (await windows_by_state(session, leader))["pending"] < TOPUP_BELOW:
            await self.submit(session, TOPUP_WINDOWS)


async def first_claim_s(session: aiohttp.ClientSession, cluster: Cluster, since: float) -> float:
    """Seconds from ``since`` until any node acknowledges a claim with a lease."""
    k = 0
    while True:
        url = cluster.urls[k % len(cluster.urls)]
        k += 1
        with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
            status, body = await get_json(
                session, "POST", url + "/v1/windows/claim", {"worker_id": "restart-probe"}, timeout_s=1.0
            )
            if status == 200 and body["leases"]:
                return time.perf_counter() - since
        await asyncio.sleep(0.02)


async def job_counts(session: aiohttp.ClientSession, url: str) -> dict[str, Any] | None:
    """Every job of one node (a local read) with its window counts, or None while the node does not answer."""
    with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError):
        status, body = await get_json(session, "GET", url + "/v1/jobs", None, timeout_s=2.0)
        if status == 200:
            return {job["job_id"]: job["windows"] for job in body["jobs"]}
    return None


async def served_everywhere_s(
    session: aiohttp.ClientSession, cluster: Cluster, expected: dict[str, Any], since: float
) -> float:
    """Seconds from ``since`` until every node serves every job with the counts it had before the kill."""
    while True:
        answers = await asyncio.gather(*(job_counts(session, url) for url in cluster.urls))
        if all(answer == expected for answer in answers):
            return time.perf_counter() - since
        await asyncio.sleep(0.02)


#: Restart figures beside each "first claim" time: until every node served every job with its counts.
SERVED_S: dict[str, float] = {}


async def restart_all(cluster: Cluster, root: Path, compaction_entries: int | None, label: str = "") -> float:
    """kill -9 every node, restart all with the given compaction setting; seconds until a claim is acknowledged.
    Before the claim, the time until every node serves every job with its pre-kill counts goes to SERVED_S."""
    async with aiohttp.ClientSession() as session:
        leader = await coordinator_leader(session, cluster, timeout_s=300)
        expected = await job_counts(session, leader)
    for i in range(len(cluster.procs)):
        cluster.kill(i)
    write_config(root, compaction_entries)
    started = time.perf_counter()
    for i in range(len(cluster.procs)):
        cluster.start(i)
    async with aiohttp.ClientSession() as session:
        if expected is not None and label:
            SERVED_S[label] = await asyncio.wait_for(served_everywhere_s(session, cluster, expected, started), 300)
        took = await asyncio.wait_for(first_claim_s(session, cluster, started), 300)
        await coordinator_leader(session, cluster, timeout_s=300)
    return took


# -- light load with stall accounting ---------------------------------------------------------------------------


async def light_load(cluster: Cluster, min_s: float, until: Any = None, max_s: float = 90.0) -> dict[str, Any]:
    """LIGHT_CLIENTS clients claim + complete through the leader (re-found after errors) for at least ``min_s``
    and until ``until()`` is true; the longest request and the longest gap between two completed windows."""
    latencies: list[float] = []
    finished: list[float] = []
    errors = 0
    stop = False
    cycle = coordinator_cycle(1)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        url = await coordinator_leader(session, cluster)
        started, wall_started = time.perf_counter(), time.time()

        async def client(k: int) -> None:
            nonlocal errors, url
            while not stop:
                mine: list[float] = []
                try:
                    if await cycle(session, url, k, mine):
                        finished.append(time.perf_counter())
                except (aiohttp.ClientError, TimeoutError, RuntimeError, ValueError, KeyError):
                    errors += 1
                    await asyncio.sleep(0.05)
                    with contextlib.suppress(RuntimeError):
                        url = await coordinator_leader(session, cluster, timeout_s=10)
                latencies.extend(mine)

        tasks = [asyncio.create_task(client(k)) for k in range(LIGHT_CLIENTS)]
        while True:
            await asyncio.sleep(0.1)
            elapsed = time.perf_counter() - started
            if elapsed >= max_s or (elapsed >= min_s and (until is None or until())):
                break
        stop = True
        await asyncio.gather(*tasks)
        ended = time.perf_counter()
    marks = [started, *sorted(finished), ended]
    return {
        "started": started,
        "ended": ended,
        "wall": (wall_started, time.time()),
        "seconds": ended - started,
        "windows_per_s": len(finished) / (ended - started),
        "p99_ms": percentile(latencies, 0.99) * 1000,
        "max_request_ms": max(latencies, default=float("nan")) * 1000,
        "max_gap_ms": max(b - a for a, b in itertools.pairwise(marks)) * 1000,
        "errors": errors,
    }


# -- one size ---------------------------------------------------------------------------------------------------


async def throughput(args: argparse.Namespace, cluster: Cluster, grower: Grower, gc: GcProbe) -> dict[str, Any]:
    runs = []
    wall_started = time.time()
    async with aiohttp.ClientSession() as session:
        term_before = await max_term(session, cluster)
    for _ in range(args.runs):
        async with aiohttp.ClientSession() as session:
            await grower.top_up(session)
            leader = await coordinator_leader(session, cluster)
        runs.append(await run_load(leader, coordinator_cycle(1), args.clients, args.duration, cluster, warmup_s=0.5))
    async with aiohttp.ClientSession() as session:
        term_after = await max_term(session, cluster)
    return {
        "windows_per_s": statistics.median(r["windows_per_s"] for r in runs),
        "p99_ms": statistics.median(r["p99_ms"] for r in runs),
        "p50_ms": statistics.median(r["p50_ms"] for r in runs),
        "runs_windows_per_s": [r["windows_per_s"] for r in runs],
        "elections": term_after - term_before,
        "gc_ms": gc.longest_ms(wall_started, time.time()),
    }


async def compaction(
    args: argparse.Namespace, cluster: Cluster, root: Path, grower: Grower, gc: GcProbe
) -> dict[str, Any]:
    """Light load without, then with back-to-back dumps; the restarts in between are timed."""
    async with aiohttp.ClientSession() as session:
        await grower.top_up(session)
    watch = CompactionWatch(root, len(cluster.procs))
    watch.start()
    SERVED_S.clear()
    try:
        baseline = await light_load(cluster, args.light_s)
        baseline["dumps"] = len(watch.between(baseline["started"], baseline["ended"]))
        baseline["gc_ms"] = gc.longest_ms(*baseline["wall"])
        out: dict[str, Any] = {"baseline": baseline}
        async with aiohttp.ClientSession() as session:  # every phase needs pending windows: the load may finish them
            await grower.top_up(session)
        out["restart_journal_s"] = await restart_all(cluster, root, COMPACT_EVERY_MIN, "journal")
        async with aiohttp.ClientSession() as session:
            await grower.top_up(session)
        gc.remember(cluster)
        async with aiohttp.ClientSession() as session:
            term_before = await max_term(session, cluster)
        started = time.perf_counter()

        def every_node_dumped() -> bool:
            return {d[0] for d in watch.between(started, time.perf_counter()) if d[1] >= started} == {0, 1, 2}

        loaded = await light_load(cluster, args.light_s, until=every_node_dumped, max_s=args.compaction_max_s)
        async with aiohttp.ClientSession() as session:
            loaded["elections"] = await max_term(session, cluster) - term_before
        dumps = [d[2] - d[1] for d in watch.between(loaded["started"], loaded["ended"])]
        loaded["dumps"] = len(dumps)
        loaded["dump_s_median"] = statistics.median(dumps) if dumps else float("nan")
        loaded["dump_s_max"] = max(dumps, default=float("nan"))
        loaded["unfinished_dump_s"] = watch.running_s()
        loaded["gc_ms"] = gc.longest_ms(*loaded["wall"])
        out["compacting"] = loaded
        async with aiohttp.ClientSession() as session:
            await grower.top_up(session)
        out["restart_dump_s"] = await restart_all(cluster, root, None, "dump")
        out["served_s"] = dict(SERVED_S)
        gc.remember(cluster)
        return out
    finally:
        watch.stop()


async def measure_size(
    args: argparse.Namespace, cluster: Cluster, root: Path, grower: Grower, size: int, rss_empty: list[int], gc: GcProbe
) -> dict[str, Any]:
    wall_started = time.time()
    async with aiohttp.ClientSession() as session:
        term_before = await max_term(session, cluster)
        submits = await grower.grow_to(session, size)
        growth_elections = await max_term(session, cluster) - term_before
        await coordinator_leader(session, cluster)
    rss = node_rss(cluster)
    point: dict[str, Any] = {
        "windows": grower.windows,
        "submit_s_median": statistics.median(submits) if submits else float("nan"),
        "growth_elections": growth_elections,
        "growth_gc_ms": gc.longest_ms(wall_started, time.time()),
        "rss_bytes": rss,
        "rss_bytes_per_window": statistics.median(
            (r - e) / grower.windows for r, e in zip(rss, rss_empty, strict=True)
        ),
    }
    print(f"  {size:,} windows: grown, RSS {[round(r / 2**20) for r in rss]} MiB", flush=True)
    point["throughput"] = await throughput(args, cluster, grower, gc)
    print(f"  {size:,} windows: {point['throughput']['windows_per_s']:.0f} windows/s", flush=True)
    point["compaction"] = await compaction(args, cluster, root, grower, gc)
    print(f"  {size:,} windows: compaction {point['compaction']['compacting']['dump_s_median']:.2f} s", flush=True)
    kills = min(args.kills, 3) if size >= 1_000_000 else args.kills
    point["failover_s"] = []
    async with aiohttp.ClientSession() as session:
        for _ in range(kills):
            await grower.top_up(session)
            point["failover_s"].append((await failover_once(cluster, session))[0])
            gc.remember(cluster)
    # after the restarts, the next size's marginal memory starts from here (the table as the next growth sees it)
    point["windows_end"] = grower.windows
    point["rss_bytes_end"] = node_rss(cluster)
    return point


async def job_size_probe(args: argparse.Namespace, root: Path, gc: GcProbe) -> list[dict[str, Any]]:
    """Single jobs of growing size on a fresh cluster: commit time and elections per job."""
    write_config(root, None)
    cluster = coordinator_cluster(root, args.log_level)
    gc.remember(cluster)
    grower = Grower(cluster)
    rows = []
    try:
        async with aiohttp.ClientSession() as session:
            await coordinator_leader(session, cluster)
            for windows in args.job_sizes:
                before, wall_started = await max_term(session, cluster), time.time()
                took = await grower.submit(session, windows)
                await coordinator_leader(session, cluster, timeout_s=60)
                elections = await max_term(session, cluster) - before
                gc_ms = gc.longest_ms(wall_started, time.time())
                rows.append({"windows": windows, "commit_s": took, "elections": elections, "gc_ms": gc_ms})
                print(f"  one job of {windows:,} windows: {took:.2f} s, {rows[-1]['elections']} elections", flush=True)
    finally:
        cluster.stop()
    return rows


# -- report -----------------------------------------------------------------------------------------------------


ELECTION_NOTE = "(election timeout: 400-700 ms, coordinator.raft_min_timeout_ms / raft_max_timeout_ms)"


def report_throughput(args: argparse.Namespace, points: list[dict[str, Any]]) -> None:
    base = points[0]["throughput"]
    print(f"\n## Lease table size: throughput and latency ({args.clients} clients, claim 1 + complete; median of "
          f"{args.runs} runs of {args.duration:g} s; ratios against the smallest table, same run)\n")  # fmt: skip
    rows = []
    for p in points:
        t = p["throughput"]
        rows.append([f"{p['size']:,}", t["windows_per_s"], f"{t['windows_per_s'] / base['windows_per_s']:.2f}x",
                     t["p50_ms"], t["p99_ms"], f"{t['p99_ms'] / base['p99_ms']:.2f}x", t["gc_ms"],
                     t["elections"]])  # fmt: skip
    heads = ["windows", "windows/s", "vs smallest", "p50 ms", "p99 ms", "p99 vs smallest",
             "longest full GC in a node, ms", "elections"]  # fmt: skip
    print(table(heads, rows))
    print(f"\n{ELECTION_NOTE}")


def report_memory(results: dict[str, Any], points: list[dict[str, Any]]) -> None:
    base = points[0]
    rss_empty = statistics.median(results["rss_empty_bytes"])
    print(f"\n## Memory and job submission (RSS of an empty node, same run: {rss_empty / 2**20:.0f} MiB)\n")
    rows = []
    for before, p in zip([None, *points], points, strict=False):
        marginal = "-"
        if before is not None:
            grown = statistics.median(p["rss_bytes"]) - statistics.median(before["rss_bytes_end"])
            marginal = f"{grown / (p['windows'] - before['windows_end']):,.0f}"
        rows.append([f"{p['size']:,}", " / ".join(f"{r / 2**20:.0f}" for r in p["rss_bytes"]),
                     p["rss_bytes_per_window"], marginal, p["submit_s_median"] * 1000,
                     f"{p['submit_s_median'] / base['submit_s_median']:.2f}x", p["growth_gc_ms"],
                     p["growth_elections"]])  # fmt: skip
    heads = ["windows", "RSS per node (MiB)", "bytes per window", "marginal bytes per window",
             "job commit ms (median)", "vs smallest", "longest full GC, ms", "elections while growing"]  # fmt: skip
    print(table(heads, rows))
    print(f"\njobs of {JOB_WINDOWS:,} windows (the first may be smaller); {ELECTION_NOTE}")


def report_compaction(args: argparse.Namespace, points: list[dict[str, Any]]) -> None:
    print(f"\n## Log compaction: dumps back to back (log_compaction_min_entries={COMPACT_EVERY_MIN}), light load of "
          f"{LIGHT_CLIENTS} clients until every node finished a dump (at most {args.compaction_max_s:g} s); "
          "baseline: the same load just before, no dump\n")  # fmt: skip
    rows = []
    for p in points:
        b, d = p["compaction"]["baseline"], p["compaction"]["compacting"]
        if d["dumps"]:
            took = f"{d['dump_s_median']:.1f} / {d['dump_s_max']:.1f}"
        else:
            took = f"none finished; one ran {d['unfinished_dump_s']:.0f} s"
        rows.append([f"{p['size']:,}", d["dumps"], took, f"{d['max_request_ms']:,.0f} ({b['max_request_ms']:,.0f})",
                     f"{d['max_gap_ms']:,.0f} ({b['max_gap_ms']:,.0f})",
                     f"{d['windows_per_s']:,.0f} ({b['windows_per_s']:,.0f})",
                     f"{d['gc_ms']:,.0f} ({b['gc_ms']:,.0f})", d["elections"]])  # fmt: skip
    heads = ["windows", "dumps finished", "dump s, median / max", "longest request ms (baseline)",
             "longest gap between completions ms (baseline)", "windows/s (baseline)",
             "longest full GC in a node, ms (baseline)", "elections"]  # fmt: skip
    print(table(heads, rows))
    print(f"\n{ELECTION_NOTE}")


def report_recovery(points: list[dict[str, Any]]) -> None:
    print("\n## Recovery: kill -9 of all 3 nodes -> first claim acknowledged; kill -9 of the leader -> failover\n")
    base = points[0]
    first = base["compaction"]["restart_journal_s"], statistics.median(base["failover_s"])
    rows = []
    for p in points:
        kills, c = p["failover_s"], p["compaction"]
        rows.append([f"{p['size']:,}", c["restart_journal_s"], f"{c['restart_journal_s'] / first[0]:.2f}x",
                     c["restart_dump_s"], statistics.median(kills), f"{statistics.median(kills) / first[1]:.2f}x",
                     max(kills), len(kills)])  # fmt: skip
    heads = ["windows", "restart, replaying the journal (s)", "vs smallest", "restart, from the last dump (s)",
             "failover median (s)", "vs smallest", "failover max (s)", "kills"]  # fmt: skip
    print(table(heads, rows))
    print("\nkill -9 of all 3 -> every node serves GET /v1/jobs with every job's pre-kill counts (s):")
    for p in points:
        print(f"  {p['size']:,} windows: {p['compaction'].get('served_s')}")
    print("\nrestarts are single runs (each kills the whole cluster); a dump unfinished at the kill is lost, so")
    print("'from the last dump' replays the journal since the last dump that did finish.")


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    points = results["points"]
    report_throughput(args, points)
    report_memory(results, points)
    report_compaction(args, points)
    report_recovery(points)
    if results.get("job_sizes"):
        print("\n## One job = one Raft entry: commit time, full GC pauses and elections by job size (fresh cluster)\n")
        rows = [[f"{r['windows']:,}", r["commit_s"], r["gc_ms"], r["elections"]] for r in results["job_sizes"]]
        print(table(["windows in the job", "POST /v1/jobs -> 201 (s)", "longest full GC, ms", "elections"], rows))
        print(f"\nsingle runs, jobs in this order on one cluster; {ELECTION_NOTE}")
    print(f"\n{os.cpu_count()} CPUs; 1-minute load average at start {results['load_avg_1m_at_start']:.1f}")
    emit("coordinator_scale", results)


async def main_async(args: argparse.Namespace) -> None:
    results: dict[str, Any] = {"load_avg_1m_at_start": os.getloadavg()[0], "cpus": os.cpu_count(), "points": []}
    with tempfile.TemporaryDirectory(prefix="bench-coord-scale-") as tmp:
        root, probe_root = Path(tmp) / "main", Path(tmp) / "jobs"
        root.mkdir()
        probe_root.mkdir()
        gc = GcProbe(Path(tmp), [root, probe_root])
        write_config(root, None)
        cluster = coordinator_cluster(root, args.log_level)
        gc.remember(cluster)
        try:
            async with aiohttp.ClientSession() as session:
                await coordinator_leader(session, cluster)
            results["rss_empty_bytes"] = rss_empty = node_rss(cluster)
            grower = Grower(cluster)
            for size in args.sizes:
                point = await measure_size(args, cluster, root, grower, size, rss_empty, gc)
                results["points"].append({"size": size, **point})
        finally:
            cluster.stop()
        if args.job_sizes:
            results["job_sizes"] = await job_size_probe(args, probe_root, gc)
    report(args, results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000], help="table sizes")
    parser.add_argument("--runs", type=int, default=5, help="throughput runs per size (median)")
    parser.add_argument("--duration", type=float, default=1.5, help="measured seconds per throughput run")
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--light-s", type=float, default=3.0, help="shortest light-load phase (compaction)")
    parser.add_argument(
        "--compaction-max-s", type=float, default=60.0, help="longest light-load phase waiting for dumps"
    )
    parser.add_argument("--kills", type=int, default=5, help="leader kills per size (3 at 1,000,000 windows)")
    parser.add_argument(
        "--job-sizes", type=int, nargs="*", default=[10_000, 50_000, 100_000, 200_000], help="single-job probe"
    )
    parser.add_argument("--log-level", default="INFO", help="coordinator log level")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
