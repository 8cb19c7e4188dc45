"""Watching coordinator nodes from outside for bench_coordinator_scale.py: RSS, log-compaction dumps, GC pauses.

Nothing here changes what the nodes do, except that :class:`GcProbe` puts a ``sitecustomize`` on their
PYTHONPATH that only logs the length of full garbage collections.
"""

from __future__ import annotations

import json
import os
import re
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["CompactionWatch", "GcProbe", "node_rss", "rss_bytes"]

_GC_EVENT = re.compile(r'\{"gc_full_pause_ms": [0-9.e+-]+, "at": [0-9.e+-]+, "pid": [0-9]+\}')


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def node_rss(cluster: Any) -> list[int]:
    """VmRSS of each live node process of a bench_coordinator ``Cluster`` (0 for a dead one)."""
    return [rss_bytes(p.pid) if p is not None and p.poll() is None else 0 for p in cluster.procs]


class CompactionWatch(threading.Thread):
    """Polls each node's ``raft.dump.tmp`` (written by the forked child during a dump) every 5 ms."""

    def __init__(self, root: Path, nodes: int) -> None:
        super().__init__(daemon=True)
        self.paths = [root / f"data{i}" / "raft.dump.tmp" for i in range(nodes)]
        self.dumps: list[tuple[int, float, float]] = []  # (node, started, ended) in perf_counter seconds
        self._halt = threading.Event()
        self._since: list[float | None] = [None] * len(self.paths)

    def run(self) -> None:
        since = self._since
        while not self._halt.wait(0.005):
            now = time.perf_counter()
            for i, path in enumerate(self.paths):
                present = path.exists()
                if present and since[i] is None:
                    since[i] = now
                elif not present and since[i] is not None:
                    self.dumps.append((i, since[i], now))  # type: ignore[arg-type]
                    since[i] = None

    def stop(self) -> None:
        self._halt.set()
        self.join()

    def running_s(self) -> float:
        """The age of the oldest dump still being written, 0 when none is."""
        now = time.perf_counter()
        return max((now - since for since in self._since if since is not None), default=0.0)

    def between(self, lo: float, hi: float) -> list[tuple[int, float, float]]:
        return [d for d in self.dumps if d[2] > lo and d[1] < hi]


GC_PROBE = '''"""Put on the coordinator nodes' PYTHONPATH by bench_coordinator_scale.py: logs full GC pauses > 20 ms."""
import gc, json, os, sys, time

_started = [0.0]


def _probe(phase, info):
    if info["generation"] != 2:
        return
    if phase == "start":
        _started[0] = time.perf_counter()
    elif time.perf_counter() - _started[0] > 0.02:
        pause_ms = (time.perf_counter() - _started[0]) * 1000
        sys.stderr.write(json.dumps({"gc_full_pause_ms": pause_ms, "at": time.time(), "pid": os.getpid()}) + "\\n")
        sys.stderr.flush()


gc.callbacks.append(_probe)
'''


class GcProbe:
    """Full (generation 2) collections of CPython's cyclic GC in the nodes: each stops the whole process, Raft
    heartbeats included. A ``sitecustomize`` on the nodes' PYTHONPATH logs each pause to the node's log; this
    reads them back for the node processes (not the forked dump writers, which inherit the hook)."""

    def __init__(self, tmp: Path, roots: list[Path]) -> None:
        self.roots = roots
        self.pids: set[int] = set()
        folder = tmp / "gc-probe"
        folder.mkdir()
        (folder / "sitecustomize.py").write_text(GC_PROBE)
        os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))

    def remember(self, cluster: Any) -> None:
        """Note the node processes now running (restarted nodes get new pids)."""
        self.pids |= {p.pid for p in cluster.procs if p is not None}

    def longest_ms(self, since: float, until: float) -> float:
        """The longest pause of a node process that ended in ``[since, until]`` (wall clock), 0 when none.

        Events are found anywhere in a line: the hook may write in the middle of a log line of another thread.
        """
        longest = 0.0
        for root in self.roots:
            for log in root.glob("node*.log"):
                for match in _GC_EVENT.finditer(log.read_text(errors="replace")):
                    event = json.loads(match.group(0))
                    if event["pid"] in self.pids and since <= event["at"] <= until:
                        longest = max(longest, event["gc_full_pause_ms"])
        return longest
