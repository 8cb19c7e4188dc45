"""Fixtures of the end-to-end tests: a 3-node coordinator cluster, the loopback exchange, QuestDB and workers."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from devkit.cluster import Cluster, make_cluster
from devkit.workers import Exchange, WorkerPool

#: Lease TTL of 3 s: expiry scenarios take seconds; window of 500 1m bars = one exchange request.
E2E_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 3000,
            "window_bars": 500,
            "max_attempts": 8,
            "retry_backoff_ms": 100,
            "jitter_ratio": 0.25,
        }
    },
    "coordinator": {"leader_grace_ms": 500, "reap_interval_ms": 100},
    "worker": {
        "claim_wait_ms": 500,
        "shutdown_grace_ms": 3000,
        "autoscale_interval_ms": 300,
        "autoscale_windows_per_worker": 4,
    },
}


@pytest.fixture
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A started 3-node cluster with a leader."""
    made = make_cluster(tmp_path_factory.mktemp("e2e-cluster"), 3, E2E_CONFIG)
    for i in range(3):
        made.start(i)
    try:
        made.wait_leader(30)
        yield made
    finally:
        made.kill_all()
        shutil.rmtree(made.root, ignore_errors=True)


@pytest.fixture
def exchange() -> Iterator[Exchange]:
    """The loopback Binance exchange (seed 7, 1% deterministic gaps), bans of 2 s after 4 ignored 429s."""
    # tolerance: requests already in flight when a 429 is sent arrive "during" its cooldown; not a misbehaviour.
    ex = Exchange.start("--seed", "7", "--gaps", "0.01", "--ban-s", "2", "--tolerance", "4")
    try:
        yield ex
    finally:
        ex.stop()


@pytest.fixture
def storage_dsn(questdb: Any) -> str:
    """A QuestDB DSN with a table of this test's own."""
    return f"{questdb.dsn}&table=e2e_{secrets.token_hex(4)}"


@pytest.fixture
def pool(tmp_path: Path, cluster: Cluster, exchange: Exchange, storage_dsn: str) -> Iterator[WorkerPool]:
    """Starts workers on the cluster, exchange and storage above; all are killed at teardown."""
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(E2E_CONFIG), encoding="utf-8")
    made = WorkerPool(tmp_path, cluster.urls, f"binance:{exchange.url}?timeout_s=1", storage_dsn, config)
    try:
        yield made
    finally:
        made.kill_all()
