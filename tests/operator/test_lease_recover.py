"""scripts/lease_recover.py against a real 3-node cluster with auth: tables, actions, dry runs and exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import lease_recover  # scripts/ is on pytest's pythonpath (pyproject.toml)
import pytest

from devkit.ports import free_port
from provider.core import window_id

from .operator_kit import OPERATOR_TOKEN, WINDOW_MS, WORKER_TOKEN, Ops

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "lease_recover.py"


def tool(ops: Ops, capsys: pytest.CaptureFixture[str], *args: str, role: str = "operator") -> tuple[int, str, str]:
    """Run the tool in process against the shared cluster; (exit code, stdout, stderr)."""
    code = lease_recover.main(["--coordinator", ops.urls, "--token-file", str(ops.token_files[role]), *args])
    out = capsys.readouterr()
    return code, out.out, out.err


def results(stdout: str) -> list[tuple[str, str, str]]:
    """(item, result, detail) of every row of a --json action answer."""
    return [(r["item"], r["result"], r["detail"]) for r in json.loads(stdout)["results"]]


def claim_key(ops: Ops, key: str, lease_ms: int = 60_000) -> dict[str, Any]:
    status, answer = ops.api("POST", "/v1/leases/claim", {"key": key, "lease_ms": lease_ms}, token=WORKER_TOKEN)
    assert status == 200, answer
    return dict(answer["lease"])


def test_read_keys_keeps_colons_and_skips_comments(tmp_path: Path) -> None:
    """Keys are whole lines: colons are kept, blanks, '#' comments and repeats are dropped, order is kept."""
    path = tmp_path / "keys.txt"
    path.write_text(
        "# keys of node 7\n\nn7:60:0:60000:world:\n  n7:60:0:60000:world:x:y  \n"
        "n7:60:0:60000:world:\n#n7:60:1:2:commented\n",
        encoding="utf-8",
    )
    assert lease_recover.read_keys(path) == ["n7:60:0:60000:world:", "n7:60:0:60000:world:x:y"]


@pytest.mark.cluster
def test_list_shows_window_and_key_leases_as_a_table(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`list` prints one table row per live lease with its id, kind, window or key, worker, token and stale flag."""
    ops.submit("LIST/USD", 1)
    lease = ops.claim("w-list")[0]
    key = claim_key(ops, "list:60:0:60000:a:b")
    code, out, _ = tool(ops, capsys, "list", role="reader")
    assert code == 0
    header, dashes, *lines = out.splitlines()
    assert header.split() == ["LEASE_ID", "KIND", "WINDOW_ID/KEY", "WORKER", "TOKEN", "GRANTED", "EXPIRES", "STALE"]
    assert set(dashes) == {"-", " "}
    by_id = {line.split()[0]: line.split() for line in lines}
    assert by_id[lease["lease_id"]][1:5] == ["window", lease["window_id"], "w-list", str(lease["token"])]
    assert by_id[lease["lease_id"]][-1] == "no"
    assert by_id[key["lease_id"]][1:5] == ["key", "list:60:0:60000:a:b", "pool", str(key["token"])]

    code, out, _ = tool(ops, capsys, "--json", "list", role="reader")
    listed = {item["lease_id"]: item for item in json.loads(out)["leases"]}
    assert code == 0 and listed[key["lease_id"]]["key"] == "list:60:0:60000:a:b"


