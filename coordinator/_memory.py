"""In-memory seams for unit tests of the node: a clock moved by hand and a replica without Raft.

Test-only (nothing in the service imports it), kept in the package like dramatiq's ``StubBroker`` so that any test
can import it: ``CoordinatorNode(settings, config, clock=clock, replica=MemoryReplica.factory(clock=clock))``
runs a whole node (reaper, long-poll claims, "maybe applied" retries, the HTTP handlers) in one process, without
sockets, threads or sleeps. hashicorp/raft's in-memory transport is the model.

Rules:
1. :class:`ManualClock` moves only when a test calls :meth:`ManualClock.advance`: its sleeps and waits end when
   the clock passes their deadline, in deadline order, and each wake is given a few loop turns to run, so a test
   drives expiry, long-poll timeouts and retry pauses deterministically and in microseconds.
2. :class:`MemoryReplica` is one replica of one table: ``submit`` applies the command at once (on the loop's thread)
   and calls ``on_applied`` like pysyncobj's apply thread does; there is no log, no network and no second replica.
3. Its knobs simulate what only process tests could show before: who leads (:meth:`MemoryReplica.elect`; ``None``
   is an election without a winner), a disk standing aside (``serving``), and faults queued for the next submits
   (:meth:`MemoryReplica.fail_next`): a "maybe applied" outcome after applying (a lost acknowledgement) or before
   (a lost command), optionally with a leader change at the same moment.
4. Everything a submit saw is recorded (``submitted``: op names in order; ``applied``: op names applied), so a test
   asserts on outcomes: how many times a command reached the table, not how the node got there.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from coordinator.seams import CommitError, OnApplied
from coordinator.table import Result, Table

__all__ = ["Fault", "ManualClock", "MemoryReplica"]

T = TypeVar("T")

#: Loop turns given to woken tasks after each step of :meth:`ManualClock.advance` (rule 1).
SETTLE_TURNS = 30


async def settle(turns: int = SETTLE_TURNS) -> None:
    """Let every ready task run a few steps (nothing here ever waits on real time)."""
    for _ in range(turns):
        await asyncio.sleep(0)


class ManualClock:
    """A :class:`coordinator.seams.Clock` that moves only by :meth:`advance` (rule 1)."""

    def __init__(self, wall_ms: int = 1_767_225_600_000, monotonic_s: float = 1_000.0) -> None:
        self._wall_ms = wall_ms
        self._now_s = monotonic_s
        self._start_s = monotonic_s
        self._timers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._seq = itertools.count()

    def wall_ms(self) -> int:
        """Epoch ms: the start value plus the time advanced since."""
        return self._wall_ms + round((self._now_s - self._start_s) * 1000)

    def monotonic_s(self) -> float:
        """Seconds: the start value plus the time advanced since."""
        return self._now_s

    def _timer(self, seconds: float) -> asyncio.Future[None]:
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._timers, (self._now_s + max(seconds, 0.0), next(self._seq), future))
        return future

    async def sleep(self, seconds: float) -> None:
        """Return once the clock has been advanced by ``seconds`` (at once, after one loop turn, for 0)."""
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        timer = self._timer(seconds)
        try:
            await timer
        finally:
            timer.cancel()

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait for ``event`` or for the clock to pass ``timeout_s`` from now; True when the event was set."""
        if event.is_set():
            return True
        timer = self._timer(timeout_s)
        waiter: asyncio.Future[Any] = asyncio.ensure_future(event.wait())
        try:
            await asyncio.wait([timer, waiter], return_when=asyncio.FIRST_COMPLETED)
        finally:
            timer.cancel()
            waiter.cancel()
        return event.is_set()

    @property
    def sleepers(self) -> int:
        """Sleeps and waits not yet over."""
        return sum(1 for _, _, future in self._timers if not future.done())

    async def advance(self, seconds: float) -> None:
        """Move the clock by ``seconds``, waking every sleep and wait that ends on the way, in order (rule 1)."""
        target = self._now_s + seconds
        await settle()
        while self._timers and self._timers[0][0] <= target:
            at, _, future = heapq.heappop(self._timers)
            self._now_s = max(self._now_s, at)
            if not future.done():
                future.set_result(None)
                await settle()
        self._now_s = target
        await settle()


@dataclass(frozen=True)
class Fault:
    """One queued outcome of :meth:`MemoryReplica.submit` (rule 3)."""

    #: pysyncobj's name of the outcome (``LEADER_CHANGED``, ``UNKNOWN_OUTCOME``, ``TIMEOUT``, ``NOT_LEADER``, ...).
    reason: str
    #: The command reaches the table before the error is raised (a lost acknowledgement).
    applied: bool
    #: What :class:`CommitError` says: the caller may not know whether the command was applied.
    maybe_applied: bool = True
    #: The fault comes with an election: ``new_leader`` leads once it happened.
    elect: bool = False
    #: The Raft address that leads after an ``elect`` fault (``None``: no leader yet).
    new_leader: str | None = None


