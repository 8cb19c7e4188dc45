"""HTTP client of the coordinator cluster, used by workers, the provider and operator scripts.

Rules:
1. Give it every node's base URL; it sends to the last node that answered well and moves on when a node is
   down (connection error, timeout, 502/503/504). A 421 ``not_leader`` answer with a ``leader`` URL is followed.
2. Every request carries ``X-Client-Id`` and ``X-Request-Id``. A retry of the same call reuses its request id,
   so a command whose outcome was unknown (a timeout after the leader applied it) is not applied twice: the
   cluster deduplicates by (client id, request id).
3. Retries stop at ``retry_deadline_s``; then :class:`CoordinatorUnavailableError` says which URLs were tried.
4. Error answers become typed errors (:mod:`provider.errors`); ``LeaseLostError`` means "stop this window", and a
   429 is a :class:`CoordinatorCapacityError` with the server's ``retry_after_s`` (never retried here: the limit
   is the caller's to respect).
5. With tracing on (:mod:`provider.core.tracing`), each call is one client span (``coordinator METHOD ROUTE``,
   retries included) whose W3C ``traceparent`` every attempt carries.
"""

from __future__ import annotations

import asyncio
import random
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp

from provider.core import ClaimRequest, CompleteRequest, Job, JobRequest, Lease, LeaseInfo, to_ms, tracing
from provider.errors import (
    CoordinatorAuthError,
    CoordinatorBadRequestError,
    CoordinatorCapacityError,
    CoordinatorConflictError,
    CoordinatorError,
    CoordinatorNotFoundError,
    CoordinatorUnavailableError,
    LeaseLostError,
)

__all__ = ["CoordinatorClient", "parse_urls", "read_token_file"]

_RETRY_STATUSES = frozenset({502, 503, 504})
_FIRST_BACKOFF_S = 0.05
_MAX_BACKOFF_S = 1.0


def parse_urls(urls: str | Sequence[str]) -> list[str]:
    """Split ``"http://a:1,http://b:2"`` (or a list) into clean base URLs; raise ``ValueError`` when empty."""
    items = urls.split(",") if isinstance(urls, str) else list(urls)
    clean = [u.strip().rstrip("/") for u in items if u and u.strip()]
    for url in clean:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"coordinator URL {url!r} must start with http:// or https://")
    if not clean:
        raise ValueError("coordinator URLs are empty; pass e.g. http://127.0.0.1:8701,http://127.0.0.1:8702")
    return clean


def read_token_file(path: str | Path) -> str:
    """Read a client token: the first non-comment line's first word (a server token file works too)."""
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            return text.split()[0]
    raise ValueError(f"token file {path} holds no token")


#: The status a completion carried by a claim would have had as its own request, by error code.
_ITEM_STATUS = {"lease_lost": 409, "conflict": 409, "not_found": 404, "invalid": 400}


def _error_body(payload: Any) -> tuple[str, str, str | None, str | None]:
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return "error", str(payload)[:300], None, None
    return (
        str(error.get("code", "error")),
        str(error.get("message", "")),
        error.get("field"),
        error.get("leader"),
    )


