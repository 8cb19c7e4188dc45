"""Cluster probes of bench_coordinator.py: the leader, catch-up, terms, one failover, and the cost of reads.

Rules:
1. A kill is a single fault: before each kill every live node has applied the leader's commit index (a node
   restarted after the previous kill may still be loading the table; killing the leader then is a double fault,
   where no quorum of caught-up voters exists).
2. Failover time is from ``kill -9`` of the leader to the first claim acknowledged by a survivor and sent after the
   kill, with 8 clients claiming through every node. Each kill also reports how many terms it took (1 = one clean
   election; more = split or failed votes).
3. The read cost is measured with the same clients on the leader and on a follower, linearizable (default) and
   ``?consistency=stale``, sequential latency and concurrent rate.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any, Protocol

import aiohttp

__all__ = ["caught_up", "coordinator_leader", "failover_once", "get_json", "read_cost", "terms"]


class ClusterLike(Protocol):
    urls: list[str]
    procs: list[Any]

    def kill(self, i: int) -> None: ...

    def start(self, i: int) -> None: ...


def _alive(cluster: ClusterLike, i: int) -> bool:
    proc = cluster.procs[i]
    return proc is not None and proc.poll() is None


async def get_json(
    session: aiohttp.ClientSession, method: str, url: str, body: Any = None, timeout_s: float = 2.0
) -> tuple[int, Any]:
    async with session.request(method, url, json=body, timeout=aiohttp.ClientTimeout(total=timeout_s)) as r:
        return r.status, await r.json(content_type=None)


async def coordinator_leader(session: aiohttp.ClientSession, cluster: ClusterLike, timeout_s: float = 30) -> str:
    """The leader's URL once every live node agrees on it and has announced its HTTP address."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        seen = set()
        for i, url in enumerate(cluster.urls):
            if not _alive(cluster, i):
                continue
            try:
                _, view = await get_json(session, "GET", url + "/v1/cluster")
                seen.add(view["leader"])
                seen.update("?" for m in view["members"] if not m["http"])
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError):
                seen.add(None)
        if len(seen) == 1 and None not in seen and "?" not in seen:
            return str(seen.pop())
        await asyncio.sleep(0.1)
    raise RuntimeError("the coordinator cluster elected no leader in time; see the node logs")


async def caught_up(session: aiohttp.ClientSession, cluster: ClusterLike, timeout_s: float = 120) -> str:
    """Rule 1: the leader's URL once every live node has applied the commit index the leader had on entry."""
    leader = await coordinator_leader(session, cluster, timeout_s)
    _, view = await get_json(session, "GET", leader + "/v1/cluster")
    target = int(view["commit_index"])
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        applied = []
        for i, url in enumerate(cluster.urls):
            if _alive(cluster, i):
                try:
                    applied.append(int((await get_json(session, "GET", url + "/v1/cluster"))[1]["last_applied"]))
                except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
                    applied.append(-1)
        if min(applied) >= target:
            return leader
        await asyncio.sleep(0.1)
    raise RuntimeError(f"a node did not apply index {target} within {timeout_s} s; see the node logs")


async def terms(session: aiohttp.ClientSession, cluster: ClusterLike) -> int:
    """The highest Raft term any live node reports (elections started so far)."""
    best = 0
    for i, url in enumerate(cluster.urls):
        if _alive(cluster, i):
            try:
                best = max(best, int((await get_json(session, "GET", url + "/v1/cluster"))[1]["term"]))
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
                continue
    return best


async def failover_once(cluster: ClusterLike, session: aiohttp.ClientSession) -> tuple[float, int]:
    """Rule 2: (seconds from kill -9 of the leader to the first acknowledged claim, terms the election took)."""
    leader = await caught_up(session, cluster)
    index = cluster.urls.index(leader)
    term_before = await terms(session, cluster)
    killed_at: float | None = None
    first_ok: float | None = None

    async def prober(k: int) -> None:
        nonlocal first_ok
        i = k
        while first_ok is None:
            url = cluster.urls[i % 3]
            i += 1
            sent = time.monotonic()
            try:
                status, body = await get_json(
                    session, "POST", url + "/v1/windows/claim", {"worker_id": f"probe{k}"}, timeout_s=1.0
                )
            except (aiohttp.ClientError, TimeoutError, ValueError):
                await asyncio.sleep(0.005)
                continue
            if status == 200 and body["leases"] and killed_at is not None and sent > killed_at:
                first_ok = first_ok or time.monotonic()
            elif status != 200:
                await asyncio.sleep(0.005)

    tasks = [asyncio.create_task(prober(k)) for k in range(8)]
    await asyncio.sleep(0.5)
    killed_at = time.monotonic()
    cluster.kill(index)
    await asyncio.wait_for(asyncio.gather(*tasks), 30)
    assert first_ok is not None
    elections = await terms(session, cluster) - term_before
    cluster.start(index)
    await caught_up(session, cluster)
    return first_ok - killed_at, elections


async def _read_rate(url: str, clients: int, duration_s: float) -> tuple[float, float]:
    """(reads per second, p50 ms) of ``clients`` looping GET ``url`` for ``duration_s``."""
    latencies: list[float] = []
    stop = False

    async def client(session: aiohttp.ClientSession) -> None:
        while not stop:
            started = time.perf_counter()
            async with session.get(url) as r:
                await r.read()
                if r.status != 200:
                    raise RuntimeError(f"GET {url} answered {r.status}")
            latencies.append(time.perf_counter() - started)

    connector = aiohttp.TCPConnector(limit=clients + 4)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks = [asyncio.create_task(client(session)) for _ in range(clients)]
        await asyncio.sleep(duration_s)
        stop = True
        await asyncio.gather(*tasks)
    return len(latencies) / duration_s, statistics.median(latencies) * 1000


async def read_cost(
    session: aiohttp.ClientSession, cluster: ClusterLike, job_id: str, clients: int, duration_s: float
) -> list[dict[str, Any]]:
    """Rule 3: one row per (node role, consistency): sequential p50 ms, concurrent reads/s and p50 ms."""
    leader = await caught_up(session, cluster)
    follower = next(u for u in cluster.urls if u != leader)
    rows = []
    for role, base in (("leader", leader), ("follower", follower)):
        for mode in ("linearizable", "stale"):
            url = f"{base}/v1/jobs/{job_id}?consistency={mode}"
            one_rate, one_p50_ms = await _read_rate(url, 1, duration_s / 2)
            rate, p50_ms = await _read_rate(url, clients, duration_s)
            rows.append(
                {
                    "node": role,
                    "consistency": mode,
                    "sequential_p50_ms": one_p50_ms,
                    "sequential_reads_per_s": one_rate,
                    "concurrent_reads_per_s": rate,
                    "concurrent_p50_ms": p50_ms,
                }
            )
    return rows
