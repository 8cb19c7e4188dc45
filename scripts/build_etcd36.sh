#!/usr/bin/env bash
# Build etcd 3.6.8 from the Go module proxy for the side-by-side coordinator benchmark (bench/bench_coordinator.py,
# bench/_etcd.py), as ../shared/FACTS.md describes: `go install go.etcd.io/etcd/server/v3@v3.6.8` refuses the
# module because of its replace directives, so a tiny module that calls etcdmain.Main is built instead.
#
# Rules: the binary goes to a cache outside the repository (default ~/.cache/seamless/etcd-3.6.8/etcd, or $1);
# nothing is built when it is already there; the build (about 4 CPU-minutes on 2 cores) holds /work/bench.lock when
# that file exists, so it never runs beside a benchmark.
# Usage: bash scripts/build_etcd36.sh [OUTPUT_BINARY]
set -euo pipefail

version=v3.6.8
out="${1:-$HOME/.cache/seamless/etcd-3.6.8/etcd}"
if [ -x "$out" ]; then
    echo "build_etcd36: $out is there ($("$out" --version | head -1))"
    exit 0
fi
command -v go >/dev/null || { echo "build_etcd36: needs the Go toolchain (go) on PATH" >&2; exit 1; }
src="$(dirname "$out")/src"
mkdir -p "$src"
cat >"$src/main.go" <<'GO'
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() { etcdmain.Main(os.Args) }
GO
printf 'module etcdbuild\n\ngo 1.23\n' >"$src/go.mod"
build() {
    cd "$src"
    go get "go.etcd.io/etcd/server/v3@$version" "go.etcd.io/etcd/api/v3@$version" \
        "go.etcd.io/etcd/client/pkg/v3@$version" "go.etcd.io/etcd/client/v3@$version" "go.etcd.io/etcd/pkg/v3@$version"
    go mod tidy
    go build -o "$out" .
}
if [ -e /work/bench.lock ] && command -v flock >/dev/null; then
    exec 9>/work/bench.lock
    flock 9
fi
build
echo "build_etcd36: built $out ($("$out" --version | head -1))"
