"""The HTTP report sink: POSTs each report as JSON from a background queue, never from the fetch.

Rules:
1. ``publish`` only enqueues (a bounded ``asyncio.Queue``) and returns at once, so a slow, hanging or dead
   collector never delays a fetch. ``concurrency`` background tasks, started at the first publish, deliver.
2. A delivery is ``POST <target>`` with the report as the JSON body (``Content-Type: application/json``) and its
   URI in the ``X-Seamless-Report-URI`` header, plus the ``headers`` given in code (an ``Authorization`` token,
   say; they are never logged). The target is the sink's URL, or with ``per_node=True`` (a ``qmtl://`` spec
   resolved under an ``http(s)://`` base) ``<url>/observability/seamless/<quoted node_id>``.
3. A 2xx answer is delivered. Connection errors, timeouts (``timeout_s`` per attempt), 408, 429 and 5xx are
   retried up to ``max_attempts`` in all, waiting :func:`provider.core.retry_delay_ms` (exponential, jittered)
   between attempts; then the report is dropped (``failed``). Any other answer drops it at once (``rejected``).
   A full queue drops the new report (``queue_full``). Every drop is counted and logged (:mod:`._report_base`).
4. ``aclose()`` waits up to ``close_timeout_s`` for the queue to drain, then stops the tasks; whatever was still
   queued or in flight is dropped (``closed``). ``drain()`` waits until everything queued so far was handled.
5. aiohttp is imported when the first delivery starts, so importing the provider does not load it.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import random
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import quote, urlsplit

from provider._report_base import SinkAccounting, uri_node_id
from provider.core import retry_delay_ms
from provider.metrics import ProviderMetrics

__all__ = ["URI_HEADER", "HttpReportSink"]

#: The request header carrying the report's ``qmtl://`` URI.
URI_HEADER = "X-Seamless-Report-URI"
#: Answers worth another attempt besides 5xx.
_RETRY_STATUSES = frozenset({408, 429})


class HttpReportSink:
    """POSTs reports to an HTTP(S) collector from a bounded background queue (see the module rules)."""

    kind = "http"

    def __init__(
        self,
        url: str,
        *,
        per_node: bool = False,
        headers: Mapping[str, str] | None = None,
        timeout_s: float = 5.0,
        max_attempts: int = 4,
        retry_backoff_ms: int = 200,
        jitter_ratio: float = 0.25,
        queue_size: int = 1000,
        concurrency: int = 2,
        close_timeout_s: float = 5.0,
        metrics: ProviderMetrics | None = None,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"HttpReportSink url={url!r} must be an http:// or https:// URL with a host")
        for name, value, low in (
            ("max_attempts", max_attempts, 1),
            ("retry_backoff_ms", retry_backoff_ms, 0),
            ("queue_size", queue_size, 1),
            ("concurrency", concurrency, 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"HttpReportSink {name}={value!r} must be an int >= {low}")
        for name, number in (("timeout_s", timeout_s), ("close_timeout_s", close_timeout_s)):
            if not number > 0:
                raise ValueError(f"HttpReportSink {name}={number!r} must be > 0")
        if not 0.0 <= jitter_ratio <= 1.0:
            raise ValueError(f"HttpReportSink jitter_ratio={jitter_ratio!r} must be from 0 to 1")
        self.url = url
        self.per_node = per_node
        self.headers = dict(headers or {})
        self.timeout_s = timeout_s
        self.max_attempts = max_attempts
        self.retry_backoff_ms = retry_backoff_ms
        self.jitter_ratio = jitter_ratio
        self.concurrency = concurrency
        self.close_timeout_s = close_timeout_s
        self.accounting = SinkAccounting(self.kind, metrics)
        self._uniform = uniform
        self._queue: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue(maxsize=queue_size)
        self._workers: list[asyncio.Task[None]] = []
        self._session: Any = None
        self._closed = False

    @property
    def metrics(self) -> ProviderMetrics | None:
        """Where the published/dropped counts go (set by the provider when None)."""
        return self.accounting.metrics

    @metrics.setter
    def metrics(self, value: ProviderMetrics | None) -> None:
        self.accounting.metrics = value

    def target(self, uri: str) -> str:
        """The URL the report of ``uri`` is POSTed to (rule 2)."""
        node_id = uri_node_id(uri)
        if not self.per_node:
            return self.url
        return f"{self.url.rstrip('/')}/observability/seamless/{quote(node_id, safe='')}"

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Enqueue one report and return at once (rule 1)."""
        uri_node_id(uri)
        if self._closed:
            self.accounting.dropped("closed", uri, "the sink is closed")
            return
        if not self._workers:
            # A fresh context: the workers outlive this fetch, so its request_id must not stick to their log lines.
            self._workers = [
                asyncio.create_task(self._work(), context=contextvars.Context()) for _ in range(self.concurrency)
            ]
        try:
            self._queue.put_nowait((uri, report))
        except asyncio.QueueFull:
            self.accounting.dropped("queue_full", uri, f"{self._queue.maxsize} reports wait already")

    async def drain(self) -> None:
        """Wait until every report queued so far was delivered or dropped."""
        await self._queue.join()

    async def aclose(self) -> None:
        """Drain for at most ``close_timeout_s``, then stop; what is left is dropped as ``closed`` (rule 4)."""
        if self._closed:
            return
        self._closed = True
        if self._workers:
            try:
                async with asyncio.timeout(self.close_timeout_s):
                    await self._queue.join()
            except TimeoutError:
                pass
            for task in self._workers:
                task.cancel()
            await asyncio.gather(*self._workers, return_exceptions=True)
        while not self._queue.empty():
            uri, _ = self._queue.get_nowait()
            self._queue.task_done()
            self.accounting.dropped("closed", uri, f"still queued after {self.close_timeout_s} s")
        if self._session is not None:
            await self._session.close()

    async def _work(self) -> None:
        while True:
            uri, report = await self._queue.get()
            try:
                outcome = await self._deliver(uri, report)
            except asyncio.CancelledError:
                self.accounting.dropped("closed", uri, "the sink closed during delivery")
                raise
            except Exception as exc:  # a bug in one report must not stop delivery of the others
                outcome = ("error", f"{type(exc).__name__}: {exc}")
            finally:
                self._queue.task_done()
            if outcome is None:
                self.accounting.published()
            else:
                self.accounting.dropped(outcome[0], uri, outcome[1], request_id=report.get("request_id"))

    async def _deliver(self, uri: str, report: dict[str, Any]) -> tuple[str, str] | None:
        """Deliver with retries: None when delivered, else ``(reason, error)``."""
        import aiohttp

        body = json.dumps(report, sort_keys=True, default=str).encode("utf-8")
        headers = {"Content-Type": "application/json", URI_HEADER: uri, **self.headers}
        target = self.target(uri)
        session = self._http()
        error = ""
        for attempt in range(1, self.max_attempts + 1):
            try:
                async with session.post(target, data=body, headers=headers, allow_redirects=False) as answer:
                    if 200 <= answer.status < 300:
                        return None
                    error = f"HTTP {answer.status}"
                    if answer.status < 500 and answer.status not in _RETRY_STATUSES:
                        return ("rejected", error)
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                error = f"{type(exc).__name__}: {exc}"
            if attempt < self.max_attempts:
                delay_ms = retry_delay_ms(attempt, self.retry_backoff_ms, self.jitter_ratio, self._uniform())
                await asyncio.sleep(delay_ms / 1000.0)
        return ("failed", f"{error} (after {self.max_attempts} attempts)")

    def _http(self) -> Any:
        if self._session is None:
            import aiohttp

            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        return self._session
