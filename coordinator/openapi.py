"""The OpenAPI 3.1 document of HTTP API v1, built from ``routes.ROUTES``, and its Markdown route table.

Rules:
1. The document is generated from the same route list the server registers, so it cannot list a route the
   server lacks (a test checks both directions, and that docs/http-api.md matches :func:`render_markdown`).
2. The schemas of the wire models (``provider.core.WIRE_MODELS``: request bodies, jobs, leases) are generated from
   the models themselves by :func:`model_schema`: field names, types, required fields, defaults and the keywords a
   field declares (``provider/core/_models.py`` rule 4). A field added to a model appears here without an edit.
3. Answers that are not wire models (lists, error bodies, health) are declared in :data:`ANSWERS`, by name.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any

from coordinator.routes import ROUTES, Route
from provider.core import WINDOW_STATES, WIRE_MODELS

__all__ = ["ANSWERS", "SCHEMAS", "build_openapi", "model_schema", "render_markdown"]

_INT: dict[str, Any] = {"type": "integer"}
_STR: dict[str, Any] = {"type": "string"}
_MS: dict[str, Any] = {"type": "integer", "minimum": 0, "description": "epoch milliseconds, UTC"}
_TOKEN: dict[str, Any] = {"type": "integer", "minimum": 1, "description": "fencing token"}
_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _obj(required: tuple[str, ...] = (), **props: Any) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": props}
    if required:
        schema["required"] = list(required)
    return schema


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{name}"}


def _type_schema(hint: Any) -> dict[str, Any]:
    """The JSON Schema of a field's Python type: scalars, ``X | None``, ``tuple[X, ...]`` and nested models."""
    if hint in _JSON_TYPES:
        return {"type": _JSON_TYPES[hint]}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return _ref(hint.__name__)
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType) and len(args) == 2 and type(None) in args:
        inner = _type_schema(next(a for a in args if a is not type(None)))
        return {"type": [inner["type"], "null"]}
    if typing.get_origin(hint) is tuple and len(args) == 2 and args[1] is Ellipsis:
        return {"type": "array", "items": _type_schema(args[0])}
    raise TypeError(f"no JSON Schema for the field type {hint!r}")  # a new model with a new kind of field


def _json(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def model_schema(model: type[Any]) -> dict[str, Any]:
    """The JSON Schema of a wire model (rule 2): required fields are those without a ``_optional`` default."""
    hints = typing.get_type_hints(model)
    optional: dict[str, Any] = getattr(model, "_optional", {})
    props: dict[str, Any] = {}
    for field in dataclasses.fields(model):
        declared = dict(field.metadata.get("schema", {}))
        schema = {} if "oneOf" in declared else _type_schema(hints[field.name])
        schema.update(declared)
        if field.name in optional:
            schema["default"] = _json(optional[field.name])
        props[field.name] = schema
    return _obj(tuple(f.name for f in dataclasses.fields(model) if f.name not in optional), **props)


_STATE = {"enum": list(WINDOW_STATES)}

#: Answers and bodies that are not wire models, by name (rule 3).
ANSWERS: dict[str, dict[str, Any]] = {
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
    "JobAnswer": _obj(("job",), job=_ref("Job")),
    "JobList": _obj(
        ("jobs", "next_cursor"),
        jobs={"type": "array", "items": _ref("Job")},
        next_cursor={"type": ["string", "null"], "description": "cursor of the next page; null on the last"},
    ),
    "RetryAnswer": _obj(("job", "requeued"), job=_ref("Job"), requeued=_INT),
    "LeaseList": _obj(
        ("leases",),
        leases={"type": "array", "items": _ref("Lease")},
        completed={
            "type": "array",
            "items": {"type": "object"},
            "description": "only when the claim carried `complete`: per completion, in order, the complete route's "
            "answer or {lease_id, error: {code, message}}",
        },
    ),
    "RenewAnswer": _obj(("lease_id", "expires_at_ms"), lease_id=_STR, expires_at_ms=_MS),
    "Window": _obj(
        ("window_id", "series", "start", "end", "state", "attempts", "rows", "last_error"),
        window_id=_STR,
        series=_STR,
        start=_MS,
        end=_MS,
        state=_STATE,
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
        state=_STATE,
        attempts=_INT,
        not_before_ms=_MS,
        rows=_INT,
    ),
    "LeaseInfoList": _obj(("leases",), leases={"type": "array", "items": _ref("LeaseInfo")}),
    "KeyClaimAnswer": _obj(
        ("lease", "completion_ratio"),
        lease=_obj(("token", "lease_until_ms"), token=_TOKEN, lease_until_ms=_MS, lease_id=_STR, key=_STR),
        completion_ratio={"type": "number"},
    ),
    "RatioAnswer": _obj(("completion_ratio",), completion_ratio={"type": "number"}),
    "BudgetShare": _obj(
        ("source", "workers", "requests_per_minute", "weight_per_minute", "blocked_ms", "version", "ttl_ms"),
        source=_STR,
        workers={**_INT, "minimum": 0, "description": "live workers of the source"},
        requests_per_minute={"type": ["number", "null"], "description": "this worker's grant (null: unlimited)"},
        weight_per_minute={"type": ["number", "null"], "description": "this worker's grant (null: unlimited)"},
        target_requests_per_minute={"type": ["number", "null"], "description": "fair share per worker"},
        target_weight_per_minute={"type": ["number", "null"], "description": "fair share per worker"},
        blocked_ms={**_INT, "minimum": 0, "description": "the source is blocked for every worker this long"},
        blocked_reason={"enum": ["", "banned", "rate_limited", "weight", "blocked"]},
        version={**_INT, "description": "changes whenever an answer of the source may change"},
        ttl_ms={**_INT, "description": "the grant lapses this long after the heartbeat was sent"},
    ),
    "BudgetView": _obj(("sources",), sources={"type": "array", "items": {"type": "object"}}),
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

#: Component schemas by name: the wire models' (generated) and the declared answers.
SCHEMAS: dict[str, dict[str, Any]] = {**{m.__name__: model_schema(m) for m in WIRE_MODELS}, **ANSWERS}

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
            "required": bool(SCHEMAS[route.request].get("required")),  # a body with required fields
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
