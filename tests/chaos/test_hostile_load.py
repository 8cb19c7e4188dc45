"""Hostile load against a real 3-node cluster with tokens: every limit refuses with a named answer and Retry-After,
nothing live is forgotten, and the answers a naive client gets stay right (issue 21).

The short version runs in ``make test``; ``SEAMLESS_CHAOS_LONG=1`` (``make chaos``) runs the issue's figures
(100,000 live QMTL keys, the default cap)."""

from __future__ import annotations

import asyncio
import secrets
import shutil
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import Cluster, make_cluster
from provider.client import CoordinatorClient
from provider.errors import CoordinatorCapacityError

from .scenarios import LONG

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

MAX_KEYS = 100_000 if LONG else 200
LIVE_JOBS = 400  # above the 300 concurrent submissions below
PENDING = 500_000 if LONG else 100_000


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Cluster, dict[str, str]]]:
    """A 3-node cluster with tokens and a small key cap (the 100,000 default in `make chaos`)."""
    tokens = {role: secrets.token_hex(16) for role in ("reader", "worker", "operator", "worker2")}
    config: dict[str, Any] = {
        "coordinator": {"max_keys": MAX_KEYS, "leader_grace_ms": 500, "max_live_jobs_per_client": LIVE_JOBS},
        "seamless_data_provider": {"backfill_config": {"window_bars": 1}},  # a window per minute: cheap backlogs
    }
    cluster = make_cluster(
        tmp_path_factory.mktemp("hostile"),
        3,
        config,
        token_lines=[f"{token} {role.rstrip('2')} hostile-{role}" for role, token in tokens.items()],
        secret=secrets.token_urlsafe(32),
    )
    cluster.token = tokens["operator"]
    for i in range(3):
        cluster.start(i)
    try:
        cluster.wait_leader(30)
        yield cluster, tokens
    finally:
        cluster.kill_all()
        shutil.rmtree(cluster.root, ignore_errors=True)


async def _claim_many(http: aiohttp.ClientSession, url: str, token: str, keys: list[str]) -> list[tuple[int, Any]]:
    gate = asyncio.Semaphore(32)

    async def one(key: str) -> tuple[int, Any]:
        async with gate:
            return await call(http, "POST", f"{url}/v1/leases/claim", {"key": key, "lease_ms": 600_000}, token=token)

    return await asyncio.gather(*(one(key) for key in keys))


