"""``coordinator schema list|show|register|check|set-compatibility``: the schema registry's operator commands.

Rules:
1. The registry is a JSON file (docs/provider.md, "Schema registry"): ``--registry PATH``, else
   ``$SEAMLESS_SCHEMA_REGISTRY``, else ``conformance.schema_registry_path`` of ``--config FILE``; none is a usage
   error. Whoever can write the file may register: its permissions (0640 when created here) are the control.
   It is not served over HTTP.
2. ``--columns`` is ``ts:datetime64[ns, UTC],open:float64,...``: commas inside ``[...]`` belong to the dtype, a
   trailing ``?`` marks an optional column, the first column is ``ts``.
3. Exit codes: 0 ok (``check``: compatible), 1 ``check`` found the candidate incompatible, 2 bad input, an
   incompatible ``register`` or an unusable registry file (the message names the path). Never a traceback.
4. ``--json`` prints one JSON document (``list``, ``show``, ``register``, ``check``).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import click

from ops._common import EXIT_FAILED, EXIT_OK, EXIT_USAGE

__all__ = ["REGISTRY_ENV", "parse_columns", "schema"]

#: The environment variable naming the registry file when ``--registry`` is not given.
REGISTRY_ENV = "SEAMLESS_SCHEMA_REGISTRY"
#: provider.conformance.COMPATIBILITY, repeated because importing it loads pandas (a test keeps them equal).
_POLICIES = (
    "backward",
    "backward_transitive",
    "forward",
    "forward_transitive",
    "full",
    "full_transitive",
    "none",
)


def parse_columns(text: str) -> dict[str, str]:
    """``{column: dtype}`` from the ``--columns`` syntax (rule 2); click.BadParameter naming the item otherwise."""
    items: list[str] = []
    depth, current = 0, ""
    for char in text:
        depth += (char == "[") - (char == "]")
        if char == "," and depth == 0:
            items.append(current)
            current = ""
        else:
            current += char
    items.append(current)
    columns: dict[str, str] = {}
    for item in (i.strip() for i in items):
        name, sep, dtype = item.partition(":")
        if not sep or not name.strip() or not dtype.strip():
            raise click.BadParameter(f"{item!r} is not COLUMN:DTYPE (e.g. open:float64)", param_hint="--columns")
        if name.strip() in columns:
            raise click.BadParameter(f"column {name.strip()!r} is given twice", param_hint="--columns")
        columns[name.strip()] = dtype.strip()
    return columns


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


def _registry(ctx: click.Context) -> Any:
    from provider.conformance import SchemaRegistry
    from provider.core import ConfigError, load_config

    path = ctx.obj["registry"] or os.environ.get(REGISTRY_ENV)
    if not path and ctx.obj["config"] is not None:
        try:
            path = load_config(ctx.obj["config"]).conformance.schema_registry_path
        except ConfigError as exc:
            _fail(str(exc))
    if not path:
        _fail(f"give --registry PATH, ${REGISTRY_ENV}, or --config FILE with conformance.schema_registry_path")
    return SchemaRegistry(path)


def _run(action: Callable[[Any], int]) -> NoReturn:
    """Exit with ``action(registry)``; registry errors become a message and exit 2 (rule 3)."""
    from provider.errors import SchemaRegistryError

    try:
        code = action(_registry(click.get_current_context()))
    except SchemaRegistryError as exc:
        _fail(str(exc))
    except KeyError as exc:
        _fail(str(exc.args[0]))
    sys.exit(code)


def _emit(as_json: bool, document: dict[str, Any], lines: list[str]) -> None:
    click.echo(json.dumps(document, indent=2) if as_json else "\n".join(lines))


def _table(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]


def _columns_option(command: Any) -> Any:
    return click.option(
        "--columns",
        "columns_text",
        required=True,
        metavar="COL:DTYPE,...",
        help="The candidate's columns in order, e.g. 'ts:datetime64[ns, UTC],open:float64,trades:float64?' "
        "(a trailing ? marks an optional column).",
    )(command)


_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
_POLICY = click.Choice(_POLICIES, case_sensitive=False)


@click.group()
@click.option(
    "--registry",
    type=click.Path(dir_okay=False),
    default=None,
    help=f"The registry's JSON file [default: ${REGISTRY_ENV}, else --config's conformance.schema_registry_path].",
)
@click.option(
    "--config",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="YAML config whose conformance.schema_registry_path names the registry.",
)
@click.pass_context
def schema(ctx: click.Context, registry: str | None, config: Path | None) -> None:
    """The schema registry: subjects (a name and a series-key pattern), versioned schemas and compatibility
    policies (backward, forward, full, none, *_transitive). Exit 0 ok, 1 check found incompatible, 2 bad input."""
    ctx.obj = {"registry": registry, "config": config}


@schema.command("list")
@_json_option
def list_subjects(as_json: bool) -> None:
    """List every subject: pattern, compatibility, versions."""
    _run(lambda registry: _list(registry, as_json))


def _list(registry: Any, as_json: bool) -> int:
    subjects = registry.subjects()
    document = {
        "registry": str(registry.path),
        "subjects": [
            {
                "name": s.name,
                "pattern": s.pattern,
                "compatibility": s.compatibility,
                "latest": s.latest.version,
                "versions": [v.version for v in s.versions],
            }
            for s in subjects
        ],
    }
    rows = [("SUBJECT", "PATTERN", "COMPATIBILITY", "LATEST", "VERSIONS")]
    rows += [(s.name, s.pattern, s.compatibility, s.latest.label, str(len(s.versions))) for s in subjects]
    _emit(as_json, document, _table(rows))
    return EXIT_OK


@schema.command("show")
@click.argument("subject")
@click.option("--version", type=click.IntRange(1), default=None, help="Version [default: the latest].")
@_json_option
def show(subject: str, version: int | None, as_json: bool) -> None:
    """Show one version of SUBJECT (the latest by default): its columns, dtypes and optional ones."""
    _run(lambda registry: _show(registry, subject, version, as_json))


def _show(registry: Any, subject: str, version: int | None, as_json: bool) -> int:
    found = registry.subject(subject)
    shown = registry.get(subject, version)
    document = {
        "name": found.name,
        "pattern": found.pattern,
        "compatibility": found.compatibility,
        "version": shown.version,
        "label": shown.label,
        "versions": [v.version for v in found.versions],
        "columns": [{"name": c, "dtype": d, "optional": c in shown.optional} for c, d in shown.columns],
    }
    head = f"{shown.label}  pattern {found.pattern}  compatibility {found.compatibility}  versions "
    rows = [("COLUMN", "DTYPE", "OPTIONAL")]
    rows += [(c, d, "yes" if c in shown.optional else "") for c, d in shown.columns]
    _emit(as_json, document, [head + ",".join(str(v.version) for v in found.versions), *_table(rows)])
    return EXIT_OK


@schema.command("register")
@click.argument("subject")
@_columns_option
@click.option(
    "--pattern", default=None, metavar="GLOB", help="A new subject's series-key pattern [default: SUBJECT:*]."
)
@click.option("--compatibility", type=_POLICY, default=None, help="A new subject's policy [default: backward].")
@_json_option
def register(subject: str, columns_text: str, pattern: str | None, compatibility: str | None, as_json: bool) -> None:
    """Register the columns as the next version of SUBJECT (a new subject gets --pattern and --compatibility);
    refused with exit 2 when the subject's policy does not allow the change. Nothing changes then."""
    columns = parse_columns(columns_text)

    def action(registry: Any) -> int:
        before = registry.versions(subject)
        made = registry.register(subject, columns, pattern=pattern, compatibility=compatibility)
        created = made.version not in before
        document = {"subject": subject, "version": made.version, "label": made.label, "created": created}
        _emit(as_json, document, [f"{'registered' if created else 'unchanged, already registered as'} {made.label}"])
        return EXIT_OK

    _run(action)


