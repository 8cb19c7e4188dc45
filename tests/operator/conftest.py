"""Fixtures of the operator tests (lease_recover.py, the status page, docker-compose.yml).

The cluster helpers come from ``tests/coordinator/coordinator_testkit.py`` (put on sys.path here, like the
coordinator tests do) and ``operator_kit.py``. One auth-enabled 3-node cluster serves every test of this package;
each test works on its own series and submits its jobs with a priority above every earlier job, so its claims take
its own windows.
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "coordinator"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "e2e"))  # e2e_kit: workers, the loopback exchange

from coordinator_testkit import make_cluster
from operator_kit import OPERATOR_CONFIG, OPERATOR_TOKEN, READER_TOKEN, WORKER_TOKEN, Ops


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
