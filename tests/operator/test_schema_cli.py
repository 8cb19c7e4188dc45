"""`coordinator schema`: list, show, register, check and set-compatibility over a real registry file; exit codes
0 ok, 1 incompatible (check), 2 bad input or refused registration, and never a traceback."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from ops.schema import _POLICIES, REGISTRY_ENV, parse_columns, schema
from provider.conformance import COMPATIBILITY, SchemaRegistry

ROOT = Path(__file__).resolve().parents[2]
QUOTES = "ts:datetime64[ns, UTC],bid:float64,ask:float64"


def run(registry: Path | None, *args: str, env: dict[str, str] | None = None) -> Result:
    head = ["--registry", str(registry)] if registry is not None else []
    result = CliRunner().invoke(schema, [*head, *args], env=env or {REGISTRY_ENV: ""}, prog_name="coordinator schema")
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result


def test_register_check_and_show_through_the_cli_survive_a_restart(tmp_path: Path) -> None:
    """A compatible change is versioned (exit 0), an incompatible one refused (exit 2, naming subject, column and
    policy); check answers 1 for it; a fresh process (a new registry over the file) sees exactly that."""
    path = tmp_path / "schemas.json"
    assert run(path, "register", "quotes", "--columns", QUOTES, "--pattern", "quotes:*").exit_code == 0
    refused = run(path, "register", "quotes", "--columns", QUOTES + ",mid:float64")
    assert refused.exit_code == 2
    assert "'quotes'" in refused.output and "mid" in refused.output and "backward" in refused.output
    added = run(path, "register", "quotes", "--columns", QUOTES + ",mid:float64?", "--json")
    assert added.exit_code == 0 and json.loads(added.output) == {
        "subject": "quotes",
        "version": 2,
        "label": "quotes@2",
        "created": True,
    }
    again = run(path, "register", "quotes", "--columns", QUOTES + ",mid:float64?")
    assert again.exit_code == 0 and "already registered as quotes@2" in again.output

    incompatible = run(path, "check", "quotes", "--columns", "ts:datetime64[ns, UTC],bid:float32", "--json")
    assert incompatible.exit_code == 1
    verdict = json.loads(incompatible.output)
    assert verdict["compatible"] is False and [p["column"] for p in verdict["problems"]] == ["bid"]
    assert run(path, "check", "quotes", "--columns", "ts:datetime64[ns, UTC],bid:float64").exit_code == 0
    assert run(path, "check", "quotes", "--columns", QUOTES + ",x:int8", "--compatibility", "forward").exit_code == 0

    shown = json.loads(run(path, "show", "quotes", "--json").output)
    assert shown["versions"] == [1, 2] and shown["columns"][-1] == {"name": "mid", "dtype": "float64", "optional": True}
    assert json.loads(run(path, "show", "quotes", "--version", "1", "--json").output)["label"] == "quotes@1"
    assert SchemaRegistry(path).versions("quotes") == [1, 2]
    listed = json.loads(run(path, "list", "--json").output)
    assert [(s["name"], s["latest"]) for s in listed["subjects"]] == [("ohlcv", 1), ("quotes", 2)]
    table = run(path, "list").output
    assert table.splitlines()[0].split() == ["SUBJECT", "PATTERN", "COMPATIBILITY", "LATEST", "VERSIONS"]


def test_set_compatibility_then_a_breaking_change_is_accepted(tmp_path: Path) -> None:
    """Under ``none`` anything goes; the policy is stored."""
    path = tmp_path / "schemas.json"
    run(path, "register", "quotes", "--columns", QUOTES)
    assert run(path, "set-compatibility", "quotes", "NONE").exit_code == 0
    assert run(path, "register", "quotes", "--columns", "ts:datetime64[ns, UTC],bid:int64").exit_code == 0
    assert SchemaRegistry(path).subject("quotes").compatibility == "none"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["show", "nope"], "'nope' is not registered"),
        (["show", "ohlcv", "--version", "5"], "no version 5"),
        (["register", "q", "--columns", "ts"], "not COLUMN:DTYPE"),
        (["register", "q", "--columns", "ts:datetime64[ns, UTC],a:float64,a:int64"], "given twice"),
        (["register", "q", "--columns", "ts:datetime64[ns, UTC],a:nonsense"], "not a pandas dtype"),
        (["register", "q", "--columns", "a:float64"], "'ts'"),
        (["register", "q", "--columns", QUOTES, "--compatibility", "sideways"], "sideways"),
        (["register", "dup", "--columns", QUOTES, "--pattern", "*"], "ties with subject 'ohlcv'"),
        (["set-compatibility", "nope", "full"], "'nope' is not registered"),
    ],
)
def test_bad_input_exits_2_with_a_message(tmp_path: Path, args: list[str], message: str) -> None:
    """Each mistake names what was wrong; exit code 2."""
    result = run(tmp_path / "schemas.json", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_the_registry_comes_from_the_flag_the_environment_or_the_config(tmp_path: Path) -> None:
    """--registry, else $SEAMLESS_SCHEMA_REGISTRY, else --config's conformance.schema_registry_path; none: exit 2."""
    missing = run(None, "list")
    assert missing.exit_code == 2 and REGISTRY_ENV in missing.output
    by_env = tmp_path / "env.json"
    assert run(None, "register", "a", "--columns", "ts:datetime64[ns]", env={REGISTRY_ENV: str(by_env)}).exit_code == 0
    assert SchemaRegistry(by_env).versions("a") == [1]
    by_config = tmp_path / "config.json"
    config = tmp_path / "seamless.yaml"
    config.write_text(f"conformance:\n  schema_registry_path: {by_config}\n")
    result = CliRunner().invoke(schema, ["--config", str(config), "register", "b", "--columns", "ts:datetime64[ns]"])
    assert result.exit_code == 0, result.output
    assert SchemaRegistry(by_config).versions("b") == [1]


def test_a_corrupt_registry_file_is_reported_not_raised(tmp_path: Path) -> None:
    """Exit 2 with the path and what to do; the file is left as it was."""
    path = tmp_path / "schemas.json"
    path.write_text("{oops")
    result = run(path, "list")
    assert result.exit_code == 2
    assert str(path) in result.output and "corrupt" in result.output and "backup" in result.output
    assert path.read_text() == "{oops"


def test_every_subcommand_has_help_and_the_entry_point_is_declared() -> None:
    """--help works on the group and each subcommand; pyproject registers the plugin; policies match."""
    for sub in ([], ["list"], ["show"], ["register"], ["check"], ["set-compatibility"]):
        result = CliRunner().invoke(schema, [*sub, "--help"])
        assert result.exit_code == 0 and "Usage:" in result.output, sub
    project = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    assert project["project"]["entry-points"]["seamless.coordinator_commands"]["schema"] == "ops.schema:schema"
    assert _POLICIES == COMPATIBILITY


def test_columns_keep_commas_inside_brackets() -> None:
    """The zone of a datetime dtype contains a comma that is not a column separator."""
    assert parse_columns("ts:datetime64[ns, UTC], open:float64 ,n:float64?") == {
        "ts": "datetime64[ns, UTC]",
        "open": "float64",
        "n": "float64?",
    }
