"""Real nodes write format-2 dumps and restart from them: kill -9 of all three, every node serves every job."""

from __future__ import annotations

import gzip
import pickle
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from coordinator._snapshot import MAGIC
from devkit.api import call
from devkit.cluster import FAST_CONFIG, MIN, SERIES, Cluster
from devkit.polling import http_json, wait_for

pytestmark = [pytest.mark.cluster]

CONFIG: dict[str, Any] = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 120_000, "window_bars": 1}},
    "coordinator": {**FAST_CONFIG["coordinator"], "log_compaction_min_entries": 100},
}


def dump_blob(path: Path) -> Any:
    """The lease table's part of pysyncobj's dump file (gzip + pickle of (consumers' data, ...))."""
    with gzip.open(path, "rb") as f:
        data = pickle.load(f)
    return data[0][1]


async def test_nodes_dump_in_format2_and_restart_from_it_after_kill9_of_all(
    cluster_factory: Any, http: aiohttp.ClientSession
) -> None:
    """After 150 acknowledged claims each node has written a compact dump; kill -9 of all three and a restart
    bring every job back with its counts on every node, and the token floor with it."""
    cl: Cluster = cluster_factory(config=CONFIG)
    url = cl.urls[cl.wait_leader()]
    status, body = await call(http, "POST", url + "/v1/jobs", {"series": SERIES, "start": 0, "end": 400 * MIN})
    assert status == 201, body
    job_id = body["job"]["job_id"]
    tokens = []
    for k in range(150):
        status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": f"w{k}"})
        assert status == 200 and len(body["leases"]) == 1, body
        tokens.append(body["leases"][0]["token"])
    dumps = [node.data_dir / "raft.dump" for node in cl.nodes]
    wait_for(lambda: all(p.exists() for p in dumps), 30, "a dump on every node")
    for path in dumps:
        blob = dump_blob(path)
        assert isinstance(blob, bytes) and blob.startswith(MAGIC)
    cl.kill_all()
    for i in range(3):
        cl.start(i)
    cl.wait_leader()
    want = {"pending": 250, "leased": 150, "done": 0, "failed": 0}

    def served_everywhere() -> bool:
        for node in cl.nodes:
            status, body = http_json("GET", f"{node.url}/v1/jobs/{job_id}", timeout_s=2.0)
            if status != 200 or body["job"]["windows"] != want:
                return False
        return True

    wait_for(served_everywhere, 30, "every node serving the job with its counts")
    url = cl.urls[cl.wait_leader()]
    status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "after"})
    assert status == 200 and body["leases"][0]["token"] > max(tokens), body
