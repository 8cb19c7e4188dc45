"""`coordinator backfill` against a real 3-node cluster and `worker run` daemons: progress, exit codes, JSON,
failed windows with the retry command, Ctrl-C, usage errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from devkit.cluster import Cluster
from devkit.polling import http_json, wait_for
from devkit.workers import Exchange, WorkerPool
from ops.backfill import backfill
from provider.storage import open_storage

COORDINATOR = Path(sys.executable).parent / "coordinator"
HOUR_MS = 3_600_000


def run_cli(cluster: Cluster, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
    """The installed `coordinator backfill` command, as an operator runs it."""
    return subprocess.run(
        [str(COORDINATOR), "backfill", "--coordinator", ",".join(cluster.urls), *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.mark.cluster
async def test_wait_shows_progress_exits_0_and_every_bar_is_stored(
    work_cluster: Cluster, pool: WorkerPool, tmp_path: Path
) -> None:
    """Two series with --wait: bars per series and in total on stderr, exit 0, all 2 x 120 bars in storage."""
    pool.start("w-synth")
    series = ["ohlcv:synthetic:BTC/USDT:USDT:1m", "ohlcv:synthetic:ETH/USDT:1m"]
    done = run_cli(work_cluster, *series, "1970-01-01T00:00", str(2 * HOUR_MS), "--wait", "--poll-interval", "0.1")
    assert done.returncode == 0, done.stdout + done.stderr
    for name in (*series, "total", "bars_per_s", "win"):
        assert name in done.stderr, name
    summary = done.stdout.splitlines()
    assert len(summary) == 2 and all(": done, 8 windows done, 0 failed" in line for line in summary), summary
    storage = await open_storage(f"sqlite:///{tmp_path / 'bars.db'}")
    try:
        for key in series:
            frame = await storage.read(key, 0, 2 * HOUR_MS)
            assert len(frame) == 120, key
            assert await storage.coverage(key) == [(0, 2 * HOUR_MS)]
    finally:
        await storage.aclose()


@pytest.mark.cluster
def test_failed_windows_exit_1_with_the_list_and_the_retry_command(work_cluster: Cluster, pool: WorkerPool) -> None:
    """A symbol the exchange does not list fails its windows: exit 1, the windows listed, the retry command shown;
    --json says the same for scripts."""
    exchange = Exchange.start("--seed", "3")
    try:
        pool.source = f"binance:{exchange.url}?timeout_s=5"
        pool.start("w-exchange")
        args = ["ohlcv:binance:BTC/USDT:1m", "ohlcv:binance:NOPE/USDT:1m", "0", str(HOUR_MS), "--wait"]
        done = run_cli(work_cluster, *args)
        assert done.returncode == 1, done.stdout + done.stderr
        out = done.stdout
        assert "ohlcv:binance:BTC/USDT:1m: done, 4 windows done, 0 failed" in out
        assert "ohlcv:binance:NOPE/USDT:1m: failed, 0 windows done, 4 failed" in out
        failed_job = next(line.split()[0] for line in out.splitlines() if "NOPE/USDT" in line)
        listed = [line.split() for line in out.split(f"failed windows of {failed_job}:", 1)[1].splitlines()[1:5]]
        assert [row[1] for row in listed] == [
            "1970-01-01T00:00:00Z",
            "1970-01-01T00:15:00Z",
            "1970-01-01T00:30:00Z",
            "1970-01-01T00:45:00Z",
        ], out
        assert all(row[0].startswith("w_") for row in listed)
        assert f"lease_recover.py --coordinator {','.join(work_cluster.urls)} retry {failed_job}" in out

        # The same jobs again (identical: the cluster answers with them) as JSON.
        again = run_cli(work_cluster, *args, "--json")
        assert again.returncode == 1
        document = json.loads(again.stdout)
        by_series = {job["series"]: job for job in document["jobs"]}
        assert document["exit_code"] == 1 and by_series["ohlcv:binance:NOPE/USDT:1m"]["job_id"] == failed_job
        assert len(by_series["ohlcv:binance:NOPE/USDT:1m"]["failed_windows"]) == 4
        assert by_series["ohlcv:binance:BTC/USDT:1m"]["state"] == "done"
        assert by_series["ohlcv:binance:BTC/USDT:1m"]["failed_windows"] == []
        assert document["retry_command"].endswith(f"retry {failed_job}")
    finally:
        exchange.stop()


@pytest.mark.cluster
def test_ctrl_c_exits_130_and_leaves_the_job_running(work_cluster: Cluster) -> None:
    """SIGINT while waiting: exit 130, the message names the job, and the job is still running on the cluster; also
    when the command was started with SIGINT ignored (a background job of a non-interactive shell, as under CI)."""
    proc = subprocess.Popen(
        [
            str(COORDINATOR),
            "backfill",
            "--coordinator",
            ",".join(work_cluster.urls),
            "ohlcv:synthetic:CTRL/C:1m",
            "0",
            str(1000 * HOUR_MS),
            "--wait",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        assert first.startswith("submitted job-"), first
        job_id = first.split()[1].rstrip(":")
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == 130, err
        assert f"interrupted: the jobs keep running on the cluster: {job_id}" in err
        status, answer = http_json("GET", f"{work_cluster.urls[0]}/v1/jobs/{job_id}")
        assert status == 200 and answer["job"]["state"] == "running"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()  # reaps it and closes its pipes
        wait_for(lambda: http_json("DELETE", f"{work_cluster.urls[0]}/v1/jobs/{job_id}")[0] == 200, 30, "cancel")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ohlcv:x:BTC/USDT:7m", "0", "60000"], "'ohlcv:x:BTC/USDT:7m' is not a series key"),
        (["ohlcv:x:BTC/USDT:1m", "yesterday", "60000"], "'yesterday' is not a time"),
        (["ohlcv:x:BTC/USDT:1m", "60000", "0"], "START '60000' (60000) must be before END '0' (0)"),
        (["0", "60000"], "need SERIES... START END"),
    ],
    ids=["bad-series", "bad-time", "reversed", "no-series"],
)
def test_usage_errors_exit_2_naming_the_value(args: list[str], message: str) -> None:
    """Bad input exits 2 with a message naming the value and what is allowed, and no traceback."""
    result = CliRunner().invoke(backfill, ["--coordinator", "http://127.0.0.1:1", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_no_coordinator_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without --coordinator or $SEAMLESS_COORDINATOR_URL the command exits 2 saying which to give."""
    monkeypatch.delenv("SEAMLESS_COORDINATOR_URL", raising=False)
    result = CliRunner().invoke(backfill, ["ohlcv:x:BTC/USDT:1m", "0", "60000"])
    assert result.exit_code == 2 and "--coordinator is required" in result.output


def test_help_names_every_option() -> None:
    """`coordinator backfill --help` (through the coordinator CLI's plug-in group) documents the command."""
    done = subprocess.run([str(COORDINATOR), "backfill", "--help"], capture_output=True, text=True, check=False)
    assert done.returncode == 0
    for option in ("--wait", "--json", "--priority", "--coordinator", "--token-file", "SERIES... START END"):
        assert option in done.stdout, option
