"""A node without tokens (the loopback default) cannot be driven by a web page: cross-origin writes, non-JSON
bodies and DNS-rebinding Host names are refused before anything runs (coordinator/_browser.py)."""

from __future__ import annotations

import secrets
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import make_mocked_request

from coordinator._browser import browser_refusal
from devkit.api import call
from devkit.cluster import MIN, Cluster


def refusal(method: str, headers: dict[str, str], **allowed: Any) -> tuple[int | None, str | None]:
    request = make_mocked_request(method, "/v1/jobs", headers=headers)
    found = browser_refusal(
        request,
        bound_host=allowed.get("bound", "127.0.0.1"),
        allowed_hosts=allowed.get("hosts", ()),
        allowed_origins=allowed.get("origins", ()),
    )
    return (None, None) if found is None else (found.code, found.field)


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("127.0.0.1:8700", (None, None)),
        ("[::1]:8700", (None, None)),
        ("localhost:8700", (None, None)),
        ("LocalHost", (None, None)),
        ("coord-1:8701", (None, None)),  # the --http host
        ("rebind.evil.example:8700", ("forbidden", "Host")),
        ("", ("forbidden", "Host")),
    ],
)
def test_host_must_name_this_node(host: str, expected: tuple[Any, Any]) -> None:
    """A DNS-rebinding page sends its own name as Host; IP literals, localhost and the --http host pass."""
    assert refusal("GET", {"Host": host}, bound="coord-1") == expected


def test_allowed_hosts_and_origins_extend_the_defaults() -> None:
    assert refusal("GET", {"Host": "ops.internal:80"}, hosts=("ops.internal",)) == (None, None)
    post = {"Host": "127.0.0.1:8700", "Origin": "https://grafana.internal", "Content-Type": "application/json"}
    assert refusal("POST", post) == ("forbidden", "Origin")
    assert refusal("POST", post, origins=("https://grafana.internal",)) == (None, None)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Origin": "http://127.0.0.1:8700", "Content-Type": "application/json"}, (None, None)),  # same origin
        ({"Origin": "https://evil.example", "Content-Type": "application/json"}, ("forbidden", "Origin")),
        ({"Origin": "null", "Content-Type": "application/json"}, ("forbidden", "Origin")),  # sandboxed page
        ({"Content-Type": "text/plain", "Content-Length": "2"}, ("unsupported_media_type", "Content-Type")),
        ({"Content-Type": "application/json; charset=utf-8", "Content-Length": "2"}, (None, None)),
        ({}, (None, None)),  # no body, no type: a bare POST (cancel, retry) from a script
    ],
)
def test_writes_need_the_nodes_origin_and_a_json_body(headers: dict[str, str], expected: tuple[Any, Any]) -> None:
    assert refusal("POST", {"Host": "127.0.0.1:8700", **headers}) == expected


@pytest.mark.cluster
async def test_a_cross_origin_text_plain_post_creates_nothing(
    shared_cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """What a malicious page can send without a preflight: a text/plain POST with its Origin. It is refused (403,
    and 415 without the Origin), no job is created, and the same body as JSON from a script is served."""
    url = shared_cluster.urls[0]
    series = f"ohlcv:test:WEB{secrets.token_hex(2).upper()}/USD:1m"
    body = f'{{"series": "{series}", "start": 0, "end": {30 * MIN}}}'.encode()
    page = {"Content-Type": "text/plain", "Origin": "https://evil.example"}
    async with http.post(f"{url}/v1/jobs", data=body, headers=page) as answer:
        assert answer.status == 403 and (await answer.json())["error"]["field"] == "Origin"
    async with http.post(f"{url}/v1/jobs", data=body, headers={"Content-Type": "text/plain"}) as answer:
        error = (await answer.json())["error"]
        assert answer.status == 415 and error["field"] == "Content-Type" and "application/json" in error["message"]
    status, jobs = await call(http, "GET", f"{url}/v1/jobs")
    assert status == 200 and not [job for job in jobs["jobs"] if job["series"] == series]
    status, created = await call(http, "POST", f"{url}/v1/jobs", raw=body)
    assert status == 201 and created["job"]["series"] == series


@pytest.mark.cluster
async def test_a_rebinding_host_cannot_read(shared_cluster: Cluster, http: aiohttp.ClientSession) -> None:
    """A read under a foreign Host name (DNS rebinding) is a 403 naming Host, through a follower as well."""
    for url in shared_cluster.urls:
        port = url.rsplit(":", 1)[1]
        async with http.get(f"{url}/v1/jobs", headers={"Host": f"rebind.evil.example:{port}"}) as answer:
            body = await answer.json()
            assert answer.status == 403 and body["error"]["field"] == "Host", body
