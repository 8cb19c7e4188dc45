"""Node RSS before, with and after retiring 10^6 windows: does memory return when finished jobs retire?

One 3-node cluster with ``coordinator.job_retention_s: 1``. RSS of each node fresh, after ``--windows`` windows in
jobs of 20,000 (``POST /v1/jobs``), then after cancelling every job (a cancelled job retires like a finished one,
and cancelling needs no worker) once ``backfill_windows`` is 0 and ``backfill_jobs_retired`` counts every job on
every node. Reported: RSS per node at each step and the ratio to the fresh node (the acceptance of issue 16: within
1.2x).

Run: ``.venv/bin/python -m bench.bench_coordinator_retire [--windows 1000000]`` (a few minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import yaml

from bench._cluster_probes import node_rss
from bench._common import emit, table
from bench._failover import coordinator_leader, get_json
from bench.bench_coordinator import CONFIG, coordinator_cluster

JOB_WINDOWS = 20_000


async def retired_everywhere(session: aiohttp.ClientSession, urls: list[str], jobs: int) -> bool:
    for url in urls:
        async with session.get(url + "/metrics") as answer:
            text = await answer.text()
        windows = sum(float(v) for v in re.findall(r"^backfill_windows\{[^}]*\} (\S+)$", text, re.M))
        retired = re.search(r"^backfill_jobs_retired (\S+)$", text, re.M)
        if windows != 0 or retired is None or float(retired.group(1)) != jobs:
            return False
    return True


async def wait_retired(session: aiohttp.ClientSession, urls: list[str], jobs: int, timeout_s: float = 600) -> None:
    """Poll every node's metrics until the windows are gone and every job counts as retired."""
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        if await retired_everywhere(session, urls, jobs):
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"the jobs did not retire on every node within {timeout_s} s")


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="bench-retire-") as tmp:
        root = Path(tmp)
        config: dict[str, Any] = {**CONFIG, "coordinator": {**CONFIG["coordinator"], "job_retention_s": 1}}
        cluster = coordinator_cluster(root, "WARNING")
        (root / "config.yaml").write_text(yaml.safe_dump(config))
        for i in range(3):  # restart with the retention setting (the helper writes its own config first)
            cluster.kill(i)
            cluster.start(i)
        try:
            async with aiohttp.ClientSession() as session:
                leader = await coordinator_leader(session, cluster, timeout_s=120)
                await asyncio.sleep(2.0)  # let the fresh nodes settle before the first reading
                fresh = node_rss(cluster)
                job_ids = []
                for k in range(args.windows // JOB_WINDOWS):
                    body = {"series": f"ohlcv:bench:R{k}/USDT:1m", "start": 0, "end": JOB_WINDOWS * 60_000}
                    status, answer = await get_json(session, "POST", leader + "/v1/jobs", body, timeout_s=120)
                    assert status == 201, answer
                    job_ids.append(answer["job"]["job_id"])
                full = node_rss(cluster)
                started = time.perf_counter()
                for job_id in job_ids:
                    status, answer = await get_json(session, "DELETE", f"{leader}/v1/jobs/{job_id}", timeout_s=60)
                    assert status == 200, answer
                await wait_retired(session, cluster.urls, len(job_ids))
                retire_s = time.perf_counter() - started
                await asyncio.sleep(2.0)
                after = node_rss(cluster)
        finally:
            cluster.stop()
    rows = [
        [name, *(round(r / 2**20) for r in rss), f"{max(r / f for r, f in zip(rss, fresh, strict=True)):.2f}x"]
        for name, rss in (("fresh", fresh), (f"{args.windows:,} windows", full), ("after retiring", after))
    ]
    print(table(["step", "node 0 MiB", "node 1 MiB", "node 2 MiB", "worst vs fresh"], rows))
    print(f"\ncancel of {len(job_ids)} jobs -> every node retired them: {retire_s:.1f} s")
    emit("coordinator_retire", {"fresh": fresh, "full": full, "after": after, "retire_s": retire_s})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=1_000_000)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
