"""`make demo` (`python -m scripts.demo`) runs the whole system on loopback, prints its summary, stops it all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_backfills_reads_back_and_stops_everything(tmp_path: Path) -> None:
    """A small demo run exits 0, shows full coverage for every series, and no process it started survives."""
    data_dir = tmp_path / "demo"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "scripts.demo",
            "--days",
            "2",
            "--symbols",
            "BTC/USDT,ETH/USDT",
            "--workers",
            "1:2",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=280,
        check=False,
        cwd=ROOT,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    lines = [line for line in out.stdout.splitlines() if line.startswith("ohlcv:synthetic:")]
    assert [line.split()[0] for line in lines] == ["ohlcv:synthetic:BTC/USDT:1m", "ohlcv:synthetic:ETH/USDT:1m"]
    assert all(" 100% " in line for line in lines)
    bars = [int(line.split()[1].replace(",", "")) for line in lines]
    assert all(2 * 1440 * 0.99 < n <= 2 * 1440 for n in bars)  # synthetic gaps are 0.1%
    leftover = subprocess.run(["pgrep", "-f", str(data_dir)], capture_output=True, text=True, check=False)
    assert leftover.stdout.strip() == "", f"processes still running: {leftover.stdout}"
