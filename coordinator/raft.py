"""Thin pysyncobj adapter: one replicated method that calls into the lease table, and an asyncio bridge.

Rules:
1. The only replicated method is ``apply_batch(commands)``: a one-line loop calling the table command ``op`` of
   each ``(op, kwargs)``, looked up in ``table.COMMANDS`` (declared on the table's methods, ``_commands.py``).
   pysyncobj numbers replicated methods by their sorted names and writes the numbers into
   the journal, so one method keeps old journals readable when commands are added. The journal holds plain data.
2. Group commit: commands travel in log entries of up to ``MAX_BATCH``, with at most ``MAX_IN_FLIGHT`` (1) entry
   of this node unanswered; commands arriving meanwhile join the next entry. pysyncobj's cost is per entry
   (pickling, one AppendEntries per follower, one callback), so under concurrent load this divides it by the
   batch size, while a lone command still goes out at once. A slot whose callback never comes (a partitioned
   leader) is released after ``slot_timeout_s``.
3. It never raises: pysyncobj stalls a node's apply loop forever when a replicated method raises, and re-applies an
   entry when a result callback raises. Every failure becomes a ``Result`` with code ``internal``.
4. Apply functions never read the clock; the leader stamps ``now_ms`` into kwargs before submitting.
5. Callbacks run on pysyncobj's thread and are bridged with ``loop.call_soon_threadsafe``; every wait has a
   timeout. Non-success outcomes raise :class:`CommitError`; ``maybe_applied`` tells whether the command may
   still have been applied (retry it with the same request id: the table de-duplicates).
6. One lock guards the table: the apply thread holds it while applying, readers (HTTP GETs, metrics) hold it
   while reading.
7. SyncObjConf follows FACTS.md: appendEntriesUseBatch=False, journal AND full-dump files, explicit bind address,
   password when a cluster secret is given, leaderFallbackTimeout near the election timeout (1.5 x the upper bound),
   connectionRetryTime 1 s, static membership.
8. The table holds two long-lived objects per window; at 10^6 windows a full garbage collection walked them for
   0.4-0.7 s, past the election timeout, and elections followed (bench_coordinator_scale.py). After a dump is
   loaded and after a job's windows are added, ``gc.freeze()`` moves everything alive into the permanent
   generation, which collections skip (objects there are still freed by reference counting). The forked dump
   writer then also touches fewer pages, so copy-on-write stays small. Requests are the other side: each holds
   a few hundred tracked objects (aiohttp's request, the body, futures, answers) while it is in flight, and at
   Python's default young-generation threshold (700 allocations) the leader under 64 clients collected about
   100 times a second, walking every request in flight each time and promoting them into generations it then
   walked again. ``coordinator serve`` calls :func:`tune_gc`: a young generation of ``GC_YOUNG_THRESHOLD``
   allocations (docs/benchmarks.md, issue 20: the leader's CPU per window fell, its throughput rose).
9. Every node sends a ``keepalive`` message to each peer every ``KEEPALIVE_S``. pysyncobj drops a connection on
   which nothing was read for ``connectionTimeout`` (3.5 s), but checks that only when it sends on it. Followers
   never talk to each other, so after the leader died the first RequestVote went out on a long-idle
   follower-follower connection, which pysyncobj dropped together with the vote: a whole extra election timeout
   (the 1.5-1.7 s first failover of a fresh cluster, docs/benchmarks.md). pysyncobj ignores unknown message types.
10. Staggered election timeouts: ``raft_min_timeout_s``/``raft_max_timeout_s`` are the cluster's range. Each node
    takes its own slice of it by its rank in the sorted Raft addresses of the cluster (itself and its peers, as
    spelled in ``--raft``/``--peers``, which pysyncobj already needs identical on every node):
    :func:`election_timeout_range` cuts [min, max] into ``3 * nodes - 2`` equal units, rank r times out within
    unit ``3 r`` and two slices are two units apart (400-700 ms, 3 nodes: 400-443, 529-571, 657-700 ms; 86 ms
    gaps). pysyncobj draws a fresh timeout from the node's (min, max) on every heartbeat, vote granted and
    candidacy, and has no pre-vote: two followers whose timeouts fell within a vote's delivery of each other both
    stood and split the vote, and each then waited a whole new timeout (2-3 terms, 1.2-1.6 s failovers). With the
    slices, the deadline of the survivor ranked lower comes at least a gap before the other's (both run from the
    same heartbeat); the other grants the vote, and pysyncobj resets the granter's own deadline. The gap must
    exceed pysyncobj's tick (``AUTO_TICK_S``: a deadline is noticed at the next tick) plus a vote's delivery
    under load. A lower-ranked survivor whose log is behind is refused; the
    other then stands at its own timeout, within the range (2 terms, no extra timeout).
11. The Raft port is guarded: pysyncobj runs with :class:`coordinator._raft_transport.GuardedTransport` (bounded
    frames checked before buffering, linear buffers, handshake limits and deadlines, rate-limited rejection logs;
    rules in that module). Its rejection counts are :meth:`RaftNode.transport_rejections`.
12. The data dir's disk decides whether the node takes part: journal blocks are allocated before they are written
    and a failed write ends the process (``_disk.py``); below ``coordinator.disk_reserve_mb`` free the node
    stands aside (``_aside.py``: a leader hands off, then peer messages are dropped both ways and the election
    deadline is held, so it neither appends, votes nor stands) and rejoins by itself when space returns. While it is not
    serving, :attr:`RaftNode.is_leader` is false, :attr:`RaftNode.leader_addr` is None and :meth:`RaftNode.submit`
    refuses.
13. A node whose Raft port cannot be bound does not start (:class:`RaftBindError`; ``coordinator serve`` exits
    2 naming ``--raft``). pysyncobj would retry the bind every second without a word while HTTP answered 503.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pysyncobj import FAIL_REASON, SyncObj, SyncObjConf, SyncObjConsumer, replicated

from coordinator._aside import StandAside
from coordinator._disk import DiskGuard
from coordinator._fsync import journal_factory
from coordinator._raft_transport import GuardedTransport, TransportGuard
from coordinator._retention import trim_after_retire
from coordinator.seams import CommitError
from coordinator.table import COMMANDS, Result, Table
from provider.core.obs import get_logger

__all__ = [
    "COMMANDS",
    "MAX_BATCH",
    "CommitError",
    "RaftBindError",
    "RaftNode",
    "RaftSettings",
    "TableConsumer",
    "election_timeout_range",
    "tune_gc",
]

log = get_logger("coordinator.raft")
T = TypeVar("T")


class RaftBindError(RuntimeError):
    """The Raft port could not be bound (rule 13): the node must not run without Raft."""


#: Most commands in one log entry.
MAX_BATCH = 256
#: Log entries of this node's group commit in flight at once; commands arriving meanwhile join the next entry.
#: One, not two: with one entry out, commands wait for one round trip and go out together; pysyncobj's cost is
#: per entry, so the leader spent 10% less CPU per window (docs/benchmarks.md, issue 20) at the same latency.
MAX_IN_FLIGHT = 1
#: Outcomes after which the command may still be applied (FACTS.md): retry with the same request id.
_MAYBE_APPLIED = {FAIL_REASON.LEADER_CHANGED, FAIL_REASON.UNKNOWN_OUTCOME, FAIL_REASON.NOT_LEADER}
_LEADER = 2  # pysyncobj _RAFT_STATE.LEADER
#: Interval of the peer keepalive (rule 9); well under pysyncobj's connectionTimeout.
KEEPALIVE_S = 1.0
_KEEPALIVE = {"type": "keepalive"}
#: pysyncobj's tick when idle (its default is 50 ms): an expired election deadline is noticed at the next tick, so
#: the tick eats into the gap between two nodes' timeout slices (rule 10).
AUTO_TICK_S = 0.02


#: Allocations between two young-generation collections in a serving process (rule 8; Python's default is 700).
GC_YOUNG_THRESHOLD = 10_000


def tune_gc() -> None:
    """Rule 8: the collector's young generation for a process that serves many concurrent requests; the older
    generations keep Python's ratios (each collected after 10 collections of the one below)."""
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)


