"""The route table of HTTP API v1: one list that ``api.py`` registers and ``openapi.py`` documents.

Rules:
1. Every route is listed here once: method, path, handler name (also the OpenAPI operationId), the role it needs
   (None = public), its request and answer schemas and the error statuses it can return.
2. ``write`` routes change the table: they run on the leader; a follower forwards them (see docs/http-api.md).
   ``read`` routes answer from the table: linearizable by default (a read barrier on the leader; a follower
   forwards them), from the node's own replica with ``?consistency=stale``.
3. ``GET /`` is the HTML status page (``status_page.py``); it holds no data, so it is public.
4. A public route with a ``detail_role`` takes an optional token and shows more to that role (``auth.py`` rule 4):
   ``GET /metrics`` shows job ids and series only to a ``reader`` token when auth is on (``metrics.py`` rule 4).
5. A route that only runs one table command names it in ``command`` and needs no handler of its own: its path
   parameters and its body (parsed with the ``request`` wire model) are the command's arguments, and the command's
   value is the answer (:meth:`coordinator.handlers.Handlers.command_route`). Its schemas come from the models
   (``openapi.py`` rule 2), so such an endpoint is one ``Route`` here plus its command (docs/development.md).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["METRICS_DETAIL_ROLE", "ROUTES", "Route"]

_AUTH = (401, 403)
_WRITE = (400, 401, 403, 413, 415, 421, 503)
_READ = (400, 401, 403, 421, 503)
#: The role that sees per-job series on ``GET /metrics`` when auth is on (rule 4).
METRICS_DETAIL_ROLE = "reader"
_CONSISTENCY = ("consistency", "linearizable (default: as new as every acknowledged write) or stale (this replica)")


@dataclass(frozen=True)
class Route:
    """One HTTP route."""

    method: str
    path: str
    name: str
    role: str | None
    summary: str
    request: str | None = None
    answer: str = "Empty"
    ok_status: int = 200
    errors: tuple[int, ...] = ()
    write: bool = False
    query: tuple[tuple[str, str], ...] = ()
    media: str = "application/json"
    read: bool = False
    detail_role: str | None = None
    #: The table command this route runs when it has no handler method of its own (rule 5).
    command: str | None = None


ROUTES: tuple[Route, ...] = (
    Route(
        "POST",
        "/v1/jobs",
        "create_job",
        "worker",
        "Submit a backfill job; 201 when created, 200 with the identical live job",
        "JobRequest",
        "JobAnswer",
        201,
        (*_WRITE, 429),
        write=True,
    ),
    Route(
        "GET",
        "/v1/jobs",
        "list_jobs",
        "reader",
        "A page of jobs (submission order) with window counts and completion ratio; follow next_cursor",
        answer="JobList",
        errors=_READ,
        query=(
            ("limit", "jobs per page, 1-5000 (default 500)"),
            ("cursor", "next_cursor of the previous page (default: the first page)"),
            ("state", "running, done, failed or cancelled (default: all)"),
            ("series", "one series key (default: all)"),
            _CONSISTENCY,
        ),
        read=True,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}",
        "get_job",
        "reader",
        "One job",
        answer="JobAnswer",
        errors=(*_READ, 404),
        query=(_CONSISTENCY,),
        read=True,
    ),
    Route(
        "GET",
        "/v1/jobs/{job_id}/windows",
        "job_windows",
        "reader",
        "The job's windows (state, attempts, rows, last_error), in start order; only those in state= when given",
        answer="WindowList",
        errors=(*_READ, 404),
        query=(("state", "pending, leased, done or failed (default: all)"), _CONSISTENCY),
        read=True,
    ),
    Route(
        "DELETE",
        "/v1/jobs/{job_id}",
        "cancel_job",
        "operator",
        "Cancel a job (409 when it is already done)",
        answer="JobAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/jobs/{job_id}/retry",
        "retry_job",
        "operator",
        "Reset the job's failed windows to pending",
        answer="RetryAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/claim",
        "claim_windows",
        "worker",
        "Claim up to max_windows pending windows in order; long-polls up to wait_ms when none is pending; "
        "completes the leases in complete first (then answers at once)",
        "ClaimRequest",
        "LeaseList",
        errors=_WRITE,
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/renew",
        "renew_window",
        "worker",
        "Extend a lease by one TTL; 409 lease_lost",
        "RenewRequest",
        "RenewAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/complete",
        "complete_window",
        "worker",
        "Mark the leased window done; idempotent for the same token; 409 lease_lost",
        "CompleteRequest",
        "WindowAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/fail",
        "fail_window",
        "worker",
        "Report a failed attempt: pending after a backoff if retryable and attempts remain, else failed",
        "FailRequest",
        "WindowAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "GET",
        "/v1/leases",
        "list_leases",
        "reader",
        "Live leases, oldest first; only stale ones with stale=true",
        answer="LeaseInfoList",
        errors=_READ,
        query=(("stale", "true or false (default false)"), _CONSISTENCY),
        read=True,
    ),
    Route(
        "POST",
        "/v1/leases/{lease_id}/release",
        "release_lease",
        "worker",
        "End a live lease (a draining worker, or an operator); the window goes back to pending, the attempt is "
        "not counted",
        "ReasonRequest",
        "WindowAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/{window_id}/requeue",
        "requeue_window",
        "operator",
        "Operator: put a window back to pending with attempts cleared (revokes its lease)",
        "ReasonRequest",
        "WindowAnswer",
        errors=(*_WRITE, 404),
        write=True,
    ),
    Route(
        "POST",
        "/v1/windows/{window_id}/mark-done",
        "mark_window_done",
        "operator",
        "Operator: mark a window done without a worker (revokes its lease)",
        "ReasonRequest",
        "WindowAnswer",
        errors=(*_WRITE, 404),
        write=True,
    ),
    Route(
        "POST",
        "/v1/leases/claim",
        "claim_key",
        "worker",
        "QMTL: lease an opaque key for lease_ms; 409 while someone else holds it",
        "KeyClaimRequest",
        "KeyClaimAnswer",
        errors=(*_WRITE, 409, 429),
        write=True,
    ),
    Route(
        "POST",
        "/v1/leases/complete",
        "complete_key",
        "worker",
        "QMTL: complete a keyed lease; 409 stale token",
        "KeyFinishRequest",
        "RatioAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/leases/fail",
        "fail_key",
        "worker",
        "QMTL: fail a keyed lease; 409 stale token",
        "KeyFinishRequest",
        "RatioAnswer",
        errors=(*_WRITE, 404, 409),
        write=True,
    ),
    Route(
        "POST",
        "/v1/budget/heartbeat",
        "budget_heartbeat",
        "worker",
        "Shared exchange budget: register or refresh a worker of a source, report a ban; answers the worker's share "
        "of the source's limits and the source's block, at once when they changed, else after up to wait_ms",
        "BudgetHeartbeatRequest",
        "BudgetShare",
        errors=(*_WRITE, 429),
        write=True,
    ),
    Route(
        "GET",
        "/v1/budget",
        "budget_view",
        "reader",
        "Shared exchange budgets on the leader: per source its live workers, bound, shares and block",
        answer="BudgetView",
        errors=_READ,
        read=True,
    ),
    Route(
        "GET",
        "/v1/cluster",
        "cluster",
        "reader",
        "This node's view of the cluster: role, leader, term, members",
        answer="Cluster",
        errors=_AUTH,
    ),
    Route(
        "GET",
        "/healthz",
        "healthz",
        None,
        "Liveness and quorum: 503 when this node knows no Raft leader or could not accept connections lately",
        answer="Health",
        errors=(503,),
    ),
    Route("GET", "/health", "health", None, "Same as /healthz", answer="Health", errors=(503,)),
    Route(
        "GET",
        "/readyz",
        "readyz",
        None,
        "Readiness: 200 when this node can serve (it leads, or knows the leader's HTTP address), else 503",
        answer="Health",
        errors=(503,),
    ),
    Route(
        "GET",
        "/metrics",
        "metrics",
        None,
        "Prometheus metrics of this node; with auth on, job ids and series only for a reader token (without one, "
        'running jobs are summed into job_id="(other)"); an unknown token is a 401',
        answer="Metrics",
        errors=(401,),
        media="text/plain",
        detail_role=METRICS_DETAIL_ROLE,
    ),
    Route("GET", "/openapi.json", "openapi", None, "This OpenAPI 3 document", answer="OpenAPI"),
    Route(
        "GET",
        "/",
        "status_page",
        None,
        "Status page (HTML without data; its script polls /v1/cluster, /v1/jobs "
        "and /v1/leases every 2 s with a reader token)",
        answer="StatusPage",
        media="text/html",
    ),
)
