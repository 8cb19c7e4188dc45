"""The file report sink: JSON files under a folder, bounded in bytes and files across every node.

Rules:
1. ``qmtl://observability/seamless/<node_id>`` maps to ``<root>/observability/seamless/<quoted node_id>/``; each
   report is one file ``<created_at_ms>-<seq>-<request_id>.json`` plus the node's ``latest.json``, each written
   atomically (temp file + rename).
2. The bound covers every file the sink keeps under ``<root>/observability/seamless``, ``latest.json`` included:
   at most ``max_bytes`` bytes of content and ``max_files`` files in all, and at most ``keep`` reports per
   node. Room is made *before* a write by removing the oldest reports first (across all nodes); a node whose
   last report goes loses its ``latest.json`` and folder too. So the bound holds at every moment but for the one
   temp file of the write in progress. A report larger than half of ``max_bytes`` (it is written twice) is
   dropped (``too_large``).
3. The sink keeps an index of what is on disk, built by one scan at its first write and refreshed by a rescan
   every ``rescan_every`` writes, so a publish costs no tree walk. Several processes writing one root each
   enforce the bound on what they have seen: the total may exceed it by what the others wrote since the last
   rescan, and the next rescan brings it back under the bound.
4. File I/O runs in a worker thread (one at a time per sink) so the event loop never blocks on a disk; a write
   error drops the report (``error``, counted and logged), it never raises into the caller.
5. :class:`FolderBudget` is the pure part: it tracks sizes and decides what to remove; it does no I/O.
6. Writes are batched: a batch starts at most every ``BATCH_INTERVAL_S`` (the first at once), and the reports
   published meanwhile wait for it: one thread hop for all of them, and each node's ``latest.json`` written once
   per batch, with its newest report. A strategy fetching small ranges back to back publishes a report per
   fetch; one hop and two file creations per report (each ~0.3 ms on this machine's disk, and the thread's
   wake-ups competing with the event loop for the GIL) had cost each fetch 0.5-1 ms. ``publish`` still returns
   once its report is on disk (or dropped).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import tempfile
import threading
from collections import OrderedDict, deque
from pathlib import Path
from typing import Any
from urllib.parse import quote

from provider._report_base import REPORT_URI_PREFIX, SinkAccounting, uri_node_id
from provider.metrics import ProviderMetrics

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_FILES",
    "DEFAULT_REPORT_ROOT",
    "FolderBudget",
    "LocalFolderReportSink",
]

#: The default folder of the file sink (under the system temp dir, so nothing lands in a working copy).
DEFAULT_REPORT_ROOT = Path(tempfile.gettempdir()) / "seamless-reports"
#: Default bound on the bytes of every report file (and ``latest.json``) of one root: 16 MiB.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: Default bound on the number of files of one root.
DEFAULT_MAX_FILES = 1000
#: Default number of reports kept per node.
DEFAULT_KEEP = 100
_LATEST = "latest.json"
#: Rule 6: the shortest time between the starts of two batches, in seconds.
BATCH_INTERVAL_S = 0.01


class FolderBudget:
    """The sizes of the files a sink keeps, oldest report first, and what must go to fit a new one (rule 5)."""

    def __init__(self, *, max_bytes: int, max_files: int, keep: int) -> None:
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.keep = keep
        #: Report file -> (its folder, its size), oldest first.
        self.reports: OrderedDict[Path, tuple[Path, int]] = OrderedDict()
        #: Folder -> its report files, oldest first.
        self.by_folder: dict[Path, deque[Path]] = {}
        #: Folder -> the size of its ``latest.json``.
        self.latest: dict[Path, int] = {}
        self.total_bytes = 0
        self.total_files = 0

    def fits(self, size: int) -> bool:
        """Whether one report of ``size`` bytes (written twice: the report and ``latest.json``) can fit at all."""
        return 2 * size <= self.max_bytes

    def add(self, folder: Path, path: Path, size: int) -> None:
        """Record a written report file (newest)."""
        self.reports[path] = (folder, size)
        self.by_folder.setdefault(folder, deque()).append(path)
        self.total_bytes += size
        self.total_files += 1

    def set_latest(self, folder: Path, size: int) -> None:
        """Record the size of a folder's ``latest.json``."""
        old = self.latest.get(folder)
        self.latest[folder] = size
        self.total_bytes += size - (old or 0)
        self.total_files += 0 if old is not None else 1

    def make_room(self, folder: Path, size: int) -> list[Path]:
        """Remove from the index, and return, the files to delete so a report of ``size`` fits in ``folder``."""
        victims: list[Path] = []
        queue = self.by_folder.get(folder)
        while queue and len(queue) >= self.keep:
            victims += self._evict(queue[0])
            queue = self.by_folder.get(folder)
        while self.reports:
            old_latest = self.latest.get(folder)
            need_bytes = 2 * size - (old_latest or 0)
            need_files = 1 if old_latest is not None else 2
            if self.total_bytes + need_bytes <= self.max_bytes and self.total_files + need_files <= self.max_files:
                break
            victims += self._evict(next(iter(self.reports)))
        return victims

    def _evict(self, path: Path) -> list[Path]:
        folder, size = self.reports.pop(path)
        queue = self.by_folder[folder]
        queue.remove(path)  # the oldest of its folder: O(1) in practice
        self.total_bytes -= size
        self.total_files -= 1
        if queue:
            return [path]
        del self.by_folder[folder]
        if folder in self.latest:
            self.total_bytes -= self.latest.pop(folder)
            self.total_files -= 1
        return [path, folder / _LATEST]


