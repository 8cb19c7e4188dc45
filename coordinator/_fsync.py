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
   no option for it), under a lock, so two nodes in one process do not race. It does so for every policy,
   ``never`` included, because of rule 4.
3. The clock read here is ``time.monotonic`` for the batch interval; it decides only when to sync, never what the
   state machine does.
4. The journal is written through :class:`coordinator._disk.PreallocatedFile` (blocks allocated before they are
   mapped: a full disk is an ``OSError``, not a SIGBUS), and any ``OSError`` of a journal or term file write or
   sync goes to ``on_failure``, which by default logs and ends the process (``_disk.py`` rule 2). pysyncobj would
   otherwise log it from its tick loop and carry on with a log in memory that the disk does not hold.
5. One write is allowed to fail: the commit index that pysyncobj stores once a second when it changed. It is a
   hint (after a restart the node applies up to it before the leader says more, and pysyncobj clamps it to the
   journal); the old value stays, pysyncobj retries the next second, and ``raft.commit_index_not_saved`` is logged at
   most every :data:`HINT_LOG_INTERVAL_S`. Votes and terms are never such hints: their failure ends the process.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pysyncobj.syncobj as _syncobj
from pysyncobj.journal import FileJournal

from coordinator._disk import PreallocatedFile, write_failed
from provider.core.obs import get_logger

__all__ = ["FSYNC_POLICIES", "DurableJournal", "FailureHandler", "journal_factory"]

FSYNC_POLICIES = ("always", "batch", "never")
#: At most one ``raft.commit_index_not_saved`` line per this many seconds (rule 5).
HINT_LOG_INTERVAL_S = 60.0
log = get_logger("coordinator.raft")
_install_lock = threading.Lock()


#: What a failed write of the journal calls: log and exit (``_disk.write_failed``), or raise in tests.
FailureHandler = Callable[[str, OSError], NoReturn]


class DurableJournal(FileJournal):  # type: ignore[misc]
    """pysyncobj's file journal (same format) that syncs by policy and never writes to unallocated blocks."""

    def __init__(
        self,
        journal_file: str,
        policy: str,
        interval_s: float,
        clock_s: Callable[[], float] = time.monotonic,
        on_failure: FailureHandler = write_failed,
    ) -> None:
        self._policy = policy
        self._interval_s = interval_s
        self._clock_s = clock_s
        self._on_failure = on_failure
        self._dirty = False
        self._last_sync_s = clock_s()
        self._path = journal_file
        self._meta_path = journal_file + ".meta"
        #: Syncs of the journal so far (for tests and metrics).
        self.syncs = 0
        try:
            super().__init__(journal_file)  # reads the records through pysyncobj's own (sparse) mapping...
            sparse: Any = vars(self)["_FileJournal__journalFile"]  # pysyncobj's ResizableFile (name-mangled)
            sparse._destroy()  # ...which is replaced before anything is written (rule 4)
            self._FileJournal__journalFile = PreallocatedFile(journal_file)
        except OSError as exc:
            self._on_failure(journal_file, exc)

    def _failed(self, exc: OSError, path: str | None = None) -> NoReturn:
        self._on_failure(path or self._path, exc)

    def _changed(self) -> None:
        self._dirty = True
        if self._policy == "always" or (
            self._policy == "batch" and self._clock_s() - self._last_sync_s >= self._interval_s
        ):
            self.sync()

    def sync(self) -> None:
        if self._dirty:
            try:
                self.flush()
            except OSError as exc:  # msync failed: the kernel may have dropped the pages (rule 4)
                self._failed(exc)
            self.syncs += 1
            self._dirty = False
        self._last_sync_s = self._clock_s()

    def add(self, command: Any, idx: int, term: int) -> None:
        try:
            super().add(command, idx, term)
        except OSError as exc:  # the growth's fallocate failed; nothing of the entry was written (rule 4)
            self._failed(exc)
        if not self._bulk:
            self._changed()

    def clear(self) -> None:
        try:
            super().clear()
        except OSError as exc:
            self._failed(exc)
        if not self._bulk:
            self._changed()

    def deleteEntriesFrom(self, entryFrom: int) -> None:
        try:
            super().deleteEntriesFrom(entryFrom)
        except OSError as exc:
            self._failed(exc)
        self._changed()

    def deleteEntriesTo(self, entryTo: int) -> None:
        self._bulk = True  # pysyncobj rewrites the tail entry by entry: sync once at the end
        try:
            super().deleteEntriesTo(entryTo)
        except OSError as exc:
            self._failed(exc)
        finally:
            self._bulk = False
        self._changed()

    def setCurrentTerm(self, term: int, votedForNodeId: Any) -> None:
        try:
            super().setCurrentTerm(term, votedForNodeId)
            if self._policy != "never":  # a vote must not be forgotten: two votes in one term elect two leaders
                _fsync_path(self._meta_path)
                _fsync_path(os.path.dirname(self._meta_path) or ".")
        except OSError as exc:  # no vote or candidacy goes out with a term that is not on disk
            self._failed(exc, self._meta_path)

    def onOneSecondTimer(self) -> None:
        try:
            super().onOneSecondTimer()  # stores the commit index when it changed
        except OSError as exc:  # only a hint was not saved: pysyncobj retries it next second (rule 5)
            now_s = self._clock_s()
            if now_s - self._hint_logged_s >= HINT_LOG_INTERVAL_S:
                self._hint_logged_s = now_s
                log.warning("raft.commit_index_not_saved", path=self._meta_path, error=exc.strerror or str(exc))
        if self._policy == "batch":
            self.sync()

    _bulk = False
    _hint_logged_s = float("-inf")


def _fsync_path(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def journal_factory(policy: str, interval_ms: int, on_failure: FailureHandler = write_failed) -> Iterator[None]:
    """While active, SyncObj constructions open their journal as a :class:`DurableJournal` (rule 2)."""
    if policy not in FSYNC_POLICIES:
        raise ValueError(f"coordinator.fsync: {policy!r} is not one of {', '.join(FSYNC_POLICIES)}")
    original = _syncobj.createJournal

    def create(journal_file: str | None = None) -> Any:
        if journal_file is None:
            return original(journal_file)
        return DurableJournal(journal_file, policy, interval_ms / 1000, on_failure=on_failure)

    with _install_lock:
        _syncobj.createJournal = create
        try:
            yield
        finally:
            _syncobj.createJournal = original
