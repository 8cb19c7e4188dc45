"""``coordinator`` command line: ``serve`` one node, ``status`` of a cluster, ``openapi`` document.

Rules:
1. This is the edge: the only module that reads files named by flags, the environment (``COORDINATOR_TOKEN``)
   and builds objects. Flags override the config file, the file overrides defaults.
2. ``serve`` refuses (exit code 2, a message naming the flag) to bind HTTP to a non-loopback address without
   ``--token-file``, or Raft to a non-loopback address without ``--cluster-secret-file``: pysyncobj speaks pickle
   and would run code for anyone who can reach its port. It refuses ports it cannot bind too, and ``--raft`` and
   ``--http`` on one port; a Raft port taken between that check and the bind also exits 2 (``raft.py`` rule 13).
3. A data dir remembers its node id and Raft address (``node.json``); starting another node on it is refused.
4. Exit statuses of ``serve``: 0 after SIGTERM/SIGINT, 1 on an unexpected error, 2 on a usage error, 74 when the
   data dir could not be written (``coordinator/_disk.py`` rule 2: disk full or an I/O error, named in the
   ``disk.data_dir_write_failed`` line before it).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import signal
import socket
import sys
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path
from typing import Any

import click

from provider.core import AppConfig, ConfigError, load_config

__all__ = ["main"]


def parse_addr(text: str, flag: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` too) -> (host, port), or a usage error naming the flag."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"{text!r} is not HOST:PORT", param_hint=flag)
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


#: Addresses that bind every interface, so they share ports with every other address.
_WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def _check_bindable(host: str, port: int, flag: str) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise click.UsageError(f"{flag} {host}:{port} cannot be bound: {exc.strerror}") from None


def _claim_data_dir(data_dir: Path, node_id: str, raft: str) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    identity = data_dir / "node.json"
    mine = {"node_id": node_id, "raft": raft}
    if identity.exists():
        try:
            theirs = json.loads(identity.read_text(encoding="utf-8"))
        except ValueError:
            theirs = None
        if theirs != mine:
            raise click.UsageError(f"--data-dir {data_dir} belongs to {theirs}, not to {mine}; use another dir")
        return
    # Synced before the node starts: after a power loss an empty node.json would make the dir refuse its own node.
    tmp = identity.with_suffix(".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(json.dumps(mine) + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, identity)
    dir_fd = os.open(data_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _read_secret(path: Path | None) -> str | None:
    if path is None:
        return None
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 16:
        raise click.UsageError(f"--cluster-secret-file {path} must hold a secret of at least 16 chars")
    return secret


#: Entry point group through which other packages add operator commands (``ops`` adds ``backfill`` and ``verify``).
#: A command is loaded only when it is named or listed, so ``coordinator serve`` never imports them, and this
#: package never imports theirs (DESIGN.md section 1: coordinator/ may import only provider.core).
COMMAND_GROUP = "seamless.coordinator_commands"


class _PluginGroup(click.Group):
    """A click group that also offers the commands registered under :data:`COMMAND_GROUP`."""

    @staticmethod
    def _plugins() -> dict[str, EntryPoint]:
        return {ep.name: ep for ep in entry_points(group=COMMAND_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        plugin = self._plugins().get(cmd_name) if command is None else None
        if plugin is not None:
            loaded = plugin.load()
            command = loaded if isinstance(loaded, click.Command) else None
        return command


@click.group(cls=_PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Backfill coordinator: a Raft-replicated lease table behind an HTTP API, and operator commands."""


