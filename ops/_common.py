"""Options and argument parsing shared by the operator commands (``backfill``, ``verify``).

Rules:
1. ``--coordinator`` defaults to ``$SEAMLESS_COORDINATOR_URL`` (like scripts/lease_recover.py); ``--token-file``
   sends the file's first token.
2. Bad input is a click usage error (exit 2) naming the argument, the value and what is allowed; never a traceback.
3. Exit codes: 0 ok, 1 windows failed (or differences found), 2 usage, 3 the cluster could not be reached or
   refused the token, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from provider.core import SeriesKey, to_ms

URL_ENV = "SEAMLESS_COORDINATOR_URL"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


def coordinator_urls(value: str | None) -> list[str]:
    """The cluster's URLs from ``--coordinator`` or the environment; a usage error when neither is given."""
    from provider.client import parse_urls

    text = value or os.environ.get(URL_ENV)
    if not text:
        raise click.UsageError(f"--coordinator is required (or set ${URL_ENV})")
    try:
        return parse_urls(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--coordinator") from None


def token_from(path: Path | None) -> str | None:
    from provider.client import read_token_file

    if path is None:
        return None
    try:
        return read_token_file(path)
    except (OSError, ValueError) as exc:
        raise click.BadParameter(str(exc), param_hint="--token-file") from None


def parse_series(text: str, hint: str = "SERIES") -> str:
    try:
        return str(SeriesKey.parse(text))
    except ValueError as exc:
        raise click.BadParameter(
            f"{text!r} is not a series key ohlcv:SOURCE:SYMBOL:INTERVAL ({exc})", param_hint=hint
        ) from None


def parse_time(text: str, hint: str) -> int:
    """Epoch milliseconds from ``text`` (an integer of ms, or an ISO-8601 date/time; naive means UTC)."""
    value: Any = int(text) if text.lstrip("-").isdigit() else text
    try:
        return to_ms(value)
    except (TypeError, ValueError) as exc:
        raise click.BadParameter(
            f"{text!r} is not a time: give epoch milliseconds or ISO-8601 like 2024-01-01T00:00 ({exc})",
            param_hint=hint,
        ) from None


def parse_range(series: tuple[str, ...], start: str, end: str) -> tuple[list[str], int, int]:
    start_ms, end_ms = parse_time(start, "START"), parse_time(end, "END")
    if start_ms >= end_ms:
        raise click.BadParameter(f"START {start!r} ({start_ms}) must be before END {end!r} ({end_ms})")
    keys = list(dict.fromkeys(parse_series(text) for text in series))
    return keys, start_ms, end_ms


def cluster_options(command: Any) -> Any:
    """``--coordinator`` and ``--token-file``."""
    command = click.option(
        "--token-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File whose first token is sent as the bearer token (role worker submits jobs; operator repairs).",
    )(command)
    return click.option(
        "--coordinator",
        "coordinator",
        default=None,
        metavar="URL[,URL...]",
        help=f"Coordinator base URLs, any node [default: ${URL_ENV}].",
    )(command)
