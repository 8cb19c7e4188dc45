"""A storage password stays out of `ps`: `worker run --storage-file` reads the DSN from a file (or
$SEAMLESS_STORAGE_DSN), a password typed on the command line is warned about, and `--autoscale` children get the
DSN through the environment, never their argv (issue 21)."""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path

import pytest

from devkit.cluster import Cluster
from devkit.polling import wait_for
from devkit.workers import WorkerPool
from provider.storage import open_storage

from .test_verify_cli import cli

pytestmark = [pytest.mark.cluster, pytest.mark.questdb]

MIN_MS = 60_000


def command_lines(pgid: int) -> list[bytes]:
    """The argv of every live process in process group ``pgid`` (a worker, or a supervisor and its children)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                found.append((stat.parent / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue
    return found


def stored_bars(dsn: str, series: str, end_ms: int) -> int:
    async def count() -> int:
        storage = await open_storage(dsn)
        try:
            return len(await storage.read(series, 0, end_ms))
        finally:
            await storage.aclose()

    return asyncio.run(count())


def test_a_worker_takes_its_storage_dsn_from_a_file(
    work_cluster: Cluster, pool: WorkerPool, questdb: object, tmp_path: Path
) -> None:
    """--storage-file wins over --storage: the bars land in the file's QuestDB, not in the decoy, and no process
    of the worker shows the password."""
    dsn = f"{questdb.dsn}&table=secret_{secrets.token_hex(3)}"  # type: ignore[attr-defined]
    assert "admin:quest@" in dsn
    secret = tmp_path / "storage.dsn"
    secret.write_text(f"# mounted secret\n\n{dsn}\n", encoding="utf-8")
    pool.storage = f"sqlite:///{tmp_path / 'decoy.db'}"
    worker = pool.start("w-file", "--storage-file", str(secret))
    assert worker.proc is not None
    assert all(b"admin:quest" not in argv for argv in command_lines(worker.proc.pid))
    series = "ohlcv:synthetic:SEC/USD:1m"
    done = cli("backfill", "--coordinator", ",".join(work_cluster.urls), series, "0", str(30 * MIN_MS), "--wait")
    assert done.returncode == 0, done.stderr
    assert stored_bars(dsn, series, 30 * MIN_MS) == 30
    assert not (tmp_path / "decoy.db").exists()


def test_pool_children_get_the_dsn_through_the_environment(
    work_cluster: Cluster, pool: WorkerPool, questdb: object
) -> None:
    """A password given on the supervisor's command line is warned about, and its children's argv holds none
    (they read $SEAMLESS_STORAGE_DSN); the children still write where the supervisor was told."""
    dsn = f"{questdb.dsn}&table=secret_{secrets.token_hex(3)}"  # type: ignore[attr-defined]
    pool.storage = dsn
    supervisor = pool.start("w-pool", "--autoscale", "1:1")
    assert supervisor.proc is not None
    pgid = supervisor.proc.pid
    wait_for(lambda: len(command_lines(pgid)) >= 2, 30, "a pool child")
    children = [argv for argv in command_lines(pgid) if b"--autoscale" not in argv]
    assert children and all(b"admin:quest" not in argv and b"--storage" not in argv for argv in children)
    assert "worker.password_on_command_line" in supervisor.log()
    series = "ohlcv:synthetic:POOL/USD:1m"
    done = cli("backfill", "--coordinator", ",".join(work_cluster.urls), series, "0", str(30 * MIN_MS), "--wait")
    assert done.returncode == 0, done.stderr
    assert stored_bars(dsn, series, 30 * MIN_MS) == 30
