"""A real 3-node cluster started with ``coordinator serve``: jobs, ordered claims, fenced leases, expiry, QMTL."""

from __future__ import annotations

import asyncio
import subprocess
import time
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import MIN, Cluster
from devkit.launcher import coordinator_cmd
from devkit.polling import http_json, wait_for
from provider.core import Job, Lease, LeaseInfo

pytestmark = [pytest.mark.cluster]

_COUNTER = iter(range(1_000_000))


def series(name: str) -> str:
    return f"ohlcv:test:{name}{next(_COUNTER)}/USD:1m"


@pytest.fixture
def cl(shared_cluster: Cluster) -> Cluster:
    """The shared cluster with every running job of earlier tests cancelled, so claims see only this test's work."""
    url = shared_cluster.urls[shared_cluster.wait_leader()]
    _, body = http_json("GET", url + "/v1/jobs")
    for job in body["jobs"]:
        if job["state"] in ("running", "failed"):
            wait_for(
                lambda job_id=job["job_id"]: (
                    http_json("DELETE", f"{url}/v1/jobs/{job_id}")[0] in (200, 409) or shared_cluster.wait_leader() < 0
                ),
                10,
                f"cancelling {job['job_id']}",
            )
    return shared_cluster


async def submit(
    http: aiohttp.ClientSession, url: str, s: str, lo_min: int, hi_min: int, priority: int = 0, expect: int = 201
) -> dict[str, Any]:
    status, body = await call(
        http, "POST", url + "/v1/jobs", {"series": s, "start": lo_min * MIN, "end": hi_min * MIN, "priority": priority}
    )
    assert status == expect, body
    return dict(Job.from_dict(body["job"]).to_dict())


async def claim(
    http: aiohttp.ClientSession, url: str, n: int = 1, worker: str = "w1", wait_ms: int = 0
) -> list[dict[str, Any]]:
    status, body = await call(
        http, "POST", url + "/v1/windows/claim", {"worker_id": worker, "max_windows": n, "wait_ms": wait_ms}
    )
    assert status == 200, body
    return [Lease.from_dict(item).to_dict() for item in body["leases"]]


