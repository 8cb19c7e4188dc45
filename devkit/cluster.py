"""Real ``coordinator serve`` clusters on loopback: N processes, their addresses, logs and leader.

Each cluster gets its own 127.0.0.x address, free ports and data dirs under its root; the argv of every node
comes from devkit.launcher.

Rules:
1. ``make_cluster`` only writes files and plans the nodes; ``start`` spawns, ``kill``/``kill_all`` kill -9 and
   reap. The owner (a fixture, a bench, the chaos environment) kills everything at teardown.
2. Every process runs in its own session, so a kill takes its whole group.
3. Waits poll with deadlines (devkit.polling).
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import urllib.error
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devkit.launcher import peers_of, serve_argv
from devkit.polling import http_json, wait_for
from devkit.ports import free_ports

__all__ = ["FAST_CONFIG", "MIN", "SERIES", "Cluster", "Node", "make_cluster", "with_fd_limit"]

#: A series the cluster tests submit, and one minute in ms (its bar).
SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000

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


def with_fd_limit(args: list[str], nofile: int) -> list[str]:
    """``args`` run with their file-descriptor limit (soft and hard) lowered to ``nofile``, like ``ulimit -n``."""
    code = (
        "import os, resource, sys; n = int(sys.argv[1]); "
        "resource.setrlimit(resource.RLIMIT_NOFILE, (n, n)); os.execv(sys.argv[2], sys.argv[2:])"
    )
    return [sys.executable, "-c", code, str(nofile), *args]


@dataclass
class Node:
    """One planned coordinator process: its addresses, data dir, argv, log and (once started) process."""

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
        """The node's HTTP base URL."""
        return f"http://{self.http}"

    @property
    def alive(self) -> bool:
        """Whether the node's process runs."""
        return self.proc is not None and self.proc.poll() is None


@dataclass
class Cluster:
    """N coordinator processes on one loopback address."""

    root: Path
    nodes: list[Node] = field(default_factory=list)
    token: str | None = None

    def start(self, index: int) -> None:
        """Spawn node ``index``, appending its output to its log."""
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
        """kill -9 every node."""
        for i in range(len(self.nodes)):
            self.kill(i)

    @property
    def urls(self) -> list[str]:
        """Every node's HTTP base URL, in index order."""
        return [n.url for n in self.nodes]

    def view(self, index: int) -> dict[str, Any] | None:
        """Node ``index``'s ``/v1/cluster`` answer, or None when it did not answer 200."""
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
        """Wait until every live node agrees on one leader; return its index."""
        return int(wait_for(lambda: (i := self.leader_index()) is not None and i + 1, timeout_s, "a leader")) - 1

    def logs(self) -> str:
        """The tail of every node's log, for failure messages."""
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
    ports = free_ports(2 * size, host)
    rafts = [f"{host}:{port}" for port in ports[:size]]
    https = [f"{host}:{port}" for port in ports[size:]]
    token_file = secret_file = None
    if token_lines:
        token_file = root / "tokens.txt"
        token_file.write_text("\n".join(token_lines) + "\n", encoding="utf-8")
    if secret:
        secret_file = root / "secret.txt"
        secret_file.write_text(secret + "\n", encoding="utf-8")
    cluster = Cluster(root)
    for i in range(size):
        data_dir = root / f"node{i}"
        args = serve_argv(
            node_id=f"n{i}",
            raft=rafts[i],
            peers=peers_of(rafts, i),
            http=https[i],
            data_dir=data_dir,
            config=config_path,
            token_file=token_file,
            cluster_secret_file=secret_file,
        )
        cluster.nodes.append(Node(i, f"n{i}", rafts[i], https[i], data_dir, args, root / f"node{i}.log"))
    return cluster
