"""docs/architecture.md and the runbook's lease tool section stay true: links resolve, commands exist."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import lease_recover  # scripts/ is on pytest's pythonpath (pyproject.toml)
import lease_recover_qmtl

DOCS = Path(__file__).resolve().parents[2] / "docs"
PACKAGE_NOTES = [
    "coordinator.md",
    "http-api.md",
    "worker.md",
    "sources.md",
    "storage.md",
    "provider.md",
    "configuration.md",
    "runbook.md",
]


def _slugs(markdown: str) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to dashes."""
    headings = re.findall(r"^#{1,6} (.+)$", markdown, re.MULTILINE)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def test_architecture_links_resolve_and_cover_every_package_note() -> None:
    """Every relative link of docs/architecture.md names an existing doc (and heading), and each package note is
    linked."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    links = re.findall(r"\]\(([^)#]+\.md)(?:#([^)]+))?\)", text)
    assert links
    for target, anchor in links:
        path = DOCS / target
        assert path.exists(), target
        if anchor:
            assert anchor in _slugs(path.read_text(encoding="utf-8")), f"{target}#{anchor}"
    assert set(PACKAGE_NOTES) <= {target for target, _ in links}


def test_architecture_has_a_diagram_and_the_lease_lifecycle() -> None:
    """The overview draws provider -> coordinator cluster -> workers -> exchange/storage and the window states."""
    text = (DOCS / "architecture.md").read_text(encoding="utf-8")
    diagram = text.split("## Components", 1)[1].split("```", 2)[1]
    for box in ("provider", "coordinator cluster", "worker run", "storage", "exchanges"):
        assert box in diagram, box
    states = text.split("```mermaid", 1)[1].split("```", 1)[0]
    for transition in (
        "pending --> leased",
        "leased --> done",
        "leased --> pending",
        "leased --> failed",
        "failed --> pending",
    ):
        assert transition in states, transition


def test_the_runbook_uses_only_commands_the_tool_has() -> None:
    """Every `lease_recover.py` subcommand and option the runbook shows exists in the tool's parser."""
    text = (DOCS / "runbook.md").read_text(encoding="utf-8")
    parser = lease_recover.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices
    commands = set(subcommands)
    used = set(re.findall(r"(?:lease_recover\.py(?: --coordinator \$COORD)?|\$lr) ([a-z][a-z-]*)", text))
    assert used and used <= commands, used - commands
    assert commands <= used, f"runbook does not show {commands - used}"
    options = {o for action in parser._actions for o in action.option_strings}
    for sub in subcommands.values():
        options |= {o for action in sub._actions for o in action.option_strings}
    # QMTL's form (--coordinator-url --action ...) has its own parser.
    options |= {o for action in lease_recover_qmtl.build_parser()._actions for o in action.option_strings}
    section = text.split("## Lease recovery tool", 1)[1]
    assert set(re.findall(r"(--[a-z-]+)", section)) <= options