async def test_any_node_accepts_jobs_and_serves_the_same_state(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """A job submitted to a follower is created once (201, then 200 identical) and every node reports it."""
    leader = cl.wait_leader()
    follower = (leader + 1) % 3
    s = series("any")
    job = await submit(http, cl.urls[follower], s, 0, 60)
    again = await submit(http, cl.urls[(leader + 2) % 3], s, 0, 60, expect=200)
    assert again["job_id"] == job["job_id"] and job["windows"]["pending"] == 4

    async def everywhere() -> None:
        for url in cl.urls:
            while True:
                status, body = await call(http, "GET", f"{url}/v1/jobs/{job['job_id']}")
                if status == 200:
                    assert body["job"]["series"] == s
                    break
                await asyncio.sleep(0.02)

    await asyncio.wait_for(everywhere(), 5)


async def test_jobs_split_into_aligned_windows_and_claims_come_in_order(
    cl: Cluster, http: aiohttp.ClientSession
) -> None:
    """Windows are the 15-bar grid cells of the range; claims follow priority, then submission, then start."""
    low, high = series("low"), series("high")
    await submit(http, cl.urls[0], low, 7, 50, priority=1)  # snapped cells 0, 15, 30, 45
    await submit(http, cl.urls[1], high, 0, 30, priority=5)
    got = await claim(http, cl.urls[2], n=3) + await claim(http, cl.urls[0], n=10)
    assert [(g["series"], g["start"] // MIN, g["end"] // MIN) for g in got] == [
        (high, 0, 15),
        (high, 15, 30),
        (low, 0, 15),
        (low, 15, 30),
        (low, 30, 45),
        (low, 45, 60),
    ]
    tokens = [g["token"] for g in got]
    assert tokens == sorted(tokens) and len(set(tokens)) == len(tokens)


async def test_renew_complete_fail_and_stale_tokens(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """renew/complete/fail work with the current token; a stale token gets 409 lease_lost and is counted."""
    url = cl.urls[1]
    job = await submit(http, url, series("fence"), 0, 30)
    first, second = await claim(http, url, n=2)
    status, body = await call(
        http, "POST", url + "/v1/windows/renew", {"lease_id": first["lease_id"], "token": first["token"]}
    )
    assert status == 200 and body["expires_at_ms"] >= first["expires_at_ms"]
    done = {"lease_id": first["lease_id"], "token": first["token"], "rows": 15}
    assert (await call(http, "POST", url + "/v1/windows/complete", done))[0] == 200
    status, body = await call(http, "POST", cl.urls[2] + "/v1/windows/complete", done)
    assert status == 200 and body["state"] == "done", "complete is idempotent for the same token"
    for path in ("renew", "fail"):
        status, body = await call(
            http, "POST", f"{url}/v1/windows/{path}", {"lease_id": first["lease_id"], "token": first["token"]}
        )
        assert (status, body["error"]["code"]) == (409, "lease_lost")
    status, body = await call(
        http, "POST", url + "/v1/windows/complete", {"lease_id": second["lease_id"], "token": first["token"], "rows": 1}
    )
    assert (status, body["error"]["code"]) == (409, "lease_lost")
    status, body = await call(
        http,
        "POST",
        url + "/v1/windows/fail",
        {"lease_id": second["lease_id"], "token": second["token"], "reason": "boom", "retryable": False},
    )
    assert status == 200 and body["state"] == "failed"
    status, body = await call(http, "GET", f"{url}/v1/jobs/{job['job_id']}")  # linearizable: sees the fail
    assert body["job"]["windows"] == {"pending": 0, "leased": 0, "done": 1, "failed": 1}
    assert body["job"]["completion_ratio"] == 0.5 and body["job"]["state"] == "failed"
    fenced = 0.0  # counted by the node that answered; sum over nodes in case leadership moved meanwhile
    for node_url in cl.urls:
        _, text = await call(http, "GET", node_url + "/metrics")
        fenced += sum(
            float(line.split()[-1]) for line in text.splitlines() if line.startswith("backfill_fenced_rejections_total")
        )
    assert fenced >= 3


async def test_an_unrenewed_lease_expires_and_its_window_is_requeued(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """With a 1.5 s TTL the reaper returns an unrenewed window to pending; the next grant has a higher token."""
    url = cl.urls[0]
    await submit(http, url, series("ttl"), 0, 15)
    lease = (await claim(http, url))[0]
    window = lease["window_id"]

    async def requeued() -> list[dict[str, Any]]:
        while True:
            got = await claim(http, url)
            if got:
                return got
            await asyncio.sleep(0.1)

    started = time.monotonic()
    again = (await asyncio.wait_for(requeued(), 10))[0]
    assert time.monotonic() - started < 6
    assert again["window_id"] == window and again["attempt"] == 2 and again["token"] > lease["token"]
    status, body = await call(
        http, "POST", url + "/v1/windows/complete", {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 1}
    )
    assert (status, body["error"]["code"]) == (409, "lease_lost")
    status, body = await call(http, "GET", url + "/v1/leases")
    infos = [LeaseInfo.from_dict(item) for item in body["leases"]]
    assert [(i.window_id, i.token) for i in infos if i.window_id == window] == [(window, again["token"])]


async def test_long_poll_claim_wakes_when_work_arrives(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """A claim with wait_ms and nothing pending returns as soon as a job is submitted, not at the end of the wait."""
    waiting = asyncio.create_task(claim(http, cl.urls[2], wait_ms=8000))
    await asyncio.sleep(0.3)
    assert not waiting.done()
    started = time.monotonic()
    await submit(http, cl.urls[1], series("poll"), 0, 15)
    leases = await asyncio.wait_for(waiting, 10)
    assert len(leases) == 1 and time.monotonic() - started < 3


async def test_qmtl_keyed_leases(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """QMTL routes: claim returns lease and ratio, a held key is 409, complete accepts the token as a string."""
    url = cl.urls[0]
    key = f"node{next(_COUNTER)}:60:0:60000:world:"
    status, body = await call(http, "POST", url + "/v1/leases/claim", {"key": key, "lease_ms": 30_000})
    assert status == 200 and body["completion_ratio"] == 0.0
    token = body["lease"]["token"]
    assert body["lease"]["lease_until_ms"] > 0
    assert (await call(http, "POST", cl.urls[1] + "/v1/leases/claim", {"key": key, "lease_ms": 100}))[0] == 409
    status, body = await call(http, "POST", url + "/v1/leases/complete", {"key": key, "token": str(token)})
    assert status == 200 and body["completion_ratio"] == 1.0
    status, body = await call(http, "POST", url + "/v1/leases/fail", {"key": key, "token": token + 1000, "reason": "x"})
    assert status == 409


async def test_operator_actions(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """release keeps the attempt count, requeue resets it, mark-done finishes a window, retry and cancel jobs."""
    url = cl.urls[1]
    job = await submit(http, url, series("ops"), 0, 45)
    a, b, c = await claim(http, url, n=3)
    status, body = await call(http, "POST", f"{url}/v1/leases/{a['lease_id']}/release", {"reason": "drain"})
    assert status == 200 and body["state"] == "pending"
    assert (await claim(http, url))[0]["attempt"] == 1
    status, body = await call(http, "POST", f"{url}/v1/windows/{b['window_id']}/mark-done", {"reason": "manual"})
    assert status == 200 and body["state"] == "done"
    await call(
        http, "POST", url + "/v1/windows/fail", {"lease_id": c["lease_id"], "token": c["token"], "retryable": False}
    )
    status, body = await call(http, "POST", f"{url}/v1/jobs/{job['job_id']}/retry")
    assert status == 200 and body["requeued"] == 1
    status, body = await call(http, "POST", f"{url}/v1/windows/{c['window_id']}/requeue", {"reason": "again"})
    assert status == 200 and body["attempts"] == 0
    status, body = await call(http, "DELETE", f"{url}/v1/jobs/{job['job_id']}")
    assert status == 200 and body["job"]["state"] == "cancelled"
    assert await claim(http, url) == []


async def test_per_job_gauge_disappears_when_the_job_ends(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """backfill_completion_ratio{job_id} is exported while the job runs and removed once it is done."""
    url = cl.urls[cl.wait_leader()]
    job = await submit(http, url, series("gauge"), 0, 15)
    label = f'job_id="{job["job_id"]}"'
    _, text = await call(http, "GET", url + "/metrics")
    assert any(label in line and line.startswith("backfill_completion_ratio") for line in text.splitlines())
    lease = (await claim(http, url))[0]
    await call(
        http, "POST", url + "/v1/windows/complete", {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 15}
    )
    _, text = await call(http, "GET", url + "/metrics")
    assert label not in text
    for name in (
        "backfill_windows{",
        "backfill_leases_active",
        "backfill_stale_claims_total",
        "coordinator_is_leader 1.0",
        "coordinator_raft_term",
        "coordinator_raft_commit_index",
    ):
        assert name in text, name


async def test_cluster_view_and_status_command(cl: Cluster, http: aiohttp.ClientSession) -> None:
    """/v1/cluster names one leader on every node, and `coordinator status` prints roles and job progress."""
    leader = cl.wait_leader()
    job = await submit(http, cl.urls[0], series("status"), 0, 30)
    views = [(await call(http, "GET", url + "/v1/cluster"))[1] for url in cl.urls]
    assert {v["leader"] for v in views} == {cl.urls[leader]}
    assert [m["role"] for m in views[leader]["members"]].count("leader") == 1
    proc = await asyncio.create_subprocess_exec(
        *coordinator_cmd(),
        "status",
        "--url",
        cl.urls[(leader + 1) % 3],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 30)
    stdout = out.decode()
    assert proc.returncode == 0, err.decode()
    assert f"leader: {cl.urls[leader]}" in stdout
    assert job["job_id"] in stdout and "0/2" in stdout
    assert stdout.count(" leader ") == 1 and stdout.count(" follower ") == 2


def test_status_command_exits_1_without_a_cluster() -> None:
    """`coordinator status` against a dead URL reports the problem and exits 1."""
    result = subprocess.run(
        [*coordinator_cmd(), "status", "--url", "http://127.0.0.1:9", "--timeout", "0.5"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1 and "NONE" in result.stdout and "127.0.0.1:9" in result.stdout
