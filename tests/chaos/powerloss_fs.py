"""A FUSE filesystem that keeps only what was fsynced: kill it (-9) and remount to simulate a power loss.

Run: ``python tests/chaos/powerloss_fs.py BACKING MOUNTPOINT`` (foreground). File contents live in this process's
memory; ``fsync``/``fdatasync`` (``msync(MS_SYNC)`` of a shared mapping reaches here as writes then fsync) copies a
file's content to BACKING, the "disk". Names are durable at once (create, mkdir, rename, unlink go to BACKING
immediately, with the content BACKING holds), contents only when synced. Killing this process loses every
unsynced byte, as a power cut would; a new instance over the same BACKING sees only what was synced.

Rules:
1. Single-threaded (``nothreads``): operations are applied in the order the kernel sends them.
2. Mount with ``auto_cache`` off and no ``direct_io``, so shared writable mmap works (pysyncobj's journal).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
import time
from typing import Any

import mfusepy as fuse


class PowerLossFS(fuse.Operations):  # type: ignore[misc]
    """Contents in memory until fsync; names in the backing dir at once."""

    use_ns = True  # utimens gets nanoseconds

    def __init__(self, backing: str) -> None:
        self.backing = backing
        self.data: dict[str, bytearray] = {}  # path -> volatile content of files opened since mount

    def _real(self, path: str) -> str:
        return os.path.join(self.backing, path.lstrip("/"))

    def _content(self, path: str) -> bytearray:
        if path not in self.data:
            with open(self._real(path), "rb") as f:
                self.data[path] = bytearray(f.read())
        return self.data[path]

    # -- metadata -----------------------------------------------------------------------------------------------

    def getattr(self, path: str, fh: Any = None) -> dict[str, Any]:
        try:
            st = os.lstat(self._real(path))
        except FileNotFoundError:
            raise fuse.FuseOSError(errno.ENOENT) from None
        attrs = {k: getattr(st, k) for k in ("st_mode", "st_nlink", "st_uid", "st_gid", "st_atime", "st_mtime")}
        attrs["st_ctime"] = st.st_ctime
        attrs["st_size"] = len(self.data[path]) if path in self.data and stat.S_ISREG(st.st_mode) else st.st_size
        return attrs

    def readdir(self, path: str, fh: Any) -> list[str]:
        return [".", "..", *os.listdir(self._real(path))]

    def mkdir(self, path: str, mode: int) -> None:
        os.mkdir(self._real(path), mode)

    def rmdir(self, path: str) -> None:
        os.rmdir(self._real(path))

    def unlink(self, path: str) -> None:
        os.unlink(self._real(path))
        self.data.pop(path, None)

    def rename(self, old: str, new: str) -> None:
        os.replace(self._real(old), self._real(new))
        if old in self.data:
            self.data[new] = self.data.pop(old)
        else:
            self.data.pop(new, None)

    def chmod(self, path: str, mode: int) -> None:
        os.chmod(self._real(path), mode)

    def chown(self, path: str, uid: int, gid: int) -> None:
        return None

    def utimens(self, path: str, times: Any = None) -> None:
        now = time.time_ns()
        os.utime(self._real(path), ns=tuple(times) if times else (now, now))

    def statfs(self, path: str) -> dict[str, Any]:
        st = os.statvfs(self.backing)
        return {k: getattr(st, k) for k in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_frsize", "f_namemax")}

    # -- contents -----------------------------------------------------------------------------------------------

    def create(self, path: str, mode: int, fi: Any = None) -> int:
        fd = os.open(self._real(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.close(fd)
        self.data[path] = bytearray()
        return 0

    def open(self, path: str, flags: int) -> int:
        self._content(path)
        return 0

    def read(self, path: str, size: int, offset: int, fh: Any) -> bytes:
        return bytes(self._content(path)[offset : offset + size])

    def write(self, path: str, data: bytes, offset: int, fh: Any) -> int:
        content = self._content(path)
        if offset > len(content):
            content.extend(b"\0" * (offset - len(content)))
        content[offset : offset + len(data)] = data
        return len(data)

    def truncate(self, path: str, length: int, fh: Any = None) -> None:
        content = self._content(path)
        if length < len(content):
            del content[length:]
        else:
            content.extend(b"\0" * (length - len(content)))

    def fsync(self, path: str, datasync: int, fh: Any) -> None:
        if path in self.data:
            with open(self._real(path), "wb") as f:
                f.write(self.data[path])

    def flush(self, path: str, fh: Any) -> None:
        return None

    def release(self, path: str, fh: Any) -> None:
        return None

    def fsyncdir(self, path: str, datasync: int, fh: Any) -> None:
        return None


def main() -> None:
    backing, mountpoint = sys.argv[1], sys.argv[2]
    fuse.FUSE(PowerLossFS(backing), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
