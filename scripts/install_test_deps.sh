#!/usr/bin/env bash
# Install what the integration tests need, and only what is missing (Debian 12, as root or with sudo):
#   PostgreSQL server binaries (initdb, pg_ctl under /usr/lib/postgresql)  <- postgresql
#   promtool (alert rule tests)                                             <- prometheus
#   etcd (lease/Raft peer for side-by-side benchmarks)                      <- etcd-server
#   java and mvn (QuestDB server jar from Maven Central)                    <- default-jdk-headless, maven
#   python3 (runs python -m devkit.services)                                <- python3
#   headless Chromium and chromedriver (status page browser tests)          <- chromium, chromium-driver
#   fusermount3 and libfuse3 (the power-loss filesystem of the fsync tests)  <- fuse3
# then the QuestDB jar into .cache/questdb (python -m devkit.services fetch-questdb).
#
# Rules: idempotent and quick when everything is there (no apt-get at all); `apt-get update` runs once, and only
# when something must be installed; no recommended packages; installed daemons are not started (a temporary
# policy-rc.d denies it) because the tests start their own servers on free loopback ports.
# Usage: bash scripts/install_test_deps.sh
set -euo pipefail

repo_dir="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

have_postgres_server() {
    compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && compgen -G "/usr/lib/postgresql/*/bin/pg_ctl" >/dev/null
}

missing=()
have_postgres_server || missing+=(postgresql)
command -v promtool >/dev/null || missing+=(prometheus)
command -v etcd >/dev/null || missing+=(etcd-server)
command -v java >/dev/null || missing+=(default-jdk-headless)
command -v mvn >/dev/null || missing+=(maven)
command -v python3 >/dev/null || missing+=(python3)
command -v chromium >/dev/null || missing+=(chromium)
command -v chromedriver >/dev/null || missing+=(chromium-driver)
command -v fusermount3 >/dev/null || missing+=(fuse3)

if ((${#missing[@]} > 0)); then
    as_root=()
    if ((EUID != 0)); then
        command -v sudo >/dev/null || { echo "install_test_deps: need root (or sudo) to install: ${missing[*]}" >&2; exit 1; }
        as_root=(sudo)
    fi
    echo "install_test_deps: installing ${missing[*]}"
    policy=/usr/sbin/policy-rc.d
    if [[ ! -e $policy ]]; then
        # Package scripts must not start postgresql/prometheus/etcd daemons on their default ports.
        printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
        "${as_root[@]}" chmod 755 "$policy"
        trap '"${as_root[@]}" rm -f "$policy"' EXIT
    fi
    # Slim images exclude man pages, and the JDK's update-alternatives then fails on a missing man1 directory.
    "${as_root[@]}" mkdir -p /usr/share/man/man1
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

(cd "$repo_dir" && python3 -m devkit.services fetch-questdb >/dev/null)
echo "install_test_deps: ok (postgresql, promtool, etcd, java, mvn, chromium, chromedriver, QuestDB jar present)"
