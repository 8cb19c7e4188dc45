"""A full data dir (issue 21 item 8). Found on 2026-12-04: the node whose disk filled died of SIGBUS (exit 135)
with at most one ERROR line; restarted while still full it logged every tick and stood for election over and
over (term 41), and once space returned its RequestVote deposed the leader (the cluster's term went to 66).

Each node's data dir is on its own small FUSE disk (``diskfull_fs.py``, as the power-loss test uses FUSE). A
writer submits jobs through the two other nodes all along. The leader's disk is filled until ENOSPC; what must
hold: the node logs a named line (``disk.low``, or ``disk.data_dir_write_failed`` and exit status 74), stands aside or
exits, a new leader takes over within one term, and no write through the other two fails. Restarted while the
disk is still full, the node stands aside from the start: ``/healthz`` 503 ``disk_full``, no candidacy (the
cluster's term rises by at most 2 over the whole hold, and by 0 in practice), a handful of log lines and no more.
Once space returns, it rejoins and catches up without an election (term rise at most 2, 0 in practice).

The short version (4 s held full, one cycle) runs in ``make test``; ``SEAMLESS_CHAOS_LONG=1`` (``make chaos``)
holds it full for 75 s (past the one-a-minute reminder) and fills the leader three times.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from pysyncobj.journal import FileJournal

from devkit.api import call
from devkit.cluster import MIN, SERIES, Cluster, make_cluster
from devkit.polling import http_json, wait_for

from .scenarios import LONG

pytestmark = [pytest.mark.chaos, pytest.mark.cluster]

FS = Path(__file__).with_name("diskfull_fs.py")
CAPACITY_BYTES = 24 * 2**20
RESERVE_MB = 2
#: How long the victim stays restarted on a full disk.
HOLD_S = 75.0 if LONG else 4.0
CYCLES = 3 if LONG else 1
#: The term may rise by this much over a hold or a recovery (the brief; 0 is what happens).
TERM_SLACK = 2
EXIT_DATA_DIR = 74
CONFIG: dict[str, Any] = {
    "coordinator": {"disk_reserve_mb": RESERVE_MB, "leader_grace_ms": 500},
}


class SmallDisk:
    """One FUSE disk of ``CAPACITY_BYTES`` over a backing dir; ``fill`` writes a file until ENOSPC."""

    def __init__(self, root: Path) -> None:
        self.backing, self.mountpoint = root / "disk", root / "mnt"
        self.backing.mkdir(parents=True)
        self.mountpoint.mkdir()
        self.proc: subprocess.Popen[bytes] | None = None
        self.filler = self.mountpoint / "data" / "filler.bin"

    def mount(self) -> None:
        cmd = [sys.executable, str(FS), str(self.backing), str(self.mountpoint), str(CAPACITY_BYTES)]
        self.proc = subprocess.Popen(cmd)
        wait_for(lambda: os.path.ismount(self.mountpoint), 20, "the small disk mounted")

    def unmount(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(timeout=10)
            self.proc = None
        subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)

    def free_bytes(self) -> int:
        st = os.statvfs(self.mountpoint)
        return st.f_bavail * st.f_frsize

    def fill(self) -> int:
        """Write the filler file until the disk refuses a byte more; its size."""
        written = 0
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for chunk in (2**20, 4096, 1):
                try:
                    while True:
                        written += os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
        finally:
            os.close(fd)
        return written

    def free(self) -> None:
        self.filler.unlink()


@dataclass
class Writer:
    """Submits one small job every 50 ms through the nodes in ``urls`` (the victim excluded), as a client that
    retries 503s and connection errors for 5 s with the same request ids; records every outcome."""

    urls: list[str]
    ok: list[float] = field(default_factory=list)
    job_ids: list[str] = field(default_factory=list)
    failed: list[tuple[int, Any]] = field(default_factory=list)
    slowest_s: float = 0.0
    _k: int = 0

    async def run(self, stop: asyncio.Event) -> None:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
            while not stop.is_set():
                self._k += 1
                start = (10_000 + self._k) * 900 * MIN
                url = self.urls[self._k % len(self.urls)]
                began = time.monotonic()
                try:
                    status, body = await call(
                        http, "POST", url + "/v1/jobs", {"series": SERIES, "start": start, "end": start + 900 * MIN},
                        retry_s=5.0,
                    )  # fmt: skip
                except (aiohttp.ClientError, TimeoutError) as exc:
                    status, body = 0, repr(exc)
                took_s = time.monotonic() - began
                self.slowest_s = max(self.slowest_s, took_s)
                if status in (200, 201):
                    self.ok.append(time.monotonic())
                    self.job_ids.append(body["job"]["job_id"])
                else:
                    self.failed.append((status, body))
                await asyncio.sleep(0.05)


def events(cluster: Cluster, index: int, since_line: int = 0) -> list[dict[str, Any]]:
    lines = cluster.nodes[index].log_path.read_text(errors="replace").splitlines()[since_line:]
    out = []
    for line in lines:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"event": "(text)", "level": "error", "text": line})
    return out


def log_length(cluster: Cluster, index: int) -> int:
    return len(cluster.nodes[index].log_path.read_text(errors="replace").splitlines())


def term(cluster: Cluster) -> int:
    """The highest term any live node reports."""
    terms = []
    for i, node in enumerate(cluster.nodes):
        if node.alive:
            try:
                view = cluster.view(i)
            except OSError:
                continue
            if view is not None:
                terms.append(int(view["term"]))
    return max(terms)


def health(cluster: Cluster, index: int) -> tuple[int, Any]:
    return http_json("GET", cluster.nodes[index].url + "/healthz", timeout_s=2.0)


def leader_among(cluster: Cluster, indexes: list[int]) -> int | None:
    for i in indexes:
        view = cluster.view(i)
        if view is not None and view["role"] == "leader":
            return i
    return None


def replica(cluster: Cluster, index: int) -> tuple[list[Any], int] | None:
    """One node's own view of every job and its token floor (stale reads: no forwarding, no barrier)."""
    status, body = http_json("GET", cluster.nodes[index].url + "/v1/jobs?consistency=stale&limit=5000", timeout_s=5)
    view = cluster.view(index)
    if status != 200 or view is None or body.get("next_cursor"):
        return None
    return body["jobs"], view["token_floor"]