def election_timeout_range(rank: int, nodes: int, min_s: float, max_s: float) -> tuple[float, float]:
    """Rule 10: the election timeout range of the node ranked ``rank`` (0-based) of ``nodes``: [min_s, max_s] cut
    into ``3 * nodes - 2`` units; rank r gets unit ``3 r``, so slices are one unit wide and two units apart."""
    if not max_s > min_s:
        raise ValueError(f"the election timeout range [{min_s}, {max_s}] is empty")
    if not 0 <= rank < nodes:
        raise ValueError(f"rank {rank} is not one of {nodes} nodes")
    if nodes == 1:
        return min_s, max_s
    unit = (max_s - min_s) / (3 * nodes - 2)
    lo = min_s + 3 * rank * unit
    return lo, (max_s if rank == nodes - 1 else lo + unit)


class TableConsumer(SyncObjConsumer):
    """The replicated state: the table, applied under a lock; ``on_applied`` sees each (op, result)."""

    def __init__(self, table: Table, lock: threading.Lock, on_applied: Callable[[str, Result], None]) -> None:
        self._table = table
        self._lock = lock
        self._on_applied = on_applied
        super().__init__()

    @replicated
    def apply_batch(self, commands: list[tuple[str, dict[str, Any]]]) -> list[Result]:
        results = [self._apply(op, kwargs) for op, kwargs in commands]
        if any(op == "submit_job" for op, _ in commands):
            gc.freeze()  # see rule 8: the new windows join the long-lived objects the collector skips
        trim_after_retire(commands, results)  # coordinator/_retention.py rule 4
        return results

    def _apply(self, op: Any, kwargs: Any) -> Result:
        try:
            run = COMMANDS.get(op) if isinstance(op, str) else None
            if run is None or not isinstance(kwargs, dict):
                result = Result.error("invalid", f"unknown command {op!r}", "op")
            else:
                with self._lock:
                    result = run(self._table, **kwargs)
        except Exception as exc:  # the table never raises; this is the last line of defence of the apply loop
            log.error("raft.apply_failed", op=op, error=repr(exc))
            result = Result.error("internal", f"{op} failed: {type(exc).__name__}")
        try:
            self._on_applied(str(op), result)
        except Exception as exc:
            log.error("raft.on_applied_failed", op=op, error=repr(exc))
        return result

    def _serialize(self) -> Any:
        with self._lock:
            return self._table.export_state()

    def _deserialize(self, data: Any) -> None:
        with self._lock:
            if not self._table.import_state(data):
                log.error("raft.dump_not_loaded", reason="the full dump is not a lease-table state of this version")
        gc.freeze()


