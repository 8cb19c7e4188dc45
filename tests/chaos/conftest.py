"""Fixtures of the chaos tests; helpers live beside this file and in the coordinator and e2e test kits."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (HERE, HERE.parent / "coordinator", HERE.parent / "e2e"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))
