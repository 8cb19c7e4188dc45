"""The node's logic in one process: a whole ``CoordinatorNode`` on ``MemoryReplica`` and ``ManualClock``
(``coordinator/_memory.py``). Expiry, long-poll timeouts and retry pauses are driven by advancing the clock, never
by sleeping; before these seams, the reaper, the long-poll claim and the "maybe applied" retry were exercised only
through real processes (test_cluster.py, the e2e and chaos suites)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from coordinator._memory import ManualClock, MemoryReplica
from coordinator.errors import NotLeaderError, UnavailableError
from coordinator.node import CoordinatorNode, NodeSettings
from coordinator.seams import Replica, ReplicaFactory
from coordinator.table import Table
from provider.core import AppConfig

pytestmark = pytest.mark.timeout(10)

RAFT, OTHER = "127.0.0.1:7001", "127.0.0.1:7002"
OTHER_HTTP = "http://127.0.0.1:8002"
SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
TTL_MS = 1_000
REAP_INTERVAL_MS = 250


def node_config(**coordinator: Any) -> AppConfig:
    """Defaults, with a 1 s lease TTL (so the default grace is 1 s too) and ``coordinator`` overrides."""
    base = AppConfig()
    seamless = base.seamless_data_provider
    backfill = replace(seamless.backfill_config, distributed_lease_ttl_ms=TTL_MS, max_attempts=2)
    return replace(
        base,
        seamless_data_provider=replace(seamless, backfill_config=backfill),
        coordinator=replace(base.coordinator, reap_interval_ms=REAP_INTERVAL_MS, **coordinator),
    )


def memory_node(tmp_path: Path, clock: ManualClock, config: AppConfig | None = None) -> CoordinatorNode:
    settings = NodeSettings("n1", RAFT, (RAFT, OTHER), "127.0.0.1", 8001, tmp_path)
    factory: ReplicaFactory = MemoryReplica.factory(clock=clock, address=RAFT, leader=RAFT)
    return CoordinatorNode(settings, config or node_config(), clock=clock, replica=factory)


@pytest.fixture
async def node(tmp_path: Path, clock: ManualClock) -> AsyncIterator[CoordinatorNode]:
    """A started leader node (reaper, announce and retention loops running on the manual clock)."""
    made = memory_node(tmp_path, clock)
    await made.start()
    await clock.advance(0)  # the announce loop's first pass: the node is known at its HTTP address
    yield made
    await made.stop()


async def submit(node: CoordinatorNode, request_id: str = "job-1", windows: int = 1) -> dict[str, Any]:
    args = {
        "series": SERIES,
        "start": 0,
        "end": windows * node.backfill.window_bars * MIN,
        "priority": 0,
        "window_bars": node.backfill.window_bars,
        "max_windows": node.cfg.max_windows_per_job,
        "owner": "t",
        "limits": {"live_jobs": 100, "outstanding_windows": 10_000},
        "trace": "",
    }
    value: dict[str, Any] = await node.execute("submit_job", args, "c:test", request_id)
    return value


def window_states(node: CoordinatorNode, job_id: str) -> list[str]:
    return [w["state"] for w in node.read(lambda t: t.job_windows(job_id)) or []]


def test_the_memory_replica_is_a_replica() -> None:
    """The fake satisfies the node's interface (mypy checks this assignment; the test keeps it compiled)."""
    factory: ReplicaFactory = MemoryReplica.factory()
    replica: Replica = factory(Table(), lambda op, result: None)
    assert replica.is_leader


# -- the reaper -------------------------------------------------------------------------------------------------


async def test_the_reaper_returns_an_expired_lease_to_pending_once_the_clock_passes_its_ttl(
    node: CoordinatorNode, clock: ManualClock
) -> None:
    """A lease not renewed is expired by the leader's reaper, on the injected clock: not before its TTL, and
    within one reap interval after it."""
    job = (await submit(node))["job"]
    lease = (await node.claim("w1", 1, 0, "c:w", "claim-1"))["leases"][0]
    await clock.advance(TTL_MS / 1000 - 0.3)
    assert window_states(node, job["job_id"]) == ["leased"]
    await clock.advance(0.3 + REAP_INTERVAL_MS / 1000)
    assert window_states(node, job["job_id"]) == ["pending"]
    assert MemoryReplica.of(node).applied.count("expire") == 1
    assert node.read(lambda t: t.lease_infos(clock.wall_ms())) == []
    again = (await node.claim("w2", 1, 0, "c:w", "claim-2"))["leases"][0]
    assert again["attempt"] == 2 and again["token"] > lease["token"]


