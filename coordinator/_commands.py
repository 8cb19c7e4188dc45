"""The replicated commands of the lease table, declared where they are defined.

Rules:
1. A table method becomes a replicated command by the :func:`command` decorator on its definition, in
   ``table.py``, ``_keyed.py`` or ``_retire.py``: there is no second list to keep in step. The command's name is the
   method's name; it is what travels in the Raft journal, so a name never changes once released.
2. :func:`commands_of` builds the registry (name -> unbound method) from a table class, once, at import; the
   Raft adapter dispatches through it (``raft.py`` rule 1), never by ``getattr`` on a name read from the log.
   A name that is not in the registry is answered ``invalid`` by the adapter and changes nothing.
3. A command takes keyword arguments only and returns a :class:`coordinator._records.Result`; it never raises
   on bad input (``_state.py`` rule 2). The decorator changes nothing of the method: it only marks it.
4. Pure: no I/O, clock, logging or pysyncobj.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from coordinator._records import Result

__all__ = ["CommandFn", "command", "commands_of"]

#: An unbound table command: ``fn(table, **kwargs) -> Result``.
CommandFn = Callable[..., Result]
F = TypeVar("F", bound=CommandFn)

_MARK = "__table_command__"


def command(fn: F) -> F:
    """Mark a table method as a replicated command (rule 1)."""
    setattr(fn, _MARK, True)
    return fn


def commands_of(cls: type[Any]) -> Mapping[str, CommandFn]:
    """The replicated commands of ``cls`` and its bases by name, read-only, in definition order (rule 2)."""
    found: dict[str, CommandFn] = {}
    for klass in reversed(cls.__mro__):
        for name, value in vars(klass).items():
            if callable(value) and getattr(value, _MARK, False):
                found[name] = value
            else:  # an override without the mark is not a command (and never runs the base's)
                found.pop(name, None)
    return MappingProxyType(found)
