"""Apply cost per command against table size: 10^4 -> 10^6 pending windows (coordinator/table.py rule 10).

The pure lease table, in process (no Raft, no HTTP): what the apply thread pays per command. For each size it
times a one-window job submission, a claim + complete of four windows (per window), and a QMTL key claim at the
key cap (each evicts the oldest idle key). The baseline, measured in the same run, is what a one-window
submission cost before (a heapify of every pending window): the ratio column is our submission cost over it.
A flat curve means cost independent of state.

Run: ``.venv/bin/python -m bench.bench_table_cost [--sizes 10000 100000 1000000] [--runs 5]``.
"""

from __future__ import annotations

import argparse
import heapq
import sys

from bench._common import emit, median_time_s, table
from coordinator.table import Table

SERIES = "ohlcv:bench:AAA/USD:1m"
MIN = 60_000
BARS = 10  # windows of 10 bars: 10 minutes
SPAN = BARS * MIN
BATCH = 200  # commands per timed sample


def build(pending: int) -> Table:
    t = Table()
    per_job = 100_000
    for lo in range(0, pending, per_job):
        hi = min(lo + per_job, pending)
        r = t.submit_job(series=SERIES, start=lo * SPAN, end=hi * SPAN, window_bars=BARS, max_windows=per_job, now_ms=1)
        assert r.ok, r.message
    return t


def fill_keys(t: Table, keys: int) -> None:
    for k in range(keys):
        token = t.key_claim(key=f"n:1:{k}", lease_ms=10**6, max_keys=keys, now_ms=2).value["lease"]["token"]
        t.key_complete(key=f"n:1:{k}", token=token, now_ms=2)


def measure(size: int, runs: int) -> dict[str, float]:
    """Per-command costs (µs) at ``size`` pending windows."""
    t = build(size)
    keys = min(size, 100_000)
    fill_keys(t, keys)
    state = {"job": size, "key": keys, "now": 10}

    def submit() -> None:
        for _ in range(BATCH):
            state["job"] += 1
            start = state["job"] * SPAN
            t.submit_job(series=SERIES, start=start, end=start + SPAN, window_bars=BARS, max_windows=1, now_ms=3)

    def claim_complete() -> None:
        for _ in range(BATCH // 4):
            state["now"] += 1
            claimed = t.claim(worker_id="w", max_windows=4, ttl_ms=60_000, now_ms=state["now"]).value["leases"]
            for lease in claimed:
                t.complete(lease_id=lease["lease_id"], token=lease["token"], rows=BARS, now_ms=state["now"])

    def key_claim() -> None:
        for _ in range(BATCH):
            state["key"] += 1
            t.key_claim(key=f"n:1:{state['key']}", lease_ms=10**6, max_keys=keys, now_ms=4)

    # What every submission paid before: one heapify of a queue with an entry per pending window (the queue holds
    # one run entry per job now, _state.py rule 4, so the baseline is built to the size it had).
    queue = [(0, k // 100_000, k * SPAN, SERIES) for k in range(size)]

    def heapify_baseline() -> None:
        heapq.heapify(list(queue))

    per_command = {
        name: median_time_s(fn, runs)[0] / BATCH * 1e6
        for name, fn in (
            ("submit_us", submit),
            ("claim_complete_us_per_window", claim_complete),
            ("key_claim_at_cap_us", key_claim),
        )
    }
    return {**per_command, "heapify_baseline_us": median_time_s(heapify_baseline, runs)[0] * 1e6}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    rows, results = [], {}
    for size in args.sizes:
        got = results[str(size)] = measure(size, args.runs)
        rows.append(
            [
                f"{size:,}",
                got["submit_us"],
                got["claim_complete_us_per_window"],
                got["key_claim_at_cap_us"],
                got["heapify_baseline_us"],
                got["submit_us"] / got["heapify_baseline_us"],
            ]
        )
    print(
        table(
            [
                "pending windows",
                "submit 1-window job (µs)",
                "claim+complete (µs/window)",
                "key claim at cap (µs)",
                "baseline: heapify per submit (µs)",
                "submit / baseline",
            ],
            rows,
        )
    )
    emit("table_cost", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
