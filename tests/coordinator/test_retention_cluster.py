"""Job retention on a real 3-node cluster: a finished job's windows leave every replica, its summary stays."""

from __future__ import annotations

import re
import urllib.request
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import FAST_CONFIG, MIN, SERIES, Cluster
from devkit.polling import http_json, wait_for
from provider.core import Job

pytestmark = [pytest.mark.cluster]

RETENTION_CONFIG: dict[str, Any] = {
    **FAST_CONFIG,
    "coordinator": {**FAST_CONFIG["coordinator"], "job_retention_s": 2},
}


def local_figures(url: str) -> dict[str, float]:
    """This node's own table figures from /metrics (a local read: it proves what this replica holds)."""
    with urllib.request.urlopen(url + "/metrics", timeout=2) as answer:
        text = answer.read().decode()
    figures = {}
    for name in ("done", "pending", "leased", "failed"):
        found = re.search(rf'^backfill_windows\{{state="{name}"\}} (\S+)$', text, re.M)
        figures[name] = float(found.group(1)) if found else -1.0
    retired = re.search(r"^backfill_jobs_retired (\S+)$", text, re.M)
    figures["retired"] = float(retired.group(1)) if retired else -1.0
    return figures


async def run_job(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    """Submit 30 minutes (two windows), claim and complete them; the job is then done."""
    status, body = await call(http, "POST", url + "/v1/jobs", {"series": SERIES, "start": 0, "end": 30 * MIN})
    assert status == 201, body
    job = dict(body["job"])
    status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "w", "max_windows": 5})
    assert status == 200 and len(body["leases"]) == 2, body
    for lease in body["leases"]:
        done = {"lease_id": lease["lease_id"], "token": lease["token"], "rows": 15}
        status, answer = await call(http, "POST", url + "/v1/windows/complete", done)
        assert status == 200, answer
    return job


async def test_a_finished_job_retires_on_every_node_and_a_new_job_over_its_range_works(
    cluster_factory: Any, http: aiohttp.ClientSession
) -> None:
    """With job_retention_s=2 the done job's windows leave all three replicas (backfill_windows falls to 0,
    backfill_jobs_retired is 1), GET /v1/jobs/{id} on each node still shows it marked retired with its counts, and
    the same range submitted again is a new job whose windows are granted and completed."""
    cl: Cluster = cluster_factory(config=RETENTION_CONFIG)
    url = cl.urls[cl.wait_leader()]
    job = await run_job(http, url)
    for node_url in cl.urls:
        wait_for(lambda u=node_url: local_figures(u)["done"] == 2, 20, f"both windows done on {node_url}")
    for node_url in cl.urls:
        wait_for(
            lambda u=node_url: local_figures(u) == {"done": 0, "pending": 0, "leased": 0, "failed": 0, "retired": 1},
            30,
            f"the job retired on {node_url}",
        )
        status, body = http_json("GET", f"{node_url}/v1/jobs/{job['job_id']}")
        assert status == 200, body
        summary = Job.from_dict(body["job"])
        assert summary.retired and summary.state == "done" and summary.windows.done == 2
        assert summary.finished_at_ms > 0 and summary.retired_at_ms - summary.finished_at_ms >= 2000
        status, listing = http_json("GET", f"{node_url}/v1/jobs")
        assert [j["job_id"] for j in listing["jobs"] if j.get("retired")] == [job["job_id"]]
    url = cl.urls[cl.wait_leader()]
    again = await run_job(http, url)
    assert again["job_id"] != job["job_id"] and again["windows"]["pending"] == 2
    status, body = await call(http, "GET", f"{url}/v1/jobs/{again['job_id']}")
    assert status == 200 and body["job"]["state"] == "done" and body["job"]["windows"]["done"] == 2, body
