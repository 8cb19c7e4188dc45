"""Fixtures of the coordinator tests; the cluster helpers live in the harness (devkit.cluster)."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import pytest

from coordinator._memory import ManualClock
from devkit.cluster import FAST_CONFIG, Cluster, make_cluster

#: Each test's reports by phase (setup, call, teardown), so fixtures can tell at teardown whether it failed.
_REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """Keep each phase's report on the test item."""
    report = yield
    item.stash.setdefault(_REPORTS, {})[report.when] = report
    return report


@pytest.fixture
def cluster_factory(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Cluster]]:
    """Build and start clusters; all of them are killed (kill -9) at teardown. When the test failed, the node logs'
    tails are printed (pytest shows them with the failure) and the cluster's folder is kept; else it is removed."""
    made: list[Cluster] = []

    def factory(size: int = 3, config: dict[str, Any] | None = None, **kwargs: Any) -> Cluster:
        cluster = make_cluster(tmp_path_factory.mktemp("cluster"), size, config or FAST_CONFIG, **kwargs)
        made.append(cluster)
        for i in range(size):
            cluster.start(i)
        return cluster

    yield factory
    failed = any(report.failed for report in request.node.stash.get(_REPORTS, {}).values())
    for cluster in made:
        cluster.kill_all()
        if failed:
            print(f"cluster kept in {cluster.root}\n{cluster.logs()}")
        else:
            shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture
async def clock() -> ManualClock:
    """A manual clock for in-process node tests (``coordinator._memory``)."""
    return ManualClock()


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
