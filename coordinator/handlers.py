"""One handler per route of ``routes.ROUTES``: validate with the wire models, call the node, shape the answer.

Rules:
1. Handlers never touch replication: they ask the node only (``node.py`` rule 8). Reads go through
   ``node.read``, writes through ``node.execute`` / ``node.claim`` (which raise ``NotLeaderError`` on followers;
   the API wrapper then forwards). Table reads first pass :meth:`Handlers._consistency`: a read barrier on the
   leader (``NotLeaderError`` on a follower, which forwards), or nothing with ``?consistency=stale``; the answer
   says which in ``X-Consistency`` and carries the applied Raft index the data is at least as new as
   (``X-Raft-Applied-Index``).
2. The leader stamps the policy into commands here: TTL, max_attempts, retry backoff and window_bars come from
   this node's config, so replicas never depend on their own config files.
3. Lease events are logged with ``lease_id``, ``window_id``, ``token`` and ``worker_id``: grants, renewals and
   completions at DEBUG (thousands per second under load), failures, expiries and operator actions at INFO or
   WARNING, rejections (409 lease_lost) at INFO. The DEBUG lines of the claim and complete routes are built only
   when DEBUG is on for this logger (:func:`_debug_on`): a filtered structlog call still cost 2.4 us.
4. A claim that carries completions (``complete``) submits each as the complete route would, then the claim, in
   one step: they apply in that order, and share one Raft entry when the group commit has room. Each completion
   answers in ``completed``, in order: the complete route's body, or ``{lease_id, error: {code, message}}``
   (``lease_lost``, ``not_found``, or ``timeout`` / ``not_leader`` when that one command was not confirmed: the
   worker completes it again; complete is idempotent per token). A completion's error never fails the claim, so
   granted leases are never lost with it; the claim's own error fails the request, whose retry completes nothing
   twice. Such a claim does not long-poll: the worker learns at once that its windows are done.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiohttp import web

from coordinator._call import Call, HttpRequest
from coordinator.budget import share_body
from coordinator.errors import ApiError, BadRequestError, NotFoundError, from_result
from coordinator.node import CoordinatorNode
from coordinator.routes import METRICS_DETAIL_ROLE, Route
from provider.core import (
    JOB_STATES,
    WIRE_MODELS,
    BudgetHeartbeatRequest,
    ClaimRequest,
    CompleteRequest,
    FailRequest,
    JobRequest,
    KeyClaimRequest,
    KeyFinishRequest,
    ReasonRequest,
    RenewRequest,
    WireFormatError,
    tracing,
)
from provider.core.obs import METRICS_CONTENT_TYPE, get_logger

__all__ = ["Handlers"]

#: Window states a ``state=`` filter accepts.
WINDOW_STATES = ("pending", "leased", "done", "failed")

log = get_logger("coordinator.api")
_std_log = logging.getLogger("coordinator.api")
M = TypeVar("M")
_MODELS = {model.__name__: model for model in WIRE_MODELS}


def _debug_on() -> bool:
    """Whether this module's DEBUG lines are emitted (rule 3; the stdlib caches the answer per level)."""
    return _std_log.isEnabledFor(logging.DEBUG)


#: ``GET /v1/jobs`` pages: the default and the largest ``limit``.
JOBS_PAGE_DEFAULT, JOBS_PAGE_MAX = 500, 5000


def _query_int(query: Any, name: str, default: int, lo: int, hi: int) -> int:
    text = query.get(name)
    if text is None or text == "":
        return default
    if not (text.isascii() and text.isdigit()) or not lo <= int(text) <= hi:
        raise BadRequestError(f"query parameter {name}={text[:40]!r} must be an integer from {lo} to {hi}", field=name)
    return int(text)


