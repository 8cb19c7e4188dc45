"""A SQLite file whose rollback-journal writer holds its write lock for a while: what a second opener does in the
middle of switching a new file to WAL (``provider/storage/_sqlite.py`` rule 4), made deterministic for tests."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["held_write_lock"]


@contextmanager
def held_write_lock(path: Path, seconds: float = 0.2) -> Iterator[None]:
    """Create ``path`` with a table ``notes``, hold its write lock with one uncommitted row ``kept``, and commit
    after ``seconds``; on exit wait for that commit and close the writer."""
    writer = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    writer.execute("CREATE TABLE notes (text TEXT)")
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("INSERT INTO notes VALUES ('kept')")
    release = threading.Timer(seconds, writer.execute, ("COMMIT",))
    release.start()
    try:
        yield
    finally:
        release.join()
        writer.close()