def replicas_agree(cluster: Cluster) -> tuple[list[Any], int] | None:
    """Every node's replica, once they hold the same jobs and token floor (followers apply a little behind)."""
    views = [replica(cluster, i) for i in range(3)]
    if any(v is None for v in views) or any(json.dumps(v) != json.dumps(views[0]) for v in views):
        return None
    return views[0]


@pytest.fixture
def small_disks(tmp_path: Path) -> Iterator[tuple[Cluster, list[SmallDisk]]]:
    (tmp_path / "cluster").mkdir()
    cluster = make_cluster(tmp_path / "cluster", 3, CONFIG)
    disks = [SmallDisk(tmp_path / f"disk{i}") for i in range(3)]
    try:
        for disk, node in zip(disks, cluster.nodes, strict=True):
            disk.mount()
            (disk.mountpoint / "data").mkdir()
            node.data_dir.symlink_to(disk.mountpoint / "data")
        yield cluster, disks
    finally:
        cluster.kill_all()
        for disk in disks:
            disk.unmount()
        shutil.rmtree(tmp_path / "cluster", ignore_errors=True)


async def wait_until(predicate: Any, timeout_s: float, what: str) -> Any:
    """``wait_for`` off the event loop, so the writer keeps writing meanwhile."""
    return await asyncio.to_thread(wait_for, predicate, timeout_s, what, 0.05)


def all_connected(cluster: Cluster) -> bool:
    """Every node has a Raft connection to every other one (the followers' own connection too)."""
    views = [cluster.view(i) for i in range(3)]
    return all(v is not None and all(m["connected"] for m in v["members"]) for v in views)