class CoordinatorClient:
    """Async client of the coordinator HTTP API v1; safe to share between tasks of one event loop."""

    def __init__(
        self,
        urls: str | Sequence[str],
        *,
        token: str | None = None,
        client_id: str | None = None,
        timeout_s: float = 10.0,
        retry_deadline_s: float = 30.0,
        session: aiohttp.ClientSession | None = None,
    ) -> None:
        self.urls = parse_urls(urls)
        self.client_id = client_id or "c-" + secrets.token_hex(6)
        self._token = token
        self._timeout_s = timeout_s
        self.retry_deadline_s = retry_deadline_s
        self._session = session
        self._own_session = session is None
        self._preferred = 0

    async def __aenter__(self) -> CoordinatorClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session if this client created it."""
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
                connector=aiohttp.TCPConnector(limit=256),
            )
            self._own_session = True
        return self._session

    # -- transport ---------------------------------------------------------------------------------------

    async def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        params: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
        route: str | None = None,
    ) -> Any:
        """Send one API call with retries and leader following; return the decoded JSON answer. ``route`` is the
        path's template (``/v1/jobs/{job_id}``), naming the call's span (rule 5)."""
        name = f"coordinator {method} {route or path}"
        with tracing.span(name, kind=tracing.SpanKind.CLIENT, attributes={"http.request.method": method}):
            return await self._request(method, path, body, params, timeout_s)

    async def _request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        timeout_s: float | None,
    ) -> Any:
        request_id = secrets.token_hex(8)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.retry_deadline_s
        backoff_s = _FIRST_BACKOFF_S
        tried: list[str] = []
        last_problem = "no attempt"
        attempt = 0
        while True:
            base = self.urls[(self._preferred + attempt) % len(self.urls)]
            tried.append(base)
            try:
                status, payload, retry_after_s = await self._send(
                    method, base + path, body, params, request_id, timeout_s
                )
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last_problem = f"{base}: {type(exc).__name__} {exc}".strip()
                status, payload, retry_after_s = None, None, None
            if status is not None and status < 400:
                self._preferred = self.urls.index(base)
                return payload
            if status is not None:
                code, message, field, leader = _error_body(payload)
                if status == 421 and leader:
                    self._prefer(leader.rstrip("/"))
                    attempt = 0
                    last_problem = f"{base}: not the leader; leader is {leader}"
                    continue
                if status not in _RETRY_STATUSES:
                    error = self._typed_error(status, code, message, field, base)
                    if isinstance(error, CoordinatorCapacityError):
                        error.retry_after_s = retry_after_s
                    raise error
                last_problem = f"{base}: {status} {code}: {message}"
            attempt += 1
            wait_s = (
                max(backoff_s * random.uniform(0.5, 1.0), retry_after_s or 0.0)
                if attempt % len(self.urls) == 0
                else 0.0
            )
            if loop.time() + wait_s >= deadline:
                raise CoordinatorUnavailableError(
                    f"no coordinator answered {method} {path} within {self.retry_deadline_s:.0f} s "
                    f"(tried {', '.join(dict.fromkeys(tried))}; last: {last_problem}); "
                    "check `coordinator status --url ...` and that a majority of nodes is up",
                    status=503,
                    code="unavailable",
                )
            if wait_s:
                await asyncio.sleep(wait_s)
                backoff_s = min(backoff_s * 2, _MAX_BACKOFF_S)

    async def _send(
        self,
        method: str,
        url: str,
        body: Mapping[str, Any] | None,
        params: Mapping[str, str] | None,
        request_id: str,
        timeout_s: float | None,
    ) -> tuple[int, Any, float | None]:
        headers = {"X-Client-Id": self.client_id, "X-Request-Id": request_id}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        tracing.inject(headers)
        timeout = aiohttp.ClientTimeout(total=timeout_s) if timeout_s else None
        async with self._http().request(
            method, url, json=body, params=params, headers=headers, timeout=timeout
        ) as resp:
            try:
                payload = await resp.json(content_type=None)
            except ValueError:
                payload = {"error": {"code": "bad_response", "message": (await resp.text())[:300]}}
            retry_after = resp.headers.get("Retry-After")
            try:
                retry_after_s = float(retry_after) if retry_after else None
            except ValueError:
                retry_after_s = None
            return resp.status, payload, retry_after_s

    def _prefer(self, url: str) -> None:
        if url not in self.urls:
            self.urls.append(url)
        self._preferred = self.urls.index(url)

    @staticmethod
    def _typed_error(status: int, code: str, message: str, field: str | None, base: str) -> CoordinatorError:
        text = f"{status} {code}: {message}"
        kwargs: dict[str, Any] = {"status": status, "code": code, "field": field, "url": base}
        if status in (400, 413, 422):
            return CoordinatorBadRequestError(text, **kwargs)
        if status in (401, 403):
            return CoordinatorAuthError(text, **kwargs)
        if status == 404:
            return CoordinatorNotFoundError(text, **kwargs)
        if status == 409:
            return (LeaseLostError if code == "lease_lost" else CoordinatorConflictError)(text, **kwargs)
        if status == 429:
            return CoordinatorCapacityError(text, **kwargs)
        return CoordinatorError(text, **kwargs)

    # -- jobs ----------------------------------------------------------------------------------------------

    async def submit_job(self, series: Any, start: Any, end: Any, *, priority: int = 0) -> Job:
        """Create (or find the identical) backfill job for ``[start, end)`` of ``series``."""
        body = JobRequest.from_dict(
            {"series": str(series), "start": to_ms(start), "end": to_ms(end), "priority": priority}
        ).to_dict()
        return Job.from_dict((await self.request("POST", "/v1/jobs", body))["job"])

    async def get_job(self, job_id: str) -> Job:
        """One job with its window counts and completion ratio."""
        answer = await self.request("GET", f"/v1/jobs/{quote(job_id, safe='')}", route="/v1/jobs/{job_id}")
        return Job.from_dict(answer.get("job", answer))

    async def list_jobs(self, *, state: str | None = None, series: str | None = None) -> list[Job]:
        """Every job the cluster knows (in ``state``, of ``series`` when given), following the pages of
        ``GET /v1/jobs``."""
        jobs: list[Job] = []
        query: dict[str, str] = {"limit": "5000"}
        query.update({k: v for k, v in (("state", state), ("series", series)) if v is not None})
        while True:
            answer = await self.request("GET", "/v1/jobs", params=query)
            jobs += [Job.from_dict(item) for item in answer["jobs"]]
            cursor = answer.get("next_cursor")  # absent from nodes older than paging: one page holds every job
            if not cursor:
                return jobs
            query["cursor"] = str(cursor)

    async def job_windows(self, job_id: str, state: str | None = None) -> list[dict[str, Any]]:
        """The job's windows (``window_id``, ``start``, ``end``, ``state``, ``attempts``, ``rows``, ``last_error``)."""
        query = f"?state={quote(state, safe='')}" if state else ""
        answer = await self.request(
            "GET", f"/v1/jobs/{quote(job_id, safe='')}/windows{query}", route="/v1/jobs/{job_id}/windows"
        )
        return list(answer["windows"])

    async def cancel_job(self, job_id: str) -> Any:
        """Cancel a job (its windows shared with other jobs keep going)."""
        return await self.request("DELETE", f"/v1/jobs/{quote(job_id, safe='')}", route="/v1/jobs/{job_id}")

    async def retry_job(self, job_id: str) -> Any:
        """Reset the failed windows of a job to pending."""
        return await self.request(
            "POST", f"/v1/jobs/{quote(job_id, safe='')}/retry", {}, route="/v1/jobs/{job_id}/retry"
        )

    # -- windows -------------------------------------------------------------------------------------------

    async def claim(self, worker_id: str, *, max_windows: int = 1, wait_ms: int = 0) -> list[Lease]:
        """Claim up to ``max_windows`` pending windows, long-polling up to ``wait_ms`` when none is pending."""
        body = {"worker_id": worker_id, "max_windows": max_windows, "wait_ms": wait_ms}
        answer = await self.request("POST", "/v1/windows/claim", body, timeout_s=self._timeout_s + wait_ms / 1000)
        return [Lease.from_dict(item) for item in answer["leases"]]

    async def claim_completing(
        self, worker_id: str, completions: Sequence[tuple[str, int, int]], *, max_windows: int = 1
    ) -> tuple[list[Lease], list[Any]]:
        """Complete ``completions`` (``(lease_id, token, rows)`` each) and claim up to ``max_windows`` windows in one
        request: the coordinator applies them in that order, in one Raft entry, and answers at once (no long poll).
        Returns the leases and, per completion in order, its complete answer or the error :meth:`complete` would
        have raised (:class:`LeaseLostError` for a fenced lease; a ``timeout`` or ``not_leader``
        :class:`CoordinatorError` means that completion is unconfirmed: complete it again)."""
        body = ClaimRequest(worker_id, max_windows, 0, tuple(CompleteRequest(*done) for done in completions)).to_dict()
        answer = await self.request("POST", "/v1/windows/claim", body)
        outcomes: list[Any] = []
        for item in answer.get("completed", []):
            if "error" not in item:
                outcomes.append(item)
                continue
            code, message, field, _ = _error_body(item)
            status = _ITEM_STATUS.get(code, 503)
            outcomes.append(self._typed_error(status, code, f"{item.get('lease_id')}: {message}", field, ""))
        if len(outcomes) != len(completions):
            raise CoordinatorError(
                f"the claim answered {len(outcomes)} completions for {len(completions)}: is every node at least "
                "this client's version?",
                status=200,
                code="protocol",
            )
        return [Lease.from_dict(item) for item in answer["leases"]], outcomes

    async def renew(self, lease_id: str, token: int) -> int:
        """Extend a lease; returns the new expiry (ms). Raises :class:`LeaseLostError` when it is gone."""
        answer = await self.request("POST", "/v1/windows/renew", {"lease_id": lease_id, "token": token})
        return int(answer["expires_at_ms"])

    async def complete(self, lease_id: str, token: int, rows: int) -> Any:
        """Mark the leased window done (idempotent for the same token)."""
        body = {"lease_id": lease_id, "token": token, "rows": rows}
        return await self.request("POST", "/v1/windows/complete", body)

    async def fail(self, lease_id: str, token: int, reason: str, *, retryable: bool) -> Any:
        """Report a failed attempt; a retryable failure re-queues the window until max_attempts."""
        body = {"lease_id": lease_id, "token": token, "reason": reason[:500], "retryable": retryable}
        return await self.request("POST", "/v1/windows/fail", body)

    # -- operator ------------------------------------------------------------------------------------------

    async def leases(self, *, stale: bool = False) -> list[LeaseInfo]:
        """Live leases (only stale ones with ``stale=True``)."""
        answer = await self.request("GET", "/v1/leases", params={"stale": "true"} if stale else None)
        return [LeaseInfo.from_dict(item) for item in answer["leases"]]

    async def release(self, lease_id: str) -> Any:
        """Operator: return a leased window to pending without counting an attempt."""
        return await self.request(
            "POST", f"/v1/leases/{quote(lease_id, safe='')}/release", {}, route="/v1/leases/{lease_id}/release"
        )

    async def requeue(self, window_id: str, reason: str) -> Any:
        """Operator: put a window back to pending."""
        return await self.request(
            "POST",
            f"/v1/windows/{quote(window_id, safe='')}/requeue",
            {"reason": reason},
            route="/v1/windows/{window_id}/requeue",
        )

    async def mark_done(self, window_id: str, reason: str) -> Any:
        """Operator: mark a window done without a worker."""
        return await self.request(
            "POST",
            f"/v1/windows/{quote(window_id, safe='')}/mark-done",
            {"reason": reason},
            route="/v1/windows/{window_id}/mark-done",
        )

    async def cluster(self) -> Any:
        """The answering node's view of the cluster."""
        return await self.request("GET", "/v1/cluster")

    # -- QMTL keyed leases -------------------------------------------------------------------------------

    async def budget_heartbeat(self, body: dict[str, Any], *, wait_ms: int = 0) -> dict[str, Any]:
        """Shared exchange budget: report a worker of a source (``BudgetHeartbeatRequest`` fields), get its share;
        the leader holds the call up to ``wait_ms`` when nothing changed (docs/coordinator.md)."""
        answer: dict[str, Any] = await self.request(
            "POST", "/v1/budget/heartbeat", {**body, "wait_ms": wait_ms}, timeout_s=self._timeout_s + wait_ms / 1000
        )
        return answer

    async def budget(self) -> Any:
        """Shared exchange budgets on the leader: per source its workers, bound, shares and block."""
        return await self.request("GET", "/v1/budget")

    async def claim_key(self, key: str, lease_ms: int) -> Any:
        """QMTL: claim the keyed lease ``key`` for ``lease_ms``."""
        return await self.request("POST", "/v1/leases/claim", {"key": key, "lease_ms": lease_ms})

    async def complete_key(self, key: str, token: Any) -> Any:
        """QMTL: complete the keyed lease."""
        return await self.request("POST", "/v1/leases/complete", {"key": key, "token": token})

    async def fail_key(self, key: str, token: Any, reason: str) -> Any:
        """QMTL: fail the keyed lease."""
        return await self.request("POST", "/v1/leases/fail", {"key": key, "token": token, "reason": reason})
