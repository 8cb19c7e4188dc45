"""Power loss of all three coordinators under load with ``coordinator.fsync: always``: nothing acknowledged is lost.

Every node's data dir is on a FUSE filesystem (``powerloss_fs.py``) that keeps only what was fsynced. Clients
claim windows on all nodes; then every node is killed (-9) and the filesystem process too, which drops every
unsynced byte, as a power cut would; it is remounted and the nodes restarted. Every acknowledged grant must be a
live lease with its token, and the next grant's token must be above every acknowledged one (the fencing counter
never goes backwards). The bounded run (one cut) is part of ``make test``; ``make chaos`` (SEAMLESS_CHAOS_LONG=1)
cuts three times under a longer load.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from devkit.api import call
from devkit.cluster import MIN, SERIES, Cluster, make_cluster
from devkit.polling import wait_for

pytestmark = [pytest.mark.chaos, pytest.mark.cluster, pytest.mark.slow]

LONG = os.environ.get("SEAMLESS_CHAOS_LONG") == "1"
CUTS = 3 if LONG else 1
LOAD_S = 6.0 if LONG else 2.5
FS = Path(__file__).with_name("powerloss_fs.py")
CONFIG: dict[str, Any] = {
    "seamless_data_provider": {"backfill_config": {"distributed_lease_ttl_ms": 300_000, "window_bars": 1}},
    "coordinator": {"fsync": "always", "leader_grace_ms": 300_000},
}


class PowerLossMount:
    """The FUSE process over a backing dir; ``cut`` kills it (-9), losing what was not fsynced."""

    def __init__(self, backing: Path, mountpoint: Path) -> None:
        self.backing, self.mountpoint = backing, mountpoint
        self.proc: subprocess.Popen[bytes] | None = None

    def mount(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(FS), str(self.backing), str(self.mountpoint)])
        wait_for(lambda: os.path.ismount(self.mountpoint), 20, "the power-loss filesystem mounted")

    def cut(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)
        wait_for(lambda: not os.path.ismount(self.mountpoint), 20, "the power-loss filesystem unmounted")


@pytest.fixture
async def http() -> Any:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=15)) as session:
        yield session


@pytest.fixture
def powered(tmp_path: Path) -> Iterator[tuple[Cluster, PowerLossMount]]:
    backing, mountpoint = tmp_path / "disk", tmp_path / "mnt"
    backing.mkdir()
    mountpoint.mkdir()
    fs = PowerLossMount(backing, mountpoint)
    fs.mount()
    (tmp_path / "cluster").mkdir()
    cluster = make_cluster(tmp_path / "cluster", 3, CONFIG)
    for node in cluster.nodes:
        (mountpoint / node.data_dir.name).mkdir()
        node.data_dir.symlink_to(mountpoint / node.data_dir.name)
    try:
        yield cluster, fs
    finally:
        cluster.kill_all()
        fs.cut()
        shutil.rmtree(tmp_path / "cluster", ignore_errors=True)


async def load(http: aiohttp.ClientSession, cl: Cluster, seconds: float) -> list[tuple[str, int]]:
    """Clients claim one window at a time on every node until ``seconds`` pass; the acknowledged grants."""
    acked: list[tuple[str, int]] = []
    stop = asyncio.Event()

    async def client(k: int) -> None:
        i = k
        while not stop.is_set():
            url = cl.urls[i % 3]
            i += 1
            try:
                status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": f"w{k}"}, retry_s=0)
            except (aiohttp.ClientError, TimeoutError):
                continue
            if status == 200:
                acked.extend((g["window_id"], g["token"]) for g in body["leases"])

    tasks = [asyncio.create_task(client(k)) for k in range(8)]
    await asyncio.sleep(seconds)  # the load's length, not a wait for an outcome
    stop.set()
    await asyncio.gather(*tasks)
    return acked


async def test_power_loss_of_all_nodes_loses_no_acknowledged_grant(
    powered: tuple[Cluster, PowerLossMount], http: aiohttp.ClientSession
) -> None:
    """After each cut and restart every acknowledged grant is a live lease and the next token is above them all."""
    cl, fs = powered
    for i in range(3):
        cl.start(i)
    url = cl.urls[cl.wait_leader(timeout_s=60)]
    status, body = await call(http, "POST", url + "/v1/jobs", {"series": SERIES, "start": 0, "end": 50_000 * MIN})
    assert status == 201, body
    acked: list[tuple[str, int]] = []
    for _ in range(CUTS):
        load_task = asyncio.create_task(load(http, cl, LOAD_S))
        acked += await load_task
        cl.kill_all()  # the power goes: processes first, then every byte that was not synced
        fs.cut()
        fs.mount()
        for i in range(3):
            cl.start(i)
        url = cl.urls[cl.wait_leader(timeout_s=60)]
        assert len(acked) > 20, f"the load acknowledged only {len(acked)} grants"
        # A write first: once it is applied, the leader has applied every entry before it, so the read below
        # sees the whole log (a freshly elected leader applies its predecessors' entries only after a commit).
        status, body = await call(http, "POST", url + "/v1/windows/claim", {"worker_id": "after"}, retry_s=30)
        assert status == 200 and body["leases"], body
        token = body["leases"][0]["token"]
        assert token > max(t for _, t in acked), "the fencing counter went backwards"
        acked.append((body["leases"][0]["window_id"], token))
        status, body = await call(http, "GET", url + "/v1/leases", retry_s=30)
        assert status == 200, body
        live = {(item["window_id"], item["token"]) for item in body["leases"]}
        lost = [a for a in acked if a not in live]
        assert not lost, f"{len(lost)} of {len(acked)} acknowledged grants lost, e.g. {lost[:3]}"
