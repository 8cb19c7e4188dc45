"""``worker run --autoscale MIN:MAX``: supervise MIN..MAX worker processes by the cluster's pending windows.

Rules:
1. Desired size = ceil(pending / windows_per_worker), clamped to [MIN, MAX]. Growth is immediate; shrinking
   happens one process per period and only after the backlog stayed below the current size for
   ``_SHRINK_AFTER_PERIODS`` periods, so a short lull does not thrash.
2. A child that exits while the supervisor is not stopping it is restarted (counted and logged).
3. Children are stopped with SIGTERM (they drain gracefully) and killed only after their grace period.
4. :func:`desired_workers` is pure, so the policy is tested without processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import signal
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from provider.core.obs import get_logger

__all__ = ["AutoscalePolicy", "Supervisor", "desired_workers", "parse_autoscale"]

log = get_logger("worker.autoscale")

#: Periods the backlog must stay low before one process is removed.
_SHRINK_AFTER_PERIODS = 3


def parse_autoscale(text: str) -> tuple[int, int]:
    """Parse ``MIN:MAX`` (1 <= MIN <= MAX <= 256) or raise ``ValueError`` naming the value."""
    lo, sep, hi = text.partition(":")
    if not (sep and lo.isdigit() and hi.isdigit()) or not 0 <= int(lo) <= int(hi) or not 1 <= int(hi) <= 256:
        raise ValueError(f"--autoscale {text!r} must be MIN:MAX with 0 <= MIN <= MAX and 1 <= MAX <= 256, e.g. 1:8")
    return int(lo), int(hi)


@dataclass(frozen=True)
class AutoscalePolicy:
    """Bounds and target backlog of the pool."""

    min_workers: int
    max_workers: int
    windows_per_worker: int


def desired_workers(policy: AutoscalePolicy, pending: int, leased: int, current: int, low_periods: int) -> int:
    """The pool size to move to now, given the backlog and how long it has been low."""
    want = math.ceil((pending + leased) / policy.windows_per_worker)
    want = max(policy.min_workers, min(policy.max_workers, want))
    if want >= current:
        return want
    if low_periods >= _SHRINK_AFTER_PERIODS:
        return max(want, current - 1)
    return current


@dataclass
class _Child:
    index: int
    process: asyncio.subprocess.Process
    stopping: bool = False


@dataclass
class Supervisor:
    """Runs worker child processes and resizes the pool every ``interval_s``."""

    policy: AutoscalePolicy
    child_argv: Callable[[int], Sequence[str]]
    backlog: Callable[[], Awaitable[tuple[int, int]]]
    interval_s: float
    grace_s: float
    children: dict[int, _Child] = field(default_factory=dict)
    restarts: int = 0
    _stopping: asyncio.Event = field(default_factory=asyncio.Event)
    _low_periods: int = 0

    def stop(self) -> None:
        """Stop resizing and drain every child."""
        self._stopping.set()

    async def run(self) -> None:
        """Resize until stopped, then SIGTERM every child and wait for them."""
        await self._resize(self.policy.min_workers)
        try:
            while not self._stopping.is_set():
                await self._tick()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=self.interval_s)
        finally:
            await asyncio.gather(*(self._stop_child(c) for c in list(self.children.values())))

    async def _tick(self) -> None:
        self._reap_crashed()
        try:
            pending, leased = await self.backlog()
        except Exception as exc:  # the coordinator being briefly unreachable must not kill the pool
            log.warning("autoscale.backlog_unknown", error=str(exc))
            return
        current = len(self.children)
        self._low_periods = self._low_periods + 1 if pending + leased < current * self.policy.windows_per_worker else 0
        want = desired_workers(self.policy, pending, leased, current, self._low_periods)
        if want != current:
            log.info("autoscale.resized", pending=pending, leased=leased, workers=current, target=want)
            self._low_periods = 0
        await self._resize(want)

    def _reap_crashed(self) -> None:
        for index, child in list(self.children.items()):
            code = child.process.returncode
            if code is not None and not child.stopping:
                del self.children[index]
                self.restarts += 1
                log.warning("autoscale.child_restarted", index=index, exit_code=code)

    async def _resize(self, want: int) -> None:
        while len(self.children) < want:
            await self._spawn(self._free_index())
        while len(self.children) > want:
            newest = max(self.children)
            await self._stop_child(self.children[newest])

    def _free_index(self) -> int:
        index = 0
        while index in self.children:
            index += 1
        return index

    async def _spawn(self, index: int) -> None:
        argv = list(self.child_argv(index))
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL)
        self.children[index] = _Child(index, process)
        log.info("autoscale.child_started", index=index, pid=process.pid)

    async def _stop_child(self, child: _Child) -> None:
        child.stopping = True
        if child.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                child.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(child.process.wait(), timeout=self.grace_s + 5)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.process.kill()
                await child.process.wait()
        self.children.pop(child.index, None)
        log.info("autoscale.child_stopped", index=child.index, exit_code=child.process.returncode)


def python_argv() -> list[str]:
    """How to start this package's CLI in a child process with the same interpreter."""
    return [sys.executable, "-m", "worker.cli"]
