"""The pysyncobj adapter without a cluster: the apply path never raises, group commit, and the asyncio bridge."""

from __future__ import annotations

import asyncio
import itertools
import pickle
import threading
from pathlib import Path
from typing import Any

import pytest
from pysyncobj import FAIL_REASON

from coordinator.raft import (
    GC_YOUNG_THRESHOLD,
    MAX_IN_FLIGHT,
    CommitError,
    RaftNode,
    RaftSettings,
    TableConsumer,
    election_timeout_range,
)
from coordinator.table import Result, Table


def consumer(table: Table, seen: list[tuple[str, Result]]) -> TableConsumer:
    return TableConsumer(table, threading.Lock(), lambda op, result: seen.append((op, result)))


def test_apply_never_raises() -> None:
    """Unknown commands, bad arguments, a raising table and a raising hook all become results, never exceptions."""
    seen: list[tuple[str, Result]] = []
    table = Table()
    c = consumer(table, seen)
    results = c.apply_batch(
        [
            ("drop_tables", {}),
            ("claim", {"bogus": 1}),
            ("announce", {"node_id": "n", "raft": "a:1", "http": "http://a:2"}),
        ],
        _doApply=True,
    )
    assert [(r.ok, r.code) for r in results] == [(False, "invalid"), (False, "internal"), (True, "")]
    assert [op for op, _ in seen] == ["drop_tables", "claim", "announce"]

    table._clock_ms = None  # type: ignore[assignment]  # a bug in the table: the command raises TypeError
    angry = TableConsumer(table, threading.Lock(), lambda op, result: 1 / 0)
    (result,) = angry.apply_batch([("expire", {"now_ms": 1, "max_attempts": 1})], _doApply=True)
    assert (result.ok, result.code) == (False, "internal")


def test_dump_round_trip_through_the_consumer() -> None:
    """_serialize/_deserialize move the whole table; a foreign dump is refused and the state is kept."""
    table = Table()
    table.announce(node_id="n", raft="a:1", http="http://a:2")
    restored = Table()
    c = consumer(restored, [])
    c._deserialize(pickle.loads(pickle.dumps(consumer(table, [])._serialize(), protocol=2)))  # as pysyncobj does
    assert restored.snapshot() == table.snapshot()
    c._deserialize({"format": 999})
    assert restored.snapshot() == table.snapshot()


def test_windows_of_a_new_job_are_frozen_out_of_garbage_collection() -> None:
    """After a job's windows are applied they sit in the permanent generation, so a full collection does not walk
    them (at 10^6 windows it took longer than an election timeout); the records still work and are still freed."""
    import gc

    gc.unfreeze()
    before = gc.get_freeze_count()
    table = Table()
    (result,) = consumer(table, []).apply_batch(
        [
            (
                "submit_job",
                {
                    "series": "ohlcv:x:A/B:1m",
                    "start": 0,
                    "end": 20_000 * 60_000,
                    "window_bars": 1,
                    "max_windows": 100_000,
                    "now_ms": 1,
                },
            )
        ],
        _doApply=True,
    )
    try:
        assert result.ok, result
        assert gc.get_freeze_count() - before >= 20_000  # at least one tracked object per window
        (claimed,) = table.claim(worker_id="w", max_windows=1, ttl_ms=1_000, now_ms=2).value["leases"]
        assert claimed["start"] == 0
    finally:
        gc.unfreeze()


