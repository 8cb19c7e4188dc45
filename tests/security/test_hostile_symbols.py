"""Hostile series symbols (quotes, ``;``, ``--``, SQL text, format placeholders, unicode) travel from a job
through the coordinator and a worker into SQLite, QuestDB and PostgreSQL verbatim: the stored series keys and bars
equal the input, and a canary table the symbols try to drop is intact."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from pathlib import Path
from typing import Any

import asyncpg
import pandas as pd
import pytest
import yaml

from devkit.polling import http_json, wait_for
from devkit.workers import WorkerPool
from provider.sources import open_source
from provider.storage import open_storage

from .security_kit import SECURE_CONFIG

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(180)]

HOUR_MS = 3_600_000
SEED = 11


def hostile_symbols(canary: str) -> list[str]:
    return [
        f"X'; DROP TABLE {canary}; --/USDT",
        f"'); DROP TABLE {canary};--",
        'QU"OTE/US"DT',
        "semi;colon -- comment /* c */",
        "back\\slash\\'/USDT",
        "%s %d {} $1 ? :name",
        "ビットコイン/円",
        "ÉTH/€UR 🚀",
        "a:b:c/USDT",
    ]


async def _canary(backend: str, target: Any, name: str, *, create: bool) -> list[Any]:
    """Create the canary table with one row, or read it back."""
    if backend == "sqlite":
        with sqlite3.connect(target) as db:
            if create:
                db.execute(f"CREATE TABLE {name} (v TEXT)")
                db.execute(f"INSERT INTO {name} VALUES ('alive')")
            return [row[0] for row in db.execute(f"SELECT v FROM {name}")]
    conn = await asyncpg.connect(target)
    try:
        if create:
            await conn.execute(f"CREATE TABLE {name} (v {'STRING' if backend == 'questdb' else 'text'})")
            await conn.execute(f"INSERT INTO {name} VALUES ('alive')")
        return [row[0] for row in await conn.fetch(f"SELECT v FROM {name}")]
    finally:
        await conn.close()


async def _stored_series(backend: str, target: Any, table: str) -> set[str]:
    """The series keys as the database itself holds them."""
    if backend == "sqlite":
        with sqlite3.connect(target) as db:
            return {row[0] for row in db.execute(f'SELECT series FROM "{table}_series"')}
    conn = await asyncpg.connect(target)
    try:
        query = f'SELECT series FROM "{table}_series"'
        if backend == "questdb":  # one SYMBOL column, no series table
            query = f'SELECT DISTINCT series FROM "{table}"'
        return {row[0] for row in await conn.fetch(query)}
    finally:
        await conn.close()


async def _read_back(dsn: str, series: list[str], end: int) -> None:
    source = open_source(f"synthetic:{SEED}")
    storage = await open_storage(dsn)
    try:
        for name in series:
            expected = await source.fetch(name, 0, end)
            assert len(expected) == end // 60_000
            pd.testing.assert_frame_equal(await storage.read(name, 0, end), expected)
            assert await storage.coverage(name) == [(0, end)]
    finally:
        await storage.aclose()
        await source.aclose()


def _target(backend: str, request: pytest.FixtureRequest, tmp_path: Path, table: str) -> tuple[str, Any]:
    """(worker DSN, what the canary helpers connect to) for one backend."""
    if backend == "sqlite":
        path = tmp_path / "hostile.db"
        return f"sqlite:///{path}?table={table}", str(path)
    server = request.getfixturevalue(backend)
    if backend == "questdb":
        return f"{server.dsn}&table={table}", server.pg_dsn
    return f"{server.dsn}?table={table}", server.dsn


@pytest.mark.parametrize("backend", ["sqlite", "questdb", "postgres"])
def test_hostile_symbols_are_stored_verbatim(secured, backend, request, tmp_path):
    """Jobs of hostile symbols complete through a worker; the database holds exactly those series keys and bars,
    and the canary table named in the symbols' DROP TABLE text still has its row."""
    tag = secrets.token_hex(4)
    table, canary = f"hostile_{tag}", f"canary_{tag}"
    dsn, target = _target(backend, request, tmp_path, table)
    assert asyncio.run(_canary(backend, target, canary, create=True)) == ["alive"]
    cluster, tokens = secured.cluster, secured.tokens
    url = cluster.nodes[secured.follower].url
    end = 2 * HOUR_MS  # two windows of 60 bars per series
    series = [f"ohlcv:{backend}:{symbol}:1m" for symbol in hostile_symbols(canary)]
    jobs = []
    for name in series:
        status, body = http_json(
            "POST", url + "/v1/jobs", {"series": name, "start": 0, "end": end}, token=tokens["worker"]
        )
        assert status == 201 and body["job"]["series"] == name, body
        jobs.append(body["job"]["job_id"])
    (tmp_path / "token.txt").write_text(tokens["worker"] + "\n", encoding="utf-8")
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(SECURE_CONFIG), encoding="utf-8")
    pool = WorkerPool(tmp_path, cluster.urls, f"synthetic:{SEED}", dsn, config)
    try:
        pool.start(f"hostile-{backend}", "--token-file", str(tmp_path / "token.txt"), concurrency=4)

        def all_done() -> bool:
            states = [http_json("GET", url + f"/v1/jobs/{j}", token=tokens["reader"])[1]["job"] for j in jobs]
            return all(job["state"] == "done" and job["completion_ratio"] == 1.0 for job in states)

        wait_for(all_done, 90, "the hostile jobs", interval_s=0.2)
    finally:
        pool.kill_all()
    asyncio.run(_read_back(dsn, series, end))
    assert asyncio.run(_stored_series(backend, target, table)) == set(series)
    assert asyncio.run(_canary(backend, target, canary, create=False)) == ["alive"]