@main.command()
@click.option("--node-id", required=True, help="Unique name of this node (shown in /v1/cluster and logs).")
@click.option(
    "--raft",
    "raft_addr",
    default="127.0.0.1:4601",
    show_default=True,
    help="HOST:PORT this node's Raft listens on (also its identity among peers).",
)
@click.option("--peers", default="", help="Comma-separated Raft HOST:PORT of the other nodes (empty: one node).")
@click.option("--http", "http_addr", default="127.0.0.1:8701", show_default=True, help="HOST:PORT of the HTTP API.")
@click.option(
    "--data-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory of the Raft journal and full dump (created when missing).",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML config file (sections seamless_data_provider and coordinator are used).",
)
@click.option(
    "--token-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Bearer tokens, one 'TOKEN ROLE [NAME]' per line; without it auth is off (loopback only).",
)
@click.option(
    "--cluster-secret-file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Shared secret that encrypts Raft traffic; required for non-loopback --raft.",
)
@click.option("--log-level", default="INFO", show_default=True, help="DEBUG, INFO, WARNING or ERROR.")
def serve(
    node_id: str,
    raft_addr: str,
    peers: str,
    http_addr: str,
    data_dir: Path,
    config_path: Path | None,
    token_file: Path | None,
    cluster_secret_file: Path | None,
    log_level: str,
) -> None:
    """Run one coordinator node until SIGTERM or SIGINT."""
    from coordinator.auth import TokenTable
    from coordinator.node import NodeSettings

    raft_host, raft_port = parse_addr(raft_addr, "--raft")
    http_host, http_port = parse_addr(http_addr, "--http")
    if raft_port == http_port and (raft_host == http_host or _WILDCARDS & {raft_host, http_host}):
        raise click.UsageError(f"--raft and --http both name port {raft_port}: give each its own port")
    peer_list = tuple(p.strip() for p in peers.split(",") if p.strip())
    for peer in peer_list:
        parse_addr(peer, "--peers")
    if not is_loopback(raft_host) and cluster_secret_file is None:
        raise click.UsageError(
            "--raft binds a non-loopback address: --cluster-secret-file is required "
            "(Raft traffic is pickle; without a secret anyone reaching the port can run code)"
        )
    if not is_loopback(http_host) and token_file is None:
        raise click.UsageError("--http binds a non-loopback address: --token-file is required")
    try:
        config = load_config(config_path)
        tokens = TokenTable.load(token_file) if token_file is not None else None
    except (ConfigError, ValueError) as exc:
        raise click.UsageError(str(exc)) from None
    secret = _read_secret(cluster_secret_file)
    _check_bindable(raft_host, raft_port, "--raft")
    _check_bindable(http_host, http_port, "--http")
    raft = f"{raft_host}:{raft_port}"
    from coordinator._connections import raise_fd_limit
    from provider.core.obs import configure_logging, run_service

    configure_logging("coordinator", level=log_level)
    from provider.core.tracing import configure_tracing

    configure_tracing("seamless-coordinator", instance=node_id)
    try:
        _claim_data_dir(data_dir, node_id, raft)
    except OSError as exc:
        from coordinator._disk import write_failed

        write_failed(str(data_dir / "node.json"), exc)
    settings = NodeSettings(
        node_id=node_id,
        raft=raft,
        peers=peer_list,
        http_host=http_host,
        http_port=http_port,
        data_dir=data_dir,
        password=secret,
    )
    raise_fd_limit()  # before the node sizes its connection cap from the limit
    from coordinator.raft import RaftBindError, tune_gc

    tune_gc()  # coordinator/raft.py rule 8

    try:
        run_service(_serve(settings, config, tokens))
    except RaftBindError as exc:  # taken after the check above (coordinator/raft.py rule 13)
        raise click.UsageError(str(exc)) from None


async def _serve(settings: Any, config: AppConfig, tokens: Any) -> None:
    from aiohttp import web

    from coordinator._connections import GuardedSite, fd_limit
    from coordinator.api import HOT_PATH, build_app
    from coordinator.node import CoordinatorNode
    from provider.core.obs import get_logger

    log = get_logger("coordinator.cli")
    node = CoordinatorNode(settings, config)
    await node.start()
    app = build_app(node, tokens)
    app.middlewares.append(node.connections.middleware)  # innermost: it sees each request's headers arrive
    limits = node.connections.limits
    runner = web.AppRunner(app, access_log=None, handle_signals=False, keepalive_timeout=limits.idle_timeout_s)
    await runner.setup()
    hot = app.get(HOT_PATH)
    front = None if hot is None else hot.protocol
    await GuardedSite(
        runner, settings.http_host, settings.http_port, node.connections, backlog=1024, front=front
    ).start()
    log.info(
        "coordinator.http_limits",
        fd_limit=fd_limit(),
        max_connections=limits.max_total,
        max_connections_per_peer=limits.max_per_peer,
        header_timeout_s=limits.header_timeout_s,
        body_timeout_s=limits.body_timeout_s,
        idle_timeout_s=limits.idle_timeout_s,
    )
    log.info(
        "coordinator.serving",
        node_id=settings.node_id,
        http=settings.http_url,
        raft=settings.raft,
        peers=list(settings.peers),
        auth=tokens is not None,
        encrypted=settings.password is not None,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("coordinator.stopping", node_id=settings.node_id)
    await runner.cleanup()
    await node.stop()


@main.command()
@click.option("--url", required=True, help="Base URL of any node; a comma-separated list is tried in order.")
@click.option("--token", envvar="COORDINATOR_TOKEN", default=None, help="Bearer token (env COORDINATOR_TOKEN).")
@click.option(
    "--token-file", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="File whose first token is used."
)
@click.option("--timeout", "timeout_s", default=3.0, show_default=True, help="Seconds per HTTP request.")
def status(url: str, token: str | None, token_file: Path | None, timeout_s: float) -> None:
    """Print the cluster's roles and every job's progress; exit 1 when no leader is known."""
    from coordinator.status import collect_status, render_status

    if token_file is not None and token is None:
        token = next(
            (
                line.split()[0]
                for line in token_file.read_text(encoding="utf-8").splitlines()
                if line.strip() and not line.lstrip().startswith("#")
            ),
            None,
        )
    report = collect_status([u.strip().rstrip("/") for u in url.split(",") if u.strip()], token, timeout_s)
    click.echo(render_status(report))
    sys.exit(0 if report.leader else 1)


@main.command()
@click.option("--markdown", is_flag=True, help="Print the Markdown route table of docs/http-api.md instead.")
def openapi(markdown: bool) -> None:
    """Print the OpenAPI 3 document of the HTTP API."""
    from coordinator.openapi import build_openapi, render_markdown

    click.echo(render_markdown() if markdown else json.dumps(build_openapi(), indent=2))
