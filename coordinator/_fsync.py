"""Durability policy of the Raft journal (``coordinator.fsync``): when journal writes reach the disk.

pysyncobj's journal is an mmap'd file it never syncs: it survives kill -9 (the page cache outlives the process),
not a power loss. :class:`DurableJournal` keeps pysyncobj's on-disk format (it subclasses ``FileJournal``) and adds
a sync policy:

- ``always``: every journal change is synced (``msync(MS_SYNC)`` of the mapping) before pysyncobj goes on, so a
  follower syncs an entry before it answers the AppendEntries carrying it, and the leader before it counts
  itself; an acknowledged write is then on the disks of a majority. Group commit shares one sync: a log entry
  carries up to 256 commands (``raft.py`` rule 2). The term/vote file is fsynced too.
- ``batch``: the journal is synced when ``fsync_interval_ms`` has passed since the last sync, at the next journal
  write, and by pysyncobj's one-second timer when writes stop. A power loss can lose the last interval (or the
  last second when idle) of acknowledged writes.
- ``never``: pysyncobj's behaviour (the page cache decides).

Rules:
1. Everything runs on pysyncobj's own thread (its journal calls and its one-second timer): no other thread
   touches the mapping, which pysyncobj may resize or re-open at any write.
2. :func:`journal_factory` installs the journal class only while a ``SyncObj`` is constructed (pysyncobj offers
   no option for it), under a lock, so two nodes in one process do not race.
3. The clock read here is ``time.monotonic`` for the batch interval; it decides only when to sync, never what the
   state machine does.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pysyncobj.syncobj as _syncobj
from pysyncobj.journal import FileJournal

__all__ = ["FSYNC_POLICIES", "DurableJournal", "journal_factory"]

FSYNC_POLICIES = ("always", "batch", "never")
_install_lock = threading.Lock()


class DurableJournal(FileJournal):  # type: ignore[misc]
    """pysyncobj's file journal (same format) that syncs by policy."""

    def __init__(
        self, journal_file: str, policy: str, interval_s: float, clock_s: Callable[[], float] = time.monotonic
    ) -> None:
        self._policy = policy
        self._interval_s = interval_s
        self._clock_s = clock_s
        self._dirty = False
        self._last_sync_s = clock_s()
        self._meta_path = journal_file + ".meta"
        #: Syncs of the journal so far (for tests and metrics).
        self.syncs = 0
        super().__init__(journal_file)

    def _changed(self) -> None:
        self._dirty = True
        if self._policy == "always" or (
            self._policy == "batch" and self._clock_s() - self._last_sync_s >= self._interval_s
        ):
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            self.flush()
            self.syncs += 1
            self._dirty = False
        self._last_sync_s = self._clock_s()

    def add(self, command: Any, idx: int, term: int) -> None:
        super().add(command, idx, term)
        if not self._bulk:
            self._changed()

    def clear(self) -> None:
        super().clear()
        if not self._bulk:
            self._changed()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        super().deleteEntriesFrom(entryFrom)
        self._changed()

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._bulk = True  # pysyncobj rewrites the tail entry by entry: sync once at the end
        try:
            super().deleteEntriesTo(entryTo)
        finally:
            self._bulk = False
        self._changed()

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        super().setCurrentTerm(term, votedForNodeId)
        if self._policy != "never":  # a vote must not be forgotten: two votes in one term elect two leaders
            fd = os.open(self._meta_path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
            dir_fd = os.open(os.path.dirname(self._meta_path) or ".", os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    def onOneSecondTimer(self) -> None:
        super().onOneSecondTimer()
        if self._policy == "batch":
            self.sync()

    _bulk = False


@contextlib.contextmanager
def journal_factory(policy: str, interval_ms: int) -> Iterator[None]:
    """While active, SyncObj constructions open their journal as a :class:`DurableJournal` (rule 2)."""
    if policy not in FSYNC_POLICIES:
        raise ValueError(f"coordinator.fsync: {policy!r} is not one of {', '.join(FSYNC_POLICIES)}")
    if policy == "never":
        yield
        return
    original = _syncobj.createJournal

    def create(journal_file: str | None = None) -> Any:
        if journal_file is None:
            return original(journal_file)
        return DurableJournal(journal_file, policy, interval_ms / 1000)

    with _install_lock:
        _syncobj.createJournal = create
        try:
            yield
        finally:
            _syncobj.createJournal = original
