"""A node never runs without its Raft port, and the harness never gives two servers one port.

A CI run once gave a node the same port for ``--raft`` and ``--http``: it served HTTP there, pysyncobj retried
its bind every second without a word, the node answered 503 ``no_leader`` for the whole test and its peers read
an HTTP answer as a Raft frame.
"""

from __future__ import annotations

import gc
import random
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from coordinator import cli
from coordinator.raft import RaftBindError, RaftNode, RaftSettings
from coordinator.table import Table
from devkit.ports import free_port, free_ports


@pytest.fixture(autouse=True)
def _collector_restored() -> Iterator[None]:
    """``serve`` tunes the process's garbage collector (coordinator/raft.py rule 8); the suite keeps its own."""
    before = gc.get_threshold()
    yield
    gc.set_threshold(*before)


@pytest.fixture
def held() -> Iterator[str]:
    """A Raft address some other socket is listening on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", free_port()))
        sock.listen(1)
        host, port = sock.getsockname()
        yield f"{host}:{port}"


def test_a_node_whose_raft_port_is_taken_refuses_to_start(tmp_path: Path, held: str) -> None:
    """pysyncobj's first failed bind ends the start with an error naming --raft, and no tick thread is left."""
    node = RaftNode(RaftSettings(held, (), tmp_path), Table(), lambda op, result: None)
    with pytest.raises(RaftBindError, match=rf"--raft {held} cannot be bound: .*pick a free port"):
        node.start()
    assert not node.serving or node.leader_addr is None
    node.stop()  # harmless after a refused start


def test_serve_exits_2_when_the_raft_port_is_taken_after_its_check(
    tmp_path: Path, held: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The port is taken between the CLI's check and the bind (the check is skipped here to make that race
    certain): serve exits 2 naming --raft instead of serving HTTP without Raft."""
    monkeypatch.setattr(cli, "_check_bindable", lambda host, port, flag: None)
    args = ["serve", "--node-id", "x", "--data-dir", str(tmp_path / "d"), "--raft", held]
    result = CliRunner().invoke(cli.main, [*args, "--http", f"127.0.0.1:{free_port()}"])
    assert result.exit_code == 2 and f"--raft {held} cannot be bound" in result.output, result.output


@pytest.mark.parametrize("http_host", ["127.0.0.1", "0.0.0.0"])
def test_serve_refuses_one_port_for_raft_and_http(tmp_path: Path, http_host: str) -> None:
    """--raft and --http on one port (or a wildcard HTTP bind over the Raft port) exit 2 before binding."""
    port = free_port()
    args = ["serve", "--node-id", "x", "--data-dir", str(tmp_path / "d"), "--raft", f"127.0.0.1:{port}"]
    result = CliRunner().invoke(cli.main, [*args, "--http", f"{http_host}:{port}", "--token-file", "/dev/null"])
    assert result.exit_code == 2 and f"both name port {port}" in result.output, result.output


def test_the_harness_never_hands_out_a_port_twice() -> None:
    """Thousands of picks on one address, one or several at a time, are all distinct (the kernel repeats itself
    within a few hundred closed probes)."""
    host = f"127.0.0.{random.randint(20, 250)}"
    picked = [free_port(host) for _ in range(1500)] + free_ports(500, host)
    assert len(set(picked)) == len(picked)
