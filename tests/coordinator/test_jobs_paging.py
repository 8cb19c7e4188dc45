"""GET /v1/jobs pages (limit, cursor, state and series filters) so its answer stays bounded however many jobs a
cluster holds; the client follows the pages (issue 21)."""

from __future__ import annotations

import secrets

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import MIN, Cluster
from provider.client import CoordinatorClient

pytestmark = [pytest.mark.cluster]


async def test_pages_cover_every_job_once_through_any_node(
    shared_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    series = f"ohlcv:test:PG{secrets.token_hex(2).upper()}/USD:1m"
    url = shared_cluster.urls[0]
    submitted = []
    for k in range(12):
        status, answer = await call(
            http, "POST", f"{url}/v1/jobs", {"series": series, "start": k * MIN, "end": (k + 1) * MIN}
        )
        assert status == 201
        submitted.append(answer["job"]["job_id"])
    seen: list[str] = []
    query = f"series={series}&limit=5"
    for node_url in [*shared_cluster.urls, shared_cluster.urls[0]]:  # one page from each node, followers included
        status, page = await call(http, "GET", f"{node_url}/v1/jobs?{query}")
        assert status == 200 and len(page["jobs"]) <= 5
        seen += [job["job_id"] for job in page["jobs"]]
        if page["next_cursor"] is None:
            break
        query = f"series={series}&limit=5&cursor={page['next_cursor']}"
    assert seen == submitted
    client = CoordinatorClient(shared_cluster.urls)
    try:
        assert [job.job_id for job in await client.list_jobs(series=series)] == submitted
        assert len(await client.list_jobs()) >= 12
    finally:
        await client.aclose()


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("limit=0", "limit"),
        ("limit=5001", "limit"),
        ("limit=x", "limit"),
        ("cursor=-1", "cursor"),
        ("state=zz", "state"),
    ],
)
async def test_bad_paging_parameters_are_400s(
    shared_cluster: Cluster, http: aiohttp.ClientSession, query: str, field: str
) -> None:
    status, answer = await call(http, "GET", f"{shared_cluster.urls[0]}/v1/jobs?{query}")
    assert status == 400 and answer["error"]["field"] == field, answer
