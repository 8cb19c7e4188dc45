"""Report sinks: where conformance reports are published (``qmtl://observability/seamless/<node_id>``).

Rules:
1. A sink resolves the report's URI itself. :class:`LocalFolderReportSink` (the default) maps
   ``qmtl://observability/seamless/<node_id>`` to ``<root>/observability/seamless/<quoted node_id>/`` and writes
   one JSON file per report plus ``latest.json``, each atomically (temp file + rename), keeping the newest
   ``keep`` files. :class:`MemoryReportSink` keeps reports in a list, for tests and embedding.
2. Publishing never fails a fetch: the provider logs a sink error and carries on.
3. File I/O runs in a worker thread so the event loop never blocks on a disk.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Protocol, runtime_checkable
from urllib.parse import quote

__all__ = ["DEFAULT_REPORT_ROOT", "LocalFolderReportSink", "MemoryReportSink", "ReportSink", "uri_node_id"]

_PREFIX = "qmtl://observability/seamless/"
#: The default folder of the local sink (under the system temp dir, so nothing lands in a working copy).
DEFAULT_REPORT_ROOT = Path(tempfile.gettempdir()) / "seamless-reports"


def uri_node_id(uri: str) -> str:
    """The node id a report URI names, or ValueError naming the URI."""
    if not uri.startswith(_PREFIX) or len(uri) == len(_PREFIX):
        raise ValueError(f"report URI {uri!r} must look like {_PREFIX}<node_id>")
    return uri[len(_PREFIX) :]


@runtime_checkable
class ReportSink(Protocol):
    """Somewhere reports go."""

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        """Store one JSON-ready report under ``uri``."""
        ...


class MemoryReportSink:
    """Keeps the published reports in memory, newest last (bounded)."""

    def __init__(self, *, keep: int = 1000) -> None:
        self.keep = keep
        self.published: list[tuple[str, dict[str, Any]]] = []

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        uri_node_id(uri)
        self.published.append((uri, report))
        del self.published[: max(0, len(self.published) - self.keep)]

    def latest(self, node_id: str) -> dict[str, Any] | None:
        """The newest report of ``node_id``."""
        found = [report for uri, report in self.published if uri == _PREFIX + node_id]
        return found[-1] if found else None


class LocalFolderReportSink:
    """Writes reports as JSON files under ``root`` (see the module rules)."""

    def __init__(self, root: str | Path = DEFAULT_REPORT_ROOT, *, keep: int = 100) -> None:
        if keep < 1:
            raise ValueError(f"keep {keep!r} must be >= 1")
        self.root = Path(root)
        self.keep = keep
        self._sequence = 0

    def folder(self, uri: str) -> Path:
        """The folder holding the reports of ``uri``."""
        return self.root / "observability" / "seamless" / quote(uri_node_id(uri), safe="")

    async def publish(self, uri: str, report: dict[str, Any]) -> None:
        folder = self.folder(uri)
        self._sequence += 1
        name = f"{report.get('created_at_ms') or 0:015d}-{self._sequence:06d}-{report.get('request_id') or 'r'}.json"
        text = json.dumps(report, sort_keys=True, default=str)
        await asyncio.to_thread(self._write, folder, name, text)

    def latest(self, node_id: str) -> dict[str, Any] | None:
        """The newest report of ``node_id`` (reads ``latest.json``)."""
        path = self.folder(_PREFIX + node_id) / "latest.json"
        if not path.exists():
            return None
        data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
        return data

    def _write(self, folder: Path, name: str, text: str) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        for target in (folder / name, folder / "latest.json"):
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=".json")
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(text)
            os.replace(tmp, target)
        reports = sorted(p for p in folder.glob("*.json") if p.name != "latest.json")
        for old in reports[: max(0, len(reports) - self.keep)]:
            old.unlink(missing_ok=True)
