"""The data dir's disk: journal space allocated before it is written, a free-space watchdog, and the exit on a
failed write (issue 21 item 8).

Found on 2026-12-04: a node whose data dir filled died of SIGBUS (exit 135) with at most one ERROR line.
pysyncobj grows its journal with ``mmap.resize`` (a sparse ``ftruncate``) and writes through the mapping; a page
the filesystem cannot allocate is a SIGBUS at the write. Restarted while still full, the node stood for election
every timeout (each new term failing to save, one traceback a time), its term reached 41, and the cluster's 66 once
space returned and its RequestVote deposed the leader.

Rules:
1. The journal is written through its mapping only where blocks are allocated: :class:`PreallocatedFile` (what
   ``_fsync.DurableJournal`` writes through; the bytes are those of pysyncobj's ``ResizableFile``) calls
   ``posix_fallocate`` before it maps or grows, in steps of :data:`GROW_MIN_BYTES` to :data:`GROW_MAX_BYTES`, so a
   full disk is an ``OSError`` (ENOSPC) at allocation, before anything is written, never a SIGBUS. Copy-on-write
   filesystems (btrfs, ZFS) may still fail at write-back; the watchdog's reserve is what covers them.
2. A write of the data dir that fails (journal growth or sync, the term/vote file, the commit index, ``node.json``)
   ends the process at once with :data:`EXIT_DATA_DIR` after one ``disk.data_dir_write_failed`` line (CRITICAL) naming
   the reason (``disk_full`` for ENOSPC/EDQUOT, else ``io_error``), the path, the free bytes and what to do.
   Carrying on is not safe: pysyncobj may then hold in memory what its disk does not (the failing call answers
   nobody, but the next tick would), and a restart (dump + journal) is the way to make the two agree again.
3. The watchdog (:class:`DiskGuard`, on pysyncobj's tick every :data:`CHECK_S`) compares the data dir's free bytes
   (``statvfs``) with its need: ``coordinator.disk_reserve_mb`` plus the size of the next dump, which pysyncobj
   writes beside the current one (the current dump's size, or a failed attempt's if larger). Below the need the
   disk is ``low`` and the node stands aside from Raft (``_aside.py``); it is ``ok`` again at need + reserve, so a
   disk hovering at the line does not flap. A reserve of 0 turns the watchdog off (rule 2 still holds).
4. Logs: ``disk.low`` (ERROR) when the disk goes low, ``disk.still_low`` (ERROR) at most every
   :data:`LOG_INTERVAL_S` while it stays low, ``disk.recovered`` (WARNING) when it is ok again. Each names the
   data dir, the free, needed and resume bytes and what to do; nothing else is logged per tick.
5. :class:`DiskGuard` runs on pysyncobj's thread; :meth:`DiskGuard.report` (HTTP, metrics) only reads attributes.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

from provider.core.obs import get_logger

__all__ = [
    "CHECK_S",
    "EXIT_DATA_DIR",
    "GROW_MAX_BYTES",
    "GROW_MIN_BYTES",
    "LOG_INTERVAL_S",
    "DiskGuard",
    "PreallocatedFile",
    "free_bytes",
    "write_failed",
]

log = get_logger("coordinator.disk")

#: Exit status of a node whose data dir could not be written (sysexits' EX_IOERR); docs/coordinator.md.
EXIT_DATA_DIR = 74
#: How often the watchdog reads the free space.
CHECK_S = 0.25
#: At most one ``disk.still_low`` line per this many seconds.
LOG_INTERVAL_S = 60.0
#: A journal starts this large (pysyncobj: 1 KiB) and grows by its own size, but by at least this much...
GROW_MIN_BYTES = 2**20
#: ...and at most this much (pysyncobj doubled it: a 1 GiB journal asked for 1 GiB more at once).
GROW_MAX_BYTES = 16 * 2**20
_FULL = (errno.ENOSPC, errno.EDQUOT)


def free_bytes(path: Path | str) -> int:
    """Bytes an unprivileged writer may still allocate on the filesystem of ``path``."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def _free_or_none(path: Path | str) -> int | None:
    try:
        return free_bytes(path)
    except OSError:
        return None


def write_failed(path: str, exc: OSError) -> NoReturn:
    """Rule 2: log why ``path`` could not be written, then end the process with :data:`EXIT_DATA_DIR`."""
    full = exc.errno in _FULL
    action = (
        "free space on the data dir's filesystem (or grow it) and restart the node with the same flags; while "
        "free space stays below coordinator.disk_reserve_mb it starts standing aside and rejoins by itself"
        if full
        else "check the disk (dmesg, SMART, mount options); with the other nodes healthy, replace the disk or "
        "move the data dir and restart the node: it catches up from the leader"
    )
    log.critical(
        "disk.data_dir_write_failed",
        reason="disk_full" if full else "io_error",
        path=path,
        errno=errno.errorcode.get(exc.errno or 0, str(exc.errno)),
        error=exc.strerror or str(exc),
        free_bytes=_free_or_none(os.path.dirname(path) or "."),
        exit_code=EXIT_DATA_DIR,
        action=action,
    )
    for stream in (sys.stderr, sys.stdout):
        with contextlib.suppress(OSError, ValueError):  # a closed or broken stream must not keep the process alive
            stream.flush()
    os._exit(EXIT_DATA_DIR)


