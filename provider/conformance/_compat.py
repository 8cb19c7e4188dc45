"""Schemas, subjects and their compatibility rules: plain data and pure functions, no I/O.

Rules:
1. A schema is a subject name, a version, ordered ``(column, dtype)`` pairs that start with ``ts``, and the set of
   its optional columns. An optional column may be absent from a frame and is then filled with NaN (NaT, None):
   only dtypes that hold a missing value may be optional (float, datetime64, object, string).
2. ``read_problems(reader, writer)`` says why data written with ``writer`` cannot be read with ``reader`` (empty:
   it can). Each reader column must be in the writer with the same dtype or one that widens into it without loss
   (:func:`widens`), and may be required only if the writer requires it too; a reader column the writer lacks must
   be optional. Writer columns the reader lacks are dropped on read: always allowed.
3. Policies use the Confluent Schema Registry's words. ``backward``: the new schema reads data written with the
   previous one; ``forward``: the previous schema reads data written with the new one; ``full``: both; ``none``:
   no check. ``*_transitive`` checks against every earlier version instead of the latest only.
4. A subject is a schema name, a node-id pattern (an fnmatch glob over series keys), a policy and its versions.
   Specificity of a pattern = its literal characters (``*``, ``?`` and ``[...]`` count 0); the most specific
   matching subject wins. Two subjects of equal specificity whose patterns can match one key are refused when
   the second is registered (:func:`globs_overlap`), so resolution never ties.
"""

from __future__ import annotations

import fnmatch
import functools
from dataclasses import dataclass, field

__all__ = [
    "ALLOWED_CHANGES",
    "COMPATIBILITY",
    "DEFAULT_COMPATIBILITY",
    "Schema",
    "Subject",
    "globs_overlap",
    "optional_allowed",
    "parse_declaration",
    "pattern_specificity",
    "policy_problems",
    "read_problems",
    "widens",
]

#: The compatibility policies a subject may have.
COMPATIBILITY = (
    "backward",
    "backward_transitive",
    "forward",
    "forward_transitive",
    "full",
    "full_transitive",
    "none",
)
#: The policy of a subject created without one.
DEFAULT_COMPATIBILITY = "backward"
#: What each base policy lets a new version change (shown in errors and docs).
ALLOWED_CHANGES = {
    "backward": "add optional columns (dtype ending in '?'), remove columns, widen dtypes "
    "(int -> float64, float32 -> float64, int32 -> int64)",
    "forward": "add columns, remove optional columns, narrow dtypes (float64 -> float32, int64 -> int32)",
    "full": "add or remove optional columns; dtypes stay as they are",
    "none": "any change",
}

_SIGNED = ("int8", "int16", "int32", "int64")
_UNSIGNED = ("uint8", "uint16", "uint32", "uint64")
_FLOATS = ("float16", "float32", "float64")
_TS_TEXT = "datetime64[ns, UTC]"
_NULLABLE_PREFIXES = ("float", "Float", "datetime64", "object", "string", "str")


