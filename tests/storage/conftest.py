"""Fixtures for the storage tests: one ``storage_dsn`` per backend, each test on fresh tables.

The real servers are the session fixtures ``questdb`` and ``postgres`` of tests/conftest.py; tests that must
restart or reconfigure a server start their own from devkit.services (``private_questdb``).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from devkit import services as devservices
from provider.frames import frame_from_arrays

BACKENDS = [
    pytest.param("memory", id="memory"),
    pytest.param("sqlite", id="sqlite"),
    pytest.param("postgres", id="postgres", marks=pytest.mark.postgres),
    pytest.param("questdb", id="questdb", marks=pytest.mark.questdb),
    # The same server with every bar read served by the HTTP Parquet export instead of the PG wire.
    pytest.param("questdb_parquet", id="questdb_parquet", marks=pytest.mark.questdb),
]
_TABLE_NUMBERS = itertools.count(1)


@pytest.fixture(scope="module")
def private_questdb() -> Iterator[Any]:
    """A QuestDB of this module alone, in dev mode (``ALTER TABLE t SUSPEND WAL`` allowed); tests may restart it."""
    server = devservices.QuestDBServer(extra_conf={**devservices.QUESTDB_TEST_CONF, "dev.mode.enabled": "true"})
    server.start()
    try:
        yield server
    finally:
        server.close()


def unique_table() -> str:
    """A table name no other test in this session uses."""
    return f"t{next(_TABLE_NUMBERS)}_{np.random.default_rng().integers(1 << 30):x}"


def with_option(dsn: str, option: str) -> str:
    """``dsn`` with one more query option."""
    return f"{dsn}{'&' if '?' in dsn else '?'}{option}"


def backend_dsn(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> str:
    """A DSN of ``kind`` on tables no other test touches."""
    if kind == "memory":
        return "memory://"
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'store.db'}"
    if kind == "questdb_parquet":
        server = request.getfixturevalue("questdb")
        return with_option(server.dsn, f"table={unique_table()}&parquet_min_bars=0")
    server = request.getfixturevalue(kind)
    return with_option(server.dsn, f"table={unique_table()}")


@pytest.fixture(params=BACKENDS)
def storage_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DSN for each backend (memory, sqlite, postgres, questdb, questdb read over Parquet), on fresh tables."""
    return backend_dsn(request, request.param, tmp_path)


@pytest.fixture(params=BACKENDS[1:])
def shared_dsn(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A DSN for each backend that several storage objects can open together (all but memory://)."""
    return backend_dsn(request, request.param, tmp_path)


MINUTE_MS = 60_000


def _bars(
    start_ms: int, count: int, *, step_ms: int = MINUTE_MS, seed: int = 0, skip: tuple[int, ...] = ()
) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    keep = np.setdiff1d(np.arange(count), np.asarray(skip, dtype=np.int64))
    prices = rng.uniform(1.0, 100_000.0, size=(5, len(keep)))
    return frame_from_arrays(start_ms + keep * step_ms, *prices)


@pytest.fixture
def make_bars() -> Any:
    """``make_bars(start_ms, count, step_ms=60000, seed=0, skip=())``: a contract frame of random bars."""
    return _bars


@pytest.fixture
def fresh_table() -> str:
    """A table name no other test in this session uses."""
    return unique_table()