class MemoryReplica:
    """A :class:`coordinator.seams.Replica` over one in-process table (rules 2-4)."""

    @staticmethod
    def of(node: Any) -> MemoryReplica:
        """The fake behind ``node`` (a :class:`~coordinator.node.CoordinatorNode` built on one)."""
        replica = node.replica
        if not isinstance(replica, MemoryReplica):
            raise TypeError(f"{node!r} runs on {type(replica).__name__}, not a MemoryReplica")
        return replica

    def __init__(
        self,
        table: Table,
        on_applied: OnApplied,
        *,
        address: str = "127.0.0.1:1",
        leader: str | None = "127.0.0.1:1",
        clock: ManualClock | None = None,
    ) -> None:
        self.table = table
        self._on_applied = on_applied
        self.address = address
        self._clock = clock or ManualClock()
        self._leader = leader
        self._leader_since_s = self._clock.monotonic_s()
        #: False: the node stands aside for its disk (not leader, no leader known, submits refused).
        self.serving = True
        #: Commands waiting in the group commit, as ``backlog`` reports them (admission reads it).
        self.backlog = 0
        #: Raft addresses of peers this node has no connection to.
        self.disconnected: set[str] = set()
        self.term = 1
        self.last_applied = 0
        self.started = False
        #: Op names in the order they were submitted (``submit`` and ``submit_nowait``).
        self.submitted: list[str] = []
        #: Op names in the order they reached the table.
        self.applied: list[str] = []
        self._faults: deque[Fault] = deque()

    @classmethod
    def factory(cls, **knobs: Any) -> Callable[[Table, OnApplied], MemoryReplica]:
        """A ``replica=`` argument for :class:`coordinator.node.CoordinatorNode` with these constructor knobs."""
        return lambda table, on_applied: cls(table, on_applied, **knobs)

    # -- knobs --------------------------------------------------------------------------------------------------

    def elect(self, leader: str | None) -> None:
        """A new term led by ``leader`` (a Raft address; this replica's own makes it leader; None: no leader)."""
        self._leader = leader
        self.term += 1
        self._leader_since_s = self._clock.monotonic_s()

    def fail_next(self, reason: str = "LEADER_CHANGED", *, applied: bool, **more: Any) -> None:
        """Queue a :class:`Fault` for the next submit (rule 3)."""
        self._faults.append(Fault(reason, applied, **more))

    def apply(self, op: str, **kwargs: Any) -> Result:
        """Apply a command as if it had arrived from the log (no fault, no leader check)."""
        fn = getattr(self.table, op, None) if not op.startswith("_") else None
        result: Result = fn(**kwargs) if callable(fn) else Result.error("invalid", f"unknown command {op!r}", "op")
        self.last_applied += 1
        self.applied.append(op)
        self._on_applied(op, result)
        return result

    # -- the Replica interface ----------------------------------------------------------------------------------

    @property
    def is_leader(self) -> bool:
        """This replica's address leads and it serves."""
        return self.serving and self._leader == self.address

    @property
    def leader_addr(self) -> str | None:
        """The leading Raft address (None while standing aside)."""
        return self._leader if self.serving else None

    @property
    def leader_for_s(self) -> float:
        """Clock seconds since :meth:`elect` (or construction) made this replica leader."""
        return self._clock.monotonic_s() - self._leader_since_s if self.is_leader else 0.0

    @property
    def commit_index(self) -> int:
        """Every applied command counts as one committed entry."""
        return self.last_applied

    def start(self) -> None:
        """Nothing to open."""
        self.started = True

    def stop(self) -> None:
        """Nothing to close."""
        self.started = False

    def read(self, fn: Callable[[Table], T]) -> T:
        """Run ``fn`` on the table (one thread: no lock needed)."""
        return fn(self.table)

    async def submit(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> Result:
        """Apply ``op`` now, or play the next queued :class:`Fault`; refuse while standing aside or following."""
        self.submitted.append(op)
        await asyncio.sleep(0)  # a real submit always awaits its callback
        if not self.serving:
            raise CommitError("DISK_LOW", maybe_applied=False)
        if self._faults:
            fault = self._faults.popleft()
            if fault.applied:
                self.apply(op, **kwargs)
            if fault.elect:
                self.elect(fault.new_leader)
            raise CommitError(fault.reason, maybe_applied=fault.maybe_applied)
        if not self.is_leader:
            raise CommitError("NOT_LEADER", maybe_applied=True)
        return self.apply(op, **kwargs)

    def submit_nowait(self, op: str, kwargs: dict[str, Any]) -> None:
        """Fire and forget: the command reaches the table as if the leader had applied it."""
        if self.serving:
            self.submitted.append(op)
            self.apply(op, **kwargs)

    def connected(self, addr: str) -> bool:
        """Every peer is connected but those in ``disconnected``."""
        return addr not in self.disconnected

    def disk_report(self) -> dict[str, Any]:
        """Figures shaped like ``DiskGuard.report`` plus the stand-aside state."""
        return {
            "state": "ok" if self.serving else "low",
            "path": "(memory)",
            "free_bytes": 2**40 if self.serving else 0,
            "need_bytes": 0,
            "resume_bytes": 0,
            "reserve_bytes": 0,
            "raft": "serving" if self.serving else "aside",
            "dropped_messages": 0,
        }

    def transport_rejections(self) -> dict[str, int]:
        """No transport, nothing refused."""
        return {}
