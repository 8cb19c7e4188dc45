"""The configuration reference in docs/ matches the schema the code validates against."""

from __future__ import annotations

import re
from pathlib import Path

from provider.core import describe_schema

DOC = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


def _documented() -> dict[str, str]:
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        match = re.match(r"\| `([a-z_.]+)` \| [^|]+ \| `([^`]*)` \|", line)
        if match:
            rows[match.group(1)] = match.group(2)
    return rows


def _shown(default: object) -> str:
    if default is None:
        return "null"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def test_every_key_is_documented_with_its_default():
    """Each schema key appears in docs/configuration.md with the default the code uses, and nothing else does."""
    schema = {path: _shown(default) for path, _, default, _ in describe_schema()}
    assert _documented() == schema
