"""Fixtures of the API fuzz tests: one 3-node cluster for the whole module, killed at teardown."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from typing import Any

import pytest

from devkit.cluster import Cluster, make_cluster

FUZZ_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 60_000, "window_bars": 60}},
    "coordinator": {
        "max_claim_wait_ms": 200,
        "max_body_bytes": 16_384,
        "max_windows_per_job": 5_000,
        "leader_grace_ms": 500,
    },
}


@pytest.fixture(scope="module")
def fuzz_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A started 3-node cluster with a leader and bearer auth (``cluster.token`` is an operator token)."""
    token = secrets.token_hex(16)
    cluster = make_cluster(
        tmp_path_factory.mktemp("fuzz-cluster"), 3, FUZZ_CONFIG, token_lines=[f"{token} operator fuzzer"]
    )
    cluster.token = token
    for i in range(3):
        cluster.start(i)
    try:
        cluster.wait_leader(30)
        yield cluster
    finally:
        cluster.kill_all()
        shutil.rmtree(cluster.root, ignore_errors=True)