async def fill_the_leader(cluster: Cluster, disks: list[SmallDisk], report: dict[str, Any]) -> int:
    """Phase 1: fill the leader's disk; it names the reason and stands aside (or exits 74); another node leads."""
    victim = await asyncio.to_thread(cluster.wait_leader, 30)
    # A cluster a few hundred ms old may not have connected its followers to each other yet (pysyncobj retries
    # every second): the successor's RequestVote would find no connection, and the handoff would take 2 terms.
    await wait_until(lambda: all_connected(cluster), 20, "every Raft connection up")
    others = [i for i in range(3) if i != victim]
    term_before = term(cluster)
    mark = log_length(cluster, victim)
    filled_at = time.monotonic()
    await asyncio.to_thread(disks[victim].fill)
    assert disks[victim].free_bytes() == 0

    def named() -> dict[str, Any] | None:
        return next(
            (e for e in events(cluster, victim, mark) if e.get("event") in ("disk.low", "disk.data_dir_write_failed")),
            None,
        )

    line = await wait_until(named, 10, "the victim's named log line")
    report.setdefault("named_line_s", []).append(round(time.monotonic() - filled_at, 2))
    assert line.get("reason") == "disk_full" and line.get("path") and line.get("action"), line
    assert "free_bytes" in line, line
    (new_leader,) = await wait_until(
        lambda: (i := leader_among(cluster, others)) is not None and [i], 10, "a new leader among the others"
    )
    report.setdefault("new_leader_s", []).append(round(time.monotonic() - filled_at, 2))
    if cluster.nodes[victim].alive:
        status, body = health(cluster, victim)
        assert status == 503 and body["status"] == "disk_full" and body["role"] == "aside", body
        report.setdefault("victim", []).append("stood aside")
    else:
        assert cluster.nodes[victim].proc is not None
        assert cluster.nodes[victim].proc.returncode == EXIT_DATA_DIR, cluster.logs()
        report.setdefault("victim", []).append("exited 74")
    assert term(cluster) - term_before <= TERM_SLACK, "filling the leader's disk cost more than one election"
    report.setdefault("term_rise_on_fill", []).append(term(cluster) - term_before)
    assert new_leader in others
    return victim


