"""Real coordinator clusters and worker processes for the provider's integration and end-to-end tests.

Clusters come from tests/coordinator/coordinator_testkit.py (loaded by path, since test folders are not
packages); workers are ``worker run`` processes. Everything started here is killed by :meth:`Stack.close`.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]


def testkit() -> Any:
    """The coordinator testkit module."""
    name = "coordinator_testkit"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tests" / "coordinator" / f"{name}.py")
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def worker_cmd() -> list[str]:
    script = Path(sys.executable).parent / "worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


@dataclass
class Stack:
    """A started cluster plus worker processes."""

    root: Path
    cluster: Any
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
        args = [
            *worker_cmd(),
            "run",
            "--coordinator",
            ",".join(self.urls),
            "--source",
            source,
            "--storage",
            storage_dsn,
            "--worker-id",
            f"w{index}",
            "--concurrency",
            str(concurrency),
            "--config",
            str(self.root / "coordinator.yaml"),
            *extra_args,
        ]
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
    kit = testkit()
    config = {
        "seamless_data_provider": {"backfill_config": {"window_bars": window_bars, "retry_backoff_ms": 50}},
        "worker": {"claim_wait_ms": 200},
    }
    cluster = kit.make_cluster(root, size=size, config=config)
    for index in range(size):
        cluster.start(index)
    stack = Stack(root, cluster)
    try:
        cluster.wait_leader(timeout_s=30)
    except AssertionError:
        stack.close()
        raise AssertionError("no coordinator leader\n" + cluster.logs()) from None
    return stack
