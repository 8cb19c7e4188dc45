"""The schema registry: compatibility rules and policies, subjects and their patterns, the JSON file (restart,
two processes registering at once, corruption)."""

from __future__ import annotations

import json
import multiprocessing
from pathlib import Path

import pytest

from provider.conformance import (
    COMPATIBILITY,
    OHLCV_SCHEMA,
    Schema,
    SchemaIncompatibleError,
    SchemaRegistry,
    SchemaRegistryError,
    SchemaRegistryFileError,
)
from provider.conformance._compat import globs_overlap, pattern_specificity, policy_problems, read_problems, widens

TS = "datetime64[ns, UTC]"


def _schema(version: int, spec: str) -> Schema:
    """A ``quotes`` schema from ``'bid:float64,ask:float64?'`` (ts is prepended)."""
    columns: list[tuple[str, str]] = [("ts", TS)]
    optional = set()
    for item in filter(None, spec.split(",")):
        name, dtype = item.split(":")
        if dtype.endswith("?"):
            optional.add(name)
        columns.append((name, dtype.rstrip("?")))
    return Schema("quotes", version, tuple(columns), frozenset(optional))


BASE = "bid:float64,ask:float64"
#: (change, old columns, new columns, is backward compatible, is forward compatible)
CHANGES = [
    ("same", BASE, BASE, True, True),
    ("add optional column", BASE, BASE + ",mid:float64?", True, True),
    ("add required column", BASE, BASE + ",mid:float64", False, True),
    ("remove required column", BASE, "bid:float64", True, False),
    ("remove optional column", BASE + ",mid:float64?", BASE, True, True),
    ("widen float32 -> float64", "bid:float32,ask:float64", BASE, True, False),
    ("widen int64 -> float64", "bid:int64,ask:float64", BASE, True, False),
    ("narrow float64 -> float32", BASE, "bid:float32,ask:float64", False, True),
    ("float64 -> int64", BASE, "bid:int64,ask:float64", False, True),
    ("float64 -> object", BASE, "bid:object,ask:float64", False, False),
    ("optional becomes required", BASE + ",mid:float64?", BASE + ",mid:float64", False, True),
    ("required becomes optional", BASE + ",mid:float64", BASE + ",mid:float64?", True, False),
]


@pytest.mark.parametrize(("change", "old", "new", "backward", "forward"), CHANGES, ids=[c[0] for c in CHANGES])
def test_each_policy_judges_each_change(change: str, old: str, new: str, backward: bool, forward: bool) -> None:
    """backward = the new version reads old data, forward = the old reads new data, full = both, none = anything."""
    before, after = _schema(1, old), _schema(2, new)
    verdict = {p: not policy_problems(p, after, (before,)) for p in COMPATIBILITY}
    assert verdict["backward"] is backward, change
    assert verdict["forward"] is forward, change
    assert verdict["full"] is (backward and forward), change
    assert verdict["none"] is True
    assert verdict["backward_transitive"] is backward  # one earlier version: same verdict
    assert (not read_problems(after, before)) is backward


def test_transitive_policies_check_every_earlier_version() -> None:
    """A column dropped and added back with another dtype passes backward (against the latest only) but not
    backward_transitive (version 1 wrote it as float64, which the new int64 cannot hold)."""
    v1 = _schema(1, BASE + ",mid:float64?")
    v2 = _schema(2, BASE)
    v3 = _schema(3, BASE + ",mid:int64?")  # mid comes back with another dtype: v1's float64 mid cannot be read
    assert policy_problems("backward", v3, (v1, v2)) == []
    assert policy_problems("backward_transitive", v3, (v1, v2)) == [
        ("mid", "float64 in quotes@1 does not widen to int64 in quotes@3")
    ]
    with pytest.raises(ValueError, match="must be one of"):
        policy_problems("sideways", v3, (v1,))


