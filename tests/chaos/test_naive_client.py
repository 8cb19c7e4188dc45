"""A coordinator a naive client can trust (issue 15): reads through followers are never stale, and a client that
never retries (QMTL's ``DistributedBackfillCoordinator``) sees no failed claim while the leader is killed.

The short version runs in ``make test``; ``SEAMLESS_CHAOS_LONG=1`` (``make chaos``) runs the issue's figures:
1,000 submit-then-read pairs and 10 leader kills.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.cluster import FAST_CONFIG, MIN, Cluster, make_cluster
from devkit.polling import http_json, wait_for

from .scenarios import LONG

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]

PAIRS = 1000 if LONG else 300
KILLS = 10 if LONG else 3
CLAIM_EVERY_S = 0.02
SLOWEST_CLAIM_S = 3.0


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A fresh 3-node cluster with a leader; killed (kill -9) at teardown."""
    (tmp_path / "cluster").mkdir()
    made = make_cluster(tmp_path / "cluster", 3, FAST_CONFIG)
    for i in range(3):
        made.start(i)
    try:
        made.wait_leader()
        yield made
    finally:
        made.kill_all()
        shutil.rmtree(made.root, ignore_errors=True)


async def once(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any, Any]:
    """One request, never retried: (status, JSON body, headers)."""
    async with session.request(method, url, json=body) as answer:
        return answer.status, await answer.json(content_type=None), answer.headers


@pytest.mark.timeout(600 if LONG else 240)
async def test_reads_through_followers_see_every_acknowledged_write(cluster: Cluster) -> None:
    """Each job submitted through a follower is read back at once through that follower and through the other one:
    every read answers 200 with the job's window counts (no 404, no older counts), marked linearizable; a claim
    acknowledged through a follower shows at once in the other follower's lease listing and job counts; with
    ``?consistency=stale`` the answer says so and carries the node's applied index."""
    leader = cluster.wait_leader()
    followers = [cluster.urls[i] for i in range(3) if i != leader]
    stale: list[str] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        for k in range(PAIRS):
            via, other = followers[k % 2], followers[(k + 1) % 2]
            # Rising priorities: a claim takes a window of the job just submitted.
            job = {"series": f"ohlcv:test:R{k}/USD:1m", "start": 0, "end": 30 * MIN, "priority": k}
            status, body, _ = await once(session, "POST", via + "/v1/jobs", job)
            assert status == 201, body
            job_id, windows = body["job"]["job_id"], body["job"]["windows"]
            for url in (via, other):
                status, read, headers = await once(session, "GET", f"{url}/v1/jobs/{job_id}")
                if status != 200 or read["job"]["windows"] != windows:
                    stale.append(f"pair {k} via {via} read at {url}: {status} {read}")
                assert headers["X-Consistency"] == "linearizable"
            if k % 10 == 0:  # a lease is a later write to the same job: its counts and the listing move at once
                status, claimed, _ = await once(
                    session, "POST", via + "/v1/windows/claim", {"worker_id": "w", "max_windows": 1}
                )
                assert status == 200 and claimed["leases"], claimed
                lease_id = claimed["leases"][0]["lease_id"]
                status, listing, _ = await once(session, "GET", other + "/v1/leases")
                if status != 200 or lease_id not in {item["lease_id"] for item in listing["leases"]}:
                    stale.append(f"pair {k}: lease {lease_id} missing at {other}: {status}")
                status, read, _ = await once(session, "GET", f"{other}/v1/jobs/{job_id}")
                if status != 200 or read["job"]["windows"]["leased"] < 1:
                    stale.append(f"pair {k}: job counts at {other} miss lease {lease_id}: {read}")
        status, body, headers = await once(session, "GET", f"{followers[0]}/v1/jobs/{job_id}?consistency=stale")
        assert status in (200, 404), body
        assert headers["X-Consistency"] == "stale"
        assert int(headers["X-Raft-Applied-Index"]) > PAIRS
        status, body, _ = await once(session, "GET", f"{followers[0]}/v1/leases?consistency=eventual")
        assert status == 400 and body["error"]["field"] == "consistency", body
    assert stale == [], f"{len(stale)} stale answers of {PAIRS * 2}: {stale[:5]}"


def wait_ready(url: str) -> None:
    """Until the node answers ``/readyz`` with 200 (it knows the leader and can serve)."""
    wait_for(lambda: http_json("GET", url + "/readyz")[0] == 200, 30, f"{url}/readyz")


class NaiveClients:
    """One QMTL-like client per node: claims a fresh key every 20 ms, never retries, counts what it saw.

    A claim counts only when its node stayed up for the whole request: the driver marks a node down before
    killing it and up again once it answers ``/readyz`` after its restart."""

    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.up = [True] * len(cluster.nodes)
        self.generation = [0] * len(cluster.nodes)
        self.results: list[tuple[int, float, int, Any]] = []  # (node, seconds, status, body)
        self.stop = False

    async def client(self, session: aiohttp.ClientSession, i: int) -> None:
        url = self.cluster.urls[i] + "/v1/leases/claim"
        seq = 0
        while not self.stop:
            if self.up[i]:
                seq += 1
                generation, started = self.generation[i], time.monotonic()
                body = {"key": f"n{i}:60:{seq}:60000:naive:", "lease_ms": 60_000}
                try:
                    status, answer, _ = await once(session, "POST", url, body)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, answer = 0, repr(exc)
                if self.up[i] and self.generation[i] == generation:
                    self.results.append((i, time.monotonic() - started, status, answer))
            await asyncio.sleep(CLAIM_EVERY_S)

    async def more(self, count: int, what: str, timeout_s: float = 30.0) -> None:
        """Wait until ``count`` more claims have been counted."""
        target = len(self.results) + count
        async with asyncio.timeout(timeout_s):
            while len(self.results) < target:
                await asyncio.sleep(CLAIM_EVERY_S)

    def kill(self, index: int) -> None:
        self.up[index] = False
        self.generation[index] += 1
        self.cluster.kill(index)


@pytest.mark.timeout(900 if LONG else 300)
async def test_a_client_that_never_retries_sees_no_failed_claim_across_leader_kills(cluster: Cluster) -> None:
    """A client per node claims a fresh QMTL key every 20 ms without retrying while the leader is killed (kill -9)
    and restarted over and over: every claim through a node that stayed up succeeds, the slowest within 3 s."""
    clients = NaiveClients(cluster)
    timeout = aiohttp.ClientTimeout(total=SLOWEST_CLAIM_S * 3)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        tasks = [asyncio.create_task(clients.client(session, i)) for i in range(3)]
        try:
            for _ in range(KILLS):
                leader = await asyncio.to_thread(cluster.wait_leader)
                await clients.more(30, "claims before the kill")
                clients.kill(leader)
                await clients.more(60, "claims after the kill")
                cluster.start(leader)
                await asyncio.to_thread(wait_ready, cluster.urls[leader])
                clients.up[leader] = True
        finally:
            clients.stop = True
            await asyncio.gather(*tasks)
    failed = [r for r in clients.results if r[2] != 200]
    slowest_s = max(seconds for _, seconds, _, _ in clients.results)
    print(
        f"\n{len(clients.results)} claims through nodes that stayed up, {KILLS} leader kills: {len(failed)} failed, "
        f"slowest {slowest_s:.2f} s"
    )
    assert len(clients.results) > KILLS * 90
    assert failed == [], f"{len(failed)} of {len(clients.results)} claims failed: {failed[:5]}\n{cluster.logs()}"
    assert slowest_s <= SLOWEST_CLAIM_S, f"slowest claim took {slowest_s:.2f} s"
