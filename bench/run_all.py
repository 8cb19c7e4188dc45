"""`make bench` (``python -m bench.run_all``): run every bench/bench_*.py as a module, collect their RESULT
lines into one JSON file and one markdown file.

Each script prints its own tables (medians of several runs, ratios against baselines measured in the same run)
and one ``RESULT {json}`` line. Results land in bench/results/ (git-ignored): ``results.json`` and
``results.md``. Run one script alone from the repository root with ``.venv/bin/python -m bench.bench_NAME --help``.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="*", help="script names to run (e.g. ranges storage)")
    args = parser.parse_args()
    scripts = sorted(HERE.glob("bench_*.py"))
    if args.only:
        scripts = [s for s in scripts if s.stem.removeprefix("bench_") in args.only]
    out_dir = HERE / "results"
    out_dir.mkdir(exist_ok=True)
    results, sections, failed = [], [], []
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.monotonic()
        module = f"bench.{script.stem}"
        proc = subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, check=False, cwd=ROOT)
        took_s = time.monotonic() - started
        print(proc.stdout, flush=True)
        if proc.returncode != 0:
            failed.append(script.name)
            print(proc.stderr[-3000:], file=sys.stderr)
        body = [line for line in proc.stdout.splitlines() if not line.startswith("RESULT ")]
        sections.append(f"## {script.stem}\n\n(took {took_s:.0f} s)\n\n" + "\n".join(body))
        results += [json.loads(line[7:]) for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    machine = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpus": __import__("os").cpu_count(),
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    (out_dir / "results.json").write_text(json.dumps({"machine": machine, "results": results}, indent=2))
    (out_dir / "results.md").write_text(f"# Benchmark results\n\nmachine: {machine}\n\n" + "\n\n".join(sections))
    print(f"wrote {out_dir / 'results.json'} and {out_dir / 'results.md'}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