@pytest.mark.timeout(1800 if LONG else 120)
async def test_a_full_key_table_refuses_a_new_key_and_never_grants_it_twice(
    hostile: tuple[Cluster, dict[str, str]],
) -> None:
    """The 2026-12-04 attack: fill the key table with live leases, then claim a new key twice. The first claim
    takes the last slot, the second is a 409 (one live lease per key, as `/v1/leases` shows); any further new key
    is a 429 `capacity` with Retry-After, through the leader and through a follower alike, and completing a key
    makes room for exactly one more."""
    cluster, tokens = hostile
    leader = cluster.wait_leader(30)
    follower = next(i for i in range(3) if i != leader)
    worker, reader = tokens["worker"], tokens["reader"]
    base = f"qmtl-{secrets.token_hex(3)}"
    async with aiohttp.ClientSession() as http:
        url = cluster.urls[leader]
        filled = await _claim_many(http, url, worker, [f"{base}:60:{k}" for k in range(MAX_KEYS - 1)])
        assert [status for status, _ in filled] == [200] * (MAX_KEYS - 1)
        first = await call(
            http, "POST", f"{url}/v1/leases/claim", {"key": f"{base}:60:new", "lease_ms": 600_000}, token=worker
        )
        second = await call(
            http,
            "POST",
            f"{cluster.urls[follower]}/v1/leases/claim",
            {"key": f"{base}:60:new", "lease_ms": 600_000},
            token=worker,
        )
        assert first[0] == 200 and second[0] == 409, (first, second)
        status, leases = await call(http, "GET", f"{url}/v1/leases", token=reader)
        assert status == 200
        assert [lease["token"] for lease in leases["leases"] if lease["key"] == f"{base}:60:new"] == [
            first[1]["lease"]["token"]
        ]

        for node in (leader, follower):
            async with http.post(
                f"{cluster.urls[node]}/v1/leases/claim",
                json={"key": f"{base}:60:more", "lease_ms": 600_000},
                headers={"Authorization": f"Bearer {worker}"},
            ) as answer:
                body = await answer.json()
                assert answer.status == 429 and body["error"]["code"] == "capacity", body
                assert 1 <= int(answer.headers["Retry-After"]) <= 60
                assert "coordinator.max_keys" in body["error"]["message"]

        done = await call(
            http,
            "POST",
            f"{url}/v1/leases/complete",
            {"key": f"{base}:60:0", "token": filled[0][1]["lease"]["token"]},
            token=worker,
        )
        assert done[0] == 200, done
        again = await call(
            http, "POST", f"{url}/v1/leases/claim", {"key": f"{base}:60:more", "lease_ms": 600_000}, token=worker
        )
        assert again[0] == 200, again
        for k in (1, MAX_KEYS - 2):  # nothing live was forgotten: the oldest and the newest still complete
            answer = await call(
                http,
                "POST",
                f"{url}/v1/leases/complete",
                {"key": f"{base}:60:{k}", "token": filled[k][1]["lease"]["token"]},
                token=worker,
            )
            assert answer[0] == 200, answer


async def test_an_idempotency_key_is_the_callers_own_and_bound_to_its_body(
    hostile: tuple[Cluster, dict[str, str]],
) -> None:
    """Another token replaying a caller's X-Client-Id/X-Request-Id gets its own answer, never the first caller's
    lease token; the same caller replaying the pair with another body gets 409 and nothing changes; the same body
    is the first answer (a retry)."""
    cluster, tokens = hostile
    ids = {"X-Client-Id": "shared-client", "X-Request-Id": secrets.token_hex(8)}
    key = f"replay-{secrets.token_hex(3)}:60:0"
    async with aiohttp.ClientSession() as http:
        url = cluster.urls[cluster.wait_leader(30)]
        claim = f"{url}/v1/leases/claim"
        first = await call(http, "POST", claim, {"key": key, "lease_ms": 60_000}, token=tokens["worker"], headers=ids)
        assert first[0] == 200, first
        retry = await call(http, "POST", claim, {"key": key, "lease_ms": 60_000}, token=tokens["worker"], headers=ids)
        assert retry == first
        other = await call(http, "POST", claim, {"key": key, "lease_ms": 60_000}, token=tokens["worker2"], headers=ids)
        assert other[0] == 409 and other[1]["error"]["code"] == "conflict", other  # the key is held: a new command
        body = {"key": f"{key}:x", "lease_ms": 60_000}
        changed = await call(http, "POST", claim, body, token=tokens["worker"], headers=ids)
        assert changed[0] == 409 and "another key_claim body" in changed[1]["error"]["message"], changed
        status, leases = await call(http, "GET", f"{url}/v1/leases", token=tokens["reader"])
        assert status == 200 and not [lease for lease in leases["leases"] if lease["key"] == f"{key}:x"]


async def _term(http: aiohttp.ClientSession, cluster: Cluster, token: str) -> tuple[int, ...]:
    terms = []
    for url in cluster.urls:
        status, view = await call(http, "GET", f"{url}/v1/cluster", token=token)
        assert status == 200, view
        terms.append(view["term"])
    return tuple(terms)