class PreallocatedFile:
    """pysyncobj's ``ResizableFile`` interface (read, write, flush, _destroy) over a mapping of allocated blocks
    only (rule 1). The file must exist (pysyncobj creates it with the journal header)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR)
        try:
            size = max(os.fstat(self._fd).st_size, GROW_MIN_BYTES)
            # Also allocates the holes of a journal that pysyncobj's own sparse growth left (older data dirs).
            os.posix_fallocate(self._fd, 0, size)
            self._mm = mmap.mmap(self._fd, size)
        except BaseException:
            os.close(self._fd)
            raise

    @property
    def size(self) -> int:
        return self._mm.size()

    def write(self, offset: int, values: bytes) -> None:
        end = offset + len(values)
        if end > self._mm.size():
            self._grow(end)
        self._mm[offset:end] = values

    def _grow(self, end: int) -> None:
        size = self._mm.size()
        new_size = max(end, size + min(max(size, GROW_MIN_BYTES), GROW_MAX_BYTES))
        os.posix_fallocate(self._fd, size, new_size - size)  # ENOSPC here, before anything is written
        self._mm.resize(new_size)

    def read(self, offset: int, size: int) -> bytes:
        return self._mm[offset : offset + size]

    def flush(self) -> None:
        self._mm.flush()

    def _destroy(self) -> None:
        try:
            self._mm.flush()
            self._mm.close()
        finally:
            os.close(self._fd)


class DiskGuard:
    """The free-space watchdog of one data dir (rules 3-5)."""

    def __init__(
        self,
        data_dir: Path,
        reserve_bytes: int,
        *,
        free: Callable[[Path], int] = free_bytes,
        clock_s: Callable[[], float] = time.monotonic,
        dump_name: str = "raft.dump",
    ) -> None:
        self.data_dir = data_dir
        self.reserve_bytes = reserve_bytes
        self._free = free
        self._clock_s = clock_s
        self._dump = data_dir / dump_name
        #: Set by the latest check: the disk is below its need (rule 3).
        self.low = False
        self.free_bytes: int | None = None
        self.need_bytes = reserve_bytes
        #: Bytes a failed dump attempt had written when it failed (the next dump needs at least as many).
        self.failed_dump_bytes = 0
        self._next_check_s = 0.0
        self._low_since_s = 0.0
        self._logged_s = float("-inf")

    @property
    def resume_bytes(self) -> int:
        return self.need_bytes + self.reserve_bytes

    def check(self, *, force: bool = False) -> bool:
        """Read the free space when :data:`CHECK_S` passed (or ``force``); return whether the disk is low."""
        now_s = self._clock_s()
        if now_s < self._next_check_s and not force:
            return self.low
        self._next_check_s = now_s + CHECK_S
        try:
            free = self._free(self.data_dir)
            dump_bytes = self._dump.stat().st_size if self._dump.exists() else 0
        except OSError as exc:  # statvfs of a dir we run in hardly fails; keep the last verdict, say so rarely
            if now_s - self._logged_s >= LOG_INTERVAL_S:
                self._logged_s = now_s
                log.error("disk.check_failed", path=str(self.data_dir), error=repr(exc))
            return self.low
        self.free_bytes = free
        self.need_bytes = self.reserve_bytes + max(dump_bytes, self.failed_dump_bytes)
        if self.reserve_bytes <= 0:
            return False
        if not self.low and free < self.need_bytes:
            self.low, self._low_since_s, self._logged_s = True, now_s, now_s
            self._log("disk.low", now_s)
        elif self.low and free >= self.resume_bytes:
            self.low = False
            self._log("disk.recovered", now_s)
        elif self.low and now_s - self._logged_s >= LOG_INTERVAL_S:
            self._logged_s = now_s
            self._log("disk.still_low", now_s)
        return self.low

    def _log(self, event: str, now_s: float) -> None:
        fields: dict[str, Any] = {
            "path": str(self.data_dir),
            "free_bytes": self.free_bytes,
            "need_bytes": self.need_bytes,
            "resume_bytes": self.resume_bytes,
        }
        if event == "disk.recovered":
            log.warning(event, low_for_s=round(now_s - self._low_since_s, 1), **fields)
            return
        action = (
            f"free space on the filesystem of {self.data_dir} (or grow it): the node stands aside from Raft (no "
            f"votes, no candidacy, no appends; its HTTP API answers 503 disk_full) and rejoins by itself once "
            f"{self.resume_bytes} bytes are free"
        )
        if event == "disk.still_low":
            fields["low_for_s"] = round(now_s - self._low_since_s, 1)
        log.error(event, reason="disk_full", action=action, **fields)

    def dump_failed(self, attempt_bytes: int) -> None:
        """A dump attempt failed after writing ``attempt_bytes``: the next one needs at least that much."""
        self.failed_dump_bytes = max(self.failed_dump_bytes, attempt_bytes)

    def dump_written(self) -> None:
        self.failed_dump_bytes = 0

    def report(self) -> dict[str, Any]:
        """The figures of ``/healthz`` and ``/metrics``."""
        return {
            "state": "low" if self.low else "ok",
            "path": str(self.data_dir),
            "free_bytes": self.free_bytes,
            "need_bytes": self.need_bytes,
            "resume_bytes": self.resume_bytes,
            "reserve_bytes": self.reserve_bytes,
        }
