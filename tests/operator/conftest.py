"""Fixtures of the operator tests (lease_recover.py, the status page, docker-compose.yml).

The cluster and worker helpers come from the harness (devkit.cluster, devkit.workers) and ``operator_kit.py``.
One auth-enabled 3-node cluster serves every test of this package; each test works on its own series and submits
its jobs with a priority above every earlier job, so its claims take its own windows.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.cluster import Cluster, make_cluster
from devkit.workers import WorkerPool

from .operator_kit import OPERATOR_CONFIG, OPERATOR_TOKEN, READER_TOKEN, WORKER_TOKEN, Ops


@pytest.fixture(scope="session")
def ops(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Ops]:
    """One auth-enabled 3-node cluster for the operator tests; killed (kill -9) at the end of the session."""
    root = tmp_path_factory.mktemp("operator-cluster")
    cluster = make_cluster(
        root,
        3,
        OPERATOR_CONFIG,
        token_lines=[f"{OPERATOR_TOKEN} operator ops", f"{WORKER_TOKEN} worker pool", f"{READER_TOKEN} reader page"],
    )
    cluster.token = READER_TOKEN
    files = {}
    for role, token in (("operator", OPERATOR_TOKEN), ("worker", WORKER_TOKEN), ("reader", READER_TOKEN)):
        files[role] = root / f"{role}.token"
        files[role].write_text(f"# {role} token\n{token}\n", encoding="utf-8")
    try:
        for i in range(3):
            cluster.start(i)
        cluster.wait_leader(timeout_s=30.0)
        yield Ops(cluster, files)
    finally:
        cluster.kill_all()
        shutil.rmtree(root, ignore_errors=True)


#: Short leases and few attempts: the worker tests finish in seconds.
WORK_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 3_000,
            "window_bars": 15,
            "max_attempts": 2,
            "retry_backoff_ms": 100,
        }
    },
    "coordinator": {"leader_grace_ms": 300, "reap_interval_ms": 100},
    "worker": {"claim_wait_ms": 500, "shutdown_grace_ms": 2_000},
}


@pytest.fixture(scope="module")
def work_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-node cluster without auth for the tests that run `worker run` (backfill, verify): one per module,
    because its workers claim every window."""
    made = make_cluster(tmp_path_factory.mktemp("backfill-cluster"), 3, WORK_CONFIG)
    for i in range(3):
        made.start(i)
    try:
        made.wait_leader(30)
        yield made
    finally:
        made.kill_all()
        shutil.rmtree(made.root, ignore_errors=True)


@pytest.fixture
def pool(tmp_path: Path, work_cluster: Cluster) -> Iterator[WorkerPool]:
    """A factory of workers on the module's cluster with storage ``tmp_path/bars.db``; all killed at teardown."""
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(WORK_CONFIG), encoding="utf-8")
    made = WorkerPool(tmp_path, work_cluster.urls, "synthetic", f"sqlite:///{tmp_path / 'bars.db'}", config)
    try:
        yield made
    finally:
        made.kill_all()
