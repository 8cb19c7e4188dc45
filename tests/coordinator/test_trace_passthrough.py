"""A job remembers its creator's trace even through untraced nodes, and a claim hands it on (issue 18)."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from devkit.cluster import Cluster

MIN = 60_000
TP = "00-" + "ab" * 16 + "-" + "cd" * 8 + "-01"


async def _post(http: aiohttp.ClientSession, url: str, body: dict, headers: dict[str, str] | None = None) -> dict:
    async with http.post(url, json=body, headers=headers or {}) as answer:
        assert answer.status in (200, 201), await answer.text()
        data: dict = await answer.json()
        return data


@pytest.mark.cluster
@pytest.mark.parametrize(("header", "expected"), [(TP, [TP]), ("00-not-a-trace", None), (None, None)])
async def test_a_traceparent_sent_to_a_follower_reaches_the_worker_that_claims_the_window(
    shared_cluster: Cluster, http: aiohttp.ClientSession, header: str | None, expected: list[str] | None
) -> None:
    """No node traces here: a valid ``traceparent`` passes through the follower's forward to the leader, is kept
    with the job, and comes back in the lease; an invalid one (or none) leaves the lease without ``traces``."""
    leader = shared_cluster.wait_leader()
    follower = shared_cluster.urls[(leader + 1) % 3]
    series = f"ohlcv:trace{secrets.token_hex(3)}:A/B:1m"
    job = {"series": series, "start": 0, "end": MIN, "priority": 1_000_000}  # one window, claimed before others'
    await _post(http, follower + "/v1/jobs", job, {"traceparent": header} if header else None)
    answer = await _post(http, follower + "/v1/windows/claim", {"worker_id": "w", "max_windows": 1})
    (lease,) = answer["leases"]
    assert lease["series"] == series
    assert lease.get("traces") == expected
    await _post(
        http, follower + "/v1/windows/complete", {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 1}
    )
