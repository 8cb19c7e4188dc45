"""A coordinator cluster plus ``worker run`` processes, for the provider's and the worker's end-to-end tests.

Rules:
1. The cluster comes from devkit.cluster and the workers' argv from devkit.launcher; workers log to
   ``root/worker{N}.log`` and read ``root/coordinator.yaml``, the cluster's own config.
2. Everything started here is stopped by :meth:`Stack.close`: workers gently (SIGTERM, SIGKILL after 15 s),
   then the cluster (kill -9).
"""

from __future__ import annotations

import os
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from devkit.cluster import Cluster, make_cluster
from devkit.launcher import worker_argv


@dataclass
class Stack:
    """A started cluster plus worker processes."""

    root: Path
    cluster: Cluster
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def urls(self) -> list[str]:
        return list(self.cluster.urls)

    def start_worker(
        self,
        source: str,
        storage_dsn: str,
        *,
        concurrency: int = 4,
        extra_args: tuple[str, ...] = (),
        env: dict[str, str] | None = None,
    ) -> None:
        index = len(self.workers)
        args = worker_argv(
            coordinators=self.urls,
            source=source,
            storage=storage_dsn,
            worker_id=f"w{index}",
            concurrency=concurrency,
            config=self.root / "coordinator.yaml",
            extra=extra_args,
        )
        environ = {**os.environ, **(env or {})}
        with (self.root / f"worker{index}.log").open("ab") as log:
            self.workers.append(
                subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=environ)
            )

    def logs(self) -> str:
        parts = [self.cluster.logs()]
        for path in sorted(self.root.glob("worker*.log")):
            parts.append(f"--- {path.name}\n{path.read_text(errors='replace')[-3000:]}")
        return "\n".join(parts)

    def close(self) -> None:
        for proc in self.workers:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in self.workers:
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        self.cluster.kill_all()


def start_stack(root: Path, *, size: int, window_bars: int) -> Stack:
    """Start ``size`` coordinators (windows of ``window_bars``) and wait for a leader."""
    config = {
        "seamless_data_provider": {"backfill_config": {"window_bars": window_bars, "retry_backoff_ms": 50}},
        "worker": {"claim_wait_ms": 200},
    }
    cluster = make_cluster(root, size=size, config=config)
    for index in range(size):
        cluster.start(index)
    stack = Stack(root, cluster)
    try:
        cluster.wait_leader(timeout_s=30)
    except AssertionError:
        stack.close()
        raise AssertionError("no coordinator leader\n" + cluster.logs()) from None
    return stack
