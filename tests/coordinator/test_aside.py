"""Standing aside (coordinator/_aside.py): a node whose disk is low drops its peers' messages both ways, never
stands for election, hands leadership off first, schedules no dump, and comes back without a RequestVote."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf
from pysyncobj.config import SERIALIZER_STATE
from structlog.testing import capture_logs

from coordinator._aside import (
    ASIDE,
    DUMP_RETRY_S,
    HANDING_OFF,
    HANDOFF_RETRY_S,
    HANDOFF_S,
    SERVING,
    StandAside,
    check_pysyncobj,
)
from coordinator._disk import DiskGuard
from coordinator.api import _stood_aside
from devkit.ports import free_port

MIB = 2**20
TIMEOUT_S = 0.5


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


class Disk:
    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: Path) -> int:
        return self.free


class FakeSerializer:
    """pysyncobj's Serializer as the tick sees it: a state that reports SUCCESS or FAILED once."""

    def __init__(self) -> None:
        self.state = SERIALIZER_STATE.NOT_SERIALIZING
        self.started: list[Any] = []

    def checkSerializing(self) -> tuple[int, Any]:
        state = self.state
        if state in (SERIALIZER_STATE.SUCCESS, SERIALIZER_STATE.FAILED):
            self.state = SERIALIZER_STATE.NOT_SERIALIZING
        return state, 7

    def serialize(self, data: Any, dump_id: Any) -> None:
        self.started.append(dump_id)


class FakeSync:
    """The SyncObj internals StandAside uses."""

    def __init__(self, leader: bool) -> None:
        self.leader = leader
        self._SyncObj__raftElectionDeadline = 0.0
        self._SyncObj__serializer = FakeSerializer()
        self.transfers = 0
        self.transfer_answer = FAIL_REASON.REQUEST_DENIED

    def _isLeader(self) -> bool:
        return self.leader

    def transferLeadership(self, node: Any = None, callback: Any = None) -> None:
        self.transfers += 1
        callback(None, self.transfer_answer)

    @property
    def deadline_s(self) -> float:
        return self._SyncObj__raftElectionDeadline


def aside_node(tmp_path: Path, *, leader: bool, free: int = 100 * MIB) -> tuple[StandAside, FakeSync, Disk, Clock]:
    clock, disk = Clock(), Disk(free)
    guard = DiskGuard(tmp_path, 10 * MIB, free=disk, clock_s=clock)
    aside = StandAside(guard, TIMEOUT_S, clock)
    sync = FakeSync(leader)
    aside.attach(sync)  # type: ignore[arg-type]
    return aside, sync, disk, clock


def tick(aside: StandAside, clock: Clock, seconds: float) -> None:
    clock.now_s += seconds
    aside.tick()


def test_a_follower_with_a_low_disk_drops_messages_and_holds_its_election_then_rejoins(tmp_path: Path) -> None:
    """Aside at once: every peer message is dropped and counted, the election deadline stays one timeout ahead;
    once space returns the node serves again with a fresh deadline, so the leader's heartbeat comes first."""
    aside, sync, disk, clock = aside_node(tmp_path, leader=False)
    tick(aside, clock, 1)
    assert aside.state == SERVING and aside.accepts({"type": "append_entries"})
    disk.free = 5 * MIB
    with capture_logs() as logs:
        tick(aside, clock, 1)
    assert aside.state == ASIDE and not aside.serving
    assert [e["event"] for e in logs] == ["disk.low", "raft.stand_aside"]
    assert not aside.accepts({"type": "request_vote"}) and not aside.accepts({"type": "append_entries"})
    assert aside.dropped == 2
    assert not aside.sends({"type": "apply_command"}) and aside.sends({"type": "keepalive"})
    for _ in range(3):
        assert sync.deadline_s >= time.monotonic() + TIMEOUT_S - 0.05
        tick(aside, clock, 1)
    disk.free = 25 * MIB  # above need (10 MiB) + reserve (10 MiB)
    with capture_logs() as logs:
        tick(aside, clock, 1)
    assert aside.state == SERVING and aside.accepts({"type": "append_entries"})
    assert aside.sends({"type": "next_node_idx"})
    assert [e["event"] for e in logs] == ["disk.recovered", "raft.rejoin"]
    assert logs[1]["dropped_messages"] == 2 and logs[1]["aside_s"] == 4.0
    assert sync.deadline_s >= time.monotonic() + TIMEOUT_S - 0.05


def test_a_leader_hands_off_before_it_stands_aside(tmp_path: Path) -> None:
    """A leader stops serving at once but still takes messages while it asks a follower to take over, retrying
    every HANDOFF_RETRY_S while refused; it is aside as soon as TimeoutNow is sent."""
    aside, sync, disk, clock = aside_node(tmp_path, leader=True)
    disk.free = MIB
    tick(aside, clock, 1)
    assert aside.state == HANDING_OFF and not aside.serving and aside.accepts({"type": "next_node_idx"})
    assert aside.sends({"type": "append_entries"})  # followers catch up, TimeoutNow goes out
    assert sync.transfers == 1
    tick(aside, clock, HANDOFF_RETRY_S / 2)
    assert sync.transfers == 1
    tick(aside, clock, HANDOFF_RETRY_S)
    assert sync.transfers == 2 and aside.state == HANDING_OFF
    sync.transfer_answer = FAIL_REASON.SUCCESS
    with capture_logs() as logs:
        tick(aside, clock, HANDOFF_RETRY_S)
    assert aside.state == ASIDE and not aside.accepts({"type": "response_vote"})
    heartbeat = {"type": "append_entries", "term": 3, "commit_index": 9, "entries": [], "prevLogIdx": 9}
    assert aside.sends(heartbeat)  # the third node's timer stays held while the successor stands
    assert not aside.sends({**heartbeat, "entries": [(b"cmd", 10, 3)]})  # nothing appended now leaves
    assert not aside.sends({"type": "append_entries", "serialized": b"dump"})
    assert logs[0]["event"] == "raft.handed_off" and logs[0]["timeout_now_sent"] is True


