"""Processes around a coordinator cluster: ``worker run`` daemons and the loopback exchange.

The exchange is devkit.fake_exchange in a process of its own, driven through its admin routes; workers get
their argv from devkit.launcher and a free metrics port each.

Rules:
1. Every process runs in its own session and is killed (kill -9 of its group) by its owner's teardown.
2. Waits poll with deadlines (devkit.polling); a worker counts as up once its metrics answer.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devkit.launcher import worker_argv
from devkit.polling import http_json, wait_for
from devkit.ports import LOOPBACK, free_port

__all__ = ["Exchange", "WorkerPool", "WorkerProc", "wait_any_job_done", "wait_job_done"]

#: The repository root: ``python -m devkit.fake_exchange`` runs from it.
ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Exchange:
    """devkit.fake_exchange in a subprocess, driven through its admin routes."""

    proc: subprocess.Popen[str]
    url: str

    @classmethod
    def start(cls, *args: str) -> Exchange:
        """Start it on a free port with the CLI ``args`` of devkit.fake_exchange; return once it printed its URL."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "devkit.fake_exchange", "--port", "0", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
            cwd=ROOT,
        )
        assert proc.stdout is not None
        url = proc.stdout.readline().strip()
        if not url.startswith("http://"):
            proc.kill()
            raise RuntimeError(f"fake exchange did not start (printed {url!r})")
        return cls(proc, url)

    def admin(self, path: str, body: Any = None) -> Any:
        """Call ``/_admin/{path}`` (POST with a body, else GET); fail unless it answers 200."""
        status, answer = http_json("POST" if body is not None else "GET", f"{self.url}/_admin/{path}", body)
        assert status == 200, answer
        return answer

    def stats(self) -> dict[str, Any]:
        """The exchange's request accounting."""
        stats: dict[str, Any] = self.admin("stats")
        return stats

    def stop(self) -> None:
        """kill -9 the exchange and close its pipe."""
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@dataclass
class WorkerProc:
    """One `worker run` process (or an autoscale supervisor) with a metrics port."""

    name: str
    args: list[str]
    log_path: Path
    metrics_port: int
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProc:
        """Spawn it, appending its output to its log."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def alive(self) -> bool:
        """Whether the process runs."""
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the process itself (not its group)."""
        assert self.proc is not None
        os.kill(self.proc.pid, sig)

    def kill(self) -> None:
        """kill -9 its process group, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            with_group = os.getpgid(self.proc.pid)
            os.killpg(with_group, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def metrics(self) -> dict[str, float]:
        """The worker's Prometheus samples as {name{labels}: value}."""
        with urllib.request.urlopen(f"http://{LOOPBACK}:{self.metrics_port}/metrics", timeout=5) as answer:
            text = answer.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    def metric_sum(self, prefix: str) -> float:
        """The sum of every sample of the metric ``prefix`` (all label sets)."""
        return sum(v for k, v in self.metrics().items() if re.match(re.escape(prefix) + r"(\{|$)", k))

    def log(self) -> str:
        """Everything the worker logged so far."""
        return self.log_path.read_text(errors="replace")


@dataclass
class WorkerPool:
    """Starts workers against one cluster, exchange and storage; kills them all at teardown."""

    root: Path
    coordinators: list[str]
    source: str
    storage: str
    config: Path
    workers: list[WorkerProc] = field(default_factory=list)

    def start(self, name: str, *extra: str, concurrency: int = 2) -> WorkerProc:
        """Start worker ``name`` (more CLI flags in ``extra``); return once its metrics answer."""
        port = free_port(LOOPBACK)
        args = worker_argv(
            coordinators=self.coordinators,
            source=self.source,
            storage=self.storage,
            worker_id=name,
            concurrency=concurrency,
            config=self.config,
            metrics_port=port,
            extra=extra,
        )
        worker = WorkerProc(name, args, self.root / f"{name}.log", port).start()
        self.workers.append(worker)

        def up() -> bool:
            if not worker.alive:
                raise AssertionError(f"worker {name} exited: {worker.log()[-2000:]}")
            return bool(worker.metrics())

        wait_for(up, 30, f"worker {name} metrics")
        return worker

    def kill_all(self) -> None:
        """kill -9 every worker this pool started."""
        for worker in self.workers:
            worker.kill()


def wait_job_done(cluster_url: str, job_id: str, timeout_s: float) -> dict[str, Any]:
    """Poll a job until it leaves 'running'; return it."""

    def finished() -> dict[str, Any] | None:
        status, body = http_json("GET", f"{cluster_url}/v1/jobs/{job_id}")
        job = body.get("job", body) if status == 200 else None
        return job if job and job["state"] != "running" else None

    done: dict[str, Any] = wait_for(finished, timeout_s, f"job {job_id} to finish", interval_s=0.2)
    return done


def wait_any_job_done(urls: list[str], job_ids: list[str], timeout_s: float) -> list[dict[str, Any]]:
    """Wait for every job (asking whichever node answers)."""
    deadline = time.monotonic() + timeout_s
    jobs = []
    for job_id in job_ids:
        for url in urls:
            try:
                jobs.append(wait_job_done(url, job_id, max(1.0, deadline - time.monotonic())))
                break
            except (OSError, AssertionError):
                continue
        else:
            raise AssertionError(f"job {job_id} did not finish in {timeout_s} s")
    return jobs
