"""Invariants checked after every chaos scenario.

1. Data: the stored bars of every series equal the exchange's bars (``synthetic:SEED?gaps=G``) exactly; none
   missing, none extra, none different; the coverage ledger covers the whole range.
2. History (from the recording proxy): each window was completed under exactly one accepted token, and that
   token is the last one granted for the window (no stale token completed it); tokens of claims that did not
   overlap in time strictly increase (tokens never went backwards).
3. Cluster: every live node's metrics agree with the state (``backfill_windows{state="done"}`` equals the done
   windows, nothing pending, leased or failed, ``backfill_leases_active`` 0, the fencing token at least the
   largest token seen, no ``backfill_completion_ratio`` left for finished jobs), exactly one leader, and all
   replicas serve the same jobs, token floor and replicated count of reaped leases.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from devkit.polling import wait_for
from provider.core import subtract_ranges, window_id, window_ranges
from provider.sources import open_source
from provider.storage import open_storage

from .chaos_env import ChaosEnv
from .recorder import LogicalOp

__all__ = ["DataCheck", "HistoryCheck", "check_cluster", "check_data", "check_history", "scenario_windows"]


@dataclass
class DataCheck:
    bars: int = 0
    lost: int = 0
    extra: int = 0
    different: int = 0


@dataclass
class HistoryCheck:
    windows: int = 0
    accepted: int = 0
    refused: int = 0
    unknown_completes: int = 0
    max_token: int = 0
    violations: list[str] = field(default_factory=list)


def scenario_windows(series: list[str], start: int, end: int, window_bars: int) -> set[str]:
    return {window_id(s, lo) for s in series for lo, _ in window_ranges(start, end, "1m", window_bars)}


async def check_data(dsn: str, source_spec: str, series: list[str], start: int, end: int) -> DataCheck:
    """Invariant 1, as numbers (all must be 0 but ``bars``) plus an exact frame comparison."""
    result = DataCheck()
    source = open_source(source_spec)
    storage = await open_storage(dsn)
    try:
        for name in series:
            expected = await source.fetch(name, start, end)
            stored = await storage.read(name, start, end)
            coverage = await storage.coverage(name)
            result.bars += len(expected)
            merged = expected.merge(stored, on="ts", how="outer", suffixes=("_x", "_y"), indicator=True)
            result.lost += int((merged["_merge"] == "left_only").sum())
            result.extra += int((merged["_merge"] == "right_only").sum())
            both = merged[merged["_merge"] == "both"]
            columns = ("open", "high", "low", "close", "volume")
            same = np.logical_and.reduce([both[f"{c}_x"].to_numpy() == both[f"{c}_y"].to_numpy() for c in columns])
            result.different += int((~same).sum()) if len(both) else 0
            pd.testing.assert_frame_equal(stored, expected)
            assert subtract_ranges([(start, end)], coverage) == [], (name, coverage)
    finally:
        await storage.aclose()
        await source.aclose()
    return result


def _tokens_never_go_backwards(ops: list[LogicalOp]) -> list[str]:
    """Claims that returned before another claim was sent hold smaller tokens than it (invariant 2)."""
    claims = [op for op in ops if op.kind == "claim" and op.ok and op.response.get("leases")]
    returned = [(op.return_ns or 0, max(x["token"] for x in op.response["leases"]), op.id) for op in claims]
    heapq.heapify(returned)
    problems: list[str] = []
    highest, highest_op = 0, 0
    for op in sorted(claims, key=lambda op: op.call_ns):
        while returned and returned[0][0] < op.call_ns:
            _, token, op_id = heapq.heappop(returned)
            if token > highest:
                highest, highest_op = token, op_id
        low = min(x["token"] for x in op.response["leases"])
        if low <= highest:
            problems.append(f"claim op {op.id} got token {low} after claim op {highest_op} had returned {highest}")
    return problems


def _completions(
    ops: list[LogicalOp], window_of: dict[int, str], windows: set[str], result: HistoryCheck
) -> tuple[dict[str, set[int]], dict[str, int]]:
    """Accepted completion tokens and unknown-outcome completions per window; counts the 409 refusals."""
    accepted: dict[str, set[int]] = defaultdict(set)
    unknown: dict[str, int] = defaultdict(int)
    for op in ops:
        window = window_of.get(op.token or 0) if op.kind != "claim" else None
        if window not in windows:
            continue
        result.refused += int(op.lease_lost)
        if op.kind == "complete" and op.ok:
            accepted[window].add(op.token or 0)
        elif op.kind == "complete" and op.status is None:
            unknown[window] += 1
    return accepted, unknown


def check_history(ops: list[LogicalOp], windows: set[str]) -> HistoryCheck:
    """Invariant 2 for the scenario's windows (the token order over the whole history)."""
    result = HistoryCheck(windows=len(windows))
    granted: dict[str, list[int]] = defaultdict(list)
    window_of: dict[int, str] = {}
    for op in ops:
        for lease in op.response.get("leases", []) if op.kind == "claim" and op.ok else []:
            granted[lease["window_id"]].append(lease["token"])
            window_of[lease["token"]] = lease["window_id"]
            result.max_token = max(result.max_token, lease["token"])
    accepted, unknown = _completions(ops, window_of, windows, result)
    for window in sorted(windows):
        tokens = accepted.get(window, set())
        if len(tokens) > 1:
            result.violations.append(f"window {window} completed under several tokens {sorted(tokens)}")
        elif tokens and max(tokens) != max(granted[window]):
            result.violations.append(
                f"window {window} completed by stale token {max(tokens)}; the last grant was {max(granted[window])}"
            )
        elif not tokens and not unknown.get(window):
            result.violations.append(f"window {window} has no accepted completion in the history")
        result.accepted += len(tokens)
        result.unknown_completes += 0 if tokens else unknown.get(window, 0)
    result.violations += _tokens_never_go_backwards(ops)
    return result


