"""The leader's retention sweep: submits the replicated ``retire`` command when a finished job is due.

Rules:
1. Only the leader sweeps, and it stamps ``now_ms`` through ``CoordinatorNode.execute`` like the reaper does;
   the table decides (``_retire.py``), every replica applies the same command.
2. The sweep asks the local replica first (``retire_due``) and submits nothing when nothing would change, so an
   idle cluster writes no log entries for retention.
3. It runs every quarter of the retention period, at least every ``reap_interval_ms`` and at most every 60 s:
   a job retires between ``job_retention_s`` and ``job_retention_s`` + one period after the sweep saw it finish.
4. After a retire that dropped many windows every replica (``raft.py`` calls ``trim_after_retire``) returns the
   freed heap to the OS with ``malloc_trim``, so the node's RSS falls back (docs/benchmarks.md).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from coordinator._records import Result
from coordinator.errors import ApiError
from provider.core.obs import get_logger

if TYPE_CHECKING:
    from coordinator.seams import Clock
    from coordinator.table import Table
    from provider.core import CoordinatorConfig

_T = TypeVar("_T")


class RetentionNode(Protocol):
    """What the sweep needs of a node; :class:`coordinator.node.CoordinatorNode` is one (declared here, by its user,
    so this module does not import the node that runs it)."""

    @property
    def cfg(self) -> CoordinatorConfig: ...

    @property
    def clock(self) -> Clock: ...

    @property
    def is_leader(self) -> bool: ...

    def read(self, fn: Callable[[Table], _T]) -> _T: ...

    async def execute(self, op: str, kwargs: dict[str, Any], client_id: str, request_id: str) -> Any: ...


__all__ = ["RetentionNode", "retention_loop", "sweep_interval_s"]

log = get_logger("coordinator.retention")

_MAX_SWEEP_INTERVAL_S = 60.0
#: A sweep dropping this many windows or more returns the freed memory to the OS.
_TRIM_MIN_DROPPED = 10_000


def release_free_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise); a no-op where there is no glibc."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def trim_after_retire(commands: list[tuple[str, dict[str, Any]]], results: list[Result]) -> None:
    """Called by every replica after applying a batch (rule 4): trims when a retire dropped many windows."""
    for (op, _), result in zip(commands, results, strict=False):
        value = result.value if op == "retire" and result.ok else None
        if isinstance(value, dict) and value.get("windows_dropped", 0) >= _TRIM_MIN_DROPPED:
            release_free_memory()
            return


def sweep_interval_s(retention_s: int, reap_interval_ms: int) -> float:
    return min(_MAX_SWEEP_INTERVAL_S, max(reap_interval_ms / 1000, retention_s / 4))


def _due(table: Table, *, now_ms: int, retention_ms: int) -> bool:
    return table.retire_due(now_ms, retention_ms)


async def retention_loop(node: RetentionNode) -> None:
    """Forever: on the leader, retire the finished jobs that are due (time from ``node.clock``)."""
    retention_ms = node.cfg.job_retention_s * 1000
    interval_s = sweep_interval_s(node.cfg.job_retention_s, node.cfg.reap_interval_ms)
    more = False
    while True:
        if not more:
            await node.clock.sleep(interval_s)
        more = False
        if not node.is_leader:
            continue
        if not node.read(partial(_due, now_ms=node.clock.wall_ms(), retention_ms=retention_ms)):
            continue
        try:
            value = await node.execute("retire", {"retention_ms": retention_ms}, "", "")
        except ApiError as exc:
            log.warning("retention.retire_failed", error=exc.message)
            continue
        more = bool(value["more"])  # a bounded command left work: go on at once (_retire.py rule 6)
        for job_id in value["retired"]:
            log.info("retention.job_retired", job_id=job_id)
        if value["retired"]:
            log.info("retention.sweep", retired=len(value["retired"]), windows_dropped=value["windows_dropped"])
