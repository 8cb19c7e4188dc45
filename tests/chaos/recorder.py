"""A recording reverse proxy between workers and coordinators, and the history it yields.

Rules:
1. One proxy port per coordinator node, all served by one aiohttp app on its own thread and event loop in the
   test process. Workers are given the proxy URLs instead of the nodes', so every client operation passes here;
   the harness's own job submissions and reads (job state, lease listings) go through it too, spread over the
   nodes, so reads served through followers are checked as well.
2. Each HTTP attempt is recorded with its invoke time (request received) and return time (upstream answer
   received), both from ``time.monotonic_ns`` of this one process, plus the wall clock (epoch ms) at return. The
   coordinator decided the operation somewhere inside that interval, so the recorded interval is a sound bound
   for linearizability checking.
3. The proxy is transparent: same method, path, body, Authorization, X-Client-Id and X-Request-Id. A 421
   ``not_leader`` hint naming a node is rewritten to that node's proxy URL, so the client keeps going through
   the proxy. An upstream that cannot be reached answers 502 (the client retries elsewhere); it is recorded
   as an attempt of unknown outcome.
4. ``merge_history`` turns attempts into logical operations: one per (X-Client-Id, X-Request-Id), as the
   cluster deduplicates them. A success is one operation from the first attempt's call to the first successful
   answer; a definitive refusal (4xx) is its own operation; attempts with no definitive answer make one
   operation of unknown outcome ("maybe applied", no return time).
5. A claim that carries completions (``complete``) also yields one complete operation per completion, over the
   claim's interval, with the status its ``completed`` item implies.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

__all__ = ["Attempt", "LogicalOp", "RecordingProxy", "merge_history", "write_history"]

#: Operations worth recording: everything the lease-table model speaks about, reads included (issue 15).
_RECORDED = (
    ("POST", "claim", re.compile(r"^/v1/windows/claim$")),
    ("POST", "renew", re.compile(r"^/v1/windows/renew$")),
    ("POST", "complete", re.compile(r"^/v1/windows/complete$")),
    ("POST", "fail", re.compile(r"^/v1/windows/fail$")),
    ("POST", "release", re.compile(r"^/v1/leases/(?P<lease_id>[^/]+)/release$")),
    ("POST", "submit", re.compile(r"^/v1/jobs$")),
    ("GET", "list_jobs", re.compile(r"^/v1/jobs$")),
    ("GET", "read_job", re.compile(r"^/v1/jobs/(?P<job_id>[^/]+)$")),
    ("GET", "list_leases", re.compile(r"^/v1/leases$")),
)
_PASSED_HEADERS = ("Authorization", "Content-Type", "X-Client-Id", "X-Request-Id")
_RETURNED_HEADERS = ("Content-Type", "Retry-After", "X-Request-Id")
#: Longer than any client waits (10 s + long-poll): the proxy learns the real outcome even after the client left.
_UPSTREAM_TIMEOUT_S = 30.0


@dataclass
class Attempt:
    """One HTTP attempt as the proxy saw it."""

    kind: str
    client_id: str
    request_id: str
    node: int
    request: dict[str, Any]
    call_ns: int
    return_ns: int | None = None
    at_ms: int | None = None
    status: int | None = None
    response: Any = None


@dataclass
class LogicalOp:
    """One client operation after merging retries; ``status``/``return_ns`` None = outcome unknown."""

    id: int
    kind: str
    client: str
    request: dict[str, Any]
    call_ns: int
    return_ns: int | None
    at_ms: int | None
    status: int | None
    response: Any
    attempts: int = 1

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def lease_lost(self) -> bool:
        error = self.response.get("error") if isinstance(self.response, dict) else None
        return self.status == 409 and isinstance(error, dict) and error.get("code") == "lease_lost"

    @property
    def token(self) -> int | None:
        value = self.request.get("token")
        if isinstance(value, int):
            return value
        lease_id = str(self.request.get("lease_id", ""))
        return int(lease_id[6:]) if lease_id.startswith("lease-") and lease_id[6:].isdigit() else None

    def line(self) -> dict[str, Any]:
        return {
            "type": "op",
            "id": self.id,
            "client": self.client,
            "kind": self.kind,
            "call_ns": self.call_ns,
            "return_ns": self.return_ns,
            "at_ms": self.at_ms,
            "status": self.status,
            "request": self.request,
            "response": self.response,
            "attempts": self.attempts,
        }


def _kind_of(method: str, path: str) -> tuple[str, dict[str, Any]] | None:
    for wanted, kind, pattern in _RECORDED:
        match = pattern.match(path) if method == wanted else None
        if match:
            return kind, match.groupdict()
    return None


@dataclass
class RecordingProxy:
    """Serve one proxy port per upstream node URL; record lease operations (rule 2)."""

    upstreams: list[str]
    host: str = "127.0.0.1"
    attempts: list[Attempt] = field(default_factory=list)
    annotations: list[dict[str, Any]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    _port_map: dict[int, int] = field(default_factory=dict)
    _unnamed: Iterator[int] = field(default_factory=itertools.count)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None

    def start(self) -> list[str]:
        """Start the proxy thread; returns one proxy base URL per upstream, in order."""
        ready = threading.Event()
        failure: list[BaseException] = []

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()
            loop.run_until_complete(self._stop())
            loop.close()

        self._thread = threading.Thread(target=main, name="recording-proxy", daemon=True)
        self._thread.start()
        if not ready.wait(30) or failure:
            raise RuntimeError(f"the recording proxy did not start: {failure}")
        return self.urls

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def annotate(self, tag: str, start_ns: int, end_ns: int, description: str) -> None:
        """Mark a fault on the history's time line (shown in porcupine's visualization)."""
        with self._lock:
            self.annotations.append(
                {"type": "annotation", "tag": tag, "start_ns": start_ns, "end_ns": end_ns, "description": description}
            )

    def snapshot(self) -> list[Attempt]:
        with self._lock:
            return list(self.attempts)

    async def _start(self) -> None:
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=_UPSTREAM_TIMEOUT_S), connector=aiohttp.TCPConnector(limit=256)
        )
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for index in range(len(self.upstreams)):
            sock = socket.socket()
            sock.bind((self.host, 0))
            await web.SockSite(self._runner, sock).start()
            port = int(sock.getsockname()[1])
            self.urls.append(f"http://{self.host}:{port}")
            self._port_map[port] = index

    async def _stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _rewrite_hint(self, body: bytes) -> bytes:
        try:
            data = json.loads(body)
            leader = data["error"]["leader"].rstrip("/")
        except (ValueError, KeyError, TypeError, AttributeError):
            return body
        if leader in self.upstreams:
            data["error"]["leader"] = self.urls[self.upstreams.index(leader)]
            return json.dumps(data).encode()
        return body

    async def _handle(self, request: web.Request) -> web.Response:
        call_ns = time.monotonic_ns()
        node = self._port_map.get(request.transport.get_extra_info("sockname")[1], 0)  # type: ignore[union-attr]
        raw = await request.read()
        recorded = _kind_of(request.method, request.path)
        attempt: Attempt | None = None
        if recorded is not None:
            try:
                body = json.loads(raw) if raw.strip() else {}
            except ValueError:
                body = {"_raw": raw.decode(errors="replace")}
            attempt = Attempt(
                recorded[0],
                request.headers.get("X-Client-Id", ""),
                # Without an id (reads, the harness's own calls) every attempt is its own operation.
                request.headers.get("X-Request-Id", "") or f"unnamed-{next(self._unnamed)}",
                node,
                {**(body if isinstance(body, dict) else {"_body": body}), **recorded[1]},
                call_ns,
            )
        headers = {name: request.headers[name] for name in _PASSED_HEADERS if name in request.headers}
        url = self.upstreams[node] + str(request.rel_url)
        assert self._session is not None
        try:
            async with self._session.request(request.method, url, data=raw, headers=headers) as answer:
                data = await answer.read()
                status = answer.status
                back = {name: answer.headers[name] for name in _RETURNED_HEADERS if name in answer.headers}
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if attempt is not None:
                self._record(attempt)
            body = {"error": {"code": "proxy_upstream", "message": f"{type(exc).__name__}: {exc}"}}
            return web.json_response(body, status=502)
        if status == 421:
            data = self._rewrite_hint(data)
        if attempt is not None:
            attempt.return_ns = time.monotonic_ns()
            attempt.at_ms = time.time_ns() // 1_000_000
            attempt.status = status
            try:
                attempt.response = json.loads(data) if data else None
            except ValueError:
                attempt.response = {"_raw": data.decode(errors="replace")[:500]}
            self._record(attempt)
        return web.Response(status=status, body=data, headers=back)

    def _record(self, attempt: Attempt) -> None:
        with self._lock:
            self.attempts.append(attempt)


def _definitive(attempt: Attempt) -> bool:
    """An answer that says what happened: 2xx, or a 4xx other than the 421 leader hint."""
    return attempt.status is not None and attempt.status < 500 and attempt.status != 421


#: The status a completion carried by a claim would have had as its own request (``provider/client.py``).
_ITEM_STATUS = {"lease_lost": 409, "conflict": 409, "not_found": 404}


def _carried_completes(claim: LogicalOp) -> list[LogicalOp]:
    """The completions a claim carried (``ClaimRequest.complete``) as the complete operations they are (rule 5):
    decided inside the claim's interval and answered in its ``completed``; of unknown outcome when the claim's is
    (or the item says ``timeout`` / ``not_leader``); none when the claim was refused (nothing was applied)."""
    items = claim.request.get("complete") or []
    if not items or (claim.status is not None and not claim.ok):
        return []
    answers = claim.response.get("completed", []) if claim.ok else []
    ops = []
    for index, item in enumerate(items):
        answer = answers[index] if index < len(answers) else None
        error = answer.get("error") if isinstance(answer, dict) else None
        status = 200 if answer is not None and error is None else _ITEM_STATUS.get((error or {}).get("code", ""))
        response = ({"error": error} if error else answer) if status else None
        known = status is not None
        ops.append(
            LogicalOp(
                0,
                "complete",
                claim.client,
                item,
                claim.call_ns,
                claim.return_ns if known else None,
                claim.at_ms if known else None,
                status,
                response,
                claim.attempts,
            )
        )
    return ops


def merge_history(attempts: list[Attempt]) -> tuple[list[LogicalOp], list[str]]:
    """Logical operations (rule 4), ordered by call time, and the problems found while merging.

    A problem is two successful answers to one request that differ: the cluster promised to return the first
    answer to every retry.
    """
    groups: dict[tuple[str, str, str], list[Attempt]] = defaultdict(list)
    for attempt in attempts:
        groups[(attempt.client_id, attempt.request_id, attempt.kind)].append(attempt)
    ops: list[LogicalOp] = []
    problems: list[str] = []
    for (client, request_id, kind), group in groups.items():
        group.sort(key=lambda a: a.call_ns)
        first = group[0]
        successes = [a for a in group if a.status is not None and 200 <= a.status < 300]
        refusals = [a for a in group if _definitive(a) and a not in successes]
        if len({json.dumps(a.response, sort_keys=True) for a in successes}) > 1:
            problems.append(
                f"{kind} {client}/{request_id}: retries got different answers {[a.response for a in successes]}"
            )
        if successes:
            best = min(successes, key=lambda a: a.return_ns or 0)
            ops.append(
                LogicalOp(
                    0,
                    kind,
                    client,
                    first.request,
                    first.call_ns,
                    best.return_ns,
                    best.at_ms,
                    best.status,
                    best.response,
                    len(group),
                )
            )
        for refusal in refusals:
            ops.append(
                LogicalOp(
                    0,
                    kind,
                    client,
                    refusal.request,
                    refusal.call_ns,
                    refusal.return_ns,
                    refusal.at_ms,
                    refusal.status,
                    refusal.response,
                    1,
                )
            )
        last_definitive = max((a.call_ns for a in (*successes, *refusals)), default=-1)
        if not successes and any(a.call_ns > last_definitive for a in group):
            ops.append(LogicalOp(0, kind, client, first.request, first.call_ns, None, None, None, None, len(group)))
    ops += [done for op in ops if op.kind == "claim" for done in _carried_completes(op)]
    ops.sort(key=lambda op: op.call_ns)
    for number, op in enumerate(ops, start=1):
        op.id = number
    return ops, problems


def write_history(path: Path, ops: list[LogicalOp], annotations: list[dict[str, Any]]) -> Path:
    """Write the JSON-lines history that tools/porcupine reads."""
    with path.open("w", encoding="utf-8") as out:
        for op in ops:
            out.write(json.dumps(op.line()) + "\n")
        for note in annotations:
            out.write(json.dumps(note) + "\n")
    return path
