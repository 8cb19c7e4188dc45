"""Bad input to a real cluster: each is a 4xx naming the field, and the cluster keeps serving."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import MIN, SERIES, Cluster

pytestmark = [pytest.mark.cluster]

JOB = {"series": SERIES, "start": 0, "end": 60 * MIN}

BAD_BODIES: list[tuple[str, str, Any, int, str, str]] = [
    # (method, path, body (bytes = raw), status, code, field)
    ("POST", "/v1/jobs", b"{not json", 400, "invalid", "(body)"),
    ("POST", "/v1/jobs", b"[1, 2]", 400, "invalid", "(body)"),
    ("POST", "/v1/jobs", {**JOB, "series": "ohlcv:binance"}, 400, "invalid", "series"),
    ("POST", "/v1/jobs", {**JOB, "series": "ohlcv:Bad Source:X:1m"}, 400, "invalid", "series"),
    ("POST", "/v1/jobs", {**JOB, "start": 60 * MIN, "end": 0}, 400, "invalid", "end"),
    ("POST", "/v1/jobs", {**JOB, "start": 5 * MIN, "end": 5 * MIN}, 400, "invalid", "end"),
    ("POST", "/v1/jobs", {**JOB, "start": "yesterday"}, 400, "invalid", "start"),
    ("POST", "/v1/jobs", {**JOB, "priority": 1.5}, 400, "invalid", "priority"),
    ("POST", "/v1/jobs", {"series": SERIES, "start": 0}, 400, "invalid", "end"),
    ("POST", "/v1/jobs", {**JOB, "colour": "red"}, 400, "invalid", "colour"),
    ("POST", "/v1/windows/claim", {"worker_id": "w", "max_windows": "2"}, 400, "invalid", "max_windows"),
    ("POST", "/v1/windows/claim", {"worker_id": ""}, 400, "invalid", "worker_id"),
    ("POST", "/v1/windows/claim", {}, 400, "invalid", "worker_id"),
    ("POST", "/v1/windows/claim", {"worker_id": "w", "wait_ms": -1}, 400, "invalid", "wait_ms"),
    ("POST", "/v1/windows/renew", {"lease_id": "lease-1", "token": "abc"}, 400, "invalid", "token"),
    ("POST", "/v1/windows/renew", {"lease_id": "lease-999999999", "token": 999999999}, 404, "not_found", "lease_id"),
    ("POST", "/v1/windows/complete", {"lease_id": "nope", "token": 1, "rows": 1}, 404, "not_found", "lease_id"),
    ("POST", "/v1/windows/complete", {"lease_id": "lease-1", "token": 1, "rows": -3}, 400, "invalid", "rows"),
    ("POST", "/v1/windows/complete", {"lease_id": "lease-1", "token": 1, "rows": 10**4000}, 400, "invalid", "rows"),
    ("POST", "/v1/windows/complete", {"lease_id": "lease-1", "token": 1, "rows": 2**63}, 400, "invalid", "rows"),
    ("POST", "/v1/jobs", {**JOB, "priority": -(10**300)}, 400, "invalid", "priority"),
    ("POST", "/v1/jobs", {**JOB, "end": 10**4000}, 400, "invalid", "end"),
    ("POST", "/v1/windows/fail", {"lease_id": "lease-1", "token": 1, "retryable": "no"}, 400, "invalid", "retryable"),
    ("GET", "/v1/jobs/job-424242", None, 404, "not_found", "job_id"),
    ("DELETE", "/v1/jobs/job-424242", None, 404, "not_found", "job_id"),
    ("POST", "/v1/jobs/job-424242/retry", None, 404, "not_found", "job_id"),
    ("POST", "/v1/leases/lease-999999999/release", {}, 404, "not_found", "lease_id"),
    ("POST", "/v1/windows/w_bm9wZQ/requeue", {"reason": "x"}, 404, "not_found", "window_id"),
    ("POST", "/v1/windows/not-a-window/mark-done", {"reason": "x"}, 404, "not_found", "window_id"),
    ("POST", "/v1/windows/not-a-window/mark-done", {"reason": 7}, 400, "invalid", "reason"),
    ("POST", "/v1/leases/claim", {"key": "k", "lease_ms": 0}, 400, "invalid", "lease_ms"),
    ("POST", "/v1/leases/complete", {"key": "never-claimed", "token": 1}, 404, "not_found", "key"),
    ("GET", "/v1/leases?stale=maybe", None, 400, "invalid", "stale"),
    ("POST", "/v1/jobs", b"x" * 5000, 413, "too_large", "(body)"),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "code", "field"),
    BAD_BODIES,
    ids=[f"{m} {p} {f} {s}" for m, p, _, s, _, f in BAD_BODIES],
)
async def test_bad_input_is_a_4xx_naming_the_field(
    shared_cluster: Cluster,
    http: aiohttp.ClientSession,
    method: str,
    path: str,
    body: Any,
    status: int,
    code: str,
    field: str,
) -> None:
    """The answer has the right status and an error body whose code and field name the problem, on any node."""
    for url in shared_cluster.urls:
        raw = body if isinstance(body, bytes) else None
        got, answer = await call(http, method, url + path, None if raw is not None else body, raw=raw)
        assert got == status, (url, answer)
        assert answer["error"]["code"] == code and answer["error"]["field"] == field, answer
        assert field.strip("()") in answer["error"]["message"], answer


async def test_unknown_routes_and_methods(shared_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """Unknown paths are 404 and wrong methods 405, both with the JSON error body."""
    url = shared_cluster.urls[0]
    status, body = await call(http, "GET", url + "/v1/nothing")
    assert status == 404 and body["error"]["code"] == "not_found"
    status, body = await call(http, "PUT", url + "/v1/jobs")
    assert status == 405 and body["error"]["code"] == "method_not_allowed"


async def test_request_id_is_echoed(shared_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """X-Request-Id is echoed back (and generated when absent)."""
    url = shared_cluster.urls[1]
    async with http.get(url + "/v1/jobs", headers={"X-Request-Id": "trace-123"}) as answer:
        assert answer.headers["X-Request-Id"] == "trace-123"
    async with http.get(url + "/v1/jobs") as answer:
        assert len(answer.headers["X-Request-Id"]) >= 8


async def test_duplicate_request_ids_are_applied_once(shared_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """A retried claim with the same X-Client-Id and X-Request-Id gets the first answer instead of new leases."""
    series = "ohlcv:test:DEDUP/USD:1m"
    status, body = await call(
        http,
        "POST",
        shared_cluster.urls[0] + "/v1/jobs",
        {"series": series, "start": 0, "end": 60 * MIN, "priority": 999},
    )
    assert status == 201, body
    headers = {"X-Client-Id": "dedup-client", "X-Request-Id": "claim-1"}
    answers = [
        await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "w", "max_windows": 2}, headers=headers)
        for url in shared_cluster.urls
    ]
    assert all(a == answers[0] for a in answers) and len(answers[0][1]["leases"]) == 2
    status, body = await call(http, "DELETE", f"{shared_cluster.urls[0]}/v1/jobs/{body['job']['job_id']}")
    assert status == 200


async def test_the_cluster_keeps_serving_after_bad_input(shared_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """After the bad requests every node is healthy and a job round trip still works."""
    for url in shared_cluster.urls:
        status, body = await call(http, "GET", url + "/healthz")
        assert status == 200 and body["leader"] is not None
    status, body = await call(
        http, "POST", shared_cluster.urls[2] + "/v1/jobs", {"series": "ohlcv:test:ALIVE/USD:1m", "start": 0, "end": MIN}
    )
    assert status == 201 and body["job"]["windows"]["pending"] == 1


async def test_a_huge_number_is_refused_briefly_and_logged_at_warning(
    shared_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """A 4,001-digit `rows` is a 400 whose message describes the number instead of echoing it; the node logs the
    refusal at WARNING, cut short, and nothing is replicated."""
    url = shared_cluster.urls[0]
    body = {"lease_id": "lease-1", "token": 1, "rows": 10**4000}
    status, answer = await call(http, "POST", f"{url}/v1/windows/complete", body, headers={"X-Request-Id": "huge-rows"})
    assert status == 400 and "an integer of 13288 bits" in answer["error"]["message"], answer
    assert len(answer["error"]["message"]) < 300
    lines = [line for line in shared_cluster.logs().splitlines() if "huge-rows" in line]
    assert lines and all('"level": "warning"' in line and len(line) < 1000 for line in lines), lines