class LocalFolderReportSink:
    """Writes reports as JSON files under ``root``, bounded across all nodes (see the module rules)."""

    kind = "file"

    def __init__(
        self,
        root: str | Path = DEFAULT_REPORT_ROOT,
        *,
        max_bytes: int = DEFAULT_MAX_BYTES,
        max_files: int = DEFAULT_MAX_FILES,
        keep: int = DEFAULT_KEEP,
        rescan_every: int = 256,
        metrics: ProviderMetrics | None = None,
    ) -> None:
        for name, value, low in (("max_bytes", max_bytes, 2), ("max_files", max_files, 2), ("keep", keep, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"LocalFolderReportSink {name}={value!r} must be an int >= {low}")
        if isinstance(rescan_every, bool) or not isinstance(rescan_every, int) or rescan_every < 1:
            raise ValueError(f"LocalFolderReportSink rescan_every={rescan_every!r} must be an int >= 1")
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.keep = keep
        self.rescan_every = rescan_every
        self.accounting = SinkAccounting(self.kind, metrics)
        self._budget: FolderBudget | None = None
        self._writes = 0
        self._sequence = 0
        self._lock = threading.Lock()
        #: Reports waiting for the next batch (rule 6): folder, file name, content, the publisher's future.
        self._queue: list[tuple[Path, str, bytes, asyncio.Future[bool | OSError]]] = []
        self._drainer: asyncio.Task[None] | None = None
        self._batch_started_s = float("-inf")

    @property
    def metrics(self) -> ProviderMetrics | None:
        """Where the published/dropped counts go (set by the provider when None)."""
        return self.accounting.metrics

    @metrics.setter
    def metrics(self, value: ProviderMetrics | None) -> None:
        self.accounting.metrics = value

    @property
    def base(self) -> Path:
        """The folder holding one folder per node."""
        return self.root / "observability" / "seamless"

    def folder(self, uri: str) -> Path:
        """The folder holding the reports of ``uri``."""
        return self.base / quote(uri_node_id(uri), safe="")

    def usage(self) -> tuple[int, int]:
        """``(bytes, files)`` the index holds (what this sink has seen; rule 3)."""
        budget = self._budget
        return (0, 0) if budget is None else (budget.total_bytes, budget.total_files)

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Write one report (never raises for I/O: a failure is counted and logged)."""
        folder = self.folder(uri)
        self._sequence += 1
        name = f"{report.get('created_at_ms') or 0:015d}-{self._sequence:06d}-{report.get('request_id') or 'r'}.json"
        data = json.dumps(report, sort_keys=True, default=str).encode("utf-8")
        future: asyncio.Future[bool | OSError] = asyncio.get_running_loop().create_future()
        self._queue.append((folder, name, data, future))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.ensure_future(self._drain())
        written = await future
        if isinstance(written, OSError):
            self.accounting.dropped("error", uri, f"{type(written).__name__}: {written}")
            return
        if written:
            self.accounting.published()
        else:
            self.accounting.dropped("too_large", uri, f"{len(data)} bytes; the bound is {self.max_bytes}")

    def latest(self, node_id: str) -> dict[str, Any] | None:
        """The newest report of ``node_id`` (reads ``latest.json``)."""
        path = self.folder(REPORT_URI_PREFIX + node_id) / _LATEST
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    async def _drain(self) -> None:
        """Write the queued reports batch by batch until none is left (rule 6)."""
        loop = asyncio.get_running_loop()
        while self._queue:
            wait_s = self._batch_started_s + BATCH_INTERVAL_S - loop.time()
            if wait_s > 0:
                await asyncio.sleep(wait_s)
            self._batch_started_s = loop.time()
            batch, self._queue = self._queue, []
            try:
                outcomes = await asyncio.to_thread(self._write_batch, [item[:3] for item in batch])
            except asyncio.CancelledError:  # the loop is closing: nobody is left hanging
                for *_, future in batch:
                    future.cancel()
                raise
            except Exception as exc:  # not an I/O error (those are outcomes): each publisher gets it
                for *_, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (*_, future), outcome in zip(batch, outcomes, strict=True):
                if not future.done():
                    future.set_result(outcome)

    def _write_batch(self, batch: list[tuple[Path, str, bytes]]) -> list[bool | OSError]:
        """Each report's outcome: written, too large (False) or the error that stopped it."""
        outcomes: list[bool | OSError] = []
        newest: dict[Path, int] = {}  # folder -> the batch position of its newest written report
        with self._lock:
            for folder, name, data in batch:
                try:
                    outcomes.append(self._write_report(folder, name, data))
                except OSError as exc:
                    outcomes.append(exc)
                if outcomes[-1] is True:
                    newest[folder] = len(outcomes) - 1
            budget = self._budget
            if budget is None:  # the first scan failed: nothing was written
                return outcomes
            for folder, position in newest.items():
                _, name, data = batch[position]
                if folder / name not in budget.reports:
                    continue  # a later report of the batch made room by removing it: its folder is gone
                try:
                    _write_atomically(folder, _LATEST, data)
                except OSError as exc:
                    outcomes[position] = exc
                    continue
                budget.set_latest(folder, len(data))
        return outcomes

    def _write_report(self, folder: Path, name: str, data: bytes) -> bool:
        """One report file, after making room for it and for ``latest.json`` of its size (the caller writes that)."""
        if self._budget is None or self._writes % self.rescan_every == 0:
            self._budget = self._scan()
        self._writes += 1
        budget = self._budget
        if not budget.fits(len(data)):
            return False
        victims = budget.make_room(folder, len(data))
        _remove(victims)
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(folder, name, data)
        budget.add(folder, folder / name, len(data))
        return True

    def _scan(self) -> FolderBudget:
        """The index of what is on disk now; orphan ``latest.json`` files (no report beside them) are removed."""
        budget = FolderBudget(max_bytes=self.max_bytes, max_files=self.max_files, keep=self.keep)
        found: list[tuple[int, str, Path, Path, int]] = []
        orphans: list[Path] = []
        folders = [entry for entry in _entries(self.base) if entry.is_dir(follow_symlinks=False)]
        for entry in folders:
            folder = Path(entry.path)
            latest: int | None = None
            reports = 0
            for item in _entries(folder):
                if not item.name.endswith(".json") or item.name.startswith(".tmp-"):
                    continue
                stat = item.stat(follow_symlinks=False)
                if item.name == _LATEST:
                    latest = stat.st_size
                else:
                    reports += 1
                    found.append((stat.st_mtime_ns, item.name, folder, Path(item.path), stat.st_size))
            if latest is not None and reports:
                budget.set_latest(folder, latest)
            elif latest is not None:
                orphans.append(folder / _LATEST)
        for _, _, folder, path, size in sorted(found):
            budget.add(folder, path, size)
        _remove(orphans)
        return budget


def _entries(folder: Path) -> list[os.DirEntry[str]]:
    try:
        with os.scandir(folder) as it:
            return list(it)
    except FileNotFoundError:
        return []


def _remove(paths: list[Path]) -> None:
    folders = set()
    for path in paths:
        path.unlink(missing_ok=True)
        if path.name == _LATEST:
            folders.add(path.parent)
    for folder in folders:
        # Not empty (a temp file of another writer) or already gone: harmless, the folder is simply kept.
        with contextlib.suppress(OSError):
            folder.rmdir()


def _write_atomically(folder: Path, name: str, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, folder / name)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