def test_serve_collects_young_objects_less_often(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`coordinator serve` runs with a young generation of GC_YOUNG_THRESHOLD allocations (rule 8): at Python's
    700 the leader walked every request in flight about 100 times a second. Checked when the node would start."""
    import gc

    from click.testing import CliRunner

    from coordinator import cli
    from devkit.ports import free_ports
    from provider.core import obs

    seen: list[tuple[int, ...]] = []

    def started(main: Any) -> None:
        seen.append(gc.get_threshold())
        main.close()

    monkeypatch.setattr(obs, "run_service", started)
    before = gc.get_threshold()
    raft, http = free_ports(2)
    args = ["serve", "--node-id", "x", "--data-dir", str(tmp_path / "d")]
    try:
        result = CliRunner().invoke(cli.main, [*args, "--raft", f"127.0.0.1:{raft}", "--http", f"127.0.0.1:{http}"])
    finally:
        gc.set_threshold(*before)
    assert result.exit_code == 0, result.output
    assert seen == [(GC_YOUNG_THRESHOLD, 10, 10)] and before[0] < GC_YOUNG_THRESHOLD


class FakeConsumer:
    """Records apply_batch calls; answers them when told to."""

    def __init__(self) -> None:
        self.calls: list[tuple[list[tuple[str, dict[str, Any]]], Any]] = []

    def apply_batch(self, commands: list[tuple[str, dict[str, Any]]], callback: Any) -> None:
        self.calls.append((commands, callback))


def fake_node(tmp_path: Path) -> tuple[RaftNode, FakeConsumer]:
    node = RaftNode(RaftSettings("127.0.0.1:1", (), tmp_path), Table(), lambda op, result: None)
    fake = FakeConsumer()
    node._consumer = fake  # type: ignore[assignment]
    node._sync = object()  # type: ignore[assignment]
    return node, fake


async def test_commands_of_one_loop_iteration_share_a_log_entry(tmp_path: Path) -> None:
    """Five submits in one iteration travel as one apply_batch, and each caller gets its own result."""
    node, fake = fake_node(tmp_path)
    tasks = [asyncio.create_task(node.submit("announce", {"i": i}, 5.0)) for i in range(5)]
    await asyncio.sleep(0.01)
    assert len(fake.calls) == 1 and [kw["i"] for _, kw in fake.calls[0][0]] == [0, 1, 2, 3, 4]
    fake.calls[0][1]([Result.success(i) for i in range(5)], FAIL_REASON.SUCCESS)
    assert [r.value for r in await asyncio.gather(*tasks)] == [0, 1, 2, 3, 4]


async def test_commands_arriving_while_an_entry_is_out_share_the_next_one(tmp_path: Path) -> None:
    """With every slot taken, commands of later loop iterations wait and then travel as one entry (the group
    commit under load: pysyncobj's cost is per entry)."""
    node, fake = fake_node(tmp_path)
    first = []
    for i in range(MAX_IN_FLIGHT):  # one entry per loop iteration: every slot taken
        first.append(asyncio.create_task(node.submit("announce", {"i": i}, 5.0)))
        await asyncio.sleep(0.005)
    later = []
    for i in range(3):  # three separate loop iterations
        later.append(asyncio.create_task(node.submit("announce", {"i": 10 + i}, 5.0)))
        await asyncio.sleep(0.005)
    assert len(fake.calls) == MAX_IN_FLIGHT, "the later commands wait for a free slot"
    for _, callback in list(fake.calls):
        callback([Result.success(0)], FAIL_REASON.SUCCESS)
    await asyncio.sleep(0.01)
    assert [[kw["i"] for _, kw in commands] for commands, _ in fake.calls[-1:]] == [[10, 11, 12]]
    fake.calls[-1][1]([Result.success(i) for i in range(3)], FAIL_REASON.SUCCESS)
    assert [r.value for r in await asyncio.gather(*later)] == [0, 1, 2]
    await asyncio.gather(*first)


@pytest.mark.parametrize(
    ("error", "maybe"),
    [
        (FAIL_REASON.LEADER_CHANGED, True),
        (FAIL_REASON.DISCARDED, False),
        (FAIL_REASON.UNKNOWN_OUTCOME, True),
        (FAIL_REASON.QUEUE_FULL, False),
    ],
)
async def test_failures_say_whether_the_command_may_have_been_applied(tmp_path: Path, error: int, maybe: bool) -> None:
    """A non-success callback fails every command of the entry with CommitError(maybe_applied=...)."""
    node, fake = fake_node(tmp_path)
    task = asyncio.create_task(node.submit("announce", {}, 5.0))
    await asyncio.sleep(0.01)
    fake.calls[0][1](None, error)
    with pytest.raises(CommitError) as caught:
        await task
    assert caught.value.maybe_applied is maybe


async def test_a_lost_callback_times_out_and_frees_its_slot(tmp_path: Path) -> None:
    """Without a callback the caller gets TIMEOUT (maybe applied), and the group-commit slot is released later:
    a command that waited behind the lost entries then goes out."""
    node, fake = fake_node(tmp_path)
    node.slot_timeout_s = 0.1
    lost = []
    for n in range(MAX_IN_FLIGHT):  # separate loop iterations: one entry each, holding every slot
        lost.append(asyncio.create_task(node.submit("announce", {"n": n}, 0.05)))
        await asyncio.sleep(0.005)
    late = asyncio.create_task(node.submit("announce", {"n": 9}, 5.0))
    await asyncio.sleep(0.01)
    assert len(fake.calls) == MAX_IN_FLIGHT, "the lost entries hold every slot: the late command waits"
    for task in lost:
        with pytest.raises(CommitError) as caught:
            await task
        assert caught.value.reason == "TIMEOUT" and caught.value.maybe_applied
    await asyncio.sleep(0.2)
    assert len(fake.calls) == MAX_IN_FLIGHT + 1 and fake.calls[-1][0] == [("announce", {"n": 9})]
    fake.calls[-1][1]([Result.success("ok")], FAIL_REASON.SUCCESS)
    assert (await late).value == "ok"


@pytest.mark.parametrize(("min_s", "max_s"), [(0.4, 0.7), (0.05, 0.1), (1.0, 2.5)])
@pytest.mark.parametrize("nodes", [2, 3, 5, 7])
def test_election_timeouts_are_disjoint_slices_of_the_cluster_range(nodes: int, min_s: float, max_s: float) -> None:
    """Each rank gets its own slice of [min, max], in rank order, the first at min and the last at max, and two
    slices are always at least twice a slice's width apart (the room for a vote to arrive before the next node
    stands)."""
    slices = [election_timeout_range(rank, nodes, min_s, max_s) for rank in range(nodes)]
    width = (max_s - min_s) / (3 * nodes - 2)
    assert slices[0][0] == min_s and slices[-1][1] == max_s
    for lo, hi in slices:
        assert min_s <= lo < hi <= max_s
        assert hi - lo == pytest.approx(width)
    for (_, hi), (lo, _) in itertools.pairwise(slices):
        assert lo - hi == pytest.approx(2 * width)


def test_election_timeout_of_one_node_is_the_whole_range_and_ranks_are_checked() -> None:
    assert election_timeout_range(0, 1, 0.4, 0.7) == (0.4, 0.7)
    with pytest.raises(ValueError, match="rank"):
        election_timeout_range(3, 3, 0.4, 0.7)
    with pytest.raises(ValueError, match="range"):
        election_timeout_range(0, 3, 0.7, 0.7)


def test_settings_rank_the_node_among_the_sorted_raft_addresses(tmp_path: Path) -> None:
    """Every node derives the same ranks (sorted addresses, itself included), so no two share a slice; the
    cluster-wide bounds (leader fallback, connection timeout) still follow the configured range."""
    addrs = ["10.0.0.3:7000", "10.0.0.1:7000", "10.0.0.2:7000"]
    seen = []
    for addr in addrs:
        settings = RaftSettings(addr, tuple(a for a in addrs if a != addr), tmp_path, None, 0.4, 0.7)
        conf = settings.conf(lambda old, new: None)
        seen.append((settings.rank, (conf.raftMinTimeout, conf.raftMaxTimeout)))
        assert settings.election_timeout_s == (conf.raftMinTimeout, conf.raftMaxTimeout)
        assert conf.leaderFallbackTimeout == pytest.approx(1.5 * 0.7)
        assert conf.connectionTimeout >= 0.7
    assert [rank for rank, _ in seen] == [2, 0, 1]
    assert sorted(timeouts for _, timeouts in seen) == [election_timeout_range(r, 3, 0.4, 0.7) for r in range(3)]
    # A peer list that repeats the node's own address (as the CLI may pass it) ranks the same.
    assert RaftSettings(addrs[0], tuple(addrs), tmp_path).rank == 2
