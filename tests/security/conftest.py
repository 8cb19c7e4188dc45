"""Fixtures of the security tests: a 3-node cluster with bearer tokens of every role and a cluster secret."""

from __future__ import annotations

import secrets
import shutil
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from devkit.cluster import Cluster, make_cluster

from .security_kit import SECURE_CONFIG


@dataclass
class Secured:
    """A running cluster and the secrets it was started with."""

    cluster: Cluster
    tokens: dict[str, str]  # role -> token
    secret: str

    @property
    def leader(self) -> int:
        return self.cluster.wait_leader(30)

    @property
    def follower(self) -> int:
        leader = self.leader
        return next(i for i in range(3) if i != leader)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    """A started 3-node cluster with reader/worker/operator tokens and a cluster secret (one per test module)."""
    tokens = {role: secrets.token_hex(16) for role in ("reader", "worker", "operator")}
    secret = secrets.token_urlsafe(32)
    cluster = make_cluster(
        tmp_path_factory.mktemp("secure"),
        3,
        SECURE_CONFIG,
        token_lines=[f"{token} {role} sec-{role}" for role, token in tokens.items()],
        secret=secret,
    )
    cluster.token = tokens["operator"]
    for i in range(3):
        cluster.start(i)
    try:
        cluster.wait_leader(30)
        yield Secured(cluster, tokens, secret)
    finally:
        cluster.kill_all()
        shutil.rmtree(cluster.root, ignore_errors=True)
