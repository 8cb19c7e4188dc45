"""``python -m devkit.services``: run QuestDB and/or PostgreSQL in the foreground for development.

Rules:
1. Standard library only: ``bash scripts/install_test_deps.sh`` runs ``fetch-questdb`` with the system Python.
2. Only this module reads arguments; the servers print where they answer and run until Ctrl-C, SIGTERM or one of
   them dies, and are always stopped on the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from devkit.services._process import _ServerProcess
from devkit.services.errors import DevServiceError
from devkit.services.postgres import PostgresServer
from devkit.services.questdb import DEFAULT_QUESTDB_CACHE_DIR, DEFAULT_QUESTDB_VERSION, QuestDBServer, fetch_questdb_jar

__all__ = ["main"]

#: How often the foreground CLI checks that its servers are still alive.
CLI_POLL_INTERVAL_S = 0.5


def _parse_conf(items: Sequence[str]) -> dict[str, str]:
    conf: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise SystemExit(f"--conf: expected KEY=VALUE, got {item!r}")
        conf[key.strip()] = value.strip()
    return conf


def _questdb_lines(server: QuestDBServer, version: str) -> list[str]:
    return [
        f"QuestDB {version} ready in {server.start_duration_s:.1f} s (root {server.root})",
        f"  web console  {server.http_url}",
        f"  dsn          {server.dsn}",
        f"  pg_dsn       {server.pg_dsn}",
        f"  ilp_conf     {server.ilp_conf}",
        f"  log          {server.log_path}",
        f"  for tests:   export SEAMLESS_TEST_QUESTDB_DSN='{server.dsn}'",
    ]


def _postgres_lines(server: PostgresServer) -> list[str]:
    return [
        f"PostgreSQL ready in {server.start_duration_s:.1f} s (data {server.data_dir}, removed at exit)",
        f"  dsn          {server.dsn}",
        f"  log          {server.log_path}",
        f"  for tests:   export SEAMLESS_TEST_POSTGRES_DSN='{server.dsn}'",
    ]


def _serve(args: argparse.Namespace) -> int:
    """Start the servers the command names, print where they answer, run until Ctrl-C or one of them dies."""
    with contextlib.ExitStack() as stack:
        servers: list[_ServerProcess] = []
        lines: list[str] = []
        if args.command in {"questdb", "all"}:
            questdb = QuestDBServer(
                root=args.root,
                version=args.version,
                http_port=args.http_port,
                pg_port=args.pg_port,
                ilp_tcp_port=args.ilp_tcp_port,
                extra_conf=_parse_conf(args.conf),
            )
            servers.append(stack.enter_context(questdb))
            lines += _questdb_lines(questdb, args.version)
        if args.command in {"postgres", "all"}:
            postgres = stack.enter_context(PostgresServer(port=args.postgres_port, database=args.database))
            servers.append(postgres)
            lines += _postgres_lines(postgres)
        print("\n".join([*lines, "Ctrl-C stops everything."]), flush=True)
        try:
            while all(server.running for server in servers):
                time.sleep(CLI_POLL_INTERVAL_S)
        except KeyboardInterrupt:
            return 0
        for server in servers:
            if not server.running:
                print(f"{server.name} exited on its own; see {server.log_path}", file=sys.stderr)
        return 1


def _fetch(args: argparse.Namespace) -> int:
    print(fetch_questdb_jar(args.cache_dir, args.version))
    return 0


def _questdb_options() -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("QuestDB")
    group.add_argument("--root", type=Path, help="QuestDB data root to keep (default: a temp dir removed at exit)")
    group.add_argument("--http-port", type=int, help="HTTP / ILP / web console port (default: a free one)")
    group.add_argument("--pg-port", type=int, help="QuestDB PostgreSQL wire port (default: a free one)")
    group.add_argument("--ilp-tcp-port", type=int, help="ILP over TCP port (default: a free one)")
    group.add_argument("--version", default=DEFAULT_QUESTDB_VERSION, help="QuestDB jar version (%(default)s)")
    group.add_argument("--conf", action="append", default=[], metavar="KEY=VALUE", help="extra server.conf key")
    return options


def _postgres_options(port_flag: str) -> argparse.ArgumentParser:
    options = argparse.ArgumentParser(add_help=False)
    group = options.add_argument_group("PostgreSQL")
    group.add_argument(port_flag, dest="postgres_port", type=int, help="port on 127.0.0.1 (default: a free one)")
    group.add_argument("--database", default="seamless", help="database to create (%(default)s)")
    return options


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m devkit.services",
        description="Run real QuestDB / PostgreSQL servers on 127.0.0.1 for development and tests (no Docker). "
        "Servers run in the foreground and print their DSNs; Ctrl-C stops them.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    questdb = _questdb_options()
    commands.add_parser("questdb", parents=[questdb], help="run QuestDB").set_defaults(handler=_serve)
    postgres = commands.add_parser(
        "postgres", parents=[_postgres_options("--port")], help="run a throw-away PostgreSQL"
    )
    postgres.set_defaults(handler=_serve)
    both = commands.add_parser("all", parents=[questdb, _postgres_options("--postgres-port")], help="run both")
    both.set_defaults(handler=_serve)
    fetch = commands.add_parser("fetch-questdb", help="download the QuestDB jar with Maven if missing")
    fetch.add_argument("--version", default=DEFAULT_QUESTDB_VERSION, help="QuestDB version (%(default)s)")
    fetch.add_argument("--cache-dir", type=Path, default=DEFAULT_QUESTDB_CACHE_DIR, help="(%(default)s)")
    fetch.set_defaults(handler=_fetch)
    return parser


def _exit_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the with-blocks, so the servers are stopped


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored (`cmd &`)
    try:
        return int(args.handler(args))
    except DevServiceError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
