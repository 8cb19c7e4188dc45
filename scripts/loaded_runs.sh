#!/usr/bin/env bash
# Run `make test` N times, each in a fresh clone of this repository's main, with two CPU-burning processes
# alongside (what a busy CI machine looks like). Prints each run's wall time and pytest summary line; the logs stay
# in the work directory. Exits 1 when any run failed.
# Usage: bash scripts/loaded_runs.sh [N=5] [WORKDIR=/tmp/seamless-loaded]
set -uo pipefail
runs="${1:-5}"
work="${2:-/tmp/seamless-loaded}"
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
mkdir -p "$work"

burners=()
stop_burners() { ((${#burners[@]})) && kill "${burners[@]}" 2>/dev/null; burners=(); }
trap stop_burners EXIT
for _ in 1 2; do
    (while :; do :; done) &
    burners+=($!)
done

failed=0
for i in $(seq "$runs"); do
    dir="$work/run-$i"
    rm -rf "$dir"
    git clone -q --branch main "$repo" "$dir"
    started=$(date +%s)
    (cd "$dir" && make test) >"$work/run-$i.log" 2>&1
    status=$?
    seconds=$(($(date +%s) - started))
    summary=$(grep -E '^=+ .*(passed|failed|error).* =+$' "$work/run-$i.log" | tail -1)
    printf 'run %d: exit %d in %d s (%dm%02ds): %s\n' "$i" "$status" "$seconds" $((seconds / 60)) $((seconds % 60)) "$summary"
    grep -E '^(FAILED|ERROR) ' "$work/run-$i.log" | sed 's/^/    /'
    ((status == 0)) || failed=1
done
exit "$failed"