async def test_a_follower_never_reaps_and_a_new_leader_waits_for_its_grace(
    node: CoordinatorNode, clock: ManualClock
) -> None:
    """Expired leases stay leased on a follower; a node elected later reaps only once ``leader_grace_ms`` (one TTL
    here) has passed since its election, so workers can renew across the election gap."""
    job = (await submit(node))["job"]
    await node.claim("w1", 1, 0, "c:w", "claim-1")
    MemoryReplica.of(node).elect(OTHER)
    await clock.advance(5 * TTL_MS / 1000)
    assert window_states(node, job["job_id"]) == ["leased"]
    assert "expire" not in MemoryReplica.of(node).submitted
    MemoryReplica.of(node).elect(RAFT)
    await clock.advance(TTL_MS / 1000 - 0.3)
    assert window_states(node, job["job_id"]) == ["leased"]
    await clock.advance(0.3 + REAP_INTERVAL_MS / 1000)
    assert window_states(node, job["job_id"]) == ["pending"]


async def test_reap_once_does_nothing_when_no_lease_is_due(node: CoordinatorNode, clock: ManualClock) -> None:
    """A pass finds the earliest expiry in the replica and submits nothing before it is due."""
    await submit(node)
    await node.claim("w1", 1, 0, "c:w", "claim-1")
    before = list(MemoryReplica.of(node).submitted)
    await clock.advance(TTL_MS / 1000 / 2)
    assert await node.reap_once() == []
    assert MemoryReplica.of(node).submitted == before


# -- the long-poll claim ----------------------------------------------------------------------------------------


async def test_a_waiting_claim_is_woken_by_a_submission(node: CoordinatorNode, clock: ManualClock) -> None:
    """A claim with ``wait_ms`` on an empty table waits, and the job submitted meanwhile wakes it at once: the
    clock never moved."""
    started_s = clock.monotonic_s()
    claim = asyncio.create_task(node.claim("w1", 1, 20_000, "c:w", "claim-1"))
    await clock.advance(0)
    assert not claim.done()
    job = (await submit(node))["job"]
    value = await asyncio.wait_for(claim, 1)
    assert [(lease["series"], lease["start"]) for lease in value["leases"]] == [(SERIES, job["start"])]
    assert clock.monotonic_s() == started_s


async def test_a_waiting_claim_answers_empty_when_its_wait_is_over(node: CoordinatorNode, clock: ManualClock) -> None:
    """Without work, a claim waits exactly ``wait_ms`` of the node's clock and then answers no leases."""
    claim = asyncio.create_task(node.claim("w1", 1, 2_000, "c:w", "claim-1"))
    await clock.advance(1.9)
    assert not claim.done()
    await clock.advance(0.1)
    assert claim.done() and claim.result() == {"leases": []}
    assert "claim" not in MemoryReplica.of(node).submitted  # nothing pending: nothing was committed


async def test_a_claim_waits_at_most_max_claim_wait_ms(tmp_path: Path, clock: ManualClock) -> None:
    """The node caps a client's ``wait_ms`` by ``coordinator.max_claim_wait_ms``."""
    node = memory_node(tmp_path, clock, node_config(max_claim_wait_ms=500))
    await node.start()
    await clock.advance(0)
    try:
        claim = asyncio.create_task(node.claim("w1", 1, 60_000, "c:w", "claim-1"))
        await clock.advance(0.5)
        assert claim.done() and claim.result() == {"leases": []}
    finally:
        await node.stop()


# -- "maybe applied" retries ------------------------------------------------------------------------------------


@pytest.mark.parametrize("applied", [True, False], ids=["ack-lost", "command-lost"])
async def test_a_maybe_applied_write_is_retried_and_applied_once(
    node: CoordinatorNode, clock: ManualClock, applied: bool
) -> None:
    """LEADER_CHANGED after (the acknowledgement was lost) or before (the command was lost) the apply: the node
    sends the command again with the same request id after a 10 ms pause, and the table holds it exactly once."""
    MemoryReplica.of(node).fail_next("LEADER_CHANGED", applied=applied)
    task = asyncio.create_task(submit(node, "job-1"))
    await clock.advance(0.01)
    value = await asyncio.wait_for(task, 1)
    assert value["created"] is True
    assert MemoryReplica.of(node).submitted.count("submit_job") == 2
    # The second apply is the de-duplicated one.
    assert MemoryReplica.of(node).applied.count("submit_job") == (2 if applied else 1)
    assert len(node.read(lambda t: t.jobs_page(10, 0, None, None))[0]) == 1
    assert node.metrics.registry.get_sample_value("coordinator_commit_retries_total") == 1