def _node_problems(env: ChaosEnv, index: int, done: int, job_ids: list[str], max_token: int) -> list[str]:
    m = env.node_metrics(index)
    expected = {
        'backfill_windows{state="done"}': done,
        'backfill_windows{state="pending"}': 0,
        'backfill_windows{state="leased"}': 0,
        'backfill_windows{state="failed"}': 0,
        "backfill_leases_active": 0,
    }
    problems = [f"n{index} {k}={m.get(k)} (want {v})" for k, v in expected.items() if m.get(k) != v]
    if m.get("coordinator_fencing_token", 0) < max_token:
        problems.append(f"n{index} fencing token {m.get('coordinator_fencing_token')} < {max_token} seen")
    problems += [
        f"n{index} still exports {k}"
        for k in m
        if k.startswith("backfill_completion_ratio") and any(f'job_id="{j}"' in k for j in job_ids)
    ]
    return problems


def check_cluster(env: ChaosEnv, job_ids: list[str], max_token: int, timeout_s: float = 30.0) -> dict[str, Any]:
    """Invariant 3, polled until it holds (followers apply a few ms behind the leader)."""
    last: list[str] = []

    def holds() -> dict[str, Any] | None:
        nonlocal last
        status, body = env.api("GET", "/v1/jobs", node=env.leader())
        jobs = body["jobs"] if status == 200 else []
        done = sum(j["windows"]["done"] for j in jobs)
        problems = []
        views = {}
        leaders = 0
        for node in env.nodes:
            if not node.alive:
                problems.append(f"n{node.index} is down")
                continue
            problems += _node_problems(env, node.index, done, job_ids, max_token)
            metrics = env.node_metrics(node.index)
            leaders += int(metrics.get("coordinator_is_leader", 0))
            status, answer = env.api("GET", "/v1/jobs", node=node.index)
            view = env.view(node.index) or {}
            views[node.index] = (
                answer.get("jobs") if status == 200 else None,
                view.get("token_floor"),
                metrics.get("backfill_stale_claims_total"),
            )
        if leaders != 1:
            problems.append(f"{leaders} nodes say they are leader")
        if len({repr(v) for v in views.values()}) != 1:
            problems.append("replicas disagree on jobs, the token floor or the reaped-lease count")
        last = problems
        return None if problems else {"done_windows": done, "token_floor": next(iter(views.values()))[1]}

    try:
        return wait_for(holds, timeout_s, "the cluster invariants", interval_s=0.3)
    except AssertionError:
        raise AssertionError(f"cluster invariants do not hold: {last}") from None