@dataclass(frozen=True, slots=True)
class Schema:
    """One version of a named column schema (module rule 1)."""

    name: str
    version: int
    columns: tuple[tuple[str, str], ...]
    #: Columns that may be absent from a frame (filled with NaN).
    optional: frozenset[str] = field(default_factory=frozenset)

    @property
    def label(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"

    @property
    def names(self) -> tuple[str, ...]:
        """The column names, in order."""
        return tuple(c for c, _ in self.columns)

    def dtype(self, column: str) -> str | None:
        """The dtype text of ``column``, or None when the schema lacks it."""
        return dict(self.columns).get(column)

    def same_shape(self, other: Schema) -> bool:
        """True when ``other`` has the same columns, dtypes and optional set (names and versions aside)."""
        return self.columns == other.columns and self.optional == other.optional

    def describe(self) -> str:
        """``ts:datetime64[ns, UTC],open:float64,...`` with ``?`` after optional dtypes (the CLI's syntax)."""
        return ",".join(f"{c}:{d}{'?' if c in self.optional else ''}" for c, d in self.columns)


@dataclass(frozen=True, slots=True)
class Subject:
    """A schema name with its node-id pattern, compatibility policy and versions (module rule 4)."""

    name: str
    pattern: str
    compatibility: str
    versions: tuple[Schema, ...]

    @property
    def latest(self) -> Schema:
        """The newest version: the one frames without a declaration are checked against."""
        return self.versions[-1]

    def version(self, number: int) -> Schema | None:
        """Version ``number``, or None."""
        return next((s for s in self.versions if s.version == number), None)

    def matches(self, node_id: str) -> bool:
        """True when the pattern matches the series key ``node_id``."""
        return fnmatch.fnmatchcase(node_id, self.pattern)


def optional_allowed(dtype: str) -> bool:
    """True when ``dtype`` can hold a missing value, so a column of it may be optional."""
    return dtype.startswith(_NULLABLE_PREFIXES)


def widens(writer: str, reader: str) -> bool:
    """True when values of dtype ``writer`` convert to ``reader`` without loss (int64 -> float64 included:
    integers past 2**53 are blocked as ``precision_loss`` at ingest)."""
    if writer == reader:
        return True
    if reader == "float64":
        return writer in _SIGNED + _UNSIGNED + _FLOATS
    if reader == "float32":
        return writer in ("float16", "int8", "int16", "uint8", "uint16")
    if reader in _SIGNED:
        rank = _SIGNED.index(reader)
        return writer in _SIGNED[:rank] + _UNSIGNED[:rank]
    if reader in _UNSIGNED:
        return writer in _UNSIGNED[: _UNSIGNED.index(reader)]
    # Naive datetimes mean UTC (house rule); every unit fits ns within the years pandas can hold.
    return reader == _TS_TEXT and writer.startswith("datetime64[")


def read_problems(reader: Schema, writer: Schema) -> list[tuple[str, str]]:
    """Why data written with ``writer`` cannot be read with ``reader``, as ``(column, problem)`` (module rule 2)."""
    problems: list[tuple[str, str]] = []
    for column, dtype in reader.columns:
        written = writer.dtype(column)
        if written is None:
            if column not in reader.optional:
                problems.append((column, f"required by {reader.label} but absent from {writer.label}"))
            continue
        if not widens(written, dtype):
            problems.append((column, f"{written} in {writer.label} does not widen to {dtype} in {reader.label}"))
        if column in writer.optional and column not in reader.optional:
            problems.append((column, f"optional in {writer.label} but required by {reader.label}"))
    return problems


def policy_problems(policy: str, candidate: Schema, history: tuple[Schema, ...]) -> list[tuple[str, str]]:
    """Why ``candidate`` may not follow ``history`` (oldest first) under ``policy`` (module rule 3)."""
    if policy not in COMPATIBILITY:
        raise ValueError(f"compatibility {policy!r} must be one of {', '.join(COMPATIBILITY)}")
    base = policy.removesuffix("_transitive")
    if base == "none" or not history:
        return []
    earlier = history if policy.endswith("_transitive") else history[-1:]
    problems: list[tuple[str, str]] = []
    for old in earlier:
        if base in ("backward", "full"):
            problems += read_problems(candidate, old)
        if base in ("forward", "full"):
            problems += read_problems(old, candidate)
    return list(dict.fromkeys(problems))


def parse_declaration(text: object) -> tuple[str, int | None]:
    """``"name@3"`` -> ``("name", 3)``, ``"name"`` -> ``("name", None)``; ValueError naming the text otherwise."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"schema declaration {text!r} must be 'name' or 'name@version'")
    name, sep, version = text.strip().partition("@")
    if not sep:
        return name, None
    if not version.isdigit() or int(version) < 1:
        raise ValueError(f"schema declaration {text!r} must be 'name' or 'name@version' (version >= 1)")
    return name, int(version)


def _tokens(pattern: str) -> tuple[str, ...]:
    """A glob as tokens: ``*``, ``?`` (a ``[...]`` class counts as ``?``) and single literal characters."""
    tokens: list[str] = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        end = pattern.find("]", i + 2) if char == "[" else -1
        if end != -1:
            tokens.append("?")
            i = end + 1
            continue
        tokens.append(char if char in "*?" else "=" + char)
        i += 1
    return tuple(tokens)


def pattern_specificity(pattern: str) -> int:
    """The literal characters of ``pattern`` (module rule 4)."""
    return sum(t.startswith("=") for t in _tokens(pattern))


def globs_overlap(a: str, b: str) -> bool:
    """True when some key matches both globs (a ``[...]`` class is taken as any one character: conservative)."""
    ta, tb = _tokens(a), _tokens(b)

    @functools.cache
    def meet(i: int, j: int) -> bool:
        if i == len(ta) and j == len(tb):
            return True
        if i < len(ta) and ta[i] == "*" and (meet(i + 1, j) or (j < len(tb) and meet(i, j + 1))):
            return True
        if j < len(tb) and tb[j] == "*" and (meet(i, j + 1) or (i < len(ta) and meet(i + 1, j))):
            return True
        if i == len(ta) or j == len(tb) or "*" in (ta[i], tb[j]):
            return False
        return (ta[i] == "?" or tb[j] == "?" or ta[i] == tb[j]) and meet(i + 1, j + 1)

    return meet(0, 0)