@pytest.mark.parametrize(
    ("writer", "reader", "ok"),
    [
        ("int32", "float64", True),
        ("uint16", "int32", True),
        ("uint32", "int32", False),
        ("int64", "int32", False),
        ("float16", "float32", True),
        ("datetime64[ms, UTC]", TS, True),
        ("datetime64[ns]", TS, True),
        (TS, "datetime64[ms, UTC]", False),
        ("object", "float64", False),
    ],
)
def test_widening_table(writer: str, reader: str, ok: bool) -> None:
    """Only conversions that keep every value are widenings."""
    assert widens(writer, reader) is ok


@pytest.mark.parametrize(
    ("a", "b", "overlap"),
    [
        ("ohlcv:binance:*:1m", "ohlcv:*:BTC/USDT:1m", True),
        ("ohlcv:binance:*", "ohlcv:kraken:*", False),
        ("*", "quotes:*", True),
        ("a?c", "abc", True),
        ("a?c", "abd", False),
        ("*:1m", "*:1h", False),
        ("x*y", "*z", False),
        ("a[bc]d", "aed", True),  # a class is taken as any character: conservative
    ],
)
def test_glob_overlap(a: str, b: str, overlap: bool) -> None:
    """Two globs overlap when one key can match both."""
    assert globs_overlap(a, b) is overlap
    assert globs_overlap(b, a) is overlap


def test_the_most_specific_subject_wins_and_ties_are_refused() -> None:
    """ohlcv (``*``) is the fallback; more literal characters win; an overlapping pattern of equal rank is refused."""
    registry = SchemaRegistry()
    columns = {"ts": TS, "open": "float64"}
    registry.register("binance", columns, pattern="ohlcv:binance:*")
    registry.register("binance_1m", columns, pattern="ohlcv:binance:*:1m")
    assert registry.resolve("ohlcv:binance:BTC/USDT:1m").name == "binance_1m"
    assert registry.resolve("ohlcv:binance:BTC/USDT:1h").name == "binance"
    assert registry.resolve("ohlcv:kraken:BTC/USDT:1m").name == "ohlcv"
    assert pattern_specificity("ohlcv:bitmart:*") == pattern_specificity("ohlcv:binance:*")
    registry.register("bitmart", columns, pattern="ohlcv:bitmart:*")  # same rank, disjoint: fine
    with pytest.raises(SchemaRegistryError, match="ties with subject 'binance'"):
        registry.register("other", columns, pattern="ohlcv:binanc?:*:")
    assert registry.register("trades", {"ts": TS}).version == 1
    assert registry.subject("trades").pattern == "trades:*"


def test_registration_refuses_an_incompatible_change_naming_subject_columns_and_policy() -> None:
    """Under backward a required column cannot be added; the error says what backward allows; nothing changes."""
    registry = SchemaRegistry()
    registry.register("quotes", {"ts": TS, "bid": "float64"})
    with pytest.raises(SchemaIncompatibleError) as caught:
        registry.register("quotes", {"ts": TS, "bid": "float64", "ask": "float64"})
    error = caught.value
    assert (error.subject, error.policy) == ("quotes", "backward")
    assert [c for c, _ in error.problems] == ["ask"]
    assert "'quotes'" in str(error) and "columns ask" in str(error) and "add optional columns" in str(error)
    assert registry.versions("quotes") == [1]
    assert registry.register("quotes", {"ts": TS, "bid": "float", "ask": "float64?"}).version == 2
    registry.set_compatibility("quotes", "none")
    assert registry.register("quotes", {"ts": TS, "ask": "int64"}).version == 3


@pytest.mark.parametrize(
    ("columns", "match"),
    [
        ({"price": "float64"}, "'ts'"),
        ({"ts": TS, "n": "int64?"}, "cannot be optional"),
        ({"ts": TS, "x": "floaty"}, "not a pandas dtype"),
        ({"ts": "datetime64[ns, UTC]?"}, "'ts' column cannot be optional"),
    ],
)
def test_bad_schemas_are_refused(columns: dict[str, str], match: str) -> None:
    """A schema must start with ts, use pandas dtypes, and make optional only columns that hold NaN."""
    with pytest.raises(SchemaRegistryError, match=match):
        SchemaRegistry().register("bad", columns)


