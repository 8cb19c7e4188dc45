"""/metrics of a real 3-node cluster with tokens: job ids and series only for a token with the reader role, at most
``coordinator.metrics_max_jobs`` per-job series plus one (other) aggregate (coordinator/metrics.py rules 3 and 4)."""

from __future__ import annotations

import secrets
import urllib.error
import urllib.request
from typing import Any

import aiohttp
import pytest

from devkit.api import call, metric
from devkit.cluster import FAST_CONFIG, MIN, Cluster
from devkit.polling import wait_for

pytestmark = [pytest.mark.cluster]

READER = "reader-token-0123456789"
WORKER = "worker-token-0123456789"
OPERATOR = "operator-token-0123456789"
TOKENS = [f"{READER} reader grafana", f"{WORKER} worker pool", f"{OPERATOR} operator ops"]
CAP = 3
CONFIG: dict[str, Any] = {**FAST_CONFIG, "coordinator": {**FAST_CONFIG["coordinator"], "metrics_max_jobs": CAP}}
OTHER_LABELS = 'job_id="(other)",series="(other)"'


def scrape(url: str, token: str | None = None) -> tuple[int, str]:
    """GET /metrics of one node (a local read): (status, body)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url + "/metrics", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")


def ratio_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("backfill_completion_ratio{")]


async def test_metrics_show_jobs_only_to_a_reader_and_at_most_the_cap(
    cluster_factory: Any, http: aiohttp.ClientSession
) -> None:
    """Five running jobs, cap 3, one window of a summed job done. On every node: without a token no line names a
    job id or a series (one (other) series over all five jobs: 1 of 10 windows); with the reader token (or any
    stronger role) exactly the 3 jobs first in claim order have their own series and (other) sums the 2 others
    (1 of 4); an unknown token is a 401."""
    cl: Cluster = cluster_factory(config=CONFIG, token_lines=TOKENS)
    cl.token = READER
    leader = cl.wait_leader()
    url = cl.urls[(leader + 1) % 3]  # through a follower: submissions are forwarded to the leader
    tag = secrets.token_hex(3).upper()
    series = [f"ohlcv:test:PRIVATE{tag}{i}/USDT:1m" for i in range(5)]
    jobs = []
    for i, name in enumerate(series):
        body = {"series": name, "start": 0, "end": 30 * MIN, "priority": 9 if i == 2 else 0}
        status, answer = await call(http, "POST", url + "/v1/jobs", body, token=WORKER)
        assert status == 201, answer
        jobs.append(answer["job"]["job_id"])
    status, answer = await call(http, "GET", f"{url}/v1/jobs/{jobs[4]}/windows", token=READER)
    assert status == 200 and len(answer["windows"]) == 2, answer
    window = answer["windows"][0]["window_id"]
    status, answer = await call(http, "POST", f"{url}/v1/windows/{window}/mark-done", {"reason": "t"}, token=OPERATOR)
    assert status == 200, answer
    shown = [jobs[2], jobs[0], jobs[1]]  # priority 9 first, then submission order

    for node in cl.urls:
        text = wait_for(
            lambda n=node: (t := scrape(n)[1]) and metric(t, "backfill_completion_ratio", OTHER_LABELS) == 0.1 and t,
            20,
            f"the five jobs and the done window on {node}",
        )
        assert scrape(node)[0] == 200
        assert ratio_lines(text) == [f"backfill_completion_ratio{{{OTHER_LABELS}}} 0.1"]
        assert f"PRIVATE{tag}" not in text and not any(f'"{job_id}"' in text for job_id in jobs)
        assert metric(text, "backfill_jobs_running") == 5 and metric(text, "backfill_jobs_aggregated") == 5
        assert metric(text, "backfill_windows", 'state="pending"') == 9

        for token in (READER, WORKER, OPERATOR):
            status, text = scrape(node, token)
            assert status == 200
            lines = ratio_lines(text)
            assert len(lines) == CAP + 1, lines
            for line, job_id in zip(lines[:CAP], shown, strict=True):
                labels = f'job_id="{job_id}",series="{series[jobs.index(job_id)]}"'
                assert line == f"backfill_completion_ratio{{{labels}}} 0.0"
            assert metric(text, "backfill_completion_ratio", OTHER_LABELS) == 0.25
            assert metric(text, "backfill_jobs_running") == 5 and metric(text, "backfill_jobs_aggregated") == 2

        status, text = scrape(node, "not-a-known-token-at-all")
        assert status == 401 and '"unauthorized"' in text
