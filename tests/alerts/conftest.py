"""The alert tests share the coordinator and e2e kits (real clusters, workers, the loopback exchange) and
prom_kit.py (the prometheus server and the generated short-clock rules): their directories go on sys.path here,
as tests/operator/conftest.py does for its kits."""

from __future__ import annotations

import sys
from pathlib import Path

_TESTS = Path(__file__).resolve().parents[1]
for _path in (_TESTS / "coordinator", _TESTS / "e2e", _TESTS / "alerts"):
    sys.path.insert(0, str(_path))
