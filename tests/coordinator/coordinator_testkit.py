"""Helpers of the coordinator tests: real ``coordinator serve`` clusters on loopback, polling, HTTP calls.

Each cluster gets its own 127.0.0.x address, free ports and temp data dirs; every process is killed at teardown.
Waits poll with deadlines; nothing sleeps for a fixed time to let a lease expire.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml

SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000


def coordinator_cmd() -> list[str]:
    """The installed console script, or ``python -m coordinator`` when the script is missing."""
    script = Path(sys.executable).parent / "coordinator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator"]


def with_fd_limit(args: list[str], nofile: int) -> list[str]:
    """``args`` run with their file-descriptor limit (soft and hard) lowered to ``nofile``, like ``ulimit -n``."""
    code = (
        "import os, resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
    )
    return [sys.executable, "-c", code, str(nofile), *args]


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample (``name{labels}``) in Prometheus text; 0 when it is absent."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


def free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def http_json(
    method: str, url: str, body: Any = None, token: str | None = None, timeout_s: float = 5.0
) -> tuple[int, Any]:
    """A blocking JSON request (fixtures and polling); returns (status, decoded body or None)."""
    data = json.dumps(body).encode() if body is not None else None
    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as exc:
        raw = exc.read()
        try:
            return exc.code, json.loads(raw)
        except ValueError:
            return exc.code, raw.decode(errors="replace")


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    """Poll ``predicate`` until it returns a truthy value; fail naming ``what`` at the deadline."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        else:
            if last:
                return last
        time.sleep(interval_s)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@dataclass
class Node:
    index: int
    node_id: str
    raft: str
    http: str
    data_dir: Path
    args: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{self.http}"

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """N coordinator processes on one loopback address."""

    root: Path
    nodes: list[Node] = field(default_factory=list)
    token: str | None = None

    def start(self, index: int) -> None:
        node = self.nodes[index]
        with node.log_path.open("ab") as log:
            node.proc = subprocess.Popen(node.args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self, index: int) -> None:
        """kill -9, and reap the process."""
        node = self.nodes[index]
        if node.proc is not None and node.proc.poll() is None:
            os.killpg(node.proc.pid, signal.SIGKILL)
            node.proc.wait(timeout=10)

    def kill_all(self) -> None:
        for i in range(len(self.nodes)):
            self.kill(i)

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    def view(self, index: int) -> dict[str, Any] | None:
        status, body = http_json("GET", self.nodes[index].url + "/v1/cluster", token=self.token, timeout_s=2.0)
        return body if status == 200 else None

    def leader_index(self) -> int | None:
        """The index of the node that says it is leader (and that every live node agrees on), or None."""
        urls: set[str] = set()
        leader = None
        for i, node in enumerate(self.nodes):
            if not node.alive:
                continue
            try:
                view = self.view(i)
            except (OSError, urllib.error.URLError):
                return None
            if view is None or view["leader"] is None:
                return None
            urls.add(view["leader"])
            if view["role"] == "leader":
                leader = i
        return leader if len(urls) == 1 else None

    def wait_leader(self, timeout_s: float = 20.0) -> int:
        return int(wait_for(lambda: (i := self.leader_index()) is not None and i + 1, timeout_s, "a leader")) - 1

    def logs(self) -> str:
        return "\n".join(f"--- {n.node_id}\n{n.log_path.read_text(errors='replace')[-3000:]}" for n in self.nodes)


def make_cluster(
    root: Path,
    size: int = 3,
    config: dict[str, Any] | None = None,
    *,
    token_lines: list[str] | None = None,
    secret: str | None = None,
) -> Cluster:
    """Create (not start) a cluster of ``size`` nodes under ``root``."""
    host = f"127.0.0.{random.randint(20, 250)}"
    config_path = root / "coordinator.yaml"
    config_path.write_text(yaml.safe_dump(config or {}), encoding="utf-8")
    rafts = [f"{host}:{free_port(host)}" for _ in range(size)]
    https = [f"{host}:{free_port(host)}" for _ in range(size)]
    extra: list[str] = []
    cluster = Cluster(root)
    if token_lines:
        (root / "tokens.txt").write_text("\n".join(token_lines) + "\n", encoding="utf-8")
        extra += ["--token-file", str(root / "tokens.txt")]
    if secret:
        (root / "secret.txt").write_text(secret + "\n", encoding="utf-8")
        extra += ["--cluster-secret-file", str(root / "secret.txt")]
    for i in range(size):
        data_dir = root / f"node{i}"
        args = [
            *coordinator_cmd(),
            "serve",
            "--node-id",
            f"n{i}",
            "--raft",
            rafts[i],
            "--peers",
            ",".join(r for r in rafts if r != rafts[i]),
            "--http",
            https[i],
            "--data-dir",
            str(data_dir),
            "--config",
            str(config_path),
            *extra,
        ]
        cluster.nodes.append(Node(i, f"n{i}", rafts[i], https[i], data_dir, args, root / f"node{i}.log"))
    return cluster


#: Short TTL so expiry tests take about two seconds; the grace period is short for the same reason.
FAST_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 1500,
            "window_bars": 15,
            "max_attempts": 3,
            "retry_backoff_ms": 200,
        }
    },
    "coordinator": {"leader_grace_ms": 300, "reap_interval_ms": 100, "max_body_bytes": 4096},
}


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    retry_s: float = 10.0,
) -> tuple[int, Any]:
    """One API call: (status, decoded JSON body).

    Like the real client it retries 502/503/504 and connection errors (an election under a loaded machine) for up
    to ``retry_s`` with the same X-Client-Id/X-Request-Id, so a retried write is applied once.
    """
    sent = {"X-Client-Id": "testkit", "X-Request-Id": f"r{random.getrandbits(64):x}", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body} if body is not None else {}
    if raw is not None:
        sent.setdefault("Content-Type", "application/json")  # what a JSON client sends (a bare POST is refused)
    deadline = time.monotonic() + retry_s
    while True:
        try:
            async with session.request(method, url, headers=sent, **kwargs) as answer:
                text = await answer.text()
                status = answer.status
        except (aiohttp.ClientConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        if status in (502, 503, 504) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            continue
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text
