"""The guarded Raft transport refuses nothing legitimate: with the cluster secret, a follower that was down while
the leader compacted its log catches up through a dump transfer of many chunks and the entries after it, and no
node counts a single rejection (``coordinator_raft_rejections_total``)."""

from __future__ import annotations

import secrets
import urllib.request
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import FAST_CONFIG, MIN, Cluster
from devkit.polling import http_json, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

CONFIG: dict[str, Any] = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 120_000, "window_bars": 1}},
    "coordinator": {**FAST_CONFIG["coordinator"], "log_compaction_min_entries": 100},
}
#: pysyncobj sends a dump in chunks of logCompactionBatchSize (64 KiB).
DUMP_CHUNK_BYTES = 64 * 1024


def rejections(url: str) -> dict[str, float]:
    """This node's ``coordinator_raft_rejections_total`` samples, by reason."""
    with urllib.request.urlopen(url + "/metrics", timeout=5) as answer:
        text = answer.read().decode()
    found = {}
    for line in text.splitlines():
        if line.startswith("coordinator_raft_rejections_total{"):
            labels, value = line.rsplit(" ", 1)
            found[labels.split('reason="')[1].split('"')[0]] = float(value)
    return found


def job_counts(url: str, query: str = "") -> dict[str, Any] | None:
    status, body = http_json("GET", f"{url}/v1/jobs{query}", timeout_s=5.0)
    return {job["job_id"]: job["windows"] for job in body["jobs"]} if status == 200 else None


@pytest.mark.timeout(240)
async def test_a_lagging_follower_catches_up_by_dump_transfer_through_the_guarded_port(
    cluster_factory: Any, http: aiohttp.ClientSession
) -> None:
    """A follower is killed before any compaction; 80,000 windows and 30,000 leases later the leader has compacted
    its log into a dump of several 64 KiB chunks; the restarted follower serves every job with the leader's counts,
    holds the dump, and every node's rejection counters are 0 (each reason present)."""
    cl: Cluster = cluster_factory(config=CONFIG, secret=secrets.token_urlsafe(24))
    leader = cl.wait_leader(30)
    follower = next(i for i in range(3) if i != leader)
    cl.kill(follower)
    assert not (cl.nodes[follower].data_dir / "raft.dump").exists()
    url = cl.urls[leader]
    for k in range(4):
        job = {"series": f"ohlcv:test:DUMP{k}/USD:1m", "start": 0, "end": 20_000 * MIN}
        status, body = await call(http, "POST", url + "/v1/jobs", job)
        assert status == 201, body
    for k in range(150):  # live leases make the dump big: the window columns compress to almost nothing
        claim = {"worker_id": f"w{k}", "max_windows": 200}
        status, body = await call(http, "POST", url + "/v1/windows/claim", claim)
        assert status == 200 and len(body["leases"]) == 200, body
    live = [i for i in range(3) if i != follower]
    dump = cl.nodes[leader].data_dir / "raft.dump"
    wait_for(lambda: all((cl.nodes[i].data_dir / "raft.dump").exists() for i in live), 60, "the live nodes' dumps")
    assert dump.stat().st_size > 3 * DUMP_CHUNK_BYTES, dump.stat().st_size

    cl.start(follower)
    want = job_counts(cl.urls[leader])
    assert want is not None and len(want) == 4
    assert sum(sum(w.values()) for w in want.values()) == 80_000
    wait_for(
        lambda: job_counts(cl.urls[follower], "?consistency=stale") == want,
        90,
        "the restarted follower to serve every job with the leader's counts",
    )
    assert (cl.nodes[follower].data_dir / "raft.dump").exists()
    for node in cl.nodes:
        counts = rejections(node.url)
        assert counts and set(counts.values()) == {0.0}, (node.node_id, counts, cl.logs())
