"""Every log event is named `area.event_name`: dotted lower snake case, at least two parts.

The walk reads the source (AST) of every first-party package and checks each call of a logger method
(``log.info(...)``, ``_log.warning(...)``, ``self.log.error(...)`` ...) whose receiver is named like a logger.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("provider", "coordinator", "worker", "ops")
LEVELS = frozenset({"debug", "info", "warning", "warn", "error", "exception", "critical", "msg"})
#: The house convention: ``area.event_name`` (e.g. ``fetch.done``, ``worker.window_done``, ``raft.stand_aside``).
EVENT = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")
LOGGER = re.compile(r"(^|\.)_?log(ger)?$")
#: Calls whose event is a variable, and the names it takes (each checked against the convention below).
VARIABLE_EVENTS = {
    ("coordinator/_disk.py", "event"): ("disk.low", "disk.recovered", "disk.still_low"),
    ("coordinator/handlers.py", "event"): ("window.requeued", "window.marked_done"),
}


def _log_calls() -> list[tuple[str, int, ast.expr]]:
    calls = []
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LEVELS
                    and LOGGER.search(ast.unparse(node.func.value))
                    and node.args
                ):
                    calls.append((str(path.relative_to(ROOT)), node.lineno, node.args[0]))
    return calls


def test_every_log_event_follows_the_convention() -> None:
    """Each literal event name is dotted lower snake case; no f-string or free text is an event."""
    calls = _log_calls()
    assert len(calls) > 50  # the walk finds the logging calls (a walk that finds none proves nothing)
    bad = []
    for path, line, arg in calls:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            if not EVENT.match(arg.value):
                bad.append(f"{path}:{line}: {arg.value!r}")
        elif isinstance(arg, ast.Name) and (path, arg.id) in VARIABLE_EVENTS:
            continue
        else:
            bad.append(f"{path}:{line}: event is not a string literal: {ast.unparse(arg)}")
    assert bad == []


def test_variable_events_are_named_by_the_convention_and_used() -> None:
    """The few events passed through a variable follow the convention and appear in their module."""
    for (path, _), events in VARIABLE_EVENTS.items():
        text = (ROOT / path).read_text(encoding="utf-8")
        for event in events:
            assert EVENT.match(event) and f'"{event}"' in text, (path, event)


def test_the_convention_rejects_the_old_styles() -> None:
    """The pattern refuses the styles the code used to mix: free text, bare snake case, colons."""
    for old in ("window done", "job_submitted", "autoscale: backlog unknown", "Fetch.Done", "fetch."):
        assert not EVENT.match(old)
    for good in ("fetch.done", "worker.window_done", "raft.stand_aside", "disk.data_dir_write_failed"):
        assert EVENT.match(good)