async def test_without_a_request_id_a_maybe_applied_write_is_not_retried(node: CoordinatorNode) -> None:
    """A command without request id cannot be de-duplicated: after a "maybe applied" outcome the node answers 503
    ``timeout`` instead of risking a second apply; a definite failure (not applied) is still retried."""
    MemoryReplica.of(node).fail_next("UNKNOWN_OUTCOME", applied=True)
    with pytest.raises(UnavailableError) as caught:
        await node.execute("barrier", {}, "", "")
    assert caught.value.code == "timeout"
    assert MemoryReplica.of(node).submitted.count("barrier") == 1


async def test_a_write_that_never_commits_times_out_after_commit_timeout_ms(
    node: CoordinatorNode, clock: ManualClock
) -> None:
    """Retries stop at ``coordinator.commit_timeout_ms`` of the node's clock; the answer says the command may have
    been applied and how to retry safely."""
    for _ in range(1_000):
        MemoryReplica.of(node).fail_next("TIMEOUT", applied=False)
    task = asyncio.create_task(submit(node, "job-1"))
    await clock.advance(node.cfg.commit_timeout_ms / 1000)
    with pytest.raises(UnavailableError, match="same X-Client-Id and X-Request-Id") as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.code == "timeout"
    assert MemoryReplica.of(node).applied.count("submit_job") == 0


async def test_a_leader_change_under_a_write_names_the_new_leader(node: CoordinatorNode, clock: ManualClock) -> None:
    """The leader loses leadership while its command is in flight: the retry finds another leader (whose HTTP
    address the cluster learnt from its announcement) and raises NotLeaderError naming it, so the API forwards."""
    MemoryReplica.of(node).apply("announce", node_id="n2", raft=OTHER, http=OTHER_HTTP)
    MemoryReplica.of(node).fail_next("LEADER_CHANGED", applied=False, elect=True, new_leader=OTHER)
    task = asyncio.create_task(submit(node, "job-1"))
    await clock.advance(0.01)
    with pytest.raises(NotLeaderError) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.leader == OTHER_HTTP


# -- waiting for a leader ---------------------------------------------------------------------------------------


async def test_a_write_waits_for_an_election_and_then_commits(node: CoordinatorNode, clock: ManualClock) -> None:
    """During an election (no leader known) a write waits; once this node wins, it commits without error."""
    MemoryReplica.of(node).elect(None)
    task = asyncio.create_task(submit(node, "job-1"))
    await clock.advance(1.0)
    assert not task.done()
    MemoryReplica.of(node).elect(RAFT)
    await clock.advance(0.01)
    assert (await asyncio.wait_for(task, 1))["created"] is True


async def test_without_a_leader_a_write_fails_after_leader_wait_ms(node: CoordinatorNode, clock: ManualClock) -> None:
    """An election without a winner: the write waits ``coordinator.leader_wait_ms`` and then raises 503
    ``no_leader``, having submitted nothing."""
    MemoryReplica.of(node).elect(None)
    task = asyncio.create_task(submit(node, "job-1"))
    await clock.advance(node.cfg.leader_wait_ms / 1000 - 0.05)
    assert not task.done()
    await clock.advance(0.06)
    with pytest.raises(UnavailableError) as caught:
        await asyncio.wait_for(task, 1)
    assert caught.value.code == "no_leader"
    assert "submit_job" not in MemoryReplica.of(node).submitted


async def test_a_node_standing_aside_refuses_at_once(node: CoordinatorNode) -> None:
    """A node whose disk is low answers 503 ``disk_full`` without waiting for a leader (node.py rule 7)."""
    MemoryReplica.of(node).serving = False
    with pytest.raises(UnavailableError) as caught:
        await submit(node, "job-1")
    assert caught.value.code == "disk_full"
    assert node.role() == "aside"