@dataclass(frozen=True)
class RaftSettings:
    """What the Raft node needs; built by the CLI from flags and CoordinatorConfig."""

    self_addr: str
    peers: tuple[str, ...]
    data_dir: Path
    password: str | None = None
    raft_min_timeout_s: float = 0.4
    raft_max_timeout_s: float = 0.7
    log_compaction_min_entries: int = 50_000
    fsync: str = "never"
    fsync_interval_ms: int = 10
    #: Free space of the data dir's filesystem, beyond the next dump, below which the node stands aside (rule 12).
    disk_reserve_bytes: int = 64 * 2**20

    @property
    def members(self) -> list[str]:
        """The cluster's Raft addresses, sorted (this node included once)."""
        return sorted({self.self_addr, *self.peers})

    @property
    def rank(self) -> int:
        return self.members.index(self.self_addr)

    @property
    def election_timeout_s(self) -> tuple[float, float]:
        """This node's slice of the cluster's election timeout range (rule 10)."""
        return election_timeout_range(self.rank, len(self.members), self.raft_min_timeout_s, self.raft_max_timeout_s)

    def conf(self, on_state_changed: Callable[[int, int], None]) -> SyncObjConf:
        heartbeat_s = min(0.1, self.raft_min_timeout_s / 4)
        min_timeout_s, max_timeout_s = self.election_timeout_s
        return SyncObjConf(
            autoTickPeriod=AUTO_TICK_S,
            appendEntriesUseBatch=False,
            journalFile=str(self.data_dir / "raft.journal"),
            fullDumpFile=str(self.data_dir / "raft.dump"),
            bindAddress=self.self_addr,
            password=self.password,
            dynamicMembershipChange=False,
            raftMinTimeout=min_timeout_s,
            raftMaxTimeout=max_timeout_s,
            appendEntriesPeriod=heartbeat_s,
            # A cut-off leader steps down soon after its followers would have elected another one; all decisions
            # need a commit anyway, so this only bounds how long it keeps answering reads as "leader".
            leaderFallbackTimeout=1.5 * self.raft_max_timeout_s,
            # Re-sends after a follower reset carry up to 1 MiB, so a lagging follower is caught up in one message
            # (pysyncobj truncates and re-appends on such re-sends; see docs/coordinator.md).
            appendEntriesBatchSizeBytes=2**20,
            connectionTimeout=max(3.5, self.raft_max_timeout_s),
            connectionRetryTime=1.0,
            logCompactionMinEntries=self.log_compaction_min_entries,
            onStateChanged=on_state_changed,
        )


