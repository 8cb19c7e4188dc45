"""SLA budgets are enforced by cancellation; PARTIAL_FILL downgrades instead and says so."""

from __future__ import annotations

import asyncio

import pytest

from provider.core import SLAConfig
from provider.errors import SeamlessSLAExceeded
from provider.sla import SLAPolicy

from .conftest import SERIES, CountingSource, at, bars, store


class HangingStorage:
    """A storage whose reads never answer; records that they were cancelled."""

    def __init__(self, inner):
        self.inner = inner
        self.cancelled = 0

    async def coverage(self, series):
        return await self.inner.coverage(series)

    async def write_window(self, series, start, end, frame):
        return await self.inner.write_window(series, start, end, frame)

    async def read(self, series, start, end):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise


async def test_hanging_storage_is_cancelled_at_its_budget(storage, make_provider):
    """A storage read that hangs is cancelled when max_wait_storage_ms runs out: SeamlessSLAExceeded(storage)."""
    await store(storage, at(0), at(100))
    hanging = HangingStorage(storage)
    provider = make_provider(
        strategy="auto_backfill",
        storage_source=hanging,
        sla=SLAPolicy(max_wait_storage_ms=50, total_deadline_ms=10_000),
    )
    with pytest.raises(SeamlessSLAExceeded) as info:
        await provider.fetch(at(0), at(100), node_id=SERIES)
    assert info.value.phase == "storage"
    assert info.value.budget_ms == 50
    assert 50 <= info.value.elapsed_ms < 2_000
    assert hanging.cancelled == 1
    assert provider.last_fetch_metadata.outcome == "sla"


async def test_total_deadline_names_total_when_tighter(storage, make_provider):
    """When the total deadline is tighter than the phase budget, the violation names the total."""
    await store(storage, at(0), at(100))
    provider = make_provider(
        strategy="auto_backfill",
        storage_source=HangingStorage(storage),
        sla=SLAPolicy(max_wait_storage_ms=10_000, total_deadline_ms=40),
    )
    with pytest.raises(SeamlessSLAExceeded) as info:
        await provider.fetch(at(0), at(100), node_id=SERIES)
    assert (info.value.phase, info.value.budget_ms) == ("total", 40)


async def test_backfill_budget_stops_waiting_but_not_the_backfill(storage, make_provider):
    """A slow backfill raises SeamlessSLAExceeded(backfill) for the fetch while the window keeps materializing."""
    from provider.sources import open_source

    gate = asyncio.Event()
    slow = CountingSource(open_source("synthetic:7"), gate=gate)
    provider = make_provider(
        strategy="auto_backfill", storage_source=storage, backfiller=slow, sla=SLAPolicy(max_wait_backfill_ms=30)
    )
    with pytest.raises(SeamlessSLAExceeded) as info:
        await provider.fetch(at(0), at(100), node_id=SERIES)
    assert info.value.phase == "backfill"
    gate.set()
    await provider.wait_for_backfills()
    assert await storage.coverage(SERIES) == [(at(0), at(100))]
    assert slow.calls == [(at(0), at(100))]


async def test_partial_fill_downgrades_a_storage_timeout(storage, make_provider):
    """PARTIAL_FILL answers with what it has when storage times out and records the violation in the metadata."""
    await store(storage, at(0), at(100))
    provider = make_provider(
        strategy="partial_fill",
        storage_source=HangingStorage(storage),
        sla=SLAPolicy(max_wait_storage_ms=30),
        enable_background_backfill=False,
    )
    frame = await provider.fetch(at(0), at(100), node_id=SERIES)
    assert len(frame) == 0
    meta = provider.last_fetch_metadata
    assert meta.downgraded and meta.downgrade_reason == "sla_storage"
    assert meta.sla_violation["phase"] == "storage" and meta.sla_violation["budget_ms"] == 30
    assert meta.missing_ranges == [(at(0), at(100))]


async def test_freshness_and_coverage(storage, make_provider):
    """A lagging newest bar violates freshness; PARTIAL_FILL below min_coverage downgrades with 'coverage'."""
    gappy = await bars(at(0), at(100))
    await storage.write_window(SERIES, at(0), at(100), gappy.iloc[:90].reset_index(drop=True))
    strict = make_provider(strategy="auto_backfill", storage_source=storage, sla=SLAPolicy(max_lag_seconds=300))
    with pytest.raises(SeamlessSLAExceeded) as info:
        await strict.fetch(at(0), at(100), node_id=SERIES)
    assert info.value.phase == "freshness" and info.value.elapsed_ms == 10 * 60_000
    relaxed = make_provider(strategy="auto_backfill", storage_source=storage, sla=SLAPolicy(max_lag_seconds=600))
    assert len(await relaxed.fetch(at(0), at(100), node_id=SERIES)) == 90

    partial = make_provider(
        strategy="partial_fill",
        storage_source=storage,
        enable_background_backfill=False,
        sla=SLAPolicy(min_coverage=0.75),
    )
    frame = await partial.fetch(at(0), at(200), node_id=SERIES)
    assert len(frame) == 90
    meta = partial.last_fetch_metadata
    assert meta.downgraded and meta.sla_violation["phase"] == "coverage"
    assert meta.coverage_ratio == pytest.approx(0.5)


async def test_phase_histogram_has_buckets_up_to_600_s(storage, make_provider):
    """seamless_sla_deadline_seconds is observed per node and phase with buckets up to 600 s."""
    await store(storage, at(0), at(100))
    provider = make_provider(strategy="fail_fast", storage_source=storage, cache_source=False)
    await provider.fetch(at(0), at(100), node_id=SERIES)
    for phase in ("storage", "total"):
        labels = {"node_id": SERIES, "phase": phase, "le": "600.0"}
        assert provider.metrics.sample("seamless_sla_deadline_seconds_bucket", labels) == 1.0
        assert provider.metrics.sample("seamless_sla_deadline_seconds_count", {"node_id": SERIES, "phase": phase}) == 1


def test_policy_validation_and_config():
    """SLAPolicy rejects bad budgets naming the field and is built from the config's sla: section."""
    with pytest.raises(ValueError, match="max_wait_storage_ms"):
        SLAPolicy(max_wait_storage_ms=0)
    with pytest.raises(ValueError, match="min_coverage"):
        SLAPolicy(min_coverage=1.5)
    policy = SLAPolicy.from_config(SLAConfig(total_deadline_ms=500, min_coverage=0.9))
    assert (policy.total_deadline_ms, policy.min_coverage, policy.budget_ms("storage")) == (500, 0.9, None)
    with pytest.raises(ValueError, match="no time budget"):
        policy.budget_ms("freshness")
