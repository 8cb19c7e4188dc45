"""A FUSE filesystem of a fixed capacity over a backing dir: a small disk that fills up, for disk-full tests.

Run: ``python tests/chaos/diskfull_fs.py BACKING MOUNTPOINT CAPACITY_BYTES`` (foreground). A test fills it by
writing any file until ENOSPC and frees it by deleting that file; nothing needs root beyond what FUSE needs (the
same as ``powerloss_fs.py``, which the fsync tests use).

Rules:
1. Contents pass through to BACKING. The used bytes are the sum of the sizes of the files under BACKING: a file
   takes what its size says (nothing is sparse), so ``posix_fallocate`` and plain writes count alike.
2. A write, truncate or fallocate that would take the used bytes past the capacity fails with ENOSPC and changes
   nothing. ``statfs`` reports the capacity and what is left (``f_bavail``), so ``statvfs`` and ``df`` see a
   small disk.
3. fallocate (mode 0: allocate, extending the size) is implemented, so ``posix_fallocate`` arrives as one call
   instead of glibc's byte-per-block emulation.
4. Pages of a shared writable mapping (pysyncobj's journal) arrive here as writes at write-back, as on a network
   filesystem: a write-back past the capacity fails and the page is lost, where a local filesystem would SIGBUS at
   the page write. Either way the journal must have its blocks before it writes (coordinator/_disk.py rule 1).
5. Single-threaded (``nothreads``); mounted without ``direct_io`` so shared writable mmap works.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from typing import Any

import mfusepy as fuse

_BLOCK = 4096


class DiskFullFS(fuse.Operations):  # type: ignore[misc]
    """A pass-through filesystem that refuses to hold more than ``capacity`` bytes."""

    use_ns = True

    def __init__(self, backing: str, capacity: int) -> None:
        self.backing = backing
        self.capacity = capacity

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _used(self) -> int:
        total = 0
        for root, _, files in os.walk(self.backing):
            for name in files:
                try:
                    total += os.lstat(os.path.join(root, name)).st_size
                except FileNotFoundError:
                    continue
        return total

    def _grow(self, path: str, new_size: int) -> None:
        """Rule 2: refuse, changing nothing, when the file growing to ``new_size`` would overfill the disk."""
        try:
            size = os.lstat(self._real(path)).st_size
        except FileNotFoundError:
            size = 0
        if new_size > size and self._used() + new_size - size > self.capacity:
            raise fuse.FuseOSError(errno.ENOSPC)

    # -- metadata -----------------------------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._real(path))
        except FileNotFoundError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime", "st_ctime")
        attrs = {k: getattr(st, k) for k in keys}
        if stat.S_ISREG(st.st_mode):
            attrs["st_blocks"] = (st.st_size + 511) // 512
        return attrs

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))

    def rename(self, old: str, new: str) -> None:
        os.replace(self._real(old), self._real(new))

    def symlink(self, target: str, source: str) -> None:
        os.symlink(source, self._real(target))

    def readlink(self, path: str) -> str:
        return os.readlink(self._real(path))

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        return None

    def utimens(self, path: str, times: Any = None) -> None:
        now = time.time_ns()
        os.utime(self._real(path), ns=tuple(times) if times else (now, now))

    def statfs(self, path: str) -> dict[str, Any]:
        free = max(self.capacity - self._used(), 0) // _BLOCK
        return {
            "f_bsize": _BLOCK,
            "f_frsize": _BLOCK,
            "f_blocks": self.capacity // _BLOCK,
            "f_bfree": free,
            "f_bavail": free,
            "f_files": 1 << 20,
            "f_ffree": 1 << 20,
            "f_favail": 1 << 20,
            "f_namemax": 255,
        }

    # -- contents -----------------------------------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        return os.open(self._real(path), os.O_RDWR | os.O_CREAT | os.O_TRUNC, mode)

    def open(self, path: str, flags: int) -> int:
        return os.open(self._real(path), os.O_RDWR)

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str, data: bytes, offset: int, fh: int) -> int:
        self._grow(path, offset + len(data))
        return os.pwrite(fh, data, offset)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        self._grow(path, length)
        os.truncate(self._real(path), length)

    def fallocate(self, path: str, mode: int, offset: int, size: int, fh: int) -> int:
        if mode != 0:
            raise fuse.FuseOSError(errno.EOPNOTSUPP)
        self._grow(path, offset + size)
        os.posix_fallocate(fh, offset, size)
        return 0

    def fsync(self, path: str, datasync: int, fh: int) -> None:
        os.fsync(fh)

    def flush(self, path: str, fh: int) -> None:
        return None

    def release(self, path: str, fh: int) -> None:
        os.close(fh)

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
        return None


def main() -> None:
    backing, mountpoint, capacity = sys.argv[1], sys.argv[2], int(sys.argv[3])
    fuse.FUSE(DiskFullFS(os.path.abspath(backing), capacity), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
