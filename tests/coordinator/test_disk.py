"""The data dir's disk (coordinator/_disk.py): journal blocks allocated before they are written, a failed write
ends the process with a named line and status 74, and the free-space watchdog with its reserve and hysteresis."""

from __future__ import annotations

import errno
import itertools
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import NoReturn

import pytest
from pysyncobj.journal import FileJournal
from structlog.testing import capture_logs

from coordinator._disk import (
    CHECK_S,
    EXIT_DATA_DIR,
    GROW_MAX_BYTES,
    GROW_MIN_BYTES,
    LOG_INTERVAL_S,
    DiskGuard,
    PreallocatedFile,
)
from coordinator._fsync import DurableJournal

#: pysyncobj's MetaStorer.getMeta reads the .meta file with ``open(path).read()`` and never closes it.
pytestmark = pytest.mark.filterwarnings(
    "ignore:Exception ignored in. <_io.FileIO:pytest.PytestUnraisableExceptionWarning"
)

MIB = 2**20


class Failed(Exception):
    """What the test failure handler raises instead of ending the process."""

    def __init__(self, path: str, exc: OSError) -> None:
        super().__init__(path)
        self.path, self.exc = path, exc


def fail(path: str, exc: OSError) -> NoReturn:
    raise Failed(path, exc)


