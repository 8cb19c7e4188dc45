"""The OpenAPI 3.1 document of HTTP API v1, built from ``routes.ROUTES``, and its Markdown route table.

Rules:
1. The document is generated from the same route list the server registers, so it cannot list a route the
   server lacks (a test checks both directions, and that docs/http-api.md matches :func:`render_markdown`).
2. Schemas mirror the ``provider.core`` wire models field by field.
"""

from __future__ import annotations

from typing import Any

from coordinator.routes import ROUTES, Route

__all__ = ["SCHEMAS", "build_openapi", "render_markdown"]

_INT: dict[str, Any] = {"type": "integer"}
_STR: dict[str, Any] = {"type": "string"}
_MS: dict[str, Any] = {"type": "integer", "minimum": 0, "description": "epoch milliseconds, UTC"}
_TOKEN: dict[str, Any] = {"type": "integer", "minimum": 1, "description": "fencing token"}


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


_TIME = {"oneOf": [_MS, {"type": "string", "format": "date-time"}]}
_COUNTS = _obj(("pending", "leased", "done", "failed"), pending=_INT, leased=_INT, done=_INT, failed=_INT)

#: Component schemas by name.
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": _obj(
        ("error",),
        error=_obj(
            ("code", "message"),
            code=_STR,
            message=_STR,
            field={**_STR, "description": "the offending input (body field, header or parameter)"},
            leader={"type": ["string", "null"], "description": "421 only: the leader's base URL"},
        ),
    ),
    "Empty": _obj(),
    "JobRequest": _obj(
        ("series", "start", "end"),
        series={**_STR, "example": "ohlcv:binance:BTC/USDT:1m"},
        start=_TIME,
        end=_TIME,
        priority={**_INT, "default": 0},
    ),
    "Job": _obj(
        ("job_id", "series", "start", "end", "state", "windows", "completion_ratio"),
        job_id=_STR,
        series=_STR,
        start=_MS,
        end=_MS,
        state={"enum": ["running", "done", "failed", "cancelled"]},
        windows=_COUNTS,
        completion_ratio={"type": "number", "minimum": 0, "maximum": 1},
        priority=_INT,
        retired={"type": "boolean"},
        submitted_at_ms=_MS,
        finished_at_ms=_MS,
        retired_at_ms=_MS,
    ),
    "JobAnswer": _obj(("job",), job=_ref("Job")),
    "JobList": _obj(
        ("jobs", "next_cursor"),
        jobs={"type": "array", "items": _ref("Job")},
        next_cursor={"type": ["string", "null"], "description": "cursor of the next page; null on the last"},
    ),
    "RetryAnswer": _obj(("job", "requeued"), job=_ref("Job"), requeued=_INT),
    "ClaimRequest": _obj(
        ("worker_id",),
        worker_id=_STR,
        max_windows={**_INT, "minimum": 1, "maximum": 1000, "default": 1},
        wait_ms={**_INT, "minimum": 0, "maximum": 300000, "default": 0},
    ),
    "Lease": _obj(
        ("lease_id", "window_id", "token", "series", "start", "end", "attempt", "expires_at_ms"),
        lease_id=_STR,
        window_id=_STR,
        token=_TOKEN,
        series=_STR,
        start=_MS,
        end=_MS,
        attempt={**_INT, "minimum": 1},
        expires_at_ms=_MS,
        traces={"type": "array", "maxItems": 8, "items": _STR},
    ),
    "LeaseList": _obj(("leases",), leases={"type": "array", "items": _ref("Lease")}),
    "RenewRequest": _obj(("lease_id", "token"), lease_id=_STR, token=_TOKEN),
    "RenewAnswer": _obj(("lease_id", "expires_at_ms"), lease_id=_STR, expires_at_ms=_MS),
    "CompleteRequest": _obj(
        ("lease_id", "token"), lease_id=_STR, token=_TOKEN, rows={**_INT, "minimum": 0, "default": 0}
    ),
    "FailRequest": _obj(
        ("lease_id", "token"),
        lease_id=_STR,
        token=_TOKEN,
        reason={**_STR, "default": ""},
        retryable={"type": "boolean", "default": True},
    ),
    "Window": _obj(
        ("window_id", "series", "start", "end", "state", "attempts", "rows", "last_error"),
        window_id=_STR,
        series=_STR,
        start=_MS,
        end=_MS,
        state={"enum": ["pending", "leased", "done", "failed"]},
        attempts=_INT,
        not_before_ms=_MS,
        lease_token=_INT,
        rows=_INT,
        last_error=_STR,
        jobs={"type": "array", "items": _STR},
    ),
    "WindowList": _obj(("windows",), windows={"type": "array", "items": _ref("Window")}),
    "WindowAnswer": _obj(
        ("window_id", "state"),
        window_id=_STR,
        lease_id=_STR,
        worker_id=_STR,
        state={"enum": ["pending", "leased", "done", "failed"]},
        attempts=_INT,
        not_before_ms=_MS,
        rows=_INT,
    ),
    "LeaseInfo": _obj(
        ("lease_id", "kind", "worker_id", "token", "granted_at_ms", "expires_at_ms", "stale"),
        lease_id=_STR,
        kind={"enum": ["window", "key"]},
        worker_id=_STR,
        token=_TOKEN,
        granted_at_ms=_MS,
        expires_at_ms=_MS,
        stale={"type": "boolean"},
        window_id={"type": ["string", "null"]},
        key={"type": ["string", "null"]},
    ),
    "LeaseInfoList": _obj(("leases",), leases={"type": "array", "items": _ref("LeaseInfo")}),
    "ReasonRequest": _obj(reason={**_STR, "default": ""}),
    "KeyClaimRequest": _obj(("key", "lease_ms"), key=_STR, lease_ms={**_INT, "minimum": 1, "maximum": 86400000}),
    "KeyClaimAnswer": _obj(
        ("lease", "completion_ratio"),
        lease=_obj(("token", "lease_until_ms"), token=_TOKEN, lease_until_ms=_MS, lease_id=_STR, key=_STR),
        completion_ratio={"type": "number"},
    ),
    "KeyFinishRequest": _obj(
        ("key", "token"),
        key=_STR,
        token={"oneOf": [_TOKEN, {"type": "string", "pattern": "^[0-9]+$"}]},
        reason={**_STR, "default": ""},
    ),
    "RatioAnswer": _obj(("completion_ratio",), completion_ratio={"type": "number"}),
    "Cluster": _obj(
        ("node_id", "role", "leader", "term", "commit_index", "members"),
        node_id=_STR,
        role={"enum": ["leader", "follower", "candidate"]},
        leader={"type": ["string", "null"]},
        leader_id={"type": ["string", "null"]},
        term=_INT,
        commit_index=_INT,
        last_applied=_INT,
        token_floor=_INT,
        members={
            "type": "array",
            "items": _obj(
                ("raft", "role"),
                node_id={"type": ["string", "null"]},
                raft=_STR,
                http={"type": ["string", "null"]},
                role=_STR,
                self={"type": "boolean"},
                connected={"type": "boolean"},
            ),
        },
    ),
    "Health": _obj(
        ("status", "role", "leader"),
        status={"enum": ["ok", "no_leader", "not_ready", "not_accepting", "disk_full"]},
        role=_STR,
        leader={"type": ["string", "null"]},
        node_id=_STR,
        http=_obj(
            ("state", "open", "max"),
            state={"enum": ["ok", "saturated", "not_accepting"]},
            open=_INT,
            max=_INT,
            max_per_peer=_INT,
            recent={"type": "array", "items": _STR},
            fd_free={"type": ["integer", "null"]},
        ),
        disk=_obj(
            ("state", "path", "free_bytes", "need_bytes", "resume_bytes", "raft"),
            state={"enum": ["ok", "low"]},
            path=_STR,
            free_bytes={"type": ["integer", "null"]},
            need_bytes=_INT,
            resume_bytes=_INT,
            reserve_bytes=_INT,
            raft={"enum": ["serving", "handing_off", "aside"]},
            dropped_messages=_INT,
        ),
    ),
    "Metrics": {"type": "string", "description": "Prometheus text exposition format"},
    "OpenAPI": {"type": "object", "description": "this document"},
    "StatusPage": {"type": "string", "description": "the HTML status page; it holds no data"},
}

