"""kill -9 of the leader under load, of all three nodes, and of a follower: acknowledged writes survive (rule 7)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import MIN, SERIES, Cluster
from devkit.polling import http_json, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

#: Leases outlive the tests (no expiry interferes) and the log is compacted often, so dumps are exercised.
DURABLE_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 120_000, "window_bars": 1}},
    "coordinator": {"log_compaction_min_entries": 100},
}


def leader_url(cluster: Cluster) -> str:
    return cluster.urls[cluster.wait_leader()]


async def submit(http: aiohttp.ClientSession, url: str, s: str, minutes: int) -> dict[str, Any]:
    status, body = await call(http, "POST", url + "/v1/jobs", {"series": s, "start": 0, "end": minutes * MIN})
    assert status == 201, body
    return dict(body["job"])


async def test_leader_kill9_during_a_stream_of_claims(
    cluster_factory: Callable[..., Cluster], http: aiohttp.ClientSession
) -> None:
    """A survivor serves within 3 s; every acknowledged grant is still live, no window twice, tokens keep growing."""
    cl = cluster_factory(config=DURABLE_CONFIG)
    leader = cl.wait_leader()
    await submit(http, cl.urls[leader], SERIES, 5000)
    acked: list[tuple[float, float, str, int]] = []  # (sent, acked, window_id, token)
    stop = asyncio.Event()

    async def worker(k: int) -> None:
        i = k
        while not stop.is_set():
            url = cl.urls[i % 3]
            i += 1
            sent = time.monotonic()
            try:
                status, body = await call(
                    http, "POST", url + "/v1/windows/claim", {"worker_id": f"w{k}", "max_windows": 2}, retry_s=0
                )
            except (aiohttp.ClientError, TimeoutError):
                await asyncio.sleep(0.02)
                continue
            if status == 200:
                acked.extend((sent, time.monotonic(), g["window_id"], g["token"]) for g in body["leases"])
            else:
                await asyncio.sleep(0.02)

    tasks = [asyncio.create_task(worker(k)) for k in range(8)]
    await asyncio.sleep(1.5)
    killed_at = time.monotonic()
    cl.kill(leader)
    before = [a for a in acked if a[1] < killed_at]
    while not [a for a in acked if a[0] > killed_at] and time.monotonic() - killed_at < 10:
        await asyncio.sleep(0.01)
    after = [a for a in acked if a[0] > killed_at]
    assert after, "no survivor granted a lease within 10 s"
    failover_s = min(a[1] for a in after) - killed_at
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*tasks)
    assert failover_s < 3.0, f"failover took {failover_s:.2f} s"
    assert len(before) > 20
    new_leader = leader_url(cl)
    status, body = await call(http, "GET", new_leader + "/v1/leases")
    assert status == 200
    live = {(item["window_id"], item["token"]) for item in body["leases"]}
    missing = [a for a in acked if (a[2], a[3]) not in live]
    assert not missing, f"{len(missing)} acknowledged grants were lost, e.g. {missing[:3]}"
    windows = [a[2] for a in acked]
    assert len(set(windows)) == len(windows), "a window was granted twice while both leases were live"
    tokens = [a[3] for a in acked]
    assert len(set(tokens)) == len(tokens)
    assert max(a[3] for a in before) < min(a[3] for a in after), "tokens must keep increasing across the failover"


async def test_kill9_of_all_nodes_keeps_every_acknowledged_write(
    cluster_factory: Callable[..., Cluster], http: aiohttp.ClientSession
) -> None:
    """After kill -9 of all three nodes and a restart, jobs, done windows, live leases and the token floor remain."""
    cl = cluster_factory(config=DURABLE_CONFIG)
    url = leader_url(cl)
    done_job = await submit(http, url, "ohlcv:test:DONE/USD:1m", 3)
    await submit(http, url, SERIES, 60)
    status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "w", "max_windows": 45})
    leases = body["leases"]
    assert len(leases) == 45
    finished, kept = leases[:20], leases[20:]
    for lease in finished:
        status, _ = await call(
            http,
            "POST",
            url + "/v1/windows/complete",
            {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 1},
        )
        assert status == 200
    for lease in kept:  # more log entries than log_compaction_min_entries: a dump is written
        for _ in range(4):
            await call(
                http, "POST", url + "/v1/windows/renew", {"lease_id": lease["lease_id"], "token": lease["token"]}
            )
    floor = max(lease["token"] for lease in leases)
    jobs_before = (await call(http, "GET", url + "/v1/jobs"))[1]["jobs"]
    leases_before = (await call(http, "GET", url + "/v1/leases"))[1]["leases"]
    assert {j["job_id"]: j["state"] for j in jobs_before}[done_job["job_id"]] == "done"
    wait_for(lambda: any((n.data_dir / "raft.dump").exists() for n in cl.nodes), 10, "a full dump file")

    cl.kill_all()
    for i in range(3):
        cl.start(i)
    url = leader_url(cl)
    jobs_after = wait_for(
        lambda: (
            http_json("GET", url + "/v1/jobs")[1]["jobs"] == jobs_before
            and http_json("GET", url + "/v1/jobs")[1]["jobs"]
        ),
        15,
        "the jobs after restart",
    )
    assert jobs_after == jobs_before
    leases_after = (await call(http, "GET", url + "/v1/leases"))[1]["leases"]
    assert [(x["window_id"], x["token"]) for x in leases_after] == [(x["window_id"], x["token"]) for x in leases_before]
    status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "w2"})
    assert status == 200 and body["leases"][0]["token"] > floor


async def test_a_restarted_follower_catches_up(
    cluster_factory: Callable[..., Cluster], http: aiohttp.ClientSession
) -> None:
    """A follower killed while the leader commits (and compacts) hundreds of entries converges after restart."""
    cl = cluster_factory(config=DURABLE_CONFIG)
    leader = cl.wait_leader()
    url = cl.urls[leader]
    follower = (leader + 1) % 3
    await submit(http, url, SERIES, 300)
    cl.kill(follower)
    for _ in range(75):
        status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "w", "max_windows": 2})
        assert status == 200, body
        for lease in body["leases"]:
            await call(
                http,
                "POST",
                url + "/v1/windows/complete",
                {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 1},
            )
    expected = (await call(http, "GET", url + "/v1/jobs"))[1]["jobs"]
    assert expected[0]["windows"]["done"] == 150
    cl.start(follower)
    mine = cl.urls[follower]
    wait_for(lambda: http_json("GET", mine + "/v1/jobs")[1]["jobs"] == expected, 20, "the follower's jobs")
    view = wait_for(lambda: cl.view(follower), 5, "the follower's view")
    assert view["role"] == "follower" and view["token_floor"] == http_json("GET", url + "/v1/cluster")[1]["token_floor"]
