"""The replicated commands are declared on the table's methods (coordinator/_commands.py) and Raft dispatches
through that one registry."""

from __future__ import annotations

import inspect
import threading

from coordinator import raft
from coordinator._commands import command, commands_of
from coordinator._records import Result
from coordinator.raft import TableConsumer
from coordinator.table import COMMANDS, Table

#: The commands of the first release's journals: a name in the journal must keep meaning the same command.
RELEASED = {
    "announce",
    "barrier",
    "submit_job",
    "cancel_job",
    "retry_job",
    "claim",
    "renew",
    "complete",
    "fail",
    "expire",
    "retire",
    "release",
    "requeue",
    "mark_done",
    "key_claim",
    "key_complete",
    "key_fail",
}


def test_the_registry_holds_every_released_command_and_only_table_methods() -> None:
    """Every command name ever written to a journal is still a command, each entry is the Table's own method of
    that name, and the Raft adapter uses this same registry."""
    assert set(COMMANDS) == RELEASED
    for name, fn in COMMANDS.items():
        assert getattr(Table, name) is fn
        assert all(p.kind is not p.POSITIONAL_OR_KEYWORD for p in list(inspect.signature(fn).parameters.values())[1:])
    assert raft.COMMANDS is COMMANDS


def test_methods_without_the_mark_are_not_commands() -> None:
    """Queries and persistence methods cannot be replicated; an unmarked override hides the base's command."""
    assert not {"export_state", "import_state", "snapshot", "job", "lease_infos"} & set(COMMANDS)

    class Base:
        @command
        def act(self) -> Result:
            return Result.success({})

        @command
        def other(self) -> Result:
            return Result.success({})

    class Child(Base):
        def act(self) -> Result:  # no longer a command
            return Result.error("invalid", "no")

    assert list(commands_of(Base)) == ["act", "other"]
    assert list(commands_of(Child)) == ["other"]


def test_a_name_outside_the_registry_is_invalid_and_changes_nothing() -> None:
    """The apply loop answers an unknown or non-string op with ``invalid`` and never calls into the table."""
    table = Table()
    consumer = TableConsumer(table, threading.Lock(), lambda op, result: None)
    before = table.snapshot()
    results = consumer.apply_batch([("export_state", {}), ("__init__", {}), (("claim",), {})], _doApply=True)
    assert [(r.ok, r.code) for r in results] == [(False, "invalid")] * 3
    assert table.snapshot() == before
