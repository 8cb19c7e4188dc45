"""Elections absorbed (issue 15): requests wait for a leader up to ``coordinator.leader_wait_ms`` instead of
answering 503, ``/readyz`` says when a node can serve, and the bound holds when no leader can appear."""

from __future__ import annotations

import asyncio
import copy
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.cluster import FAST_CONFIG, MIN, Cluster, make_cluster
from devkit.polling import http_json, wait_for

pytestmark = [pytest.mark.cluster]

#: Longer than any start-up of three processes on a loaded 2-core machine: a 503 here means a real failure.
START_WAIT_MS = 20_000
#: Short, so the lone node's bound is quick to observe.
LONE_WAIT_MS = 400


def with_leader_wait(ms: int) -> dict[str, Any]:
    config = copy.deepcopy(FAST_CONFIG)
    config["coordinator"]["leader_wait_ms"] = ms
    return config


@pytest.fixture
def unstarted(tmp_path: Path) -> Iterator[list[Cluster]]:
    """Clusters made by the test (started by it); killed at teardown."""
    made: list[Cluster] = []
    yield made
    for cluster in made:
        cluster.kill_all()
        shutil.rmtree(cluster.root, ignore_errors=True)


async def answered(session: aiohttp.ClientSession, method: str, url: str, body: Any = None) -> tuple[int, Any]:
    """The first answer of the node: connection errors (its HTTP port not bound yet) are tried again, an answer
    of any status is returned as is."""
    while True:
        try:
            async with session.request(method, url, json=body) as answer:
                return answer.status, await answer.json(content_type=None)
        except aiohttp.ClientConnectionError:
            await asyncio.sleep(0.02)


@pytest.mark.timeout(120)
async def test_a_fresh_cluster_answers_every_request_without_503(tmp_path: Path, unstarted: list[Cluster]) -> None:
    """Requests sent to every node from the moment the processes start (before any leader exists) all succeed:
    each waits for the first election and for the leader's HTTP address, then is served or forwarded."""
    (tmp_path / "c").mkdir()
    cluster = make_cluster(tmp_path / "c", 3, with_leader_wait(START_WAIT_MS))
    unstarted.append(cluster)
    for i in range(3):
        cluster.start(i)
    statuses: list[tuple[int, str, int, Any]] = []

    async def client(session: aiohttp.ClientSession, i: int) -> None:
        base = cluster.urls[i]
        for k in range(5):
            job = {"series": f"ohlcv:test:F{i}x{k}/USD:1m", "start": 0, "end": 30 * MIN}
            status, body = await answered(session, "POST", base + "/v1/jobs", job)
            statuses.append((i, "submit", status, body))
            if status != 201:
                continue
            job_id = body["job"]["job_id"]
            for method, path, sent in (
                ("GET", f"/v1/jobs/{job_id}", None),
                ("GET", "/v1/leases", None),
                ("POST", "/v1/windows/claim", {"worker_id": f"w{i}", "max_windows": 1}),
            ):
                status, body = await answered(session, method, base + path, sent)
                statuses.append((i, path, status, body))

    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=START_WAIT_MS / 1000 + 10)) as session:
        await asyncio.gather(*(client(session, i) for i in range(3)))
    bad = [s for s in statuses if s[2] not in (200, 201)]
    assert bad == [], f"{bad[:5]}\n{cluster.logs()}"
    assert len(statuses) == 3 * 5 * 4
    for url in cluster.urls:
        status, body = http_json("GET", url + "/readyz")
        assert status == 200 and body["status"] == "ok" and body["leader"], body


@pytest.mark.timeout(60)
async def test_without_a_majority_requests_get_503_after_leader_wait_ms(
    tmp_path: Path, unstarted: list[Cluster]
) -> None:
    """One node of three alone can elect no leader: a write and a linearizable read wait leader_wait_ms, then get
    503 no_leader with Retry-After and a message naming the setting; /readyz and /healthz say 503; a
    ``?consistency=stale`` read is still served, marked stale."""
    (tmp_path / "c").mkdir()
    cluster = make_cluster(tmp_path / "c", 3, with_leader_wait(LONE_WAIT_MS))
    unstarted.append(cluster)
    cluster.start(0)
    url = cluster.urls[0]
    wait_for(lambda: http_json("GET", url + "/healthz")[0] == 503, 30, "the lone node's HTTP API")
    assert http_json("GET", url + "/readyz")[0] == 503
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        for method, path, body in (
            ("POST", "/v1/jobs", {"series": "ohlcv:test:L/USD:1m", "start": 0, "end": 30 * MIN}),
            ("GET", "/v1/jobs", None),
        ):
            started = time.monotonic()
            async with session.request(method, url + path, json=body) as answer:
                elapsed_s = time.monotonic() - started
                error = (await answer.json())["error"]
                assert answer.status == 503 and answer.headers["Retry-After"] == "1", error
            assert error["code"] == "no_leader" and "leader_wait_ms" in error["message"], error
            assert elapsed_s >= LONE_WAIT_MS / 1000, f"{method} {path} answered 503 after only {elapsed_s:.3f} s"
        async with session.get(url + "/v1/jobs?consistency=stale") as answer:
            assert answer.status == 200
            assert answer.headers["X-Consistency"] == "stale"
            assert int(answer.headers["X-Raft-Applied-Index"]) >= 0