@pytest.mark.cluster
def test_list_stale_shows_only_expired_leases(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`list --stale` shows a lease past its expiry and leaves out live ones."""
    ops.submit("STALE/USD", 1)
    fresh = ops.claim("w-fresh")[0]
    stale = claim_key(ops, "stale:60:0:60000:x:", lease_ms=1)
    code, out, _ = tool(ops, capsys, "list", "--stale", "--json", role="reader")
    listed = {item["lease_id"]: item for item in json.loads(out)["leases"]}
    assert code == 0
    assert listed[stale["lease_id"]]["stale"] is True
    assert fresh["lease_id"] not in listed
    assert all(item["stale"] for item in listed.values())


@pytest.mark.cluster
def test_release_frees_leases_and_fails_on_unknown_or_released_ones(
    ops: Ops, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release` returns windows to pending; an unknown (404) or already released (409) lease is a failure."""
    job = ops.submit("REL/USD", 2)
    first, second = ops.claim("w-rel", 2)
    code, out, _ = tool(
        ops, capsys, "--json", "release", first["lease_id"], "lease-999999999", second["lease_id"], role="worker"
    )
    assert code == 1
    rows = results(out)
    assert [(item, result) for item, result, _ in rows] == [
        (first["lease_id"], "ok"),
        ("lease-999999999", "failed"),
        (second["lease_id"], "ok"),
    ]
    assert "back to pending" in rows[0][2] and "not found" in rows[1][2]
    assert ops.job(job["job_id"])["windows"] == {"pending": 2, "leased": 0, "done": 0, "failed": 0}

    code, out, _ = tool(ops, capsys, "release", first["lease_id"])
    assert code == 1
    row = next(line for line in out.splitlines() if line.startswith(first["lease_id"]))
    assert "failed" in row.split() and "no longer live" in row
    assert out.rstrip().endswith("0 ok, 1 failed")


@pytest.mark.cluster
def test_dry_run_release_changes_nothing(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`--dry-run release` says what it would release, fails unknown ids, and the lease stays live."""
    ops.submit("DRY/USD", 1)
    lease = ops.claim("w-dry")[0]
    code, out, _ = tool(ops, capsys, "--dry-run", "--json", "release", lease["lease_id"], "lease-888888888")
    assert code == 1
    (item, result, detail), unknown = results(out)
    assert (item, result) == (lease["lease_id"], "ok")
    assert detail.startswith("would release") and "w-dry" in detail
    assert unknown[1:] == ("failed", "not found: no live lease with this id")
    assert json.loads(out)["dry_run"] is True
    assert ops.leases()[lease["lease_id"]]["token"] == lease["token"]


@pytest.mark.cluster
def test_requeue_and_mark_done_change_window_states(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`requeue` puts a leased window back to pending, `mark-done` closes one; bad ids fail; dry runs change nothing."""
    job = ops.submit("OPS/USD", 3)
    a, b = ops.claim("w-ops", 2)
    third = window_id(job["series"], 2 * WINDOW_MS)
    code, out, _ = tool(ops, capsys, "--json", "requeue", a["window_id"], "w_nonsense", "--reason", "stuck")
    assert code == 1
    (_, result, detail), (_, bad, why) = results(out)
    assert result == "ok" and "is pending" in detail and a["lease_id"] in detail
    assert (bad, why) == ("failed", "not found: not a window id")

    code, out, _ = tool(ops, capsys, "--json", "mark-done", b["window_id"], "--reason", "no history")
    assert code == 0 and results(out)[0][1] == "ok"
    assert ops.job(job["job_id"])["windows"] == {"pending": 2, "leased": 0, "done": 1, "failed": 0}

    ghost = window_id("ohlcv:test:NOJOB/USD:1m", 0)
    code, out, _ = tool(ops, capsys, "--dry-run", "--json", "mark-done", third, ghost, "--reason", "x")
    assert code == 1
    (_, result, detail), (_, ghost_result, ghost_detail) = results(out)
    assert result == "ok" and detail.startswith("would mark-done") and "not leased now" in detail
    assert ghost_result == "failed" and "no job of series" in ghost_detail
    assert ops.job(job["job_id"])["windows"] == {"pending": 2, "leased": 0, "done": 1, "failed": 0}


@pytest.mark.cluster
def test_retry_resets_failed_windows(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """`retry JOB_ID` resets a job's failed windows to pending; a dry run only counts them; unknown jobs fail."""
    job = ops.submit("RETRY/USD", 1)
    lease = ops.claim("w-retry")[0]
    status, _ = ops.api(
        "POST",
        "/v1/windows/fail",
        {"lease_id": lease["lease_id"], "token": lease["token"], "reason": "symbol delisted", "retryable": False},
        token=WORKER_TOKEN,
    )
    assert status == 200 and ops.job(job["job_id"])["windows"]["failed"] == 1

    code, out, _ = tool(ops, capsys, "--dry-run", "--json", "retry", job["job_id"])
    assert code == 0 and results(out)[0][2] == f"would reset 1 failed window(s) of {job['series']}"
    assert ops.job(job["job_id"])["windows"]["failed"] == 1

    code, out, _ = tool(ops, capsys, "--json", "retry", job["job_id"], "job-999999")
    assert code == 1
    (_, result, detail), (_, unknown, why) = results(out)
    assert (result, detail) == ("ok", "1 failed window(s) back to pending")
    assert unknown == "failed" and why.startswith("not found")
    assert ops.job(job["job_id"])["windows"] == {"pending": 1, "leased": 0, "done": 0, "failed": 0}


@pytest.mark.cluster
def test_release_keys_frees_exact_keys_and_reports_unknown_ones(
    ops: Ops, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`release-keys` frees the keyed lease of each listed key exactly (a key that merely extends it stays held)."""
    held = claim_key(ops, "rk:60:0:60000:alpha:")
    longer = claim_key(ops, "rk:60:0:60000:alpha:beta")
    keys = tmp_path / "keys.txt"
    keys.write_text("# to free\n\nrk:60:0:60000:alpha:\nrk:60:0:60000:gamma:\n", encoding="utf-8")

    code, out, _ = tool(ops, capsys, "--dry-run", "--json", "release-keys", "--keys-file", str(keys))
    assert code == 1
    (key, result, detail), (other, missing, why) = results(out)
    assert (key, result) == ("rk:60:0:60000:alpha:", "ok") and detail.startswith(f"would release {held['lease_id']}")
    assert (other, missing, why) == ("rk:60:0:60000:gamma:", "failed", "not found: no live lease holds this key")
    assert held["lease_id"] in ops.leases()

    code, out, _ = tool(ops, capsys, "release-keys", "--keys-file", str(keys), role="worker")
    assert code == 1
    assert "released " + held["lease_id"] in out and "1 ok, 1 failed" in out
    live = ops.leases()
    assert held["lease_id"] not in live and longer["lease_id"] in live
    assert claim_key(ops, "rk:60:0:60000:alpha:")["token"] > held["token"], "the freed key can be claimed again"


@pytest.mark.cluster
def test_a_refused_token_stops_with_exit_3(ops: Ops, capsys: pytest.CaptureFixture[str]) -> None:
    """A token without the needed role fails the first item, skips the rest and exits 3 with a clear message."""
    ops.submit("AUTH/USD", 1)
    lease = ops.claim("w-auth")[0]
    code, out, err = tool(ops, capsys, "--json", "requeue", lease["window_id"], "w_x", "--reason", "r", role="worker")
    assert code == 3
    assert [(r[1], r[2].split(" (")[0]) for r in results(out)] == [("failed", "refused"), ("failed", "not attempted")]
    assert "refused the token" in err and "403" in err
    assert ops.leases()[lease["lease_id"]]["token"] == lease["token"]

    assert lease_recover.main(["--coordinator", ops.urls, "list"]) == 3
    assert "401" in capsys.readouterr().err


def test_an_unreachable_coordinator_exits_3(capsys: pytest.CaptureFixture[str]) -> None:
    """With no node listening the tool gives up after --timeout and says it cannot reach the coordinator."""
    url = f"http://127.0.0.1:{free_port('127.0.0.1')}"
    assert lease_recover.main(["--coordinator", url, "--timeout", "0.5", "release", "lease-1"]) == 3
    captured = capsys.readouterr()
    assert "cannot reach the coordinator" in captured.err and url in captured.err
    assert "failed" in captured.out and "coordinator unavailable" in captured.out


@pytest.mark.parametrize(
    "argv",
    [
        ["list"],
        ["--coordinator", "http://127.0.0.1:1"],
        ["--coordinator", "ftp://127.0.0.1:1", "list"],
        ["--coordinator", "http://127.0.0.1:1", "requeue", "w_x"],
        ["--coordinator", "http://127.0.0.1:1", "mark-done", "w_x", "--reason", " "],
        ["--coordinator", "http://127.0.0.1:1", "release"],
        ["--coordinator", "http://127.0.0.1:1", "release-keys", "--keys-file", "/nonexistent/keys.txt"],
        ["--coordinator", "http://127.0.0.1:1", "--token-file", "/nonexistent/token", "list"],
    ],
    ids=[
        "no-url",
        "no-command",
        "bad-url",
        "no-reason",
        "blank-reason",
        "no-lease-id",
        "no-keys-file",
        "no-token-file",
    ],
)
def test_usage_errors_exit_2(
    argv: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Missing or malformed arguments exit 2 with a usage message, before anything is sent."""
    monkeypatch.delenv(lease_recover.URL_ENV, raising=False)
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main(argv)
    assert stopped.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_an_empty_keys_file_is_a_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A keys file with only comments and blank lines exits 2 naming the file."""
    keys = tmp_path / "keys.txt"
    keys.write_text("# nothing\n\n", encoding="utf-8")
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main(["--coordinator", "http://127.0.0.1:1", "release-keys", "--keys-file", str(keys)])
    assert stopped.value.code == 2 and "holds no key" in capsys.readouterr().err


@pytest.mark.parametrize(
    "command", [[], ["list"], ["release"], ["requeue"], ["mark-done"], ["retry"], ["release-keys"]]
)
def test_every_command_has_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """`--help` works for the tool and each subcommand and shows the global options."""
    with pytest.raises(SystemExit) as stopped:
        lease_recover.main([*command, "--help"])
    out = capsys.readouterr().out
    assert stopped.value.code == 0
    assert out.startswith("usage: lease_recover.py") and "--dry-run" in out and "--coordinator" in out


@pytest.mark.cluster
def test_the_script_runs_standalone_with_the_url_from_the_environment(ops: Ops) -> None:
    """`python scripts/lease_recover.py list` takes the cluster from SEAMLESS_COORDINATOR_URL and prints a table."""
    env = {**os.environ, lease_recover.URL_ENV: ops.urls}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "list", "--token-file", str(ops.token_files["reader"])],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n", 1)[0].split()[:3] == ["LEASE_ID", "KIND", "WINDOW_ID/KEY"]
    assert OPERATOR_TOKEN not in done.stdout + done.stderr
