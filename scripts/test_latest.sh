#!/usr/bin/env bash
# Run the fast tests against the newest versions pyproject.toml allows, not the versions uv.lock pins, so a release
# that breaks a declared range is seen the day it ships (`make test-latest`; .ci/run reports it without gating).
# Prints which packages differ from the lock, then pytest's own report. Exits with pytest's status.
# Usage: UV=.tools/bin/uv PYTHON=python3 bash scripts/test_latest.sh [pytest args...]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
uv="${UV:-.tools/bin/uv}"
latest=.venv-latest

"$uv" venv -q --allow-existing --python "${PYTHON:-python3}" "$latest"
VIRTUAL_ENV="$latest" "$uv" pip install -q --upgrade --refresh -e '.[test,dev]'

echo "test-latest: versions that differ from uv.lock (locked -> newest allowed):"
join -j 1 -t '=' \
    <(VIRTUAL_ENV=.venv "$uv" pip freeze --exclude-editable 2>/dev/null | sed 's/==/=/' | sort) \
    <(VIRTUAL_ENV="$latest" "$uv" pip freeze --exclude-editable 2>/dev/null | sed 's/==/=/' | sort) \
    | awk -F= '$2 != $3 { printf "  %-28s %s -> %s\n", $1, $2, $3; n++ } END { if (!n) print "  (none: the lock is current)" }'

exec "$latest/bin/python" -m pytest -p no:cacheprovider "$@"
