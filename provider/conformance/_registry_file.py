"""The schema registry's file: JSON, written atomically, one writer at a time.

Rules:
1. Format ``{"format": 1, "subjects": {name: {"pattern", "compatibility", "versions": [{"version", "columns":
   [[column, dtype], ...], "optional": [...]}]}}}``. Versions are listed oldest first and numbered 1, 2, 3 ...
2. Writes go to a temporary file in the same directory, are fsynced and renamed over the file (then the directory
   is fsynced): a reader sees the old registry or the new one, never half of one. New files get mode 0640.
3. Writers serialize on ``flock`` of ``<path>.lock``; a writer re-reads the file under the lock before it changes
   anything, so two processes registering at once never lose a version.
4. :func:`file_stamp` (inode, size, mtime) tells readers when to reload; a missing file is an empty registry.
5. Anything unreadable or malformed raises :class:`~provider.errors.SchemaRegistryFileError` naming the path and
   the problem; a registry is never silently reset.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from provider.conformance._compat import COMPATIBILITY, Schema, Subject
from provider.errors import SchemaRegistryFileError

__all__ = ["FORMAT", "file_stamp", "locked", "read_subjects", "write_subjects"]

#: The version of the file format this code writes and reads.
FORMAT = 1
_FILE_MODE = 0o640

Stamp = tuple[int, int, int] | None


def file_stamp(path: Path) -> Stamp:
    """``(inode, size, mtime_ns)`` of ``path``, or None when it does not exist (rule 4)."""
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise SchemaRegistryFileError(str(path), f"cannot stat it ({exc.strerror})") from None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Hold the exclusive writer lock of ``path`` (rule 3)."""
    lock_path = path.with_name(path.name + ".lock")
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, _FILE_MODE)
    except OSError as exc:
        raise SchemaRegistryFileError(str(path), f"cannot open the lock file {lock_path} ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _schema(name: str, raw: Any, index: int) -> Schema:
    if not isinstance(raw, dict) or raw.get("version") != index + 1:
        raise ValueError(f"subject {name!r}: version entry {index + 1} is malformed or out of order")
    columns = raw.get("columns")
    if not isinstance(columns, list) or not all(
        isinstance(c, list) and len(c) == 2 and all(isinstance(x, str) for x in c) for c in columns
    ):
        raise ValueError(f"subject {name!r} version {index + 1}: columns must be [[name, dtype], ...]")
    optional = raw.get("optional", [])
    if not isinstance(optional, list) or not all(isinstance(c, str) for c in optional):
        raise ValueError(f"subject {name!r} version {index + 1}: optional must be a list of column names")
    return Schema(name, index + 1, tuple((c, d) for c, d in columns), frozenset(optional))


def _subject(name: str, raw: Any) -> Subject:
    if not isinstance(raw, dict):
        raise ValueError(f"subject {name!r} must be an object")
    pattern, policy, versions = raw.get("pattern"), raw.get("compatibility"), raw.get("versions")
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"subject {name!r}: pattern must be a non-empty string")
    if policy not in COMPATIBILITY:
        raise ValueError(f"subject {name!r}: compatibility {policy!r} is not one of {', '.join(COMPATIBILITY)}")
    if not isinstance(versions, list) or not versions:
        raise ValueError(f"subject {name!r}: versions must be a non-empty list")
    return Subject(name, pattern, policy, tuple(_schema(name, v, i) for i, v in enumerate(versions)))


def read_subjects(path: Path) -> dict[str, Subject]:
    """The subjects stored in ``path`` (empty when it does not exist; rules 4 and 5)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise SchemaRegistryFileError(str(path), f"cannot read it ({exc})") from None
    try:
        data = json.loads(text)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"not a schema registry of format {FORMAT} (no 'format': {FORMAT} key)")
        subjects = data.get("subjects")
        if not isinstance(subjects, dict):
            raise ValueError("'subjects' must be an object")
        return {str(name): _subject(str(name), raw) for name, raw in subjects.items()}
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise SchemaRegistryFileError(str(path), f"corrupt ({exc})") from None


def _encode(subjects: dict[str, Subject]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "subjects": {
            s.name: {
                "pattern": s.pattern,
                "compatibility": s.compatibility,
                "versions": [
                    {"version": v.version, "columns": [list(c) for c in v.columns], "optional": sorted(v.optional)}
                    for v in s.versions
                ],
            }
            for s in sorted(subjects.values(), key=lambda s: s.name)
        },
    }


def write_subjects(path: Path, subjects: dict[str, Subject]) -> None:
    """Replace the file with ``subjects`` atomically (rule 2); call it holding :func:`locked`."""
    text = json.dumps(_encode(subjects), indent=2) + "\n"
    mode = path.stat().st_mode & 0o777 if path.exists() else _FILE_MODE
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise SchemaRegistryFileError(str(path), f"cannot write in {path.parent} ({exc.strerror})") from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise SchemaRegistryFileError(str(path), f"cannot write it ({exc.strerror})") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
