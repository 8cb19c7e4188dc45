"""Range algebra at scale: merge and subtract of 1,000,000 ranges, against a naive per-bar baseline.

The baseline does the same work the obvious way (expand every range into its bars, use Python sets, rebuild
ranges) on a smaller input; both are reported as cost per range so the ratio compares like with like.
Also prints the coverage-math curve from 10^3 to 10^6 windows.

Run: ``.venv/bin/python -m bench.bench_ranges [--runs 5]``.
"""

from __future__ import annotations

import argparse
import functools
import random

import numpy as np

from bench._common import emit, median_time_s, table
from provider.core import merge_ranges, missing_ranges, subtract_ranges

STEP = 60_000  # 1m bars


def make_ranges(n: int, seed: int, scattered: bool = False) -> list[tuple[int, int]]:
    """``n`` random on-grid ranges of 1-20 bars, overlapping now and then, in random order.

    By default the tuples are created in the order the list holds them, as rows decoded from a query or a JSON
    body are. ``scattered=True`` shuffles the list after creating the tuples, so walking it jumps around memory:
    the worst case for reading Python objects (every tuple a cache miss), reported as its own row.
    """
    rng = random.Random(seed)
    out = []
    t = 0
    for _ in range(n):
        t += rng.randint(-5, 30) * STEP
        t = max(t, 0)
        out.append((t, t + rng.randint(1, 20) * STEP))
    rng.shuffle(out)
    if scattered:
        return out
    return [(s, e) for s, e in np.array(out, dtype=np.int64).tolist()]  # fresh tuples, allocated in list order


def naive_merge_subtract(a: list[tuple[int, int]], b: list[tuple[int, int]]) -> int:
    """The per-bar baseline: sets of bar timestamps, then ranges rebuilt from the sorted bars."""
    bars_a = {t for s, e in a for t in range(s, e, STEP)}
    bars_b = {t for s, e in b for t in range(s, e, STEP)}
    remaining = sorted(bars_a - bars_b)
    ranges = 0
    prev = None
    for t in remaining:
        if prev is None or t != prev + STEP:
            ranges += 1
        prev = t
    return ranges


def time_merge_subtract(size: int, runs: int, scattered: bool) -> float:
    a, b = make_ranges(size, 1, scattered), make_ranges(size, 2, scattered)
    seconds, _ = median_time_s(lambda: subtract_ranges(merge_ranges(a), b), runs)
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs per figure (median reported)")
    parser.add_argument("--size", type=int, default=1_000_000, help="ranges in the main input")
    parser.add_argument("--naive-size", type=int, default=50_000, help="ranges in the naive baseline's input")
    args = parser.parse_args()

    ours_s = time_merge_subtract(args.size, args.runs, scattered=False)
    scattered_s = time_merge_subtract(args.size, args.runs, scattered=True)
    na, nb = make_ranges(args.naive_size, 1), make_ranges(args.naive_size, 2)
    naive_s, _ = median_time_s(lambda: naive_merge_subtract(na, nb), args.runs)
    ours_ns = ours_s / args.size * 1e9
    naive_ns = naive_s / args.naive_size * 1e9
    print(f"## merge + subtract (median of {args.runs} runs)\n")
    print(
        table(
            ["implementation", "ranges", "time (s)", "ns per range"],
            [
                ["provider.core (numpy sweep)", args.size, ours_s, ours_ns],
                ["provider.core, tuples scattered in memory", args.size, scattered_s, scattered_s / args.size * 1e9],
                ["naive per-bar sets", args.naive_size, naive_s, naive_ns],
            ],
        )
    )
    print(
        f"\nspeed-up per range: {naive_ns / ours_ns:.1f}x; target: {args.size:,} ranges under 2 s -> {ours_s:.2f} s\n"
    )

    curve = []
    for n in (1_000, 10_000, 100_000, 1_000_000):
        covered = make_ranges(n, 3)
        hi = max(e for _, e in covered)
        t_s, _ = median_time_s(functools.partial(missing_ranges, 0, hi, covered, STEP), args.runs)
        curve.append([n, t_s * 1000, t_s / n * 1e9])
    print("## missing_ranges over a whole series (coverage math curve)\n")
    print(table(["covered windows", "time (ms)", "ns per window"], curve))
    emit(
        "ranges",
        {
            "merge_subtract_1m_s": ours_s,
            "merge_subtract_1m_scattered_s": scattered_s,
            "naive_ns_per_range": naive_ns,
            "ours_ns_per_range": ours_ns,
            "speedup": naive_ns / ours_ns,
            "missing_curve_ms": {str(row[0]): row[1] for row in curve},
        },
    )


if __name__ == "__main__":
    main()
