"""The cluster secret keeps strangers off the Raft port, and no secret (bearer token or cluster secret) ever
reaches a coordinator or worker log.

pysyncobj's wire format is pickle and it logs nothing about refused connections ("Why no logging of security
errors?" in its source; our guarded transport logs them, tests/chaos/test_raft_hostile.py), so what is observable
is asserted: a payload is not executed, a read-only peer gets no state, the cluster's leader, term and state are
undisturbed. Each check also runs against a node without the secret (or with the right secret), to show it would
catch the hole.
"""

from __future__ import annotations

import os
import pickle
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import pytest
import yaml
from pysyncobj import SyncObj, SyncObjConf

from coordinator.raft import TableConsumer
from coordinator.table import Table
from devkit.cluster import make_cluster
from devkit.polling import http_json, wait_for
from devkit.workers import WorkerPool

from .security_kit import SECURE_CONFIG

pytestmark = [pytest.mark.cluster, pytest.mark.slow]


class _TouchFile:
    """A pickle that, when loaded, creates a file: what an attacker's payload would do with a shell instead."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (str(self.path), "w"))


def send_pickle_frame(raft: str, payload: Any) -> bytes:
    """Send one frame in pysyncobj's format (int32 length + zlib(pickle)) and return what the node answers."""
    host, port = raft.rsplit(":", 1)
    data = zlib.compress(pickle.dumps(payload), 3)
    with socket.create_connection((host, int(port)), timeout=5) as sock:
        sock.sendall(struct.pack("i", len(data)) + data)
        sock.settimeout(2)
        try:
            return sock.recv(4096)
        except (TimeoutError, ConnectionResetError):
            return b""


def fingerprint(secured: Any) -> tuple[Any, ...]:
    """Leader, term and the table as the leader serves it: what a rogue peer must not change."""
    leader = secured.leader
    url = secured.cluster.nodes[leader].url
    view = http_json("GET", url + "/v1/cluster", token=secured.tokens["reader"])[1]
    jobs = http_json("GET", url + "/v1/jobs", token=secured.tokens["reader"])[1]
    return leader, view["term"], view["token_floor"], jobs


def read_only_peer(rafts: list[str], password: str | None, wait_s: float = 4.0) -> Table:
    """Run a pysyncobj read-only node against the cluster for ``wait_s`` and return the table it replicated."""
    table = Table()
    consumer = TableConsumer(table, threading.Lock(), lambda op, result: None)
    peer = SyncObj(
        None,
        rafts,
        SyncObjConf(password=password, appendEntriesUseBatch=False, connectionRetryTime=0.5),
        consumers=[consumer],
    )
    try:
        time.sleep(wait_s)
    finally:
        peer.destroy()
    return table


def test_pickle_payload_on_the_raft_port_is_not_executed(secured, tmp_path):
    """A raw pickle frame sent to every node's Raft port is dropped unread with the secret set, and the cluster is
    undisturbed; the same frame against a node without the secret is executed (the hole the secret closes)."""
    before = fingerprint(secured)
    marker = tmp_path / "pwned"
    for node in secured.cluster.nodes:
        assert send_pickle_frame(node.raft, _TouchFile(marker)) == b""  # the node hangs up
        assert send_pickle_frame(node.raft, ["status"]) == b""  # pysyncobj's unauthenticated admin command
    time.sleep(1.0)
    assert not marker.exists()
    assert all(node.alive for node in secured.cluster.nodes)
    assert fingerprint(secured) == before

    (tmp_path / "open").mkdir()
    open_cluster = make_cluster(tmp_path / "open", 1, SECURE_CONFIG)
    open_cluster.start(0)
    try:
        open_cluster.wait_leader(30)
        assert send_pickle_frame(open_cluster.nodes[0].raft, ["status"]) != b""  # the admin command answers
        send_pickle_frame(open_cluster.nodes[0].raft, _TouchFile(marker))
        wait_for(marker.exists, 10, "the payload to run on the node without a secret")
    finally:
        open_cluster.kill_all()


def test_peer_without_the_secret_cannot_join_or_read(secured):
    """A pysyncobj read-only peer with no secret or a wrong one replicates nothing and disturbs nothing; with the
    right secret the same peer replicates the whole table (so the check is not vacuous)."""
    url = secured.cluster.nodes[secured.leader].url
    status, _ = http_json(
        "POST",
        url + "/v1/jobs",
        {"series": "ohlcv:sec:PEER/USDT:1m", "start": 0, "end": 7_200_000},
        token=secured.tokens["worker"],
    )
    assert status in (200, 201)
    rafts = [node.raft for node in secured.cluster.nodes]
    before = fingerprint(secured)
    for password in (None, "not-the-cluster-secret-0123456789"):
        stolen = read_only_peer(rafts, password)
        assert stolen.jobs() == [] and stolen.token_floor == 0
    assert fingerprint(secured) == before
    replica = read_only_peer(rafts, secured.secret)
    assert len(replica.jobs()) == len(before[3]["jobs"]) >= 1


def test_logs_hold_no_secret(secured, tmp_path):
    """After a backfill by a worker with a token file, refused requests with forged tokens and a rogue peer, no
    bearer token and not the cluster secret appear in any coordinator or worker log."""
    cluster, tokens = secured.cluster, secured.tokens
    url = cluster.nodes[secured.follower].url
    forged = "f0rged" + os.urandom(8).hex()
    for token in (forged, tokens["reader"]):  # a 401 and a 403
        http_json("POST", url + "/v1/jobs", {"series": "ohlcv:sec:X/Y:1m", "start": 0, "end": 60_000}, token=token)
    read_only_peer([node.raft for node in cluster.nodes], "wrong-" + secured.secret, wait_s=1.5)
    status, body = http_json(
        "POST",
        url + "/v1/jobs",
        {"series": "ohlcv:sec:LOG/USDT:1m", "start": 0, "end": 3 * 3_600_000},
        token=tokens["worker"],
    )
    assert status in (200, 201), body
    token_file = tmp_path / "worker-token.txt"
    token_file.write_text(f"{tokens['worker']}\n", encoding="utf-8")
    config = tmp_path / "worker.yaml"
    config.write_text(yaml.safe_dump(SECURE_CONFIG), encoding="utf-8")
    pool = WorkerPool(tmp_path, cluster.urls, "synthetic:3", f"sqlite:///{tmp_path / 'bars.db'}", config)
    try:
        pool.start("sec-worker", "--token-file", str(token_file), "--log-level", "DEBUG")
        job_id = body["job"]["job_id"]
        wait_for(
            lambda: http_json("GET", url + f"/v1/jobs/{job_id}", token=tokens["reader"])[1]["job"]["state"] == "done",
            60,
            "the backfill",
        )
    finally:
        pool.kill_all()
    logs = {
        path.name: path.read_text(errors="replace")
        for path in (*(node.log_path for node in cluster.nodes), tmp_path / "sec-worker.log")
    }
    assert all(logs.values()) and "worker.window_done" in logs["sec-worker.log"]  # the logs are real and detailed
    for name, text in logs.items():
        for secret in (*tokens.values(), forged, secured.secret):
            assert secret not in text, f"a secret appears in {name}"