def enospc(*args: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


class Clock:
    def __init__(self) -> None:
        self.now_s = 100.0

    def __call__(self) -> float:
        return self.now_s


def allocated(path: Path) -> int:
    return os.stat(path).st_blocks * 512


def test_the_journal_file_has_every_block_it_maps_and_grows_in_bounded_steps(tmp_path: Path) -> None:
    """No holes: each byte of the mapping is allocated before it can be written (a hole written through a
    mapping on a full disk is a SIGBUS); growth steps are the file's size within [1 MiB, 16 MiB]."""
    path = tmp_path / "j"
    path.write_bytes(b"header")
    f = PreallocatedFile(str(path))
    assert f.size == GROW_MIN_BYTES and allocated(path) >= GROW_MIN_BYTES
    sizes = [f.size]
    for offset in range(0, 40 * MIB, 512 * 1024):
        f.write(offset, b"x" * 512 * 1024)
        if f.size != sizes[-1]:
            sizes.append(f.size)
    assert allocated(path) >= f.size == os.path.getsize(path)
    steps = [b - a for a, b in itertools.pairwise(sizes)]
    assert steps and all(GROW_MIN_BYTES <= s <= GROW_MAX_BYTES for s in steps), steps
    assert max(steps) == GROW_MAX_BYTES
    assert f.read(40 * MIB - 3, 3) == b"xxx"
    f._destroy()


def test_a_growth_the_disk_refuses_fails_before_anything_is_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ENOSPC of the growth reaches the failure handler with the journal's path; the entries before it are intact
    and pysyncobj's own reader sees exactly them (no torn record)."""
    path = tmp_path / "raft.journal"
    j = DurableJournal(str(path), "never", 0.01, on_failure=fail)
    big = b"e" * (300 * 1024)
    for i in range(1, 4):
        j.add(big, i, 1)
    monkeypatch.setattr(os, "posix_fallocate", enospc)
    with pytest.raises(Failed) as failed:
        j.add(big, 4, 1)
    assert failed.value.path == str(path) and failed.value.exc.errno == errno.ENOSPC
    monkeypatch.undo()
    j._destroy()
    plain = FileJournal(str(path))
    assert [(e[1], len(e[0])) for e in plain] == [(1, len(big)), (2, len(big)), (3, len(big))]
    plain._destroy()


def test_a_journal_written_by_pysyncobj_itself_is_allocated_on_open(tmp_path: Path) -> None:
    """An old data dir's journal (pysyncobj's sparse growth) opens, reads back, and has no holes left."""
    path = tmp_path / "raft.journal"
    plain = FileJournal(str(path))
    for i in range(1, 50):
        plain.add(b"old" * 100, i, 1)
    plain._destroy()
    j = DurableJournal(str(path), "batch", 0.01, on_failure=fail)
    assert len(j) == 49 and j[48][0] == b"old" * 100
    assert allocated(path) >= os.path.getsize(path)
    j._destroy()


def test_a_term_or_vote_that_cannot_be_saved_is_a_failure_but_a_commit_index_is_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """setCurrentTerm (a vote) must never go out unsaved: its failure goes to the handler with the .meta path. The
    commit index pysyncobj stores once a second is a hint: its failure is logged once and retried."""
    clock = Clock()
    path = tmp_path / "raft.journal"
    j = DurableJournal(str(path), "batch", 0.01, clock, on_failure=fail)
    for i in range(1, 6):
        j.add(b"a", i, 1)
    j.setRaftCommitIndex(5)
    real_open = open

    def no_tmp(file: object, *args: object, **kwargs: object) -> object:
        if str(file).endswith(".meta.tmp"):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", no_tmp)
    with capture_logs() as logs:
        j.onOneSecondTimer()
        clock.now_s += 1
        j.onOneSecondTimer()
    assert [e["event"] for e in logs] == ["raft.commit_index_not_saved"]
    with pytest.raises(Failed) as failed:
        j.setCurrentTerm(2, "node-b")
    assert failed.value.path == str(path) + ".meta"
    monkeypatch.undo()
    j.onOneSecondTimer()  # the hint is stored once the disk takes it again
    j._destroy()
    plain = FileJournal(str(path))
    assert plain.getRaftCommitIndex() == 5
    plain._destroy()


def test_a_failed_sync_is_a_failure(tmp_path: Path) -> None:
    """msync reporting an error means the kernel may have dropped the pages: the handler gets it."""
    j = DurableJournal(str(tmp_path / "raft.journal"), "always", 0.01, on_failure=fail)

    def broken_flush() -> None:
        raise OSError(errno.EIO, "Input/output error")

    j.flush = broken_flush  # type: ignore[method-assign]
    with pytest.raises(Failed) as failed:
        j.add(b"a", 1, 1)
    assert failed.value.exc.errno == errno.EIO
    del j.flush
    j._destroy()


@pytest.mark.parametrize(
    ("code", "reason"), [(errno.ENOSPC, "disk_full"), (errno.EDQUOT, "disk_full"), (errno.EIO, "io_error")]
)
def test_a_failed_write_ends_the_process_with_74_and_one_named_line(tmp_path: Path, code: int, reason: str) -> None:
    """write_failed logs disk.data_dir_write_failed (reason, path, errno, free bytes, what to do) and exits 74."""
    script = (
        "import sys; from provider.core.obs import configure_logging; from coordinator._disk import write_failed; "
        f"configure_logging('coordinator'); write_failed(sys.argv[1], OSError({code}, 'boom'))"
    )
    path = str(tmp_path / "raft.journal")
    done = subprocess.run([sys.executable, "-c", script, path], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == EXIT_DATA_DIR
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert len(lines) == 1, done.stderr
    line = lines[0]
    assert line["event"] == "disk.data_dir_write_failed" and line["level"] == "critical"
    assert line["reason"] == reason and line["path"] == path and line["exit_code"] == EXIT_DATA_DIR
    assert isinstance(line["free_bytes"], int) and line["action"]


class Disk:
    """A fake filesystem: free bytes set by the test."""

    def __init__(self, free: int) -> None:
        self.free = free

    def __call__(self, path: Path) -> int:
        return self.free


def test_the_watchdog_goes_low_below_the_need_and_back_only_at_one_more_reserve(tmp_path: Path) -> None:
    """Need = reserve + the dump's size; low below it, ok again at need + reserve (no flapping at the line); one
    disk.low line, a reminder at most every minute, one disk.recovered line."""
    clock, disk = Clock(), Disk(100 * MIB)
    (tmp_path / "raft.dump").write_bytes(b"d" * MIB)
    guard = DiskGuard(tmp_path, 10 * MIB, free=disk, clock_s=clock)
    steps = [  # (free MiB, seconds later, low after the check)
        (100, 0, False),
        (11, 1, False),  # need is 11 MiB: not below it
        (10, 1, True),
        (20, 1, True),  # back above the need, but below need + reserve (21 MiB)
        (10, 30, True),
        (10, 31, True),  # 62 s after disk.low: the reminder
        (21, 1, False),
    ]
    with capture_logs() as logs:
        for free_mib, later_s, low in steps:
            disk.free, clock.now_s = free_mib * MIB, clock.now_s + later_s
            assert guard.check() is low, (free_mib, guard.report())
    assert [e["event"] for e in logs] == ["disk.low", "disk.still_low", "disk.recovered"]
    first = logs[0]
    assert first["reason"] == "disk_full" and first["path"] == str(tmp_path) and first["action"]
    assert (first["free_bytes"], first["need_bytes"], first["resume_bytes"]) == (10 * MIB, 11 * MIB, 21 * MIB)
    assert logs[1]["low_for_s"] == 62.0 and LOG_INTERVAL_S <= 62.0


def test_the_watchdog_reads_the_disk_at_most_every_check_interval(tmp_path: Path) -> None:
    clock, disk = Clock(), Disk(0)
    reads: list[Path] = []

    def free(path: Path) -> int:
        reads.append(path)
        return disk(path)

    guard = DiskGuard(tmp_path, MIB, free=free, clock_s=clock)
    for _ in range(5):
        guard.check()
        clock.now_s += CHECK_S / 4
    assert len(reads) == 2
    guard.check(force=True)
    assert len(reads) == 3


def test_a_failed_dump_raises_the_need_until_a_dump_succeeds(tmp_path: Path) -> None:
    """The next dump needs at least what a failed attempt had written when it failed."""
    guard = DiskGuard(tmp_path, MIB, free=Disk(5 * MIB), clock_s=Clock())
    assert guard.check(force=True) is False and guard.need_bytes == MIB
    guard.dump_failed(6 * MIB)
    assert guard.check(force=True) is True and guard.need_bytes == 7 * MIB
    guard.dump_written()
    guard.check(force=True)
    assert guard.need_bytes == MIB


def test_a_reserve_of_zero_turns_the_watchdog_off(tmp_path: Path) -> None:
    guard = DiskGuard(tmp_path, 0, free=Disk(0), clock_s=Clock())
    assert guard.check(force=True) is False
    assert guard.report()["free_bytes"] == 0 and guard.report()["state"] == "ok"