_ERROR_TEXT = {
    400: "bad input; error.field names the field",
    401: "missing or unknown bearer token",
    403: "the token's role may not do this",
    404: "unknown id",
    409: "conflict, or lease_lost (stale token)",
    413: "body too large",
    415: "without tokens: a body that is not application/json",
    429: "a limit refused the command and nothing changed (error.code capacity); see Retry-After and error.message",
    421: "not the leader and forwarding is not possible; error.leader is the leader's URL",
    503: "no leader, commit timeout, or this node stands aside (error.code disk_full); see Retry-After",
}


def _operation(route: Route) -> dict[str, Any]:
    tag = route.path.split("/")[1] or "status"
    op: dict[str, Any] = {"operationId": route.name, "summary": route.summary, "tags": [tag]}
    params = [
        {"name": p.strip("{}"), "in": "path", "required": True, "schema": _STR}
        for p in route.path.split("/")
        if p.startswith("{")
    ]
    params += [{"name": n, "in": "query", "required": False, "schema": _STR, "description": d} for n, d in route.query]
    if params:
        op["parameters"] = params
    if route.request:
        op["requestBody"] = {
            "required": route.request not in ("ReasonRequest",),
            "content": {"application/json": {"schema": _ref(route.request)}},
        }
    ok = {"description": "OK", "content": {route.media: {"schema": _ref(route.answer)}}}
    responses: dict[str, Any] = {str(route.ok_status): ok}
    if route.name == "create_job":
        responses["200"] = {"description": "an identical live job exists", "content": ok["content"]}
    for status in sorted(set(route.errors)):
        responses[str(status)] = {
            "description": _ERROR_TEXT[status],
            "content": {"application/json": {"schema": _ref("Error")}},
        }
    op["responses"] = responses
    op["security"] = [{"bearer": []}] if route.role else []
    if route.role:
        op["x-role"] = route.role
    if route.detail_role:  # an optional token that shows more (routes.py rule 4)
        op["security"] = [{}, {"bearer": []}]
        op["x-detail-role"] = route.detail_role
    return op