async def _settled_term(http: aiohttp.ClientSession, cluster: Cluster, token: str) -> tuple[int, ...]:
    """The terms once every node reports the same one twice in a row, 0.5 s apart (an election is over)."""
    deadline = time.monotonic() + 60
    last = await _term(http, cluster, token)
    while time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now = await _term(http, cluster, token)
        if len(set(now)) == 1 and now == last:
            return now
        last = now
    raise AssertionError(f"the cluster's terms did not settle within 60 s: {last}")


@pytest.mark.timeout(1800 if LONG else 300)
async def test_ordinary_submissions_beside_a_huge_backlog_cause_no_election(
    hostile: tuple[Cluster, dict[str, str]],
) -> None:
    """The 2026-12-04 storm: with 100,000 (`make chaos`: 500,000) windows pending, 300 one-window jobs submitted at
    once through every node by a client that never retries are each answered 201 or 429 (never 503), and no
    election happens. Then a client at its live-jobs limit gets 429 with Retry-After while another is served."""
    cluster, tokens = hostile
    series = f"ohlcv:test:BIG{secrets.token_hex(2).upper()}/USD:1m"
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as http:
        leader_url = cluster.urls[cluster.wait_leader(30)]
        for k in range(PENDING // 100_000):  # 100,000 one-bar windows per job (the per-job cap)
            body = {"series": series, "start": k * 100_000 * 60_000, "end": (k + 1) * 100_000 * 60_000}
            status, answer = await call(http, "POST", f"{leader_url}/v1/jobs", body, token=tokens["operator"])
            assert status == 201, answer
        # The baseline is a settled cluster: on a loaded machine, applying the backlog's 100,000-window jobs can
        # itself move the term (not this test's claim); the 300 submissions below must not.
        before = await _settled_term(http, cluster, tokens["reader"])

        async def submit(k: int) -> int:
            body = {"series": series, "start": (10**7 + k) * 60_000, "end": (10**7 + k + 1) * 60_000}
            url = cluster.urls[k % 3]
            headers = {"Authorization": f"Bearer {tokens['worker']}"}
            async with http.post(f"{url}/v1/jobs", json=body, headers=headers) as answer:  # no retry
                return answer.status

        started = time.monotonic()
        statuses = await asyncio.gather(*(submit(k) for k in range(300)))
        took_s = time.monotonic() - started
        print(f"300 submissions beside {PENDING} pending: {statuses.count(201)} x 201 in {took_s:.2f} s")
        assert set(statuses) <= {201, 429}, sorted(set(statuses))
        assert statuses.count(201) >= 1
        assert await _term(http, cluster, tokens["reader"]) == before
        status, windows = await call(http, "GET", f"{leader_url}/metrics")
        assert f'backfill_windows{{state="pending"}} {PENDING + statuses.count(201)}.0' in windows, windows[-3000:]

        # the live-jobs limit: worker now holds min(LIVE_JOBS, accepted) running jobs; fill up to the limit
        k = 1000
        while True:
            k += 1
            body = {"series": series, "start": (10**7 + k) * 60_000, "end": (10**7 + k + 1) * 60_000}
            async with http.post(
                f"{leader_url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {tokens['worker']}"}
            ) as answer:
                if answer.status == 429 and (await answer.json())["error"]["message"].find("max_live_jobs") >= 0:
                    assert 1 <= int(answer.headers["Retry-After"]) <= 60
                    break
                assert answer.status in (201, 429), await answer.text()
            assert k < 1000 + LIVE_JOBS + 50, "the live-jobs limit never refused"
        other = await call(http, "POST", f"{leader_url}/v1/jobs", body, token=tokens["worker2"])
        assert other[0] == 201, other
    client = CoordinatorClient(cluster.urls, token=tokens["worker"])
    try:
        with pytest.raises(CoordinatorCapacityError) as refused:
            await client.submit_job(series, (10**7 + k + 1) * 60_000, (10**7 + k + 2) * 60_000)
        assert refused.value.status == 429 and refused.value.retry_after_s is not None
        assert "max_live_jobs_per_client" in str(refused.value)
    finally:
        await client.aclose()
