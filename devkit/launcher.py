"""The command lines of ``coordinator serve`` and ``worker run``: the one place the harness spells them.

Tests (devkit.cluster, devkit.workers, tests/chaos), benchmarks and the demo all build their processes' argv
here, so a renamed flag is changed once.

Rules:
1. Functions only build argument lists; they start nothing and read no environment.
2. The installed console script is used when it sits beside the running interpreter, else ``python -m``.
3. Optional flags are passed only when given, so a process gets the CLI's own defaults otherwise.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["coordinator_cmd", "peers_of", "serve_argv", "worker_argv", "worker_cmd"]

#: Where the running interpreter's console scripts live (the virtualenv's bin/).
BIN = Path(sys.executable).parent


def coordinator_cmd() -> list[str]:
    """The installed ``coordinator`` console script, or ``python -m coordinator`` when the script is missing."""
    script = BIN / "coordinator"
    return [str(script)] if script.exists() else [sys.executable, "-m", "coordinator"]


def worker_cmd() -> list[str]:
    """The installed ``worker`` console script, or ``python -m worker.cli`` when the script is missing."""
    script = BIN / "worker"
    return [str(script)] if script.exists() else [sys.executable, "-m", "worker.cli"]


def peers_of(rafts: Sequence[str], index: int) -> list[str]:
    """The Raft addresses of every node but ``index``: its ``--peers``."""
    return [raft for i, raft in enumerate(rafts) if i != index]


def _optional(pairs: Sequence[tuple[str, object | None]]) -> list[str]:
    """``[flag, str(value)]`` for each pair whose value is not None."""
    argv: list[str] = []
    for flag, value in pairs:
        if value is not None:
            argv += [flag, str(value)]
    return argv


def serve_argv(
    *,
    node_id: str,
    raft: str,
    peers: Sequence[str],
    http: str,
    data_dir: Path,
    config: Path | None = None,
    token_file: Path | None = None,
    cluster_secret_file: Path | None = None,
    log_level: str | None = None,
    prefix: Sequence[str] = (),
    extra: Sequence[str] = (),
) -> list[str]:
    """``coordinator serve`` for one node of a cluster; ``prefix`` runs it under a wrapper (``ip netns exec``)."""
    return [
        *prefix,
        *coordinator_cmd(),
        "serve",
        "--node-id",
        node_id,
        "--raft",
        raft,
        "--peers",
        ",".join(peers),
        "--http",
        http,
        "--data-dir",
        str(data_dir),
        *_optional(
            [
                ("--config", config),
                ("--token-file", token_file),
                ("--cluster-secret-file", cluster_secret_file),
                ("--log-level", log_level),
            ]
        ),
        *extra,
    ]


def worker_argv(
    *,
    coordinators: Sequence[str],
    source: str,
    storage: str,
    worker_id: str | None = None,
    concurrency: int | None = None,
    autoscale: str | None = None,
    config: Path | None = None,
    metrics_port: int | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    """``worker run`` against the cluster at ``coordinators`` (one process, or a supervisor with ``autoscale``)."""
    return [
        *worker_cmd(),
        "run",
        "--coordinator",
        ",".join(coordinators),
        "--source",
        source,
        "--storage",
        storage,
        *_optional(
            [
                ("--worker-id", worker_id),
                ("--concurrency", concurrency),
                ("--autoscale", autoscale),
                ("--config", config),
                ("--metrics-port", metrics_port),
            ]
        ),
        *extra,
    ]
