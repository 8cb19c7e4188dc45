"""Regenerate the key table of docs/configuration.md from the config schema.

Run: ``.venv/bin/python scripts/gen_config_docs.py`` after adding or changing a config field; the test
``tests/core/test_config_docs.py`` fails until the docs match the code.
"""

from __future__ import annotations

from pathlib import Path

from provider.core import describe_schema

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"
MARKER = "| key | type | default | allowed / meaning |"


def _shown(default: object) -> str:
    if default is None:
        return "null"
    if isinstance(default, bool):
        return str(default).lower()
    return str(default)


def main() -> None:
    head = DOC.read_text(encoding="utf-8").split(MARKER)[0]
    lines = [MARKER, "|---|---|---|---|"]
    lines += [f"| `{path}` | {kind} | `{_shown(default)}` | {doc} |" for path, kind, default, doc in describe_schema()]
    DOC.write_text(head + "\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(lines) - 2} keys to {DOC}")


if __name__ == "__main__":
    main()
