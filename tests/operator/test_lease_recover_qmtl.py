"""QMTL's form of scripts/lease_recover.py (`--coordinator-url --action fail|complete KEY:TOKEN`) on a real cluster,
with keys that contain `BTC/USDT:USDT`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import lease_recover  # scripts/ is on pytest's pythonpath (pyproject.toml)
import lease_recover_qmtl
import pytest

from .operator_kit import WORKER_TOKEN, Ops

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lease_recover.py"


def claim_key(ops: Ops, key: str) -> dict[str, Any]:
    status, answer = ops.api("POST", "/v1/leases/claim", {"key": key, "lease_ms": 60_000}, token=WORKER_TOKEN)
    assert status == 200, answer
    return dict(answer["lease"])


def key_lease(ops: Ops, key: str) -> dict[str, Any] | None:
    """The live lease that holds ``key``, if any."""
    return next((lease for lease in ops.leases().values() if lease.get("key") == key), None)


def qmtl(ops: Ops, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict[str, Any]], str]:
    """QMTL's form in process, with --json; (exit code, result rows, stderr)."""
    code = lease_recover.main(
        ["--coordinator-url", ops.urls, "--token-file", str(ops.token_files["worker"]), "--json", *args]
    )
    out = capsys.readouterr()
    return code, json.loads(out.out)["results"] if out.out else [], out.err


@pytest.mark.parametrize(
    ("item", "key", "token"),
    [
        ("n7:60:0:60000:BTC/USDT:USDT:42", "n7:60:0:60000:BTC/USDT:USDT", 42),
        ("ohlcv:binance:BTC/USDT:USDT:1m:7", "ohlcv:binance:BTC/USDT:USDT:1m", 7),
        ("plain:1", "plain", 1),
    ],
)
def test_items_split_at_the_last_colon(item: str, key: str, token: int) -> None:
    """KEY:TOKEN keeps every colon of the key: only the last one separates the token."""
    assert lease_recover_qmtl.split_item(item) == (key, token)


@pytest.mark.parametrize("item", ["nocolon", ":5", "k:v:x", "k:0", "k:-3", "k:"])
def test_bad_items_are_usage_errors_naming_the_item(item: str, capsys: pytest.CaptureFixture[str]) -> None:
    """A malformed KEY:TOKEN exits 2 before anything is sent, naming the item."""
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main(["--coordinator-url", "http://127.0.0.1:1", "--action", "complete", item])
    assert stopped.value.code == 2
    assert repr(item) in capsys.readouterr().err


def test_no_items_and_bad_action_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    """No KEY:TOKEN, or an action other than fail|complete, exits 2 saying what is allowed."""
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main(["--coordinator-url", "http://127.0.0.1:1", "--action", "complete"])
    assert stopped.value.code == 2 and "no KEY:TOKEN" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main(["--coordinator-url", "http://127.0.0.1:1", "--action", "release", "k:1"])
    err = capsys.readouterr().err
    assert stopped.value.code == 2 and "'release'" in err and "fail" in err and "complete" in err


def test_help_shows_the_qmtl_flags(capsys: pytest.CaptureFixture[str]) -> None:
    """`--action x --help` documents QMTL's form and its last-colon rule; the main help mentions it too."""
    with pytest.raises(SystemExit):
        lease_recover.main(["--action", "fail", "--help"])
    out = capsys.readouterr().out
    assert "--coordinator-url" in out and "--from-file" in out and "last colon" in out
    with pytest.raises(SystemExit):
        lease_recover.main(["--help"])
    assert "--coordinator-url" in capsys.readouterr().out


@pytest.mark.cluster
def test_fail_and_complete_keyed_leases_with_colons(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`--action fail` and `--action complete` finish the leases of keys holding `BTC/USDT:USDT`."""
    fail_key = "q1:60:0:60000:BTC/USDT:USDT"
    done_key = "q1:60:60000:120000:BTC/USDT:USDT"
    to_fail, to_done = claim_key(ops, fail_key), claim_key(ops, done_key)

    code, rows, _ = qmtl(ops, capsys, "--action", "fail", "--reason", "stuck", f"{fail_key}:{to_fail['token']}")
    assert code == 0
    assert [(r["item"], r["result"]) for r in rows] == [(f"{fail_key}:{to_fail['token']}", "ok")]
    assert key_lease(ops, fail_key) is None

    code, rows, _ = qmtl(ops, capsys, "--action", "complete", f"{done_key}:{to_done['token']}")
    assert code == 0 and rows[0]["result"] == "ok" and "completion ratio" in rows[0]["detail"]
    assert key_lease(ops, done_key) is None


@pytest.mark.cluster
def test_404_and_409_are_failures_and_exit_1(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """An unknown key (404) and a stale token (409) are failed items, never released; the good one still goes."""
    good_key = "q2:60:0:60000:BTC/USDT:USDT"
    stale_key = "q2:60:60000:120000:BTC/USDT:USDT"
    good, stale = claim_key(ops, good_key), claim_key(ops, stale_key)
    items = [
        f"q2:60:never:claimed:BTC/USDT:USDT:{good['token']}",
        f"{stale_key}:{stale['token'] + 1000}",
        f"{good_key}:{good['token']}",
    ]
    code, rows, _ = qmtl(ops, capsys, "--action", "complete", *items)
    assert code == 1
    assert [(r["item"], r["result"]) for r in rows] == [(items[0], "failed"), (items[1], "failed"), (items[2], "ok")]
    assert "not found" in rows[0]["detail"] and "no longer live" in rows[1]["detail"]
    held = key_lease(ops, stale_key)
    assert held is not None and held["token"] == stale["token"], "a 409 leaves the live lease alone"
    assert key_lease(ops, good_key) is None


@pytest.mark.cluster
def test_dry_run_and_from_file(ops: Ops, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    """`--dry-run --from-file` checks each KEY:TOKEN against the live leases and changes nothing."""
    key = "q3:60:0:60000:BTC/USDT:USDT"
    lease = claim_key(ops, key)
    path = tmp_path / "leases.txt"
    path.write_text(f"# from QMTL\n\n{key}:{lease['token']}\n{key}:{lease['token'] + 5}\n", encoding="utf-8")
    code, rows, _ = qmtl(ops, capsys, "--action", "fail", "--dry-run", "--from-file", str(path))
    assert code == 1
    assert [r["result"] for r in rows] == ["ok", "failed"]
    assert "would fail" in rows[0]["detail"] and "no longer live" in rows[1]["detail"]
    held = key_lease(ops, key)
    assert held is not None and held["token"] == lease["token"]


@pytest.mark.cluster
def test_standalone_script_in_qmtl_form(ops: Ops) -> None:
    """`lease_recover.py --coordinator-url ... --action complete KEY:TOKEN` as a script: exit 0 and a table."""
    key = "q4:60:0:60000:BTC/USDT:USDT"
    lease = claim_key(ops, key)
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPT),
            "--coordinator-url",
            ops.cluster.urls[1],
            "--token-file",
            str(ops.token_files["worker"]),
            "--action",
            "complete",
            f"{key}:{lease['token']}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[:4] == ["ITEM", "ACTION", "RESULT", "DETAIL"]
    assert "1 ok, 0 failed" in done.stdout
    assert key_lease(ops, key) is None
