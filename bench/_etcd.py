"""etcd peers of bench_coordinator.py: 3-member clusters of etcd 3.4 (Debian) and 3.6.8 (built from source).

Rules:
1. Two etcd versions are compared in the same run as our cluster: Debian's ``etcd-server`` 3.4 (installed with
   apt-get when missing) and 3.6.8, built from the Go module proxy by ``scripts/build_etcd36.sh`` into
   ``~/.cache/seamless/etcd-3.6.8/etcd`` (``--etcd36 PATH`` names another binary). A missing 3.6.8 is skipped
   with the command that builds it, never built behind the caller's back (four CPU-minutes).
2. Each runs with its data dir on disk (etcd fsyncs its WAL on every commit) and on tmpfs (``/dev/shm``: the
   fsync costs nothing, like pysyncobj's never-synced journal): the like-for-like durability baselines.
3. The load is one lease grant + one lease revoke per "window" through etcd's JSON gateway on the leader
   (``/v3/lease/grant``, ``/v3/lease/revoke``), the same HTTP/JSON round trips our claim + complete make.
4. Both versions get the same flags; only the binary differs.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp

from bench._failover import get_json
from devkit.ports import LOOPBACK, free_port

__all__ = [
    "ETCD36_DEFAULT",
    "EtcdVariant",
    "etcd_args",
    "etcd_cycle",
    "etcd_leader",
    "etcd_variants",
]

#: Where ``scripts/build_etcd36.sh`` puts the 3.6.8 binary (rule 1).
ETCD36_DEFAULT = Path.home() / ".cache" / "seamless" / "etcd-3.6.8" / "etcd"
#: The parent of a tmpfs data dir (rule 2).
TMPFS = "/dev/shm"


class ClusterLike(Protocol):
    urls: list[str]


@dataclass(frozen=True)
class EtcdVariant:
    """One etcd configuration of the comparison: a binary and where its data dir lives."""

    #: Short key of the result (``etcd34_disk``, ``etcd36_tmpfs``...).
    key: str
    #: The row's name in the printed table.
    label: str
    binary: str
    #: Parent directory of the data dir: None = the default temp dir (disk), ``/dev/shm`` = tmpfs.
    parent: str | None


def ensure_etcd34() -> str | None:
    """The Debian etcd 3.4 binary, installed with apt-get when missing (rule 1)."""
    found = shutil.which("etcd")
    if found:
        return found
    print("etcd missing: installing Debian etcd-server with apt-get", file=sys.stderr)
    subprocess.run(["apt-get", "update", "-qq"], check=False)
    subprocess.run(
        ["apt-get", "install", "-y", "-qq", "etcd-server"],
        check=False,
        env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
    )
    return shutil.which("etcd")


def etcd_variants(wanted: list[str], etcd36: Path) -> list[EtcdVariant]:
    """The variants named in ``wanted`` (``34-disk``, ``34-tmpfs``, ``36-disk``, ``36-tmpfs``) whose binary exists."""
    binaries: dict[str, str | None] = {}
    if any(w.startswith("34") for w in wanted):
        binaries["34"] = ensure_etcd34()
    if any(w.startswith("36") for w in wanted):
        binaries["36"] = str(etcd36) if etcd36.is_file() else None
        if binaries["36"] is None:
            print(
                f"etcd 3.6.8 not found at {etcd36}: skipped; build it with `bash scripts/build_etcd36.sh` "
                "(about 4 minutes on 2 cores) or pass --etcd36 PATH",
                file=sys.stderr,
            )
    variants = []
    for name in wanted:
        version, _, medium = name.partition("-")
        binary = binaries.get(version)
        if binary is None or medium not in ("disk", "tmpfs"):
            continue
        dotted = "3.4" if version == "34" else "3.6.8"
        label = f"etcd {dotted} ({'disk, fsync' if medium == 'disk' else 'tmpfs'})"
        variants.append(EtcdVariant(f"etcd{version}_{medium}", label, binary, TMPFS if medium == "tmpfs" else None))
    return variants


def etcd_args(binary: str, root: Path) -> tuple[list[str], list[list[str]]]:
    """Client URLs and the command lines of a 3-member cluster with its data dirs under ``root`` (rule 4)."""
    peers = [free_port() for _ in range(3)]
    initial = ",".join(f"e{i}=http://{LOOPBACK}:{p}" for i, p in enumerate(peers))
    urls, argv = [], []
    for i in range(3):
        client = f"http://{LOOPBACK}:{free_port()}"
        peer = f"http://{LOOPBACK}:{peers[i]}"
        urls.append(client)
        argv.append(
            [
                binary,
                *("--name", f"e{i}", "--data-dir", str(root / f"e{i}")),
                *("--listen-client-urls", client, "--advertise-client-urls", client),
                *("--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer),
                *("--initial-cluster", initial, "--initial-cluster-state", "new"),
                *("--initial-cluster-token", "bench", "--log-level", "error"),
            ]
        )
    return urls, argv


async def etcd_leader(session: aiohttp.ClientSession, cluster: ClusterLike, timeout_s: float = 30) -> str:
    """The client URL of the member that leads."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for url in cluster.urls:
            try:
                _, status = await get_json(session, "POST", url + "/v3/maintenance/status", {})
                if status["header"]["member_id"] == status["leader"]:
                    return url
            except (aiohttp.ClientError, TimeoutError, KeyError, TypeError, ValueError):
                pass
        await asyncio.sleep(0.1)
    raise RuntimeError("etcd elected no leader in time")


async def etcd_cycle(session: aiohttp.ClientSession, url: str, k: int, latencies: list[float]) -> int:
    """One "window" (rule 3): grant a lease, revoke it."""
    started = time.perf_counter()
    async with session.post(url + "/v3/lease/grant", json={"TTL": 60}) as r:
        body: Any = await r.json(content_type=None)
        lease_id = body["ID"]
    latencies.append(time.perf_counter() - started)
    started = time.perf_counter()
    async with session.post(url + "/v3/lease/revoke", json={"ID": lease_id}) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"revoke answered {r.status}")
    latencies.append(time.perf_counter() - started)
    return 1
