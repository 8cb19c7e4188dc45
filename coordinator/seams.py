"""The node's seams: the clock it reads and the replica it replicates through, declared as its user needs them.

:class:`coordinator.node.CoordinatorNode` never reads time and never builds pysyncobj objects by itself: it is
given a :class:`Clock` (default :class:`SystemClock`) and a :class:`ReplicaFactory` (default: the pysyncobj-backed
:class:`coordinator.raft.RaftNode`). Unit tests give it :class:`coordinator._memory.ManualClock` and
:class:`coordinator._memory.MemoryReplica` instead (hashicorp/raft's in-memory transport is the model).

Rules:
1. :class:`Clock` is the node's only source of time: ``wall_ms`` is stamped into commands on the leader,
   ``monotonic_s`` measures deadlines, ``sleep`` and ``wait`` are the node's only waits. :class:`SystemClock` is the
   one impure implementation: the wall clock and the running loop's clock and timers.
2. :class:`Replica` is what the node needs of replication, and nothing else: leadership, the leader's Raft
   address, reads of the table under its lock, submits that return the table's :class:`Result` once applied
   here, and the figures the status routes and metrics show.
3. ``submit`` raises :class:`CommitError` for any outcome other than "applied": ``maybe_applied`` tells whether the
   command may still have been applied (the node retries it with the same request id; the table de-duplicates).
4. The replica calls ``on_applied(op, result)`` after each applied command (on its own thread for pysyncobj);
   the callback must never raise and may only hand work over to the event loop.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from coordinator.table import Result, Table
from provider.core.clock import wall_clock_ms

__all__ = ["SYSTEM_CLOCK", "Clock", "CommitError", "OnApplied", "Replica", "ReplicaFactory", "SystemClock", "wall_ms"]

T = TypeVar("T")

#: Called by a replica after each applied command with the command's name and the table's result (rule 4).
OnApplied = Callable[[str, Result], None]


def wall_ms() -> int:
    """The wall clock in epoch ms (``provider.core.clock``); only the leader's command path reads it (through
    :class:`SystemClock`)."""
    return wall_clock_ms()


class CommitError(Exception):
    """A replicated command did not report success; ``maybe_applied`` says whether it could still have been."""

    def __init__(self, reason: str, *, maybe_applied: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_applied = maybe_applied


class Clock(Protocol):
    """The node's time (rule 1)."""

    def wall_ms(self) -> int:
        """Epoch milliseconds, stamped into commands as ``now_ms``."""
        ...

    def monotonic_s(self) -> float:
        """Seconds on a clock that never goes back, for deadlines."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Return after ``seconds`` of this clock."""
        ...

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """Wait until ``event`` is set (True) or ``timeout_s`` of this clock passed (False)."""
        ...


class SystemClock:
    """The real clock: wall time, the running loop's time, its timers."""

    def wall_ms(self) -> int:
        """Epoch milliseconds of the wall clock."""
        return wall_ms()

    def monotonic_s(self) -> float:
        """The running loop's time (``time.monotonic`` outside a loop)."""
        try:
            return asyncio.get_running_loop().time()
        except RuntimeError:
            return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """``asyncio.sleep``."""
        await asyncio.sleep(seconds)

    async def wait(self, event: asyncio.Event, timeout_s: float) -> bool:
        """``event.wait()`` bounded by ``timeout_s``."""
        try:
            await asyncio.wait_for(event.wait(), timeout_s)
        except TimeoutError:
            return False
        return True


#: The clock a node uses unless it is given another.
SYSTEM_CLOCK = SystemClock()


class Replica(Protocol):
    """Replication as the node uses it (rule 2); :class:`coordinator.raft.RaftNode` is the real one."""

    @property
    def is_leader(self) -> bool:
        """This node leads (and serves: a node standing aside for its disk never does)."""
        ...

    @property
    def leader_addr(self) -> str | None:
        """The leader's Raft address, when one is known."""
        ...

    @property
    def leader_for_s(self) -> float:
        """Seconds since this node became leader (0 when it is not leader)."""
        ...

    @property
    def serving(self) -> bool:
        """False while the node stands aside for its disk."""
        ...

    @property
    def term(self) -> int:
        """The current Raft term."""
        ...

    @property
    def commit_index(self) -> int:
        """The highest log index known committed."""
        ...

    @property
    def last_applied(self) -> int:
        """The highest log index applied to this replica's table."""
        ...

    @property
    def backlog(self) -> int:
        """Commands of this node waiting to go into a log entry."""
        ...

    def start(self) -> None:
        """Open the storage and join the cluster (blocking: the node runs it in an executor)."""
        ...

    def stop(self) -> None:
        """Leave the cluster."""
        ...

    def read(self, fn: Callable[[Table], T]) -> T:
        """Run a read-only function on the table under the apply lock."""
        ...

    async def submit(self, op: str, kwargs: dict[str, Any], timeout_s: float) -> Result:
        """Replicate ``op``; return the table's result once applied here, or raise :class:`CommitError` (rule 3)."""
        ...

    def submit_nowait(self, op: str, kwargs: dict[str, Any]) -> None:
        """Fire and forget (a follower's announcement; the leader gets it forwarded)."""
        ...

    def connected(self, addr: str) -> bool:
        """This node holds a working connection to the peer at Raft address ``addr``."""
        ...

    def disk_report(self) -> dict[str, Any]:
        """The data dir's free-space figures and whether the node stands aside."""
        ...

    def transport_rejections(self) -> dict[str, int]:
        """Peers and frames the Raft port refused, by reason."""
        ...


#: Builds a node's replica around its table; the replica calls ``on_applied`` after each applied command.
ReplicaFactory = Callable[[Table, OnApplied], Replica]
