"""QMTL's form of ``lease_recover.py``: finish keyed leases by ``KEY:TOKEN`` with ``--action fail|complete``.

``lease_recover.py --coordinator-url URL --action fail|complete [--reason R] [--dry-run] [--from-file F]
KEY:TOKEN...`` is what QMTL operators type; ``lease_recover.main`` hands any command line that carries
``--coordinator-url`` or ``--action`` to this module.

Rules:
1. ``KEY:TOKEN`` is split at the **last** colon: keys contain colons (``n7:60:0:60000:BTC/USDT:USDT``), tokens
   never do. A token must be an integer >= 1; anything else is a usage error (exit 2) naming the item.
2. ``--from-file F`` reads one ``KEY:TOKEN`` per line (blank lines and ``#`` comments skipped) and adds them after
   the items of the command line; repeats are dropped, order is kept.
3. ``complete`` calls ``POST /v1/leases/complete``, ``fail`` calls ``POST /v1/leases/fail`` with ``--reason``.
   A 404 (unknown key) or 409 (the token is not the key's live lease) is a failed item, never a success; the exit
   code is 1 when any item failed (exit codes otherwise as in ``lease_recover.py``: 2 usage, 3 unreachable).
4. ``--dry-run`` changes nothing: it reads ``GET /v1/leases`` and says what would happen; an item whose key has no
   live lease with that token is failed.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections.abc import Sequence
from pathlib import Path

import lease_recover as base

from provider.client import CoordinatorClient, parse_urls, read_token_file
from provider.errors import CoordinatorAuthError, CoordinatorUnavailableError

EPILOG = """\
examples (QMTL's form):
  %(prog)s --coordinator-url http://10.0.0.1:8701 --action fail --reason "stuck fetcher" \\
      'n7:60:0:60000:BTC/USDT:USDT:42'
  %(prog)s --coordinator-url http://10.0.0.1:8701 --action complete --dry-run --from-file leases.txt

KEY:TOKEN is split at the last colon (keys contain colons). exit codes: 0 all ok, 1 an item failed (404 and 409
included), 2 usage error, 3 coordinator unreachable or token refused.
"""


def split_item(item: str) -> tuple[str, int]:
    """(key, token) of ``KEY:TOKEN``, split at the last colon; ValueError naming the item otherwise."""
    key, sep, token_text = item.strip().rpartition(":")
    if not sep or not key:
        raise ValueError(f"{item!r} is not KEY:TOKEN (a key, a colon, then the integer token)")
    try:
        token = int(token_text)
    except ValueError:
        raise ValueError(
            f"{item!r}: token {token_text!r} is not an integer (KEY:TOKEN, split at the last colon)"
        ) from None
    if token < 1:
        raise ValueError(f"{item!r}: token {token} must be an integer >= 1")
    return key, token


def read_items(path: Path) -> list[str]:
    """The ``KEY:TOKEN`` lines of a file, stripped; blank lines and ``#`` comments skipped."""
    return [
        line.strip()
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lease_recover.py",
        description="QMTL's form: complete or fail QMTL keyed leases given as KEY:TOKEN (split at the last colon).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--coordinator-url",
        dest="coordinator",
        metavar="URL[,URL...]",
        help=f"coordinator base URLs, any node (default: ${base.URL_ENV})",
    )
    parser.add_argument("--action", required=True, choices=("fail", "complete"), help="what to do with each lease")
    parser.add_argument("--reason", default="lease_recover", help="reason sent with --action fail")
    parser.add_argument("--dry-run", action="store_true", help="change nothing: check each lease and say what would")
    parser.add_argument("--from-file", type=Path, metavar="F", help="more KEY:TOKEN items, one per line")
    parser.add_argument("--token-file", type=Path, metavar="FILE", help="bearer token file (role worker suffices)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--timeout", type=float, default=10.0, metavar="SECONDS", help="give up on an unreachable cluster (10)"
    )
    parser.add_argument("items", nargs="*", metavar="KEY:TOKEN", help="keyed leases; keys may contain ':'")
    return parser


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """Usage checks; sets ``args.leases`` to the (item, key, token) list and returns the bearer token."""
    args.coordinator = args.coordinator or os.environ.get(base.URL_ENV)
    if not args.coordinator:
        parser.error(f"--coordinator-url is required (or set ${base.URL_ENV})")
    try:
        args.coordinator = parse_urls(args.coordinator)
    except ValueError as exc:
        parser.error(f"--coordinator-url: {exc}")
    if args.timeout <= 0:
        parser.error(f"--timeout {args.timeout}: must be positive")
    if args.action == "fail" and not args.reason.strip():
        parser.error("--reason must not be empty")
    try:
        items = list(args.items) + (read_items(args.from_file) if args.from_file else [])
        token = read_token_file(args.token_file) if args.token_file else None
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    if not items:
        parser.error("no KEY:TOKEN given (pass them as arguments or with --from-file)")
    leases: dict[str, tuple[str, int]] = {}
    for item in items:
        try:
            leases.setdefault(item.strip(), split_item(item))
        except ValueError as exc:
            parser.error(str(exc))
    args.leases = [(item, key, tok) for item, (key, tok) in leases.items()]
    args.command = "qmtl"
    return token


async def finish(client: CoordinatorClient, args: argparse.Namespace) -> list[base.Outcome]:
    """Complete or fail every keyed lease; one outcome per item."""
    recovery = base.Recovery(client, dry_run=args.dry_run)
    by_item = {item: (key, token) for item, key, token in args.leases}
    live: dict[str, int] = {}
    if args.dry_run:
        live = {lease.key or "": lease.token for lease in await client.leases() if lease.kind == "key"}

    async def one(item: str) -> tuple[str, str]:
        key, token = by_item[item]
        if args.dry_run:
            if key not in live:
                return base.FAILED, f"not found: no live lease holds key {key!r}"
            if live[key] != token:
                return base.FAILED, f"lease is no longer live: key {key!r} is held with token {live[key]}"
            return base.OK, f"would {args.action} key {key!r} (token {token})"
        if args.action == "complete":
            answer = await client.complete_key(key, token)
        else:
            answer = await client.fail_key(key, token, args.reason)
        return base.OK, f"key {key!r} {args.action}d; completion ratio {answer.get('completion_ratio')}"

    return await recovery.each(list(by_item), args.action, one)


async def run(args: argparse.Namespace, token: str | None) -> int:
    async with CoordinatorClient(
        args.coordinator,
        token=token,
        client_id=f"lease-recover-{os.getpid()}",
        timeout_s=min(args.timeout, 10.0),
        retry_deadline_s=args.timeout,
    ) as client:
        try:
            return base.emit_outcomes(await finish(client, args), args)
        except base.StoppedError as stopped:
            base.emit_outcomes(stopped.outcomes, args)
            return base.fatal(stopped.cause)
        except (CoordinatorAuthError, CoordinatorUnavailableError) as exc:
            return base.fatal(exc)


def main(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    token = _validate(parser, args)
    return asyncio.run(run(args, token))
