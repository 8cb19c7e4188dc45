"""Rule 12 of ``worker/daemon.py``: a finished window's complete rides on the claim that refills its slot."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pytest

from devkit.memory_coordinator import MemoryCoordinator
from provider.core import Lease
from provider.errors import CoordinatorBadRequestError, CoordinatorError, LeaseLostError
from provider.sources import open_source
from provider.storage import open_storage
from worker.daemon import Worker

from .test_daemon import MINUTE, SERIES, T0, run_until, settings

WINDOWS = 12


@pytest.fixture
async def store():
    storage = await open_storage("memory://")
    yield storage
    await storage.aclose()


def riders(coord: MemoryCoordinator) -> list[str]:
    """Lease ids completed aboard a claim."""
    return [lease_id for op, ids in coord.calls if op == "claim_completing" for lease_id in ids]


def alone(coord: MemoryCoordinator) -> list[str]:
    """Lease ids completed by a complete request of their own (calls not made from inside claim_completing)."""
    ride, sent = set(riders(coord)), []
    for op, value in coord.calls:
        if op == "complete" and value[0] not in ride:
            sent.append(value[0])
    return sent


async def run_job(coord: MemoryCoordinator, store: Any, concurrency: int = 2) -> tuple[Worker, dict[str, Any]]:
    job = coord.submit(SERIES, T0, T0 + WINDOWS * 30 * MINUTE)
    worker = Worker(
        settings(concurrency=concurrency), coordinator=coord, source=open_source("synthetic:3"), storage=store
    )
    await run_until(worker, lambda: coord.job(job["job_id"])["state"] == "done")
    return worker, coord.job(job["job_id"])


async def test_completes_ride_on_the_claims_that_refill_their_slots(store):
    """With every slot busy, each finished window's complete travels with the next claim: all but the last
    ``concurrency`` windows (whose slots no claim refills: the job is drained) complete aboard a claim, and every
    window is done once."""
    coord = MemoryCoordinator(ttl_ms=600, window_bars=30)
    worker, job = await run_job(coord, store)
    assert job["windows"]["done"] == WINDOWS
    assert worker.metrics.windows_done._value.get() == WINDOWS
    assert len(riders(coord)) >= WINDOWS - 2
    assert len(riders(coord)) + len(alone(coord)) == WINDOWS
    assert worker.metrics.leases_lost._value.get() == 0
    sent = {via: worker.metrics.completes.labels(via=via)._value.get() for via in ("claim", "alone")}
    assert sent == {"claim": len(riders(coord)), "alone": len(alone(coord))}


class FencingCoordinator(MemoryCoordinator):
    """The complete of the second lease is refused as fenced."""

    async def complete(self, lease_id: str, token: int, rows: int) -> Any:
        if token == 2:
            self.calls.append(("complete", (lease_id, False)))
            raise LeaseLostError(f"lease {lease_id} is fenced", status=409, code="lease_lost")
        return await super().complete(lease_id, token, rows)


async def test_a_fenced_completion_aboard_a_claim_counts_its_window_lost(store):
    """A riding completion answered lease_lost makes its window lost (not done, not failed), as its own complete
    request would; the other windows are done."""
    coord = FencingCoordinator(ttl_ms=60_000, window_bars=30)
    job = coord.submit(SERIES, T0, T0 + WINDOWS * 30 * MINUTE)
    worker = Worker(settings(concurrency=1), coordinator=coord, source=open_source("synthetic:3"), storage=store)
    await run_until(worker, lambda: coord.job(job["job_id"])["windows"]["done"] == WINDOWS - 1)
    assert worker.metrics.leases_lost._value.get() == 1
    assert worker.metrics.windows_done._value.get() == WINDOWS - 1
    assert "lease-2" in riders(coord)


class UnconfirmingCoordinator(MemoryCoordinator):
    """Claims answer every completion they carry as unconfirmed (a timeout), without applying it."""

    async def claim_completing(
        self, worker_id: str, completions: Sequence[tuple[str, int, int]], *, max_windows: int = 1
    ) -> tuple[list[Lease], list[Any]]:
        self.calls.append(("claim_completing", []))
        unconfirmed = CoordinatorError("complete was not confirmed", status=503, code="timeout")
        return await self.claim(worker_id, max_windows=max_windows), [unconfirmed] * len(completions)


async def test_an_unconfirmed_completion_is_sent_again_alone(store):
    """A completion the claim left unconfirmed is completed by a request of its own: every window is done."""
    coord = UnconfirmingCoordinator(ttl_ms=600, window_bars=30)
    worker, job = await run_job(coord, store)
    assert job["windows"]["done"] == WINDOWS
    assert worker.metrics.windows_done._value.get() == WINDOWS
    assert len(alone(coord)) == WINDOWS
    assert ("claim_completing", []) in coord.calls


class OldCoordinator(MemoryCoordinator):
    """A coordinator of the version before ``ClaimRequest.complete``: the field is a 400."""

    async def claim_completing(
        self, worker_id: str, completions: Sequence[tuple[str, int, int]], *, max_windows: int = 1
    ) -> tuple[list[Lease], list[Any]]:
        self.calls.append(("refused", len(completions)))
        raise CoordinatorBadRequestError(
            "400 invalid: field 'complete' has value [...]; expected no such field", status=400, field="complete"
        )


async def test_a_coordinator_without_the_field_turns_riding_off(store):
    """The first claim refused for ``complete`` turns riding off for the process: its completions and all later
    ones go alone, and every window is done."""
    coord = OldCoordinator(ttl_ms=600, window_bars=30)
    worker, job = await run_job(coord, store)
    assert job["windows"]["done"] == WINDOWS
    assert worker.metrics.windows_done._value.get() == WINDOWS
    assert [op for op, _ in coord.calls].count("refused") == 1
    assert len(alone(coord)) == WINDOWS
