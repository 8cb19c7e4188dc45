"""Standing aside: a node whose disk is low leaves Raft without disturbing it, and comes back the same way.

pysyncobj has no pre-vote and no switch that makes a member a non-voter. A node that cannot write must neither
append (it would acknowledge what it cannot keep), nor vote or adopt a term (each is a write of the term file),
nor stand for election: before this module, such a node raised its term every timeout, and once space returned
its RequestVote at that term deposed the leader (docs/reliability.md, "Hostile load"). :class:`StandAside` runs
on pysyncobj's tick with the node's :class:`coordinator._disk.DiskGuard`.

Rules:
1. While the guard says ``low`` the node is *aside*: its Raft transport drops every message from its peers
   (``GuardedTransport`` asks :meth:`StandAside.accepts`), so it appends, votes and adopts nothing and writes
   nothing, and every message to them but keepalives (:meth:`StandAside.sends`); and on every tick its election
   deadline is pushed one election timeout ahead, so it never stands (pysyncobj stands when the deadline has
   passed and a peer is connected). To its peers it looks partitioned, which Raft tolerates: the other two keep
   a majority.
2. A leader that goes low hands off first: the HTTP layer stops giving it commands at once
   (:attr:`StandAside.serving` is false), and it sends TimeoutNow to a follower whose log matches its own
   (pysyncobj's ``transferLeadership``, retried every :data:`HANDOFF_RETRY_S` for up to :data:`HANDOFF_S`, since
   a follower still catching up is refused; messages flow meanwhile, so the acknowledgements that catch it up
   arrive). Once TimeoutNow is sent it is aside at once: that follower stands and wins with the third node's vote,
   and the old leader never adopts the new term (that would be a write of the term file, which a full disk
   refuses). pysyncobj still calls it leader until ``leaderFallbackTimeout`` demotes it; meanwhile its heartbeats
   (AppendEntries without entries) still go out, as Raft's leadership transfer wants, so the third node does not
   time out and stand against the successor while the successor is starved of CPU, but nothing it appends
   leaves it: an entry reaching the third node and not the successor would make the third node refuse its vote
   (a log longer than the candidate's), and the election would take a second term. Without a successor in time
   it goes aside anyway, silent, and the followers elect one themselves.
3. Coming back (the guard says ``ok``): the deadline pushed on the tick before still stands, so the leader's next
   heartbeat (every 100 ms) arrives before the node's own timeout (at least 400 ms): the node adopts the leader's
   term and catches up by entries or a dump transfer. No RequestVote, no term above the cluster's.
4. No log compaction while not serving, and none for :data:`DUMP_RETRY_S` after a failed dump (pysyncobj retried
   every tick, forking the process each time). A failed dump is logged (``raft.dump_write_failed``) with its reason,
   the temporary file's size and the free bytes; the temporary file is removed (pysyncobj left it to eat what
   space remained) and its size counts in the guard's need (``_disk.py`` rule 3).
5. It reaches into pysyncobj's private election deadline and serializer: :func:`check_pysyncobj` refuses to start
   on a pysyncobj without them rather than run a node that would stand for election with a full disk.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from typing import Any

from pysyncobj import FAIL_REASON, SyncObj
from pysyncobj.config import SERIALIZER_STATE

from coordinator._disk import DiskGuard, free_bytes
from provider.core.obs import get_logger

__all__ = ["DUMP_RETRY_S", "HANDOFF_RETRY_S", "HANDOFF_S", "StandAside", "check_pysyncobj"]

log = get_logger("coordinator.raft")

#: Longest a leader whose disk went low waits for a follower to take over before it stands aside regardless.
HANDOFF_S = 2.0
#: Interval between two TimeoutNow attempts of a handing-off leader.
HANDOFF_RETRY_S = 0.05
#: No new dump for this long after a failed one.
DUMP_RETRY_S = 10.0

SERVING, HANDING_OFF, ASIDE = "serving", "handing_off", "aside"
_DEADLINE = "_SyncObj__raftElectionDeadline"
_SERIALIZER = "_SyncObj__serializer"


def check_pysyncobj(sync: Any) -> None:
    """Rule 5: raise RuntimeError when ``sync`` lacks a pysyncobj internal this module needs."""
    serializer = getattr(sync, _SERIALIZER, None)
    missing = [name for name in (_DEADLINE, _SERIALIZER) if not hasattr(sync, name)]
    missing += [f"Serializer.{m}" for m in ("checkSerializing", "serialize") if not hasattr(serializer, m)]
    missing += [] if hasattr(sync, "transferLeadership") else ["SyncObj.transferLeadership"]
    if missing:
        raise RuntimeError(f"pysyncobj changed: {', '.join(missing)} missing; coordinator/_aside.py needs them")


class StandAside:
    """The node's Raft participation as its disk allows (rules 1-4); ``tick`` runs on pysyncobj's thread."""

    def __init__(self, guard: DiskGuard, timeout_s: float, clock_s: Callable[[], float] = time.monotonic) -> None:
        self.guard = guard
        self._timeout_s = timeout_s
        self._clock_s = clock_s
        self._sync: SyncObj | None = None
        self.state = ASIDE if guard.check(force=True) else SERVING
        #: Peer messages dropped while aside (since start).
        self.dropped = 0
        self._since_s = clock_s()
        self._handoff_until_s = 0.0
        self._next_handoff_s = 0.0
        self._dump_retry_s = 0.0
        #: TimeoutNow went out to a successor (rule 2).
        self._handed_off = False

    @property
    def serving(self) -> bool:
        """The node takes part in Raft and may take commands."""
        return self.state == SERVING

    def accepts(self, message: Any) -> bool:
        """The transport's gate (rule 1): False drops a peer's message."""
        if self.state != ASIDE:
            return True
        self.dropped += 1
        return False

    def sends(self, message: Any) -> bool:
        """The transport's send gate (rules 1 and 2): False drops a message to a peer. Keepalives always go, and
        a leader that handed off still sends heartbeats (AppendEntries that carry no entries)."""
        if self.state != ASIDE:
            return True
        if not isinstance(message, dict):
            return False
        kind = message.get("type")
        return kind == "keepalive" or (self._handed_off and kind == "append_entries" and message.get("entries") == [])

    def attach(self, sync: SyncObj) -> None:
        """Take over ``sync``'s dump scheduling (rule 4) and hold its election while aside."""
        check_pysyncobj(sync)
        self._sync = sync
        serializer = getattr(sync, _SERIALIZER)
        check, serialize = serializer.checkSerializing, serializer.serialize

        def checked() -> tuple[int, Any]:
            state, dump_id = check()
            if state == SERIALIZER_STATE.FAILED:
                self._dump_failed()
            elif state == SERIALIZER_STATE.SUCCESS:
                self.guard.dump_written()
            return state, dump_id

        def gated(data: Any, dump_id: Any) -> None:
            if self.state == SERVING and self._clock_s() >= self._dump_retry_s:
                serialize(data, dump_id)

        serializer.checkSerializing = checked
        serializer.serialize = gated
        if self.state == ASIDE:
            self._hold_election()
            log.warning("raft.stand_aside", reason="disk_full", was_leader=False, at="start")

    def tick(self) -> None:
        sync = self._sync
        if sync is None:
            return
        if not self.guard.check():
            if self.state != SERVING:
                self._hold_election()  # rule 3: the leader's heartbeat comes first
                log.warning(
                    "raft.rejoin", aside_s=round(self._clock_s() - self._since_s, 1), dropped_messages=self.dropped
                )
                self.state, self._handed_off = SERVING, False
            return
        now_s = self._clock_s()
        if self.state == SERVING:
            self._since_s = now_s
            leader = sync._isLeader()
            self.state = HANDING_OFF if leader else ASIDE
            self._handoff_until_s = now_s + HANDOFF_S
            log.warning("raft.stand_aside", reason="disk_full", was_leader=leader, at="runtime")
        if self.state == HANDING_OFF:
            self._hand_off(sync, now_s)
        self._hold_election()

    def _hand_off(self, sync: SyncObj, now_s: float) -> None:
        """Rule 2: one TimeoutNow attempt per :data:`HANDOFF_RETRY_S`; aside once one is sent or time is up."""
        sent: list[bool] = []
        if sync._isLeader() and now_s < self._handoff_until_s and now_s >= self._next_handoff_s:
            self._next_handoff_s = now_s + HANDOFF_RETRY_S
            # pysyncobj calls back at once: SUCCESS means TimeoutNow is on its way to a caught-up follower.
            sync.transferLeadership(callback=lambda _, error: sent.append(error == FAIL_REASON.SUCCESS))
        if any(sent) or not sync._isLeader() or now_s >= self._handoff_until_s:
            self.state, self._handed_off = ASIDE, any(sent)
            log.warning(
                "raft.handed_off",
                timeout_now_sent=any(sent),
                still_leader=sync._isLeader(),
                took_s=round(now_s - self._since_s, 3),
            )

    def _hold_election(self) -> None:
        setattr(self._sync, _DEADLINE, time.monotonic() + self._timeout_s)

    def _dump_failed(self) -> None:
        """Rule 4; runs on pysyncobj's thread when the forked dump writer exited with an error."""
        now_s = self._clock_s()
        self._dump_retry_s = now_s + DUMP_RETRY_S
        tmp = self.guard.data_dir / "raft.dump.tmp"
        try:
            attempt_bytes = tmp.stat().st_size
        except OSError:
            attempt_bytes = 0
        try:
            free: int | None = free_bytes(self.guard.data_dir)
        except OSError:
            free = None
        full = free is not None and free < max(self.guard.reserve_bytes, 1)
        with contextlib.suppress(OSError):
            tmp.unlink()
        log.error(
            "raft.dump_write_failed",
            reason="disk_full" if full else "unknown",
            path=str(tmp),
            attempt_bytes=attempt_bytes,
            free_bytes=free,
            retry_in_s=DUMP_RETRY_S,
            action=(
                "free space on the data dir's filesystem: the journal grows until a dump succeeds"
                if full
                else "the dump writer failed for another reason than space; see the lines before this one"
            ),
        )
        self.guard.dump_failed(attempt_bytes)
        self.guard.check(force=True)
