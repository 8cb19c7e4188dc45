"""Fixtures shared by the whole test suite: real QuestDB and PostgreSQL servers on loopback.

Rules:
1. A server starts only when a test asks for it, lives for the whole session and always stops at its end
   (servers come from devkit.services; `bash scripts/install_test_deps.sh` installs what they need).
2. SEAMLESS_TEST_QUESTDB_DSN / SEAMLESS_TEST_POSTGRES_DSN point the fixtures at servers already running
   (`python -m devkit.services questdb` prints the line to export); the fixture then yields an endpoint with
   the same attributes (``dsn``, ``pg_dsn``, ``ilp_conf``, ``http_port``, ...) and owns nothing.
3. Tests share one server per session: each test creates its own uniquely named tables and never restarts it.
4. Fixtures other packages share go here; fixtures of one package go in that package's conftest.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from devkit import services as devservices

QUESTDB_DSN_ENV = "SEAMLESS_TEST_QUESTDB_DSN"
POSTGRES_DSN_ENV = "SEAMLESS_TEST_POSTGRES_DSN"

QuestDB = devservices.QuestDBServer | devservices.QuestDBEndpoint
Postgres = devservices.PostgresServer | devservices.PostgresEndpoint


@pytest.fixture(scope="session")
def questdb() -> Iterator[QuestDB]:
    """A running QuestDB: the one named by SEAMLESS_TEST_QUESTDB_DSN, else one started from its jar."""
    dsn = os.environ.get(QUESTDB_DSN_ENV)
    if dsn:
        yield devservices.QuestDBEndpoint.from_dsn(dsn)
        return
    with devservices.QuestDBServer(
        jvm_options=devservices.QUESTDB_TEST_JVM_OPTIONS, extra_conf=devservices.QUESTDB_TEST_CONF
    ) as server:
        yield server


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running PostgreSQL: the one named by SEAMLESS_TEST_POSTGRES_DSN, else a throw-away cluster."""
    dsn = os.environ.get(POSTGRES_DSN_ENV)
    if dsn:
        yield devservices.PostgresEndpoint.from_dsn(dsn)
        return
    with devservices.PostgresServer() as server:
        yield server