def test_versions_and_policies_survive_a_restart(tmp_path: Path) -> None:
    """Acceptance: under backward an incompatible change is refused and a compatible one is versioned; a new
    registry over the same file (a restart) sees both outcomes, and can still refuse and accept."""
    path = tmp_path / "schemas.json"
    first = SchemaRegistry(path)
    first.register("quotes", {"ts": TS, "bid": "float64", "ask": "float64"}, pattern="quotes:*:*:*")
    with pytest.raises(SchemaIncompatibleError):
        first.register("quotes", {"ts": TS, "bid": "float32", "ask": "float64"})
    v2 = first.register("quotes", {"ts": TS, "bid": "float64", "ask": "float64", "mid": "float64?"})
    first.set_compatibility("ohlcv", "full")

    restarted = SchemaRegistry(path)
    assert restarted.versions("quotes") == [1, 2]
    assert restarted.get("quotes") == v2
    assert restarted.subject("quotes").pattern == "quotes:*:*:*"
    assert restarted.subject("ohlcv").compatibility == "full"
    assert restarted.get("ohlcv") is OHLCV_SCHEMA
    with pytest.raises(SchemaIncompatibleError, match="bid"):
        restarted.register("quotes", {"ts": TS, "bid": "float32", "ask": "float64", "mid": "float64?"})
    assert restarted.register("quotes", {"ts": TS, "bid": "float64", "ask": "float64"}).version == 1
    assert restarted.versions("quotes") == [1, 2]
    stored = json.loads(path.read_text())
    assert [v["version"] for v in stored["subjects"]["quotes"]["versions"]] == [1, 2]
    assert path.stat().st_mode & 0o777 == 0o640


def test_a_reader_sees_another_instance_registration_without_restart(tmp_path: Path) -> None:
    """A registry reloads the file when another writer replaced it."""
    path = tmp_path / "schemas.json"
    reader, writer = SchemaRegistry(path), SchemaRegistry(path)
    assert reader.versions("quotes") == []
    generation = reader.generation
    writer.register("quotes", {"ts": TS, "bid": "float64"})
    assert reader.versions("quotes") == [1]
    assert reader.generation > generation


def _register_many(path: str, tag: str, count: int) -> None:
    registry = SchemaRegistry(path)
    for i in range(count):
        registry.register("quotes", {"ts": TS, "bid": "float64", f"{tag}{i}": "float64?"})


def test_two_processes_registering_at_once_lose_no_version(tmp_path: Path) -> None:
    """Each process's registrations all land: versions 2..21 hold the 20 distinct schemas, none overwritten."""
    path = tmp_path / "schemas.json"
    SchemaRegistry(path).register("quotes", {"ts": TS, "bid": "float64"})
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_register_many, args=(str(path), tag, 10)) for tag in ("a", "b")]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    subject = SchemaRegistry(path).subject("quotes")
    assert [s.version for s in subject.versions] == list(range(1, 22))
    added = {s.names[-1] for s in subject.versions[1:]}
    assert added == {f"{tag}{i}" for tag in "ab" for i in range(10)}


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ("{not json", "corrupt"),
        ('{"format": 99, "subjects": {}}', "format 1"),
        (
            '{"format": 1, "subjects": {"q": {"pattern": "q:*", "compatibility": "backward", '
            '"versions": [{"version": 2, "columns": [["ts", "x"]]}]}}}',
            "out of order",
        ),
        (
            '{"format": 1, "subjects": {"ohlcv": {"pattern": "x", "compatibility": "none", "versions": [{"version": 1,'
            ' "columns": [["ts", "x"]]}]}}}',
            "ohlcv",
        ),
    ],
)
def test_a_corrupt_file_is_an_error_naming_the_path(tmp_path: Path, content: str, match: str) -> None:
    """An unreadable registry is never silently reset: the error names the file, the problem and what to do."""
    path = tmp_path / "schemas.json"
    path.write_text(content)
    with pytest.raises(SchemaRegistryFileError, match=match) as caught:
        SchemaRegistry(path)
    assert str(path) in str(caught.value) and "backup" in str(caught.value)
    assert path.read_text() == content
