"""Chaos scenarios: a multi-series backfill, one fault in the middle of it, then every invariant.

Rules:
1. A scenario submits three series (chosen by its seeded RNG) over windows no other scenario uses, waits until a
   seeded fraction of the windows is done, injects its fault (faults.py), waits for every job, then checks the
   invariants of chaos_checks.py. It returns one row of the report.
2. The run's order of scenarios and every choice inside them derive from the seed: ``random.Random(f"{seed}/...")``.
3. Every run goes through every fault of faults.py; ``SEAMLESS_CHAOS_LONG=1`` selects the long version: three
   seeds instead of one and twice the windows per scenario.
"""

from __future__ import annotations

import asyncio
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

from .chaos_checks import check_cluster, check_data, check_history, scenario_windows
from .chaos_env import BARS_PER_WINDOW, SPAN_MS, SYMBOLS, T0, ChaosEnv
from .faults import FAULTS

__all__ = ["LONG", "Row", "plan", "render_report", "run_scenario", "seeds"]

LONG = os.environ.get("SEAMLESS_CHAOS_LONG", "") not in ("", "0")
#: Windows per series: leader kills need a longer backfill (three elections).
WINDOWS = {"leader-kill": 32, "cluster-restart": 24}
DEFAULT_WINDOWS = 18


def seeds() -> list[int]:
    """SEAMLESS_CHAOS_SEEDS=1,2,3 overrides; otherwise one seed, or three in the long run."""
    given = os.environ.get("SEAMLESS_CHAOS_SEEDS", "")
    if given.strip():
        return [int(s) for s in given.split(",") if s.strip()]
    return [1, 2, 3] if LONG else [1]


def plan(seed: int) -> list[str]:
    """The seeded order of the run's scenarios (SEAMLESS_CHAOS_SCENARIOS=a,b picks a subset, for debugging)."""
    chosen = [n.strip() for n in os.environ.get("SEAMLESS_CHAOS_SCENARIOS", "").split(",") if n.strip()]
    names = chosen or list(FAULTS)
    random.Random(f"{seed}/order").shuffle(names)
    return names


@dataclass
class Row:
    """One line of the scenario table."""

    seed: int
    name: str
    fault: str
    trigger: float
    fault_at_s: float
    windows: int
    bars: int
    accepted: int
    refused: int
    stale_reaped: int
    terms: int
    lost: int
    duration_s: float

    def markdown(self) -> str:
        return (
            f"| {self.seed} | {self.name} | {self.fault} | {self.trigger:.0%} done, t={self.fault_at_s:.1f} s "
            f"| {self.windows} | {self.bars:,} | {self.accepted} | {self.refused} | {self.stale_reaped} "
            f"| {self.terms} | {self.lost} | {self.duration_s:.1f} |"
        )


HEADER = (
    "| seed | scenario | fault | injected at | windows | bars checked | accepted completions "
    "| stale ops refused (409) | leases reaped | new terms | data lost | s |\n"
    "|---|---|---|---|---|---|---|---|---|---|---|---|"
)


def render_report(rows: list[Row], extra: str = "") -> str:
    return "\n".join([HEADER, *(r.markdown() for r in rows)]) + ("\n\n" + extra if extra else "") + "\n"


def _cluster_figures(env: ChaosEnv) -> tuple[float, float]:
    stale = term = 0.0
    for node in env.nodes:
        if node.alive:
            m = env.node_metrics(node.index)
            stale = max(stale, m.get("backfill_stale_claims_total", 0))
            term = max(term, m.get("coordinator_raft_term", 0))
    return stale, term


def run_scenario(env: ChaosEnv, name: str, index: int, all_jobs: list[str]) -> Row:
    """Rule 1; ``all_jobs`` collects the job ids of every scenario so far (for the metrics check)."""
    rng = random.Random(f"{env.seed}/{index}/{name}")
    per_series = WINDOWS.get(name, DEFAULT_WINDOWS) * (2 if LONG else 1)
    start = T0 + index * 200 * SPAN_MS
    end = start + per_series * SPAN_MS
    series = [f"ohlcv:binance:{s}:1m" for s in rng.sample(SYMBOLS, 3)]
    stale0, term0 = _cluster_figures(env)
    started = time.monotonic()
    job_ids = [env.submit(s, start, end) for s in series]
    all_jobs += job_ids
    trigger = rng.uniform(0.15, 0.35)
    env.wait_progress(job_ids, trigger)
    fault_at_s = time.monotonic() - started
    detail = FAULTS[name](env, rng, job_ids)
    jobs = env.wait_done(job_ids, 240)
    duration_s = time.monotonic() - started
    assert [(j["state"], j["completion_ratio"]) for j in jobs] == [("done", 1.0)] * 3, jobs
    data = asyncio.run(check_data(env.pool.storage, env.source_spec, series, start, end))  # type: ignore[union-attr]
    assert (data.lost, data.extra, data.different) == (0, 0, 0), data
    ops, problems = env.history()
    assert not problems, problems
    history = check_history(ops, scenario_windows(series, start, end, BARS_PER_WINDOW))
    assert not history.violations, history.violations
    assert history.accepted + history.unknown_completes == 3 * per_series
    check_cluster(env, all_jobs, history.max_token)
    stale1, term1 = _cluster_figures(env)
    if name in ("worker-kill", "zombie-worker"):
        assert stale1 > stale0, "killed or paused workers' leases must be reaped"
    if name in ("leader-kill", "leader-partition", "cluster-restart", "leader-pause"):
        assert term1 > term0, "a new leader must have been elected"
    return Row(
        env.seed,
        name,
        detail,
        trigger,
        fault_at_s,
        3 * per_series,
        data.bars,
        history.accepted,
        history.refused,
        int(stale1 - stale0),
        int(term1 - term0),
        data.lost + data.different,
        duration_s,
    )


def save_report(path: Path, text: str) -> None:
    path.write_text(text, encoding="utf-8")
    target = os.environ.get("SEAMLESS_CHAOS_REPORT")
    if target:
        with Path(target).open("a", encoding="utf-8") as out:
            out.write(text + "\n")