def build_openapi() -> dict[str, Any]:
    """The OpenAPI 3.1 document of every route."""
    paths: dict[str, dict[str, Any]] = {}
    for route in ROUTES:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Seamless Data Provider coordinator",
            "version": "1",
            "description": "Backfill jobs, windows and fenced leases replicated by Raft. See docs/http-api.md.",
        },
        "paths": paths,
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
        "security": [{"bearer": []}],
    }


def _role_text(op: dict[str, Any]) -> str:
    if "x-detail-role" in op:
        return f"public ({op['x-detail-role']}: more)"
    return str(op.get("x-role", "public"))


def render_markdown(doc: dict[str, Any] | None = None) -> str:
    """The route table of docs/http-api.md, generated from the document."""
    doc = doc or build_openapi()
    lines = ["| method and path | role | body -> answer | errors | summary |", "|---|---|---|---|---|"]
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            body = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
            ok = next(iter(op["responses"]))
            answer = next(iter(op["responses"][ok]["content"].values()))["schema"]["$ref"].rsplit("/", 1)[1]
            request = body.get("$ref", "-").rsplit("/", 1)[-1]
            errors = " ".join(s for s in op["responses"] if s.startswith(("4", "5")))
            lines.append(
                f"| {method.upper()} {path} | {_role_text(op)} | {request} -> {ok} {answer} "
                f"| {errors or '-'} | {op['summary']} |"
            )
    return "\n".join(lines) + "\n"