async def hold_full(cluster: Cluster, victim: int, report: dict[str, Any]) -> None:
    """Phase 2: restarted on the full disk the victim stands aside from the start, terms stay flat, logs stay
    quiet, and its API refuses at once with 503 disk_full."""
    cluster.kill(victim)
    mark = log_length(cluster, victim)
    cluster.start(victim)
    status, body = await wait_until(
        lambda: (answer := health(cluster, victim))[0] in (200, 503) and answer, 20, "the restarted victim"
    )
    assert status == 503 and body["status"] == "disk_full" and body["role"] == "aside", body
    assert body["disk"]["state"] == "low" and body["disk"]["free_bytes"] == 0, body
    term_start = term(cluster)
    highest = term_start
    began = time.monotonic()
    async with aiohttp.ClientSession() as http:
        asked = time.monotonic()
        job = {"series": SERIES, "start": 0, "end": 900 * MIN}
        status, answer = await call(http, "POST", cluster.nodes[victim].url + "/v1/jobs", job, retry_s=0)
        refused_s = time.monotonic() - asked
    assert status == 503 and answer["error"]["code"] == "disk_full", answer
    assert refused_s < 1.0, f"the victim took {refused_s:.2f} s to refuse"
    while time.monotonic() - began < HOLD_S:
        highest = max(highest, term(cluster))
        await asyncio.sleep(0.1)  # the sampling period of the term, not a wait for an outcome
    assert cluster.nodes[victim].alive, cluster.logs()
    assert highest - term_start <= TERM_SLACK, f"the term rose from {term_start} to {highest} while held full"
    report.setdefault("term_rise_held_full", []).append(highest - term_start)
    loud = [e for e in events(cluster, victim, mark) if e.get("level") in ("warning", "error", "critical")]
    report.setdefault("loud_lines_held_full", []).append(len(loud))
    report.setdefault("held_full_s", []).append(round(time.monotonic() - began, 1))
    # disk.low and raft.stand_aside at start, one disk.still_low per minute, a raft.commit_index_not_saved at most
    assert len(loud) <= 3 + int(HOLD_S // 60), [e.get("event") for e in loud]
    assert not [e for e in loud if e.get("event") in ("(text)", "failed _onTick in _autoTickThread")], loud


async def free_and_rejoin(cluster: Cluster, disks: list[SmallDisk], victim: int, report: dict[str, Any]) -> None:
    """Phase 3: space returns; the victim rejoins without an election and catches up."""
    others = [i for i in range(3) if i != victim]
    leader = leader_among(cluster, others)
    assert leader is not None
    term_start = term(cluster)
    freed_at = time.monotonic()
    disks[victim].free()
    await wait_until(lambda: health(cluster, victim)[0] == 200, 10, "the victim healthy again")
    view = cluster.view(leader)
    assert view is not None
    target = view["commit_index"]
    await wait_until(
        lambda: (v := cluster.view(victim)) is not None and v["commit_index"] >= target, 20, "the victim caught up"
    )
    report.setdefault("caught_up_s", []).append(round(time.monotonic() - freed_at, 2))
    assert term(cluster) - term_start <= TERM_SLACK, "the victim's return cost an election"
    report.setdefault("term_rise_on_return", []).append(term(cluster) - term_start)
    view = cluster.view(victim)
    assert view is not None and view["role"] == "follower", view
    assert any(e.get("event") == "raft.rejoin" for e in events(cluster, victim)), "no raft.rejoin line"


@pytest.mark.timeout(900 if LONG else 120)
async def test_a_full_data_dir_stands_the_node_aside_without_disturbing_the_cluster(
    small_disks: tuple[Cluster, list[SmallDisk]],
) -> None:
    """Fill the leader's disk, restart it while full, free it: named lines, flat terms, no failed writes."""
    cluster, disks = small_disks
    for i in range(3):
        cluster.start(i)
    await asyncio.to_thread(cluster.wait_leader, 30)
    report: dict[str, Any] = {}
    for _ in range(CYCLES):
        victim = await asyncio.to_thread(cluster.wait_leader, 30)
        writer = Writer([cluster.urls[i] for i in range(3) if i != victim])
        stop = asyncio.Event()
        writing = asyncio.create_task(writer.run(stop))
        victim = await fill_the_leader(cluster, disks, report)
        await hold_full(cluster, victim, report)
        await free_and_rejoin(cluster, disks, victim, report)
        stop.set()
        await writing
        # The returned node's replica is the others': every acknowledged job, same states, same token floor.
        jobs, _ = await wait_until(lambda: replicas_agree(cluster), 20, "the three replicas to agree")
        held = {job["job_id"] for job in jobs}
        assert set(writer.job_ids) <= held, f"{len(set(writer.job_ids) - held)} acknowledged jobs missing"
        assert not writer.failed, writer.failed[:3]
        assert len(writer.ok) >= 10, f"only {len(writer.ok)} writes went through"
        report.setdefault("writes", []).append(len(writer.ok))
        report["slowest_write_s"] = max(report.get("slowest_write_s", 0.0), round(writer.slowest_s, 3))
    print("disk full report:", json.dumps(report))


#: A journal writer in its own process: ``PATH FIRST LAST`` adds entries FIRST..LAST-1 of 4 KiB each.
JOURNAL_WRITER = """
import sys
from coordinator._fsync import DurableJournal
from provider.core.obs import configure_logging
configure_logging("coordinator")
journal = DurableJournal(sys.argv[1], "batch", 0.01)
for i in range(int(sys.argv[2]), int(sys.argv[3])):
    journal.add(b"x" * 4096, i, 1)
journal._destroy()
"""


def test_a_journal_that_cannot_grow_ends_its_process_with_74_not_sigbus(tmp_path: Path) -> None:
    """On a full disk the journal's next growth is refused at allocation: one named line and exit status 74,
    never a SIGBUS, and what was written before is intact for pysyncobj's own reader (no torn record)."""
    disk = SmallDisk(tmp_path)
    disk.mount()
    try:
        (disk.mountpoint / "data").mkdir()
        journal = disk.mountpoint / "data" / "raft.journal"

        def write(first: int, last: int) -> subprocess.CompletedProcess[str]:
            cmd = [sys.executable, "-c", JOURNAL_WRITER, str(journal), str(first), str(last)]
            return subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=60)

        assert write(1, 101).returncode == 0  # 400 KiB: within the first MiB the journal allocates
        disk.fill()
        done = write(101, 1000)  # needs a second MiB
        assert done.returncode == EXIT_DATA_DIR, (done.returncode, done.stderr[-2000:])
        lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
        assert [line["event"] for line in lines] == ["disk.data_dir_write_failed"], done.stderr[-2000:]
        assert lines[0]["reason"] == "disk_full" and lines[0]["path"] == str(journal)
        assert lines[0]["free_bytes"] == 0 and lines[0]["errno"] == "ENOSPC"
        plain = FileJournal(str(journal))
        indexes = [entry[1] for entry in plain]
        plain._destroy()
        assert indexes == list(range(1, len(indexes) + 1)) and 200 < len(indexes) < 256, len(indexes)
    finally:
        disk.unmount()