def test_a_leader_without_a_successor_stands_aside_after_the_handoff_time(tmp_path: Path) -> None:
    aside, sync, disk, clock = aside_node(tmp_path, leader=True)
    disk.free = MIB
    tick(aside, clock, 1)
    while clock.now_s < 101 + HANDOFF_S - HANDOFF_RETRY_S:
        tick(aside, clock, HANDOFF_RETRY_S)
        assert aside.state == HANDING_OFF
    tick(aside, clock, HANDOFF_RETRY_S * 2)
    assert aside.state == ASIDE
    assert sync.transfers >= HANDOFF_S / HANDOFF_RETRY_S - 2
    assert not aside.sends({"type": "append_entries", "entries": []})  # no successor: silent, the others elect


def test_a_node_low_at_start_is_aside_before_its_first_tick(tmp_path: Path) -> None:
    with capture_logs() as logs:
        aside, sync, _, _ = aside_node(tmp_path, leader=False, free=0)
    assert aside.state == ASIDE and not aside.accepts({"type": "append_entries"})
    assert sync.deadline_s >= time.monotonic() + TIMEOUT_S - 0.05
    assert [e["event"] for e in logs] == ["disk.low", "raft.stand_aside"] and logs[1]["at"] == "start"


def test_no_dump_while_aside_nor_right_after_a_failed_one(tmp_path: Path) -> None:
    """A failed dump: logged with its size, its temporary file removed, its size added to the need, and no new
    attempt for DUMP_RETRY_S; while aside pysyncobj's attempts are refused."""
    aside, sync, disk, clock = aside_node(tmp_path, leader=False, free=40 * MIB)
    serializer = sync._SyncObj__serializer
    ser: Any = serializer  # the wrapped methods StandAside installed
    ser.serialize("state", 1)
    assert serializer.started == [1]
    (tmp_path / "raft.dump.tmp").write_bytes(b"p" * 4096)
    serializer.state = SERIALIZER_STATE.FAILED
    with capture_logs() as logs:
        assert ser.checkSerializing() == (SERIALIZER_STATE.FAILED, 7)
    assert logs[0]["event"] == "raft.dump_write_failed" and logs[0]["attempt_bytes"] == 4096
    assert not (tmp_path / "raft.dump.tmp").exists()
    assert aside.guard.need_bytes == 10 * MIB + 4096
    ser.serialize("state", 2)
    clock.now_s += DUMP_RETRY_S
    ser.serialize("state", 3)
    assert serializer.started == [1, 3]
    disk.free = 0
    tick(aside, clock, 1)
    ser.serialize("state", 4)
    assert aside.state == ASIDE and serializer.started == [1, 3]
    serializer.state = SERIALIZER_STATE.SUCCESS
    ser.checkSerializing()
    assert aside.guard.failed_dump_bytes == 0


def test_check_pysyncobj_names_what_is_missing() -> None:
    with pytest.raises(RuntimeError, match="_SyncObj__raftElectionDeadline"):
        check_pysyncobj(object())


def test_a_real_single_node_never_elects_itself_while_aside(tmp_path: Path) -> None:
    """With pysyncobj itself: a one-node cluster elects itself as soon as its election timeout passes; held
    aside it stays a follower at term 0 for many timeouts, and released it becomes leader at term 1."""
    addr = f"127.0.0.1:{free_port('127.0.0.1')}"
    conf = SyncObjConf(
        autoTick=False, raftMinTimeout=0.05, raftMaxTimeout=0.1, appendEntriesPeriod=0.01, bindAddress=addr
    )
    sync = SyncObj(addr, [], conf)
    try:
        check_pysyncobj(sync)
        disk = Disk(0)
        guard = DiskGuard(tmp_path, MIB, free=disk)
        aside = StandAside(guard, 0.1)
        aside.attach(sync)
        sync.addOnTickCallback(aside.tick)
        held_until = time.monotonic() + 1.0  # ten election timeouts
        while time.monotonic() < held_until:
            sync.doTick(0.01)
        assert not sync._isLeader() and sync.raftCurrentTerm == 0
        disk.free = 10 * MIB
        deadline = time.monotonic() + 5.0
        while not sync._isLeader() and time.monotonic() < deadline:
            sync.doTick(0.01)
        assert sync._isLeader() and sync.raftCurrentTerm == 1
    finally:
        sync.destroy()


@pytest.mark.parametrize(
    ("status", "body", "gone"),
    [
        (503, b'{"error": {"code": "disk_full", "message": "aside"}}', True),
        (503, b'{"error": {"code": "no_leader", "message": "none"}}', False),
        (503, b"not json", False),
        (200, b'{"error": {"code": "disk_full"}}', False),
    ],
)
def test_a_follower_takes_its_leaders_disk_full_for_a_leader_change(status: int, body: bytes, gone: bool) -> None:
    """api.py rule 3: a forwarded request answered 503 disk_full (the leader is handing off) is sent to the next
    leader, like a 421; any other answer is relayed."""
    assert _stood_aside(web.Response(status=status, body=body)) is gone
