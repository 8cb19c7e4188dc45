"""Every route of coordinator.routes.ROUTES refuses a missing, unknown or too weak bearer token (401/403) and
changes nothing when it does; bodies above the cap get 413, whether sized or chunked; on leader and follower."""

from __future__ import annotations

import http.client
import json
import secrets
from typing import Any
from urllib.parse import urlsplit

import pytest

from coordinator.auth import ROLES
from coordinator.routes import ROUTES, Route
from devkit.polling import http_json, wait_for

pytestmark = [pytest.mark.cluster]

CAP_BYTES = 4096  # SECURE_CONFIG's coordinator.max_body_bytes
PATH_VALUES = {"{job_id}": "job-1", "{lease_id}": "lease-1", "{window_id}": "w_eA"}
#: Bodies that would change the table if the request were accepted.
BODIES: dict[str, dict[str, Any]] = {
    "/v1/jobs": {"series": "ohlcv:auth:EVIL/USDT:1m", "start": 0, "end": 3_600_000},
    "/v1/windows/claim": {"worker_id": "intruder", "max_windows": 10},
    "/v1/leases/claim": {"key": "intruder:60:0", "lease_ms": 60_000},
}
PROTECTED = [r for r in ROUTES if r.role is not None]


def path_of(route: Route) -> str:
    path = route.path
    for name, value in PATH_VALUES.items():
        path = path.replace(name, value)
    return path


def send(
    url: str, route: Route, *, authorization: str | None = None, body: bytes | None = None, chunked: bool = False
) -> tuple[int, Any]:
    """One raw request (so headers and framing are exactly as given); returns (status, JSON body or text)."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    headers = {"Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    try:
        if body is None and route.method in ("POST", "DELETE"):
            body = json.dumps(BODIES.get(route.path, {})).encode()
        if chunked and body is not None:
            headers["Transfer-Encoding"] = "chunked"
            conn.putrequest(route.method, path_of(route))
            for name, value in headers.items():
                conn.putheader(name, value)
            conn.endheaders()
            for start in range(0, len(body), 1000):
                piece = body[start : start + 1000]
                conn.send(f"{len(piece):x}\r\n".encode() + piece + b"\r\n")
            conn.send(b"0\r\n\r\n")
        else:
            conn.request(route.method, path_of(route), body=body, headers=headers)
        answer = conn.getresponse()
        raw = answer.read()
    finally:
        conn.close()
    try:
        return answer.status, json.loads(raw)
    except ValueError:
        return answer.status, raw.decode(errors="replace")


def state(secured: Any) -> Any:
    """What a refused request must not change: jobs, live leases and the fencing counter, as the leader sees them."""
    url = secured.cluster.nodes[secured.leader].url
    token = secured.tokens["reader"]
    return (
        http_json("GET", url + "/v1/jobs", token=token)[1],
        http_json("GET", url + "/v1/leases", token=token)[1],
        http_json("GET", url + "/v1/cluster", token=token)[1]["token_floor"],
    )


def node_url(secured: Any, which: str) -> str:
    return secured.cluster.nodes[secured.leader if which == "leader" else secured.follower].url


@pytest.mark.parametrize("which", ["leader", "follower"])
def test_missing_unknown_and_malformed_tokens_get_401(secured, which):
    """No token, an unknown token, another scheme or a token prefix: 401 on every protected route, nothing changes."""
    url = node_url(secured, which)
    before = state(secured)
    operator = secured.tokens["operator"]
    for route in PROTECTED:
        for authorization in (
            None,
            f"Bearer {secrets.token_hex(16)}",
            f"Basic {operator}",
            f"Bearer {operator[:-1]}",
            "Bearer ",
            operator,
        ):
            status, body = send(url, route, authorization=authorization)
            assert status == 401, (route.method, route.path, authorization, status, body)
            assert body["error"]["code"] == "unauthorized" and body["error"]["field"] == "Authorization"
    assert state(secured) == before


@pytest.mark.parametrize("which", ["leader", "follower"])
def test_weaker_roles_get_403_and_the_right_role_passes(secured, which):
    """A role below the route's gets 403 and changes nothing; the route's own role is let through (no 401/403)."""
    url = node_url(secured, which)
    before = state(secured)
    for route in PROTECTED:
        needed = ROLES.index(route.role)
        for role in ROLES[:needed]:
            status, body = send(url, route, authorization=f"Bearer {secured.tokens[role]}")
            assert status == 403 and body["error"]["code"] == "forbidden", (route.path, role, status, body)
    assert state(secured) == before
    for route in PROTECTED:
        if not route.write or route.path not in BODIES:  # harmless to run for real: reads and refusals
            status, body = send(url, route, authorization=f"Bearer {secured.tokens[route.role]}")
            assert status not in (401, 403), (route.path, status, body)


def test_public_routes_need_no_token(secured):
    """/healthz, /health, /metrics and /openapi.json answer without a token."""
    url = node_url(secured, "follower")
    public = [r for r in ROUTES if r.role is None]
    assert {"/healthz", "/metrics", "/openapi.json"} <= {r.path for r in public}
    for route in public:
        status, _ = send(url, route)
        assert status == 200, route.path


@pytest.mark.parametrize("which", ["leader", "follower"])
@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_oversized_bodies_get_413(secured, which, chunked):
    """Every POST route refuses a body one byte above the cap with 413 (declared or chunked); at the cap it is
    parsed (and refused for its content instead)."""
    url = node_url(secured, which)
    before = state(secured)

    def padded(size: int) -> bytes:
        raw = json.dumps({"pad": ""}).encode()
        return json.dumps({"pad": "x" * (size - len(raw))}).encode()

    for route in (r for r in ROUTES if r.method == "POST"):
        status, body = send(
            url,
            route,
            authorization=f"Bearer {secured.tokens['operator']}",
            body=padded(CAP_BYTES + 1),
            chunked=chunked,
        )
        assert status == 413 and body["error"]["code"] == "too_large", (route.path, status, body)
        status, body = send(
            url, route, authorization=f"Bearer {secured.tokens['operator']}", body=padded(CAP_BYTES), chunked=chunked
        )
        assert status in (400, 404), (route.path, status, body)  # unknown field "pad" or unknown id
    assert state(secured) == before
    wait_for(lambda: http_json("GET", url + "/healthz")[0] == 200, 10, "the node to stay healthy")


@pytest.mark.parametrize("which", ["leader", "follower"])
def test_deeply_nested_bodies_get_400_not_500(secured, which):
    """A body nested deeper than Python's recursion limit (2,000 levels fit under the cap) is a 400 on every POST
    route, never an internal error (json.loads raises RecursionError, which is not a ValueError)."""
    url = node_url(secured, which)
    nested = [b"[" * 2000 + b"]" * 2000, b"[" * 4000]  # balanced, and unterminated
    for route in (r for r in ROUTES if r.method == "POST"):
        for body in nested:
            assert len(body) <= CAP_BYTES
            status, answer = send(url, route, authorization=f"Bearer {secured.tokens['operator']}", body=body)
            assert status == 400 and answer["error"]["field"] == "(body)", (route.path, status, answer)
    logs = "".join(node.log_path.read_text(errors="replace") for node in secured.cluster.nodes)
    assert "http.request_failed" not in logs and "RecursionError" not in logs
