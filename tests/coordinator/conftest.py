"""Fixtures of the coordinator tests; the cluster helpers live in the harness (devkit.cluster)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from devkit.cluster import FAST_CONFIG, Cluster, make_cluster


@pytest.fixture
def cluster_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Cluster]]:
    """Build and start clusters; all of them are killed (kill -9) at teardown, logs shown on failure."""
    made: list[Cluster] = []

    def factory(size: int = 3, config: dict[str, Any] | None = None, **kwargs: Any) -> Cluster:
        cluster = make_cluster(tmp_path_factory.mktemp("cluster"), size, config or FAST_CONFIG, **kwargs)
        made.append(cluster)
        for i in range(size):
            cluster.start(i)
        return cluster

    yield factory
    for cluster in made:
        cluster.kill_all()
        shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One 3-node cluster shared by the non-destructive cluster tests."""
    cluster = make_cluster(tmp_path_factory.mktemp("shared"), 3, FAST_CONFIG)
    for i in range(3):
        cluster.start(i)
    try:
        cluster.wait_leader()
        yield cluster
    finally:
        cluster.kill_all()


@pytest.fixture
async def http() -> Any:
    """An aiohttp session for one test."""
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session
