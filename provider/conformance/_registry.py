"""The schema registry: subjects with versioned schemas and a compatibility policy, in memory or in a JSON file.

Rules:
1. ``ohlcv`` (pattern ``*``, policy ``backward``) with ``ohlcv@1``, the frame contract of :mod:`provider.frames`,
   is always present. A subject created without ``pattern`` matches its own family: ``<name>:*``.
2. ``register`` returns the existing version when the columns (and optional set) equal one; otherwise it checks
   the candidate against the subject's policy (:func:`~provider.conformance._compat.policy_problems`) and either
   raises :class:`~provider.errors.SchemaIncompatibleError` (nothing written) or appends the next version.
   Versions are immutable: never edited, never removed. A subject keeps the pattern it was created with.
3. Column dtypes are pandas dtype names, canonicalized (``float`` -> ``float64``); a trailing ``?`` marks an
   optional column. The first column is ``ts``, never optional.
4. With ``path`` the registry lives in that file (``provider.conformance._registry_file``): every change re-reads
   it under the writer lock and rewrites it atomically; reads reload it when its inode, size or mtime changed, so
   every process sees the others' registrations. Without ``path`` it lives in memory only.
5. ``resolve(node_id)`` gives the most specific subject whose pattern matches (``_compat`` rule 4).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from provider.conformance._compat import (
    ALLOWED_CHANGES,
    COMPATIBILITY,
    DEFAULT_COMPATIBILITY,
    Schema,
    Subject,
    globs_overlap,
    optional_allowed,
    pattern_specificity,
    policy_problems,
)
from provider.conformance._registry_file import Stamp, file_stamp, locked, read_subjects, write_subjects
from provider.errors import SchemaIncompatibleError, SchemaRegistryError, SchemaRegistryFileError
from provider.frames import FRAME_COLUMNS, TS_DTYPE

__all__ = ["OHLCV_SCHEMA", "SchemaRegistry", "canonical_columns"]

OHLCV_SCHEMA = Schema("ohlcv", 1, (("ts", str(TS_DTYPE)), *((c, "float64") for c in FRAME_COLUMNS[1:])))
_OHLCV = Subject("ohlcv", "*", DEFAULT_COMPATIBILITY, (OHLCV_SCHEMA,))
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
T = TypeVar("T")


def _dtype(column: str, text: str) -> str:
    import pandas as pd

    try:
        return str(pd.api.types.pandas_dtype(text))
    except (TypeError, ValueError):
        raise SchemaRegistryError(
            f"column {column!r}: {text!r} is not a pandas dtype (e.g. float64, int64, datetime64[ns, UTC])"
        ) from None


def canonical_columns(columns: Mapping[str, str]) -> tuple[tuple[tuple[str, str], ...], frozenset[str]]:
    """``(columns, optional)`` from ``{column: dtype}`` with a trailing ``?`` marking optional ones (rule 3)."""
    pairs: list[tuple[str, str]] = []
    optional: set[str] = set()
    for raw_column, raw_dtype in columns.items():
        column, text = str(raw_column).strip(), str(raw_dtype).strip()
        if not column:
            raise SchemaRegistryError("a column name is empty")
        if text.endswith("?"):
            text = text[:-1].strip()
            optional.add(column)
        dtype = _dtype(column, text)
        if column in optional and not optional_allowed(dtype):
            raise SchemaRegistryError(
                f"column {column!r}: {dtype} cannot hold a missing value, so it cannot be optional"
            )
        pairs.append((column, dtype))
    if not pairs or pairs[0][0] != "ts":
        raise SchemaRegistryError(f"a schema must start with the 'ts' column, got {[c for c, _ in pairs]}")
    if "ts" in optional:
        raise SchemaRegistryError("the 'ts' column cannot be optional")
    return tuple(pairs), frozenset(optional)


class SchemaRegistry:
    """Subjects of versioned schemas with compatibility policies (module rules); in memory, or in ``path``."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._subjects: dict[str, Subject] = {_OHLCV.name: _OHLCV}
        self._stamp: Stamp = None
        #: Bumped whenever the subjects change (a registration, a reload); caches of resolutions key on it.
        self.generation = 0
        if self.path is not None:
            self._load(file_stamp(self.path))

    # -- reading --------------------------------------------------------------------------------------------

    def refresh(self) -> None:
        """Reload the file when another process changed it (rule 4); a no-op in memory."""
        if self.path is not None:
            stamp = file_stamp(self.path)
            if stamp != self._stamp:
                self._load(stamp)

    def subjects(self) -> list[Subject]:
        """Every subject, by name."""
        self.refresh()
        return [self._subjects[name] for name in sorted(self._subjects)]

    def subject(self, name: str) -> Subject:
        """The subject ``name``; KeyError naming the known ones otherwise."""
        self.refresh()
        found = self._subjects.get(name)
        if found is None:
            raise KeyError(f"schema {name!r} is not registered; known: {', '.join(sorted(self._subjects))}")
        return found

    def get(self, name: str, version: int | None = None) -> Schema:
        """A schema by name and version (the latest when ``version`` is None)."""
        subject = self.subject(name)
        chosen = subject.latest if version is None else subject.version(version)
        if chosen is None:
            raise KeyError(f"schema {name!r} has no version {version}; versions: {self.versions(name)}")
        return chosen

    def versions(self, name: str) -> list[int]:
        """The versions registered under ``name`` (empty for an unknown name)."""
        self.refresh()
        subject = self._subjects.get(name)
        return [s.version for s in subject.versions] if subject else []

    def resolve(self, node_id: str) -> Subject:
        """The most specific subject whose pattern matches ``node_id`` (``ohlcv`` matches everything)."""
        self.refresh()
        matching = [s for s in self._subjects.values() if s.matches(node_id)]
        return max(matching, key=lambda s: pattern_specificity(s.pattern), default=self._subjects["ohlcv"])

    def check(
        self, name: str, columns: Mapping[str, str], *, compatibility: str | None = None
    ) -> list[tuple[str, str]]:
        """Why ``columns`` could not become the next version of ``name`` (empty: they could), under the subject's
        policy or ``compatibility``. A new subject has nothing to be compatible with."""
        self.refresh()
        pairs, optional = canonical_columns(columns)
        subject = self._subjects.get(name)
        if subject is None:
            return []
        policy = _policy(compatibility or subject.compatibility)
        candidate = Schema(name, subject.latest.version + 1, pairs, optional)
        return policy_problems(policy, candidate, subject.versions)

    # -- writing --------------------------------------------------------------------------------------------

    def register(
        self,
        name: str,
        columns: Mapping[str, str],
        *,
        pattern: str | None = None,
        compatibility: str | None = None,
    ) -> Schema:
        """Register ``columns`` under ``name`` (rule 2): the existing equal version, or the next one."""
        if not _NAME.match(name):
            raise SchemaRegistryError(f"schema name {name!r} must be 1-64 letters, digits, '_', '.' or '-'")
        pairs, optional = canonical_columns(columns)
        policy = _policy(compatibility) if compatibility is not None else None

        def change(subjects: dict[str, Subject]) -> Schema:
            subject = subjects.get(name)
            if subject is None:
                glob = _free_pattern(subjects, name, pattern if pattern is not None else f"{name}:*")
                first = Schema(name, 1, pairs, optional)
                subjects[name] = Subject(name, glob, policy or DEFAULT_COMPATIBILITY, (first,))
                return first
            if pattern is not None and pattern != subject.pattern:
                raise SchemaRegistryError(f"subject {name!r} has pattern {subject.pattern!r}; a pattern never changes")
            if policy is not None and policy != subject.compatibility:
                raise SchemaRegistryError(
                    f"subject {name!r} has compatibility {subject.compatibility}; change it with set_compatibility "
                    "(coordinator schema set-compatibility) before registering"
                )
            candidate = Schema(name, subject.latest.version + 1, pairs, optional)
            existing = next((s for s in subject.versions if s.same_shape(candidate)), None)
            if existing is not None:
                return existing
            problems = policy_problems(subject.compatibility, candidate, subject.versions)
            if problems:
                base = subject.compatibility.removesuffix("_transitive")
                raise SchemaIncompatibleError(name, subject.compatibility, problems, ALLOWED_CHANGES[base])
            subjects[name] = Subject(name, subject.pattern, subject.compatibility, (*subject.versions, candidate))
            return candidate

        return self._change(change)

    def set_compatibility(self, name: str, compatibility: str) -> Subject:
        """Give subject ``name`` another policy; existing versions stay as they are (as in Confluent's)."""
        policy = _policy(compatibility)

        def change(subjects: dict[str, Subject]) -> Subject:
            subject = subjects.get(name)
            if subject is None:
                raise KeyError(f"schema {name!r} is not registered; known: {', '.join(sorted(subjects))}")
            subjects[name] = Subject(name, subject.pattern, policy, subject.versions)
            return subjects[name]

        return self._change(change)

    # -- internals ------------------------------------------------------------------------------------------

    def _change(self, change: Callable[[dict[str, Subject]], T]) -> T:
        if self.path is None:
            subjects = dict(self._subjects)
            result = change(subjects)
            if subjects != self._subjects:
                self._subjects = subjects
                self.generation += 1
            return result
        with locked(self.path):
            self._load(file_stamp(self.path))
            subjects = dict(self._subjects)
            result = change(subjects)
            if subjects != self._subjects:
                write_subjects(self.path, subjects)
                self._subjects = subjects
                self._stamp = file_stamp(self.path)
                self.generation += 1
        return result

    def _load(self, stamp: Stamp) -> None:
        if self.path is None:
            return
        stored = read_subjects(self.path)
        builtin = stored.get("ohlcv")
        if builtin is not None and (builtin.pattern != "*" or not builtin.versions[0].same_shape(OHLCV_SCHEMA)):
            raise SchemaRegistryFileError(
                str(self.path), "subject 'ohlcv' must keep pattern '*' and ohlcv@1 as built in"
            )
        stored["ohlcv"] = (
            Subject("ohlcv", "*", builtin.compatibility, (OHLCV_SCHEMA, *builtin.versions[1:])) if builtin else _OHLCV
        )
        self._subjects = stored
        self._stamp = stamp
        self.generation += 1


def _policy(text: str) -> str:
    policy = text.strip().lower().replace("-", "_")
    if policy not in COMPATIBILITY:
        raise SchemaRegistryError(f"compatibility {text!r} must be one of {', '.join(COMPATIBILITY)}")
    return policy


def _free_pattern(subjects: dict[str, Subject], name: str, pattern: str) -> str:
    """``pattern`` when no subject ties with it (``_compat`` rule 4), else SchemaRegistryError naming the other."""
    if not pattern.strip():
        raise SchemaRegistryError(f"subject {name!r}: the pattern is empty")
    rank = pattern_specificity(pattern)
    for other in subjects.values():
        if pattern_specificity(other.pattern) == rank and globs_overlap(pattern, other.pattern):
            raise SchemaRegistryError(
                f"subject {name!r}: pattern {pattern!r} ties with subject {other.name!r} ({other.pattern!r}): both "
                f"have {rank} literal characters and can match the same series key; make one more specific"
            )
    return pattern
