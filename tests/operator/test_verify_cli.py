"""`coordinator verify` on bars a real `worker run` stored: it finds tampered bars, `--repair` has the cluster
rewrite them, and a second verify is clean. Plus the pure checks on frames (duplicates, non-finite, off-grid)."""

from __future__ import annotations

import json
import math
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from click.testing import CliRunner

from devkit.cluster import Cluster
from devkit.workers import WorkerPool
from ops._verify_checks import compare_to_source, plan_windows, stored_findings
from ops.verify import verify
from provider.frames import frame_from_arrays

COORDINATOR = Path(sys.executable).parent / "coordinator"
MIN_MS = 60_000
SERIES = "ohlcv:synthetic:VER/USD:1m"


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(COORDINATOR), *args], capture_output=True, text=True, timeout=180, check=False)


def findings(stdout: str) -> dict[int, set[str]]:
    """{window start minute: finding kinds} of a --json verify answer."""
    found: dict[int, set[str]] = {}
    for window in json.loads(stdout)["windows"]:
        found.setdefault(window["start_ms"] // MIN_MS, set()).update(f["kind"] for f in window["findings"])
    return found


def tamper(db: Path) -> None:
    """What an operator might find after a bad manual fix: a deleted bar (minute 5), a changed close (minute 20),
    a window whose bars are gone but whose ledger row stays (minutes 30-44), a bar where nothing was written
    (minute 125, off the covered range) and an off-grid bar (minute 126 + 30 s)."""
    with sqlite3.connect(db) as conn:
        (series_id,) = conn.execute("SELECT id FROM ohlcv_series WHERE series = ?", (SERIES,)).fetchone()
        conn.execute("DELETE FROM ohlcv WHERE series_id = ? AND ts = ?", (series_id, 5 * MIN_MS))
        conn.execute("UPDATE ohlcv SET close = close * 1.01 WHERE series_id = ? AND ts = ?", (series_id, 20 * MIN_MS))
        conn.execute(
            "DELETE FROM ohlcv WHERE series_id = ? AND ts >= ? AND ts < ?", (series_id, 30 * MIN_MS, 45 * MIN_MS)
        )
        for ts in (125 * MIN_MS, 126 * MIN_MS + 30_000):
            conn.execute("INSERT INTO ohlcv VALUES (?, ?, 1, 2, 0.5, 1.5, 10)", (series_id, ts))


@pytest.mark.cluster
def test_verify_finds_tampering_and_repair_makes_it_clean(
    work_cluster: Cluster, pool: WorkerPool, tmp_path: Path
) -> None:
    """Each tampering shows as its finding; --repair --wait re-queues those windows; the next verify exits 0."""
    pool.start("w-verify")
    urls = ",".join(work_cluster.urls)
    db = tmp_path / "bars.db"
    done = cli("backfill", "--coordinator", urls, SERIES, "0", str(120 * MIN_MS), "--wait")
    assert done.returncode == 0, done.stderr
    common = ["verify", SERIES, "0", str(180 * MIN_MS), "--storage", f"sqlite:///{db}", "--window-bars", "15"]
    clean = cli(*common, "--source", "synthetic", "--json")
    assert clean.returncode == 0, clean.stdout + clean.stderr
    assert json.loads(clean.stdout)["checked"] == 12

    tamper(db)
    found = cli(*common, "--source", "synthetic", "--json", "--metrics-file", str(tmp_path / "verify.prom"))
    assert found.returncode == 1, found.stderr
    assert findings(found.stdout) == {
        0: {"missing_bar"},
        15: {"changed"},
        30: {"ledger_without_bars", "missing_bar"},
        120: {"bars_outside_coverage", "off_grid"},
    }
    metrics = (tmp_path / "verify.prom").read_text()
    assert "seamless_verify_windows_differing 4.0" in metrics
    assert 'seamless_verify_findings{kind="missing_bar"} 16.0' in metrics

    table = cli(*common)
    assert table.returncode == 1 and "ledger_without_bars" in table.stdout and "WINDOW_ID" in table.stdout

    repair = cli(*common, "--source", "synthetic", "--repair", "--wait", "--coordinator", urls, "--json")
    assert repair.returncode == 1, repair.stderr  # it reports what it found, then repairs
    actions = {r["window_id"]: r["action"] for r in json.loads(repair.stdout)["repaired"]}
    assert len(actions) == 4
    assert sorted(a.split()[0] for a in actions.values()) == ["requeued", "requeued", "requeued", "submitted"]

    again = cli(*common, "--source", "synthetic", "--json")
    assert again.returncode == 0, again.stdout
    assert json.loads(again.stdout)["differing"] == 0

    # Without SERIES START END: every job the cluster knows, each over its own range (here the backfill's and the
    # repair's jobs of this module's cluster).
    everything = cli("verify", "--storage", f"sqlite:///{db}", "--window-bars", "15", "--coordinator", urls, "--json")
    assert everything.returncode == 0, everything.stdout + everything.stderr
    assert json.loads(everything.stdout)["checked"] >= 8


def _frame(ts_ms: list[int], close: list[float]) -> pd.DataFrame:
    n = len(ts_ms)
    return frame_from_arrays(ts_ms, [1.0] * n, [2.0] * n, [0.5] * n, close, [1.0] * n)


def test_stored_checks_find_duplicates_non_finite_and_off_grid() -> None:
    """A duplicated ts, an infinite close and an off-grid stamp are each reported in their window (as read from a
    backend without a unique key, e.g. QuestDB with DEDUP disabled)."""
    rows = [0, MIN_MS, MIN_MS, 2 * MIN_MS, 3 * MIN_MS + 1]
    frame = pd.DataFrame(
        {
            "ts": pd.to_datetime(rows, unit="ms", utc=True),
            "open": 1.0,
            "high": 2.0,
            "low": 0.5,
            "close": [1.0, 1.0, 1.0, math.inf, 1.0],
            "volume": 1.0,
        }
    )
    checks = plan_windows(SERIES, 0, 10 * MIN_MS, MIN_MS, 5, [(0, 10 * MIN_MS)])
    stored_findings(checks, frame, [(0, 10 * MIN_MS)], MIN_MS)
    kinds = {(f.kind, f.count, f.example_ms) for f in checks[0].findings}
    assert kinds == {("duplicate_ts", 1, MIN_MS), ("non_finite", 1, 2 * MIN_MS), ("off_grid", 1, 3 * MIN_MS + 1)}
    assert [(f.kind, f.count, f.example_ms) for f in checks[1].findings] == [("ledger_without_bars", 1, 5 * MIN_MS)]


def test_compare_respects_the_tolerance() -> None:
    """A close within the relative tolerance is equal; beyond it, `changed`."""
    stored = _frame([0, MIN_MS], [100.0, 100.0])
    source = _frame([0, MIN_MS], [100.0 * (1 + 1e-7), 100.0 * (1 + 1e-3)])
    checks = plan_windows(SERIES, 0, 2 * MIN_MS, MIN_MS, 2, [(0, 2 * MIN_MS)])
    compare_to_source(checks[0], stored, source, tolerance=1e-6)
    assert [(f.kind, f.example_ms) for f in checks[0].findings] == [("changed", MIN_MS)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([SERIES, "0"], "give SERIES START END (3 arguments) or none"),
        (["ohlcv:x:A/B:9m", "0", "60000"], "is not a series key"),
        ([SERIES, "60000", "0"], "must be before END"),
        ([SERIES, "0", "60000", "--repair"], "--repair needs --coordinator"),
    ],
)
def test_usage_errors_exit_2(args: list[str], message: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Bad arguments exit 2 naming the problem, without a traceback."""
    monkeypatch.delenv("SEAMLESS_COORDINATOR_URL", raising=False)
    result: Any = CliRunner().invoke(verify, [*args, "--storage", f"sqlite:///{tmp_path / 'x.db'}"])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.cluster
@pytest.mark.questdb
def test_verify_finds_a_duplicate_in_questdb(work_cluster: Cluster, pool: WorkerPool, questdb: Any) -> None:
    """A row duplicated while DEDUP was off (a manual INSERT) is a `duplicate_ts` in its window and nowhere else;
    --repair merges it in the storage (a rewrite alone would keep it: DEDUP only replaces rows on insert) and
    re-queues the window, and a second verify is clean."""
    import asyncio
    import secrets

    import asyncpg

    table = f"verify_{secrets.token_hex(4)}"
    dsn = f"{questdb.dsn}&table={table}"
    pool.storage = dsn
    pool.start("w-verify-qdb")
    urls = ",".join(work_cluster.urls)
    series = "ohlcv:synthetic:DUP/USD:1m"
    done = cli("backfill", "--coordinator", urls, series, "0", str(30 * MIN_MS), "--wait")
    assert done.returncode == 0, done.stderr

    async def duplicate() -> None:
        conn = await asyncpg.connect(questdb.pg_dsn)
        try:
            await conn.execute(f'ALTER TABLE "{table}" DEDUP DISABLE')
            await conn.execute(
                f'INSERT INTO "{table}" (series, ts, open, high, low, close, volume) '
                f'SELECT series, ts, open, high, low, close, volume FROM "{table}" '
                f"WHERE series = '{series}' AND ts = cast({20 * MIN_MS * 1000} AS timestamp)"
            )
            await conn.execute(f'ALTER TABLE "{table}" DEDUP ENABLE UPSERT KEYS(ts, series)')
        finally:
            await conn.close()

    asyncio.run(duplicate())
    common = ["verify", series, "0", str(30 * MIN_MS), "--storage", dsn, "--window-bars", "15"]
    found = cli(*common, "--source", "synthetic", "--json")
    assert found.returncode == 1, found.stdout + found.stderr
    assert findings(found.stdout) == {15: {"duplicate_ts"}}

    repair = cli(*common, "--repair", "--wait", "--coordinator", urls, "--json")
    assert [r["action"] for r in json.loads(repair.stdout)["repaired"]] == ["1 duplicated stamps merged, requeued"]
    again = cli(*common, "--source", "synthetic", "--json")
    assert again.returncode == 0, again.stdout + again.stderr
    assert not any(findings(again.stdout).values())


def test_an_exchange_gap_is_not_a_finding_once_the_source_agrees() -> None:
    """A covered window with no bars is `ledger_without_bars`; if the source has no bars there either it is an
    exchange gap and the finding goes away, while lost bars stay `missing_bar`."""
    empty = _frame([], [])
    gap, lost = plan_windows(SERIES, 0, 4 * MIN_MS, MIN_MS, 2, [(0, 4 * MIN_MS)])
    stored_findings([gap, lost], empty, [(0, 4 * MIN_MS)], MIN_MS)
    assert [f.kind for f in gap.findings] == [f.kind for f in lost.findings] == ["ledger_without_bars"]
    compare_to_source(gap, empty, empty, tolerance=1e-9)
    compare_to_source(lost, empty, _frame([2 * MIN_MS, 3 * MIN_MS], [1.0, 1.0]), tolerance=1e-9)
    assert gap.findings == []
    assert sorted(f.kind for f in lost.findings) == ["ledger_without_bars", "missing_bar"]


def test_sample_spreads_over_the_covered_windows() -> None:
    """--sample N picks N covered windows spread over the range, never an uncovered one."""
    from ops.verify import _sample

    checks = plan_windows(SERIES, 0, 20 * MIN_MS, MIN_MS, 1, [(0, 10 * MIN_MS), (12 * MIN_MS, 20 * MIN_MS)])
    picked = _sample(checks, 4)
    assert len(picked) == 4 and all(c.covered for c in picked)
    assert [c.start_ms // MIN_MS for c in picked] == [0, 4, 9, 15]
    assert len(_sample(checks, 100)) == 18
