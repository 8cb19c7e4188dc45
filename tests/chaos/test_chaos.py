"""Chaos runs: 3 coordinators in network namespaces, workers, QuestDB and the loopback exchange under faults.

One test per seed runs every scenario of scenarios.py in a seeded order, checks the invariants after each, then
checks the whole recorded history (lease operations, and the driver's job and lease reads through every node) for
linearizability with porcupine (tools/porcupine) and shows that the same checker rejects the history once a
violation, or a stale read, is planted in it. `make chaos` runs the long version.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import pytest

from .chaos_env import ChaosEnv
from .lease_check import build_lease_check, check_history
from .recorder import LogicalOp, write_history
from .scenarios import LONG, Row, plan, render_report, run_scenario, save_report, seeds

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.questdb, pytest.mark.slow]


def plant_violation(ops: list[LogicalOp]) -> list[LogicalOp]:
    """The history plus an intruder granted a window (same token) again after the whole run: a double grant."""
    claim = next(op for op in ops if op.kind == "claim" and op.ok and op.response.get("leases"))
    end = max((op.return_ns or op.call_ns) for op in ops)
    intruder = copy.deepcopy(claim)
    intruder.id, intruder.client = len(ops) + 1, "intruder"
    intruder.call_ns, intruder.return_ns = end + 1_000, end + 2_000
    return [*ops, intruder]


def plant_stale_read(ops: list[LogicalOp]) -> list[LogicalOp]:
    """The history plus a read, after the whole run, that answers 404 for a job whose submit was acknowledged."""
    submit = next(op for op in ops if op.kind == "submit" and op.ok)
    end = max((op.return_ns or op.call_ns) for op in ops)
    job_id = submit.response["job"]["job_id"]
    stale = LogicalOp(
        len(ops) + 1,
        "read_job",
        "stale-reader",
        {"job_id": job_id},
        end + 1_000,
        end + 2_000,
        0,
        404,
        {"error": {"code": "not_found"}},
    )
    return [*ops, stale]


@pytest.mark.timeout(1800 if LONG else 480)
@pytest.mark.parametrize("seed", seeds())
def test_chaos_run_keeps_every_invariant(seed: int, tmp_path) -> None:
    """Under leader/follower/worker kills, a zombie, a partition, exchange faults and a QuestDB restart, every
    job completes with exactly the exchange's bars, each window once under its last token, and the recorded
    history of lease operations is linearizable."""
    build_lease_check()  # before the clock starts: a fresh machine fetches porcupine first
    started = time.monotonic()
    env = ChaosEnv.start(tmp_path, seed)
    rows: list[Row] = []
    all_jobs: list[str] = []
    try:
        setup_s = time.monotonic() - started
        for index, name in enumerate(plan(seed)):
            rows.append(run_scenario(env, name, index, all_jobs))
        ops, problems = env.history()
        assert not problems, problems
        assert env.proxy is not None
        history = write_history(tmp_path / "history.jsonl", ops, env.proxy.annotations)
        result = check_history(history, ttl_ms=env.ttl_ms, visualization=tmp_path / "history.html")
        print(f"\nhistory: {history} ({len(ops)} operations); porcupine: {json.dumps(result.summary)}")
        assert result.code == 0, (
            f"porcupine found a linearizability violation (exit {result.code}); history "
            f"{history}, visualization {result.visualization}: {result.summary} "
            f"{result.stderr}"
        )
        planted = write_history(tmp_path / "planted.jsonl", plant_violation(ops), [])
        caught = check_history(planted, ttl_ms=env.ttl_ms, visualization=tmp_path / "planted.html")
        assert caught.code == 1 and caught.visualization.exists(), caught.summary
        reads = sum(op.kind in ("read_job", "list_jobs", "list_leases") and op.ok for op in ops)
        assert reads > 0, "the driver's reads were not recorded"
        stale = write_history(tmp_path / "stale-read.jsonl", plant_stale_read(ops), [])
        caught = check_history(stale, ttl_ms=env.ttl_ms, visualization=tmp_path / "stale-read.html")
        assert caught.code == 1, caught.summary
    except BaseException:
        _keep_evidence(env, tmp_path, rows)
        raise
    finally:
        env.stop()
    elapsed_s = time.monotonic() - started
    report = render_report(
        rows,
        f"seed {seed}: {len(ops):,} operations recorded, porcupine "
        f"{result.summary['result']} over {result.summary['partitions']} partitions in "
        f"{result.summary['elapsed_ms']} ms; setup {setup_s:.0f} s, total {elapsed_s:.0f} s; "
        f"partition by {'netns + nftables' if env.lab else 'SIGSTOP'}",
    )
    save_report(tmp_path / "chaos-report.md", report)
    print("\n" + report)


def _keep_evidence(env: ChaosEnv, tmp_path: Path, rows: list[Row]) -> None:
    """On a failure: the scenarios so far, the history and its visualization, next to the logs in tmp_path."""
    if env.proxy is None:
        return
    ops, _ = env.history()
    history = write_history(tmp_path / "history.jsonl", ops, env.proxy.annotations)
    result = check_history(history, ttl_ms=env.ttl_ms, visualization=tmp_path / "history.html", always_visualize=True)
    print(f"\nchaos run failed; logs, history and visualization kept in {tmp_path}: porcupine {result.summary}")
    print(render_report(rows))
