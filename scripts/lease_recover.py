#!/usr/bin/env python3
"""Operator tool for the coordinator's leases: list them, release, requeue, mark done, retry failed windows, and
free QMTL keyed leases by their exact key.

Rules:
1. It talks to the cluster only through ``provider.client.CoordinatorClient`` (any node; the client follows the
   leader and fails over). Every action prints one row per item: item, action, result (``ok``/``failed``), detail.
2. Exit codes: 0 all ok; 1 any item failed (a 404 or 409 is a failure, never "released"); 2 usage error;
   3 the coordinator could not be reached or refused the token (the remaining items are not attempted).
3. ``--dry-run`` changes nothing: it reads ``GET /v1/leases`` (and the jobs) and says what each action would do;
   an item that does not exist there is ``failed``.
4. QMTL's form (``--coordinator-url URL --action fail|complete [--reason R] [--dry-run] [--from-file F]
   KEY:TOKEN...``) is accepted too: a command line with ``--coordinator-url`` or ``--action`` goes to
   ``lease_recover_qmtl.py`` (KEY:TOKEN split at the last colon; same exit codes).
5. QMTL keys are exact strings, one per line of ``--keys-file``, never split on ``:``; blank lines and lines
   starting with ``#`` are skipped. A keyed lease has a ``lease_id`` like a window lease (``kind=key`` in the
   listing), and ``POST /v1/leases/{lease_id}/release`` frees it; a key with no live lease is ``not found``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from provider.client import CoordinatorClient, parse_urls, read_token_file
from provider.core import LeaseInfo, ms_to_iso, parse_window_id
from provider.errors import (
    CoordinatorAuthError,
    CoordinatorError,
    CoordinatorNotFoundError,
    CoordinatorUnavailableError,
    LeaseLostError,
)

URL_ENV = "SEAMLESS_COORDINATOR_URL"
OK, FAILED = "ok", "failed"
EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_UNREACHABLE = 0, 1, 2, 3

EPILOG = f"""\
examples:
  %(prog)s --coordinator http://10.0.0.1:8701,http://10.0.0.2:8701 --token-file ops.token list --stale
  %(prog)s release lease-17 lease-18
  %(prog)s --dry-run requeue w_b2hsY3Y6... --reason "worker stuck on a slow source"
  %(prog)s retry job-3
  %(prog)s release-keys --keys-file keys.txt
  %(prog)s --coordinator-url http://10.0.0.1:8701 --action fail --reason R 'n7:60:0:60000:BTC/USDT:USDT:42'
    (QMTL's form: KEY:TOKEN split at the last colon; --action fail|complete, --from-file F, --dry-run)

exit codes: 0 all ok, 1 an item failed, 2 usage error, 3 coordinator unreachable or token refused.
--coordinator defaults to ${URL_ENV}.
"""


@dataclass(frozen=True)
class Outcome:
    """The result of one action on one item."""

    item: str
    action: str
    result: str
    detail: str


class StoppedError(Exception):
    """The cluster cannot be reached or refuses the token: the remaining items were not attempted."""

    def __init__(self, outcomes: list[Outcome], cause: CoordinatorError) -> None:
        super().__init__(str(cause))
        self.outcomes = outcomes
        self.cause = cause


def read_keys(path: Path) -> list[str]:
    """The keys of a keys file in order, without duplicates; lines are stripped and never split."""
    keys: dict[str, None] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        text = line.strip()
        if text and not text.startswith("#"):
            keys[text] = None
    return list(keys)


def describe_error(exc: CoordinatorError) -> str:
    """A short reason for a failed item."""
    if isinstance(exc, LeaseLostError):
        return f"lease is no longer live ({exc})"
    if isinstance(exc, CoordinatorNotFoundError):
        return f"not found ({exc})"
    if isinstance(exc, CoordinatorAuthError):
        return f"refused ({exc})"
    if isinstance(exc, CoordinatorUnavailableError):
        return f"coordinator unavailable ({exc})"
    return str(exc)


def describe_lease(lease: LeaseInfo) -> str:
    target = f"window {lease.window_id}" if lease.kind == "window" else f"key {lease.key}"
    state = "stale" if lease.stale else f"expires {ms_to_iso(lease.expires_at_ms)}"
    return f"{target}, held by {lease.worker_id}, token {lease.token}, {state}"


def _window_of(window_id: str) -> tuple[str, int] | None:
    """(series, start_ms) of a window id, or None when it is not one."""
    try:
        series, start_ms = parse_window_id(window_id)
    except ValueError:
        return None
    return str(series), start_ms


class Recovery:
    """The subcommands, on one client; ``dry_run`` reads instead of writing."""

    def __init__(self, client: CoordinatorClient, *, dry_run: bool) -> None:
        self.client = client
        self.dry_run = dry_run

    def _label(self, action: str) -> str:
        return f"{action} (dry run)" if self.dry_run else action

    async def each(
        self, items: Sequence[str], action: str, fn: Callable[[str], Awaitable[tuple[str, str]]]
    ) -> list[Outcome]:
        label = self._label(action)
        done: list[Outcome] = []
        for index, item in enumerate(items):
            try:
                result, detail = await fn(item)
            except (CoordinatorAuthError, CoordinatorUnavailableError) as exc:
                done.append(Outcome(item, label, FAILED, describe_error(exc)))
                done += [Outcome(rest, label, FAILED, "not attempted") for rest in items[index + 1 :]]
                raise StoppedError(done, exc) from None
            except CoordinatorError as exc:
                result, detail = FAILED, describe_error(exc)
            done.append(Outcome(item, label, result, detail))
        return done

    async def _live(self) -> dict[str, LeaseInfo]:
        return {lease.lease_id: lease for lease in await self.client.leases()}

    async def release(self, lease_ids: Sequence[str]) -> list[Outcome]:
        live = await self._live() if self.dry_run else {}

        async def one(lease_id: str) -> tuple[str, str]:
            if self.dry_run:
                lease = live.get(lease_id)
                if lease is None:
                    return FAILED, "not found: no live lease with this id"
                return OK, f"would release: {describe_lease(lease)}"
            answer = await self.client.release(lease_id)
            if "key" in answer:
                return OK, f"key {answer['key']} freed"
            return OK, f"window {answer.get('window_id')} back to {answer.get('state', 'pending')}"

        return await self.each(lease_ids, "release", one)

    async def release_keys(self, keys: Sequence[str]) -> list[Outcome]:
        by_key = {lease.key: lease for lease in await self.client.leases() if lease.kind == "key"}

        async def one(key: str) -> tuple[str, str]:
            lease = by_key.get(key)
            if lease is None:
                return FAILED, "not found: no live lease holds this key"
            if self.dry_run:
                return OK, f"would release {lease.lease_id}: {describe_lease(lease)}"
            await self.client.release(lease.lease_id)
            return OK, f"released {lease.lease_id} (held by {lease.worker_id}, token {lease.token})"

        return await self.each(keys, "release-key", one)

    async def operate(self, window_ids: Sequence[str], action: str, reason: str) -> list[Outcome]:
        """``requeue`` or ``mark-done`` each window."""
        holders, series = {}, set()
        if self.dry_run:
            holders = {lease.window_id: lease for lease in await self.client.leases() if lease.kind == "window"}
            series = {job.series for job in await self.client.list_jobs()}
        call = self.client.requeue if action == "requeue" else self.client.mark_done

        async def one(window_id: str) -> tuple[str, str]:
            window = _window_of(window_id)
            if window is None:
                return FAILED, "not found: not a window id"
            text = f"{window[0]} from {ms_to_iso(window[1])}"
            if self.dry_run:
                lease = holders.get(window_id)
                holder = f"{lease.lease_id} of {lease.worker_id}" if lease else ""
                # The API lists jobs, not windows: a window of a series no job ever covered cannot exist.
                if window[0] not in series:
                    return FAILED, f"not found: no job of series {window[0]}"
                return OK, f"would {action} {text}; " + (f"would revoke {holder}" if holder else "not leased now")
            answer = await call(window_id, reason)
            # The answer names the lease the command revoked; the listing above may come from a lagging replica.
            revoked = f"{answer['lease_id']} of {answer.get('worker_id')}" if answer.get("lease_id") else ""
            return OK, f"{text} is {answer.get('state')}" + (f"; revoked {revoked}" if revoked else "")

        return await self.each(window_ids, action, one)

    async def retry(self, job_ids: Sequence[str]) -> list[Outcome]:
        async def one(job_id: str) -> tuple[str, str]:
            if self.dry_run:
                job = await self.client.get_job(job_id)
                if job.state == "cancelled":
                    return FAILED, "job is cancelled: retry would be refused (409)"
                return OK, f"would reset {job.windows.failed} failed window(s) of {job.series}"
            answer = await self.client.retry_job(job_id)
            return OK, f"{answer.get('requeued', 0)} failed window(s) back to pending"

        return await self.each(job_ids, "retry", one)


# -- output ---------------------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max([len(h), *(len(r[i]) for r in rows)]) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return "\n".join(lines)


def render_leases(leases: Sequence[LeaseInfo], *, stale_only: bool) -> str:
    if not leases:
        return "no stale leases" if stale_only else "no live leases"
    rows = [
        [
            lease.lease_id,
            lease.kind,
            (lease.window_id if lease.kind == "window" else lease.key) or "-",
            lease.worker_id,
            str(lease.token),
            ms_to_iso(lease.granted_at_ms),
            ms_to_iso(lease.expires_at_ms),
            "yes" if lease.stale else "no",
        ]
        for lease in leases
    ]
    return table(["LEASE_ID", "KIND", "WINDOW_ID/KEY", "WORKER", "TOKEN", "GRANTED", "EXPIRES", "STALE"], rows)


def render_outcomes(outcomes: Sequence[Outcome], *, dry_run: bool) -> str:
    rows = [[o.item, o.action, o.result, o.detail] for o in outcomes]
    failed = sum(o.result == FAILED for o in outcomes)
    summary = f"{len(outcomes) - failed} ok, {failed} failed" + ("; dry run: nothing was changed" if dry_run else "")
    return table(["ITEM", "ACTION", "RESULT", "DETAIL"], rows) + "\n\n" + summary


def emit_outcomes(outcomes: Sequence[Outcome], args: argparse.Namespace) -> int:
    failed = sum(o.result == FAILED for o in outcomes)
    if args.json:
        print(
            json.dumps(
                {
                    "dry_run": args.dry_run,
                    "ok": len(outcomes) - failed,
                    "failed": failed,
                    "results": [asdict(o) for o in outcomes],
                },
                indent=2,
            )
        )
    else:
        print(render_outcomes(outcomes, dry_run=args.dry_run))
    return EXIT_FAILED if failed else EXIT_OK


# -- command line -------------------------------------------------------------------------------------------


def _common(parser: argparse.ArgumentParser, *, suppress: bool) -> None:
    """Global options, accepted before and after the subcommand (after it, they default to 'not given')."""
    default = argparse.SUPPRESS if suppress else None
    parser.add_argument(
        "--coordinator",
        metavar="URL[,URL...]",
        default=default,
        help=f"coordinator base URLs, any node (default: ${URL_ENV})",
    )
    parser.add_argument(
        "--token-file",
        type=Path,
        metavar="FILE",
        default=default,
        help="file whose first token is sent as the bearer token (role operator; worker suffices "
        "for release and release-keys, reader for list)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="change nothing: show what would be done and check that each item exists",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=argparse.SUPPRESS if suppress else False,
        help="print JSON instead of tables",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        default=argparse.SUPPRESS if suppress else 10.0,
        help="give up on an unreachable cluster after this long (default 10)",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lease_recover.py",
        description=__doc__.split("\n\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(parser, suppress=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, text: str) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=text, description=text)
        _common(cmd, suppress=True)
        return cmd

    command("list", "list live leases as a table").add_argument(
        "--stale", action="store_true", help="only leases past their expiry that the reaper has not collected"
    )
    command("release", "end live leases; windows go back to pending without counting an attempt").add_argument(
        "lease_ids", nargs="+", metavar="LEASE_ID"
    )
    for name, text in (
        ("requeue", "put windows back to pending with attempts cleared (revokes their lease)"),
        ("mark-done", "mark windows done without a worker (revokes their lease)"),
    ):
        cmd = command(name, text)
        cmd.add_argument("window_ids", nargs="+", metavar="WINDOW_ID")
        cmd.add_argument("--reason", required=True, help="why (kept on the window and logged)")
    command("retry", "reset the failed windows of jobs to pending").add_argument("job_ids", nargs="+", metavar="JOB_ID")
    command("release-keys", "free QMTL keyed leases by exact key").add_argument(
        "--keys-file",
        type=Path,
        required=True,
        metavar="FILE",
        help="one key per line (keys contain ':' and are never split); blank lines and '#' comments skipped",
    )
    return parser


async def execute(args: argparse.Namespace, client: CoordinatorClient) -> int:
    if args.command == "list":
        leases = await client.leases(stale=args.stale)
        if args.json:
            print(json.dumps({"leases": [lease.to_dict() for lease in leases]}, indent=2))
        else:
            print(render_leases(leases, stale_only=args.stale))
        return EXIT_OK
    recovery = Recovery(client, dry_run=args.dry_run)
    if args.command == "release":
        outcomes = await recovery.release(args.lease_ids)
    elif args.command == "release-keys":
        outcomes = await recovery.release_keys(args.keys)
    elif args.command == "retry":
        outcomes = await recovery.retry(args.job_ids)
    else:
        outcomes = await recovery.operate(args.window_ids, args.command, args.reason)
    return emit_outcomes(outcomes, args)


async def run(args: argparse.Namespace, token: str | None) -> int:
    async with CoordinatorClient(
        args.coordinator,
        token=token,
        client_id=f"lease-recover-{os.getpid()}",
        timeout_s=min(args.timeout, 10.0),
        retry_deadline_s=args.timeout,
    ) as client:
        try:
            return await execute(args, client)
        except StoppedError as stopped:
            emit_outcomes(stopped.outcomes, args)
            return fatal(stopped.cause)
        except (CoordinatorAuthError, CoordinatorUnavailableError) as exc:
            return fatal(exc)


def fatal(exc: CoordinatorError) -> int:
    if isinstance(exc, CoordinatorAuthError):
        print(
            f"error: the coordinator refused the token ({exc}); pass --token-file with a token of the needed "
            "role (operator for requeue, mark-done and retry)",
            file=sys.stderr,
        )
    else:
        print(f"error: cannot reach the coordinator: {exc}", file=sys.stderr)
    return EXIT_UNREACHABLE


def _validate(parser: argparse.ArgumentParser, args: argparse.Namespace) -> str | None:
    """Usage checks argparse cannot do; returns the token. Exits 2 on a problem."""
    args.coordinator = args.coordinator or os.environ.get(URL_ENV)
    if not args.coordinator:
        parser.error(f"--coordinator is required (or set ${URL_ENV})")
    try:
        args.coordinator = parse_urls(args.coordinator)
    except ValueError as exc:
        parser.error(f"--coordinator: {exc}")
    if args.timeout <= 0:
        parser.error("--timeout must be positive")
    if getattr(args, "reason", "x").strip() == "":
        parser.error("--reason must not be empty")
    try:
        if args.command == "release-keys":
            args.keys = read_keys(args.keys_file)
            if not args.keys:
                parser.error(f"--keys-file {args.keys_file} holds no key")
        return read_token_file(args.token_file) if args.token_file else None
    except (OSError, ValueError) as exc:
        parser.error(str(exc))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(arg.split("=")[0] in ("--coordinator-url", "--action") for arg in argv):
        import lease_recover_qmtl  # it imports this module: loaded only for QMTL's form

        return lease_recover_qmtl.main(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    token = _validate(parser, args)
    return asyncio.run(run(args, token))


if __name__ == "__main__":
    sys.exit(main())