@schema.command("check")
@click.argument("subject")
@_columns_option
@click.option("--compatibility", type=_POLICY, default=None, help="Check under this policy instead of SUBJECT's.")
@_json_option
def check(subject: str, columns_text: str, compatibility: str | None, as_json: bool) -> None:
    """Check whether the columns could become SUBJECT's next version under its policy (or --compatibility);
    exit 0 compatible, 1 incompatible. Nothing is written."""
    columns = parse_columns(columns_text)
    _run(lambda registry: _check(registry, subject, columns, compatibility, as_json))


def _check(registry: Any, subject: str, columns: dict[str, str], compatibility: str | None, as_json: bool) -> int:
    from provider.conformance import ALLOWED_CHANGES

    found = registry.subject(subject)
    policy = compatibility or found.compatibility
    problems = registry.check(subject, columns, compatibility=compatibility)
    allowed = ALLOWED_CHANGES[policy.removesuffix("_transitive")]
    document = {
        "subject": subject,
        "compatibility": policy,
        "compatible": not problems,
        "problems": [{"column": c, "problem": p} for c, p in problems],
        "allowed": allowed,
    }
    if problems:
        lines = [f"incompatible with {found.latest.label} under {policy}:"]
        lines += [f"  {c}: {p}" for c, p in problems] + [f"{policy} allows: {allowed}"]
    else:
        lines = [f"compatible with {found.latest.label} under {policy}"]
    _emit(as_json, document, lines)
    return EXIT_FAILED if problems else EXIT_OK


@schema.command("set-compatibility")
@click.argument("subject")
@click.argument("policy", type=_POLICY)
def set_compatibility(subject: str, policy: str) -> None:
    """Give SUBJECT another compatibility policy (existing versions are not re-checked, as in Confluent's)."""

    def action(registry: Any) -> int:
        changed = registry.set_compatibility(subject, policy)
        click.echo(f"{changed.name}: compatibility {changed.compatibility}")
        return EXIT_OK

    _run(action)