def _expire(future: asyncio.Future[Result]) -> None:
    """The commit timeout of one command: it may still be applied (rule 5)."""
    if not future.done():
        future.set_exception(CommitError("TIMEOUT", maybe_applied=True))


def _settle(futures: list[asyncio.Future[Result]], results: Any, error: Any) -> None:
    """Resolve the futures of one batch with its results, or fail them all."""
    ok = error == FAIL_REASON.SUCCESS and isinstance(results, list) and len(results) == len(futures)
    if not ok:
        name = next((k for k, v in vars(FAIL_REASON).items() if v == error), str(error))
    for i, future in enumerate(futures):
        if future.done():
            continue
        if ok:
            future.set_result(results[i])
        else:
            future.set_exception(CommitError(name, maybe_applied=error in _MAYBE_APPLIED))


class RaftNode:
    """Owns the SyncObj, the table and its lock; ``submit`` replicates a command and awaits its result.

    The real :class:`coordinator.seams.Replica` of a node (``coordinator._memory.MemoryReplica`` is the fake)."""

    def __init__(self, settings: RaftSettings, table: Table, on_applied: Callable[[str, Result], None]) -> None:
        self.settings = settings
        self.table = table
        self._lock = threading.Lock()
        self._consumer = TableConsumer(table, self._lock, on_applied)
        self._guard = TransportGuard()
        #: The data dir's free-space watchdog (rule 12).
        self.disk = DiskGuard(settings.data_dir, settings.disk_reserve_bytes)
        self._aside: StandAside | None = None
        self._aside_error_s = float("-inf")
        self._sync: SyncObj | None = None
        self._keepalive_at_s = 0.0
        self._leader_since_s: float | None = None
        self._pending: list[tuple[str, dict[str, Any], asyncio.Future[Result]]] = []
        self._flush_scheduled = False
        self._in_flight = 0
        #: How long an in-flight entry may hold its group-commit slot without a callback.
        self.slot_timeout_s = 2 * settings.raft_max_timeout_s + 1.0

    def start(self) -> None:
        """Open the journal and dump, bind the Raft port and start pysyncobj's thread."""
        self.settings.data_dir.mkdir(parents=True, exist_ok=True)
        peers = [p for p in self.settings.peers if p != self.settings.self_addr]
        min_timeout_s, max_timeout_s = self.settings.election_timeout_s
        log.info(
            "raft.election_timeout",
            rank=self.settings.rank,
            nodes=len(self.settings.members),
            min_ms=round(min_timeout_s * 1000),
            max_ms=round(max_timeout_s * 1000),
        )
        aside = self._aside = StandAside(self.disk, max_timeout_s)  # rule 12: low at start means aside from start
        with journal_factory(self.settings.fsync, self.settings.fsync_interval_ms):  # coordinator/_fsync.py
            self._sync = SyncObj(
                self.settings.self_addr,
                peers,
                self.settings.conf(self._state_changed),
                consumers=[self._consumer],
                transportClass=functools.partial(  # rules 11 and 12
                    GuardedTransport, guard=self._guard, gate=aside.accepts, send_gate=aside.sends
                ),
            )
        bind_error = self._guard.bind_error  # pysyncobj's first bind attempt is over once SyncObj() returns
        if bind_error is not None:
            self._sync.destroy()
            self._sync = None
            raise RaftBindError(
                f"--raft {self.settings.self_addr} cannot be bound: {bind_error.strerror or bind_error}; "
                "another process (or this node's --http) holds it: pick a free port"
            )
        aside.attach(self._sync)
        self._sync.addOnTickCallback(self._keepalive)
        self._sync.addOnTickCallback(self._aside_tick)

    def _aside_tick(self) -> None:
        """On pysyncobj's tick: the disk check and what follows from it (rule 12). Never raises into the tick."""
        if self._aside is None:
            return
        try:
            self._aside.tick()
        except Exception as exc:
            now_s = time.monotonic()
            if now_s - self._aside_error_s >= 60.0:
                self._aside_error_s = now_s
                log.error("raft.stand_aside_failed", error=repr(exc))

    def _keepalive(self) -> None:
        """On pysyncobj's tick: keep every peer connection read from (rule 9). Never raises into the tick loop."""
        now_s = time.monotonic()
        if self._sync is None or now_s - self._keepalive_at_s < KEEPALIVE_S:
            return
        self._keepalive_at_s = now_s
        try:
            transport = self._sync._SyncObj__transport
            for node in self._sync.otherNodes:
                transport.send(node, _KEEPALIVE)
        except Exception as exc:  # a private pysyncobj attribute: never let a change of it stop the tick loop
            log.error("raft.keepalive_failed", error=repr(exc))

    def stop(self) -> None:
        if self._sync is not None:
            self._sync.destroy()

    def _state_changed(self, old: int, new: int) -> None:
        self._leader_since_s = time.monotonic() if new == _LEADER else None
        log.info("raft.state_changed", old=old, new=new)

    # -- status -------------------------------------------------------------------------------------------------

    @property
    def serving(self) -> bool:
        """False while the node stands aside for its disk (rule 12)."""
        return self._aside is None or self._aside.serving

    def disk_report(self) -> dict[str, Any]:
        """The disk watchdog's figures and whether the node stands aside (``/healthz``, ``/metrics``)."""
        report = self.disk.report()
        aside = self._aside
        report["raft"] = aside.state if aside is not None else "serving"
        report["dropped_messages"] = aside.dropped if aside is not None else 0
        return report

    @property
    def is_leader(self) -> bool:
        return self._sync is not None and self._sync._isLeader() and self.serving

    @property
    def leader_for_s(self) -> float:
        """Seconds since this node became leader (0 when it is not leader)."""
        since = self._leader_since_s
        return time.monotonic() - since if since is not None and self.is_leader else 0.0

    @property
    def leader_addr(self) -> str | None:
        leader = self._sync._getLeader() if self._sync is not None and self.serving else None
        return str(leader.address) if leader is not None else None

    @property
    def term(self) -> int:
        return int(self._sync.raftCurrentTerm) if self._sync is not None else 0

    @property
    def commit_index(self) -> int:
        return int(self._sync.raftCommitIndex) if self._sync is not None else 0

    @property
    def backlog(self) -> int:
        """Commands of this node waiting to go into a log entry (group commit, rule 2)."""
        return len(self._pending)

    @property
    def last_applied(self) -> int:
        return int(self._sync.raftLastApplied) if self._sync is not None else 0

    def transport_rejections(self) -> dict[str, int]:
        """Peers and frames the Raft port refused since start, by reason (rule 11)."""
        return self._guard.rejections()

    def connected(self, addr: str) -> bool:
        if self._sync is None:
            return False
        return any(n.address == addr and self._sync.isNodeConnected(n) for n in self._sync.otherNodes)

    def read(self, fn: Callable[[Table], T]) -> T:
        """Run a read-only function on the table under the apply lock."""
        with self._lock:
            return fn(self.table)

    # -- writes -------------------------------------------------------------------------------------------------

    def submit_nowait(self, op: str, kwargs: dict[str, Any]) -> None:
        """Fire and forget (followers use it to announce themselves; pysyncobj forwards it to the leader)."""
        if self._sync is not None and self.serving:
            self._consumer.apply_batch([(op, kwargs)], callback=lambda result, error: None)

    async def submit(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> Result:
        """Replicate ``op`` and return the table's result once applied here, or raise :class:`CommitError`."""
        if self._sync is None:
            raise CommitError("NOT_STARTED", maybe_applied=False)
        if not self.serving:
            raise CommitError("DISK_LOW", maybe_applied=False)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._pending.append((op, kwargs, future))
        if not self._flush_scheduled and self._in_flight < MAX_IN_FLIGHT:
            self._flush_scheduled = True
            loop.call_soon(self._flush, loop)
        # A timer that fails the future, not ``asyncio.timeout``: the same outcome, 3.5 us less per command here.
        timer = loop.call_later(timeout_s, _expire, future)
        try:
            return await future
        finally:
            timer.cancel()

    def _flush(self, loop: asyncio.AbstractEventLoop) -> None:
        """Send the gathered commands as one log entry (MAX_BATCH at most) while fewer than MAX_IN_FLIGHT are out."""
        self._flush_scheduled = False
        while self._pending and self._in_flight < MAX_IN_FLIGHT:
            batch = [item for item in self._pending[:MAX_BATCH] if not item[2].done()]
            self._pending = self._pending[MAX_BATCH:]
            if not batch:
                continue
            futures = [future for _, _, future in batch]
            slot = _Slot(self)
            self._in_flight += 1
            # A callback that never comes (a partitioned leader) must not hold the slot forever.
            slot.timer = loop.call_later(self.slot_timeout_s, slot.release)

            def callback(
                results: Any, error: Any, futures: list[asyncio.Future[Result]] = futures, slot: _Slot = slot
            ) -> None:
                with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                    loop.call_soon_threadsafe(slot.done, futures, results, error)

            self._consumer.apply_batch([(op, kwargs) for op, kwargs, _ in batch], callback=callback)

    def _slot_released(self) -> None:
        self._in_flight -= 1
        if self._pending and not self._flush_scheduled:
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush, asyncio.get_running_loop())


class _Slot:
    """One in-flight log entry of the group commit; released once, by its callback or by its timer."""

    def __init__(self, node: RaftNode) -> None:
        self._node = node
        self._released = False
        self.timer: asyncio.TimerHandle | None = None

    def release(self) -> None:
        if not self._released:
            self._released = True
            self._node._slot_released()

    def done(self, futures: list[asyncio.Future[Result]], results: Any, error: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()
        _settle(futures, results, error)
        self.release()
