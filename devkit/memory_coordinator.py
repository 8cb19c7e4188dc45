"""An in-memory coordinator for worker unit tests: the real pure lease table behind the client's interface.

Rules:
1. Time is a manual clock (``now_ms``), so tests expire leases by moving it, never by sleeping.
2. Every call is recorded in ``calls`` and answered as the HTTP client would: the same values and errors.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from coordinator.table import Table
from provider.core import Lease
from provider.errors import CoordinatorConflictError, CoordinatorNotFoundError, LeaseLostError


class MemoryCoordinator:
    """Implements the worker's Coordinator protocol over :class:`coordinator.table.Table`."""

    def __init__(self, *, ttl_ms: int, window_bars: int, max_attempts: int = 3, now_ms: int = 1_000) -> None:
        self.table = Table()
        self.ttl_ms = ttl_ms
        self.window_bars = window_bars
        self.max_attempts = max_attempts
        self.now_ms = now_ms
        self.calls: list[tuple[str, Any]] = []

    def submit(self, series: str, start: int, end: int) -> dict[str, Any]:
        result = self.table.submit_job(
            series=series, start=start, end=end, window_bars=self.window_bars, max_windows=10_000, now_ms=self.now_ms
        )
        assert result.ok, result
        job: dict[str, Any] = result.value["job"]
        return job

    def job(self, job_id: str) -> dict[str, Any]:
        job = self.table.job(job_id)
        assert job is not None
        return job

    def expire(self) -> list[Any]:
        expired: list[Any] = self.table.expire(now_ms=self.now_ms, max_attempts=self.max_attempts).value["expired"]
        return expired

    @staticmethod
    def _raise(result: Any) -> None:
        if result.code == "lease_lost":
            raise LeaseLostError(result.message, status=409, code="lease_lost")
        if result.code == "not_found":
            raise CoordinatorNotFoundError(result.message, status=404, code="not_found")
        raise CoordinatorConflictError(result.message, status=409, code=result.code)

    async def claim(self, worker_id: str, *, max_windows: int = 1, wait_ms: int = 0) -> list[Lease]:
        result = self.table.claim(worker_id=worker_id, max_windows=max_windows, ttl_ms=self.ttl_ms, now_ms=self.now_ms)
        leases = [Lease.from_dict(item) for item in result.value["leases"]]
        self.calls.append(("claim", [lease.window_id for lease in leases]))
        if not leases:
            await asyncio.sleep(min(wait_ms, 20) / 1000)
        return leases

    async def renew(self, lease_id: str, token: int) -> int:
        result = self.table.renew(lease_id=lease_id, token=token, ttl_ms=self.ttl_ms, now_ms=self.now_ms)
        self.calls.append(("renew", (lease_id, result.ok)))
        if not result.ok:
            self._raise(result)
        return int(result.value["expires_at_ms"])

    async def complete(self, lease_id: str, token: int, rows: int) -> Any:
        result = self.table.complete(lease_id=lease_id, token=token, rows=rows, now_ms=self.now_ms)
        self.calls.append(("complete", (lease_id, result.ok)))
        if not result.ok:
            self._raise(result)
        return result.value

    async def claim_completing(
        self, worker_id: str, completions: Sequence[tuple[str, int, int]], *, max_windows: int = 1
    ) -> tuple[list[Lease], list[Any]]:
        """Each completion through :meth:`complete` (so a subclass's override applies), its error as its outcome,
        then a claim that does not wait; recorded as one ``claim_completing`` call besides."""
        self.calls.append(("claim_completing", [lease_id for lease_id, _, _ in completions]))
        outcomes: list[Any] = []
        for lease_id, token, rows in completions:
            try:
                outcomes.append(await self.complete(lease_id, token, rows))
            except (LeaseLostError, CoordinatorNotFoundError, CoordinatorConflictError) as exc:
                outcomes.append(exc)
        return await self.claim(worker_id, max_windows=max_windows), outcomes

    async def fail(self, lease_id: str, token: int, reason: str, *, retryable: bool) -> Any:
        result = self.table.fail(
            lease_id=lease_id,
            token=token,
            reason=reason,
            retryable=retryable,
            max_attempts=self.max_attempts,
            retry_backoff_ms=0,
            now_ms=self.now_ms,
        )
        self.calls.append(("fail", (lease_id, reason, retryable)))
        if not result.ok:
            self._raise(result)
        return result.value

    async def release(self, lease_id: str) -> Any:
        result = self.table.release(lease_id=lease_id, now_ms=self.now_ms)
        self.calls.append(("release", lease_id))
        if not result.ok:
            self._raise(result)
        return result.value