def _trace_of(request: HttpRequest) -> str:
    """The trace a new job joins: this node's server span when tracing is on here, else the caller's valid
    ``traceparent`` (passed through untraced nodes), else none."""
    mine = tracing.current_traceparent()
    if mine:
        return mine
    given = request.headers.get("traceparent", "")
    return given if tracing.valid_traceparent(given) else ""


def parse(model: type[M], data: dict[str, Any]) -> M:
    """Validate a body with a wire model; a bad field becomes a 400 naming it."""
    try:
        parsed: M = model.from_dict(data)  # type: ignore[attr-defined]
        return parsed
    except WireFormatError as exc:
        raise BadRequestError(str(exc), field=exc.field) from None


class Handlers:
    """The route handlers of one node."""

    def __init__(self, node: CoordinatorNode, openapi: dict[str, Any]) -> None:
        self.node = node
        self._openapi = openapi

    async def _run(self, call: Call, op: str, args: dict[str, Any]) -> Any:
        return await self.node.execute(op, args, call.client_id, call.request_id)

    def command_route(self, route: Route) -> Callable[[Call], Awaitable[web.Response]]:
        """The handler of a route declared with a ``command`` (``routes.py`` rule 5): path parameters and the parsed
        body are the command's arguments, its value the answer (``route.ok_status``)."""
        op = route.command
        model = _MODELS.get(route.request) if route.request else None
        if op is None or (route.request and model is None):
            raise ValueError(f"route {route.name}: a command route needs a command and a wire model as its request")

        async def handle(call: Call) -> web.Response:
            args: dict[str, Any] = dict(call.request.match_info)
            if model is not None:
                args.update(parse(model, call.body).to_dict())
            value = await self._run(call, op, args)
            return web.json_response(value, status=route.ok_status)

        return handle

    async def _consistency(self, call: Call) -> dict[str, str]:
        """Make the coming table read linearizable unless ``?consistency=stale``; return the answer's headers."""
        mode = call.request.query.get("consistency", "linearizable")
        if mode not in ("linearizable", "stale"):
            raise BadRequestError(
                f"query parameter consistency={mode!r} must be linearizable (default) or stale", field="consistency"
            )
        if mode == "linearizable":
            await self.node.read_barrier()
        # Read before the table: the data served next is at least as new as this index.
        return {"X-Consistency": mode, "X-Raft-Applied-Index": str(self.node.applied_index)}

    # -- jobs ---------------------------------------------------------------------------------------------------

    async def create_job(self, call: Call) -> web.Response:
        req = parse(JobRequest, call.body)
        owner = call.principal.name
        if self.node.is_leader:  # a follower forwards: the leader admits (``_admission.py`` rule 3)
            self.node.admission.admit_job(owner, self.node.backlog)
        cfg = self.node.cfg
        limits = {
            "live_jobs": cfg.max_live_jobs_per_client,
            "outstanding_windows": cfg.max_outstanding_windows_per_client,
        }
        value = await self._run(
            call,
            "submit_job",
            {
                "series": req.series,
                "start": req.start,
                "end": req.end,
                "priority": req.priority,
                "window_bars": self.node.backfill.window_bars,
                "max_windows": cfg.max_windows_per_job,
                "owner": owner,
                "limits": limits,
                "trace": _trace_of(call.request),
            },
        )
        job = value["job"]
        log.info(
            "job.submitted",
            job_id=job["job_id"],
            series=job["series"],
            created=value["created"],
            windows=sum(job["windows"].values()),
        )
        return web.json_response({"job": job}, status=201 if value["created"] else 200)

    async def list_jobs(self, call: Call) -> web.Response:
        """A page of jobs in submission order: ``limit`` (default 500, at most 5000), ``cursor`` (the previous
        page's ``next_cursor``), ``state`` and ``series`` filters. ``next_cursor`` is null on the last page."""
        query = call.request.query
        limit = _query_int(query, "limit", JOBS_PAGE_DEFAULT, 1, JOBS_PAGE_MAX)
        after = _query_int(query, "cursor", 0, 0, 2**62)
        state = query.get("state") or None
        if state is not None and state not in JOB_STATES:
            allowed = ", ".join(JOB_STATES)
            raise BadRequestError(f"query parameter state={state!r} must be one of {allowed}", field="state")
        series = query.get("series") or None
        headers = await self._consistency(call)
        jobs, next_seq = self.node.read(lambda t: t.jobs_page(limit, after, state, series))
        cursor = None if next_seq is None else str(next_seq)
        return web.json_response({"jobs": jobs, "next_cursor": cursor}, headers=headers)

    async def get_job(self, call: Call) -> web.Response:
        job_id = call.param("job_id")
        headers = await self._consistency(call)
        job = self.node.read(lambda t: t.job(job_id))
        if job is None:
            raise NotFoundError(f"job_id {job_id!r} is not known", field="job_id")
        return web.json_response({"job": job}, headers=headers)

    async def job_windows(self, call: Call) -> web.Response:
        job_id = call.param("job_id")
        state = call.request.query.get("state") or None
        if state is not None and state not in WINDOW_STATES:
            allowed = ", ".join(WINDOW_STATES)
            raise BadRequestError(f"query parameter state={state!r} must be one of {allowed}", field="state")
        headers = await self._consistency(call)
        windows = self.node.read(lambda t: t.job_windows(job_id, state))
        if windows is None:
            raise NotFoundError(f"job_id {job_id!r} is not known", field="job_id")
        return web.json_response({"windows": windows}, headers=headers)

    async def cancel_job(self, call: Call) -> web.Response:
        value = await self._run(call, "cancel_job", {"job_id": call.param("job_id")})
        log.info("job.cancelled", job_id=value["job"]["job_id"])
        return web.json_response(value)

    async def retry_job(self, call: Call) -> web.Response:
        value = await self._run(call, "retry_job", {"job_id": call.param("job_id")})
        log.info("job.retried", job_id=value["job"]["job_id"], requeued=value["requeued"])
        return web.json_response(value)

    # -- window leases ------------------------------------------------------------------------------------------

    async def claim_windows(self, call: Call) -> web.Response:
        req = parse(ClaimRequest, call.body)
        claiming = self.node.claim(
            req.worker_id, req.max_windows, 0 if req.complete else req.wait_ms, call.client_id, call.request_id
        )
        if req.complete:  # rule 4: the completions are queued before the claim's command
            *completed, value = await asyncio.gather(
                *(self._complete_item(call, index, done) for index, done in enumerate(req.complete)),
                claiming,
                return_exceptions=True,
            )
            if isinstance(value, BaseException):
                raise value
            value = {**value, "completed": completed}
        else:
            value = await claiming
        for lease in value["leases"] if _debug_on() else ():
            log.debug(
                "lease.granted",
                lease_id=lease["lease_id"],
                window_id=lease["window_id"],
                token=lease["token"],
                worker_id=req.worker_id,
                attempt=lease["attempt"],
            )
        return web.json_response(value)

    async def _complete_item(self, call: Call, index: int, req: CompleteRequest) -> dict[str, Any]:
        """One completion a claim carries (rule 4): the complete route's answer, or ``{lease_id, error}``."""
        request_id = f"{call.request_id}#complete{index}" if call.request_id else ""
        args = {"lease_id": req.lease_id, "token": req.token, "rows": req.rows}
        try:
            value: dict[str, Any] = await self.node.execute("complete", args, call.client_id, request_id)
        except ApiError as exc:
            return {"lease_id": req.lease_id, **exc.body()}
        if _debug_on():
            log.debug(
                "lease.completed", lease_id=req.lease_id, token=req.token, window_id=value["window_id"], rows=req.rows
            )
        return value

    async def renew_window(self, call: Call) -> web.Response:
        req = parse(RenewRequest, call.body)
        value = await self._run(
            call, "renew", {"lease_id": req.lease_id, "token": req.token, "ttl_ms": self.node.lease_ttl_ms}
        )
        return web.json_response(value)

    async def complete_window(self, call: Call) -> web.Response:
        req = parse(CompleteRequest, call.body)
        value = await self._run(call, "complete", {"lease_id": req.lease_id, "token": req.token, "rows": req.rows})
        if _debug_on():
            log.debug(
                "lease.completed", lease_id=req.lease_id, token=req.token, window_id=value["window_id"], rows=req.rows
            )
        return web.json_response(value)

    async def fail_window(self, call: Call) -> web.Response:
        req = parse(FailRequest, call.body)
        backfill = self.node.backfill
        value = await self._run(
            call,
            "fail",
            {
                "lease_id": req.lease_id,
                "token": req.token,
                "reason": req.reason,
                "retryable": req.retryable,
                "max_attempts": backfill.max_attempts,
                "retry_backoff_ms": backfill.retry_backoff_ms,
            },
        )
        log.info(
            "lease.failed",
            lease_id=req.lease_id,
            token=req.token,
            window_id=value["window_id"],
            state=value["state"],
            reason=req.reason[:200],
        )
        return web.json_response(value)

    async def list_leases(self, call: Call) -> web.Response:
        stale = call.request.query.get("stale", "false").lower()
        if stale not in ("true", "false", "1", "0"):
            raise BadRequestError(f"query parameter stale={stale!r} must be true or false", field="stale")
        headers = await self._consistency(call)
        now = self.node.clock.wall_ms()
        leases = self.node.read(lambda t: t.lease_infos(now, stale_only=stale in ("true", "1")))
        return web.json_response({"leases": leases}, headers=headers)

    # -- operator actions ---------------------------------------------------------------------------------------

    async def release_lease(self, call: Call) -> web.Response:
        req = parse(ReasonRequest, call.body)
        value = await self._run(call, "release", {"lease_id": call.param("lease_id")})
        log.warning("lease.released", lease_id=value["lease_id"], reason=req.reason, by=call.principal.name)
        return web.json_response(value)

    async def requeue_window(self, call: Call) -> web.Response:
        return await self._operate(call, "requeue", event="window.requeued")

    async def mark_window_done(self, call: Call) -> web.Response:
        return await self._operate(call, "mark_done", event="window.marked_done")

    async def _operate(self, call: Call, op: str, *, event: str) -> web.Response:
        req = parse(ReasonRequest, call.body)
        value = await self._run(call, op, {"window_id": call.param("window_id"), "reason": req.reason})
        log.warning(event, window_id=value["window_id"], reason=req.reason, by=call.principal.name)
        return web.json_response(value)

    # -- QMTL keyed leases --------------------------------------------------------------------------------------

    async def claim_key(self, call: Call) -> web.Response:
        req = parse(KeyClaimRequest, call.body)
        value = await self._run(
            call,
            "key_claim",
            {
                "key": req.key,
                "lease_ms": req.lease_ms,
                "worker_id": call.principal.name,
                "max_keys": self.node.cfg.max_keys,
            },
        )
        log.debug("lease.key_granted", key=req.key, token=value["lease"]["token"], lease_id=value["lease"]["lease_id"])
        return web.json_response(value)

    async def complete_key(self, call: Call) -> web.Response:
        req = parse(KeyFinishRequest, call.body)
        return web.json_response(await self._run(call, "key_complete", {"key": req.key, "token": req.token}))

    async def fail_key(self, call: Call) -> web.Response:
        req = parse(KeyFinishRequest, call.body)
        value = await self._run(call, "key_fail", {"key": req.key, "token": req.token, "reason": req.reason})
        return web.json_response(value)

    # -- shared exchange budgets (soft state of the leader: ``budget.py``) ------------------------------------

    async def budget_heartbeat(self, call: Call) -> web.Response:
        req = parse(BudgetHeartbeatRequest, call.body)
        await self.node.await_leader()  # a follower forwards (NotLeaderError)
        share = await self.node.budget.heartbeat(req, self.node.term)
        if isinstance(share, str):
            raise from_result("capacity", share, "source")
        if share.blocked_ms and req.blocked_ms:
            log.info("budget.block_reported", source=req.source, worker_id=req.worker_id, reason=req.blocked_reason)
        return web.json_response(share_body(share, self.node.budget.ttl_ms))

    async def budget_view(self, call: Call) -> web.Response:
        await self.node.await_leader()
        budget = self.node.budget
        budget.expire(self.node.term)
        board = budget.board
        now_ms = int(self.node.clock.monotonic_s() * 1000)
        return web.json_response({"sources": board.view(now_ms) if board is not None else []})

    # -- cluster and service routes -----------------------------------------------------------------------------

    async def cluster(self, call: Call) -> web.Response:
        node = self.node
        known = node.read(lambda t: t.nodes())
        leader_addr = node.leader_addr
        members = []
        for addr in (node.settings.raft, *[p for p in node.settings.peers if p != node.settings.raft]):
            info = known.get(addr, {})
            is_self = addr == node.settings.raft
            members.append(
                {
                    "node_id": info.get("node_id", node.settings.node_id if is_self else None),
                    "raft": addr,
                    "http": info.get("http", node.settings.http_url if is_self else None),
                    "role": "leader" if addr == leader_addr else "follower",
                    "self": is_self,
                    "connected": True if is_self else node.peer_connected(addr),
                }
            )
        leader_id = known.get(leader_addr or "", {}).get("node_id")
        return web.json_response(
            {
                "node_id": node.settings.node_id,
                "role": node.role(),
                "leader": node.leader_http(),
                "leader_id": leader_id,
                "term": node.term,
                "commit_index": node.commit_index,
                "last_applied": node.applied_index,
                "token_floor": node.read(lambda t: t.token_floor),
                "members": members,
            }
        )

    def _health(self, ok: bool, bad_status: str) -> web.Response:
        """The probe answer; a node that could not accept connections lately is ``not_accepting`` (503) whatever
        else holds, so that a leader out of descriptors is noticed (and restarted) instead of looking healthy; a
        node that stands aside because its data dir's disk is low is ``disk_full`` (503)."""
        connections = self.node.connections.health()
        disk = self.node.disk_report()
        if not self.node.serving:
            ok, bad_status = False, "disk_full"
        elif ok and connections["state"] == "not_accepting":
            ok, bad_status = False, "not_accepting"
        body = {
            "status": "ok" if ok else bad_status,
            "role": self.node.role(),
            "leader": self.node.leader_http(),
            "node_id": self.node.settings.node_id,
            "http": connections,
            "disk": disk,
        }
        response = web.json_response(body, status=200 if ok else 503)
        if not ok:
            response.headers["Retry-After"] = "1"
        return response

    async def healthz(self, call: Call) -> web.Response:
        """Liveness and quorum: ok while this node knows a Raft leader, even before it learnt its HTTP address."""
        return self._health(self.node.leader_addr is not None, "no_leader")

    async def health(self, call: Call) -> web.Response:
        return await self.healthz(call)

    async def readyz(self, call: Call) -> web.Response:
        """Readiness: ok when this node can serve every route now (it leads, or can forward to the leader)."""
        return self._health(self.node.ready(), "not_ready")

    async def metrics(self, call: Call) -> web.Response:
        """This node's metrics; job ids and series only for callers with the detail role (``metrics.py`` rule 4)."""
        detail = call.principal.allows(METRICS_DETAIL_ROLE)
        response = web.Response(body=self.node.metrics.exposition(detail=detail))
        response.headers["Content-Type"] = METRICS_CONTENT_TYPE
        return response

    async def openapi(self, call: Call) -> web.Response:
        return web.json_response(self._openapi)
