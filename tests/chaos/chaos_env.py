"""The chaos environment: 3 coordinators (each in its own network namespace when possible), worker processes, a
QuestDB of its own, the loopback exchange and the recording proxy between workers and coordinators.

Rules:
1. Coordinators get distinct addresses: ``10.A.B.11-13`` in network namespaces (netlab.py), else
   ``127.0.0.x-x+2`` on loopback. They always run with a token file and a cluster secret (required off loopback,
   and the production setting anyway); workers use a ``worker`` token, the driver an ``operator`` token.
2. Workers reach the cluster only through the recording proxy, so every lease operation is in the history.
   The driver's own calls (job submissions, job and lease reads, operator actions) go through the proxy too,
   to each live node in turn, so its reads through followers are checked for linearizability (issue 15).
3. QuestDB is started here, not taken from the session fixture: the chaos run kills and restarts it.
4. Everything started is stopped in ``stop()``, stopped processes are continued first, the namespaces removed.
"""

from __future__ import annotations

import contextlib
import os
import random
import secrets
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from devkit import services as devservices
from devkit.cluster import Cluster, Node
from devkit.launcher import peers_of, serve_argv
from devkit.polling import http_json, wait_for
from devkit.ports import free_port
from devkit.workers import Exchange, WorkerPool, WorkerProc

from .netlab import NetLab
from .recorder import LogicalOp, RecordingProxy, merge_history

__all__ = ["CHAOS_CONFIG", "GAPS", "SPAN_MS", "SYMBOLS", "T0", "ChaosEnv"]

BARS_PER_WINDOW = 500
SPAN_MS = BARS_PER_WINDOW * 60_000
#: 2024-01-01 or so, on the window grid: scenario k uses its own windows after it.
T0 = 56_803 * SPAN_MS
SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "BNB/BTC")
#: Fraction of bars the exchange deliberately lacks (real exchanges have gaps too).
GAPS = 0.01

#: TTL of 3 s and a short grace: expiry takes seconds; workers pace themselves at 90 requests (windows) a minute
#: each, so a scenario's backfill lasts long enough for its fault to land in the middle of it.
CHAOS_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 3000,
            "window_bars": BARS_PER_WINDOW,
            "max_attempts": 10,
            "retry_backoff_ms": 100,
            "jitter_ratio": 0.25,
        },
    },
    "coordinator": {"leader_grace_ms": 500, "reap_interval_ms": 100},
    "worker": {"claim_wait_ms": 500, "shutdown_grace_ms": 3000, "requests_per_minute": 90},
}


@dataclass
class ChaosEnv:
    """A running chaos environment (see the module rules)."""

    root: Path
    seed: int
    lab: NetLab | None = None
    cluster: Cluster | None = None
    proxy: RecordingProxy | None = None
    questdb: devservices.QuestDBServer | None = None
    exchange: Exchange | None = None
    pool: WorkerPool | None = None
    operator_token: str = field(default_factory=lambda: secrets.token_hex(16))
    worker_token: str = field(default_factory=lambda: secrets.token_hex(16))
    cluster_secret: str = field(default_factory=lambda: secrets.token_hex(24))
    workers: list[WorkerProc] = field(default_factory=list)
    stopped: set[int] = field(default_factory=set)
    worker_count: int = 0
    turn: int = 0

    @property
    def ttl_ms(self) -> int:
        return int(CHAOS_CONFIG["seamless_data_provider"]["backfill_config"]["distributed_lease_ttl_ms"])

    @property
    def exchange_seed(self) -> int:
        return 1000 + self.seed

    @property
    def source_spec(self) -> str:
        """The synthetic source whose bars the exchange serves."""
        return f"synthetic:{self.exchange_seed}?gaps={GAPS}"

    # -- lifecycle -------------------------------------------------------------------------------------------

    @classmethod
    def start(cls, root: Path, seed: int, *, workers: int = 4, use_netns: bool | None = None) -> ChaosEnv:
        env = cls(root, seed)
        try:
            if use_netns is None:  # SEAMLESS_CHAOS_NETNS=0 forces the loopback fallback
                use_netns = NetLab.available() and os.environ.get("SEAMLESS_CHAOS_NETNS", "1") != "0"
            env._start_cluster(use_netns)
            env.questdb = devservices.QuestDBServer(
                root / "questdb",
                jvm_options=devservices.QUESTDB_TEST_JVM_OPTIONS,
                extra_conf=devservices.QUESTDB_TEST_CONF,
            ).start()
            env.exchange = Exchange.start(
                "--seed", str(env.exchange_seed), "--gaps", str(GAPS), "--ban-s", "1.5", "--tolerance", "1000"
            )
            assert env.cluster is not None
            env.proxy = RecordingProxy(env.cluster.urls)
            urls = env.proxy.start()
            config = root / "worker.yaml"
            config.write_text(yaml.safe_dump(CHAOS_CONFIG), encoding="utf-8")
            (root / "worker-token.txt").write_text(env.worker_token + "\n", encoding="utf-8")
            dsn = f"{env.questdb.dsn}&table=chaos_{seed}"
            env.pool = WorkerPool(root, urls, f"binance:{env.exchange.url}?timeout_s=1", dsn, config)
            for _ in range(workers):
                env.start_worker()
        except BaseException:
            env.stop()
            raise
        return env

    def _start_cluster(self, use_netns: bool) -> None:
        (self.root / "tokens.txt").write_text(
            f"{self.operator_token} operator chaos-driver\n{self.worker_token} worker chaos-pool\n", encoding="utf-8"
        )
        (self.root / "secret.txt").write_text(self.cluster_secret + "\n", encoding="utf-8")
        (self.root / "coordinator.yaml").write_text(yaml.safe_dump(CHAOS_CONFIG), encoding="utf-8")
        if use_netns:
            self.lab = NetLab().create()
            hosts = [self.lab.address(i) for i in range(3)]
            rafts = [f"{h}:4601" for h in hosts]
            https = [f"{h}:8701" for h in hosts]
        else:
            base = random.randint(20, 240)
            hosts = [f"127.0.0.{base + i}" for i in range(3)]
            rafts = [f"{h}:{free_port(h)}" for h in hosts]
            https = [f"{h}:{free_port(h)}" for h in hosts]
        cluster = Cluster(self.root, token=self.operator_token)
        for i in range(3):
            args = serve_argv(
                node_id=f"n{i}",
                raft=rafts[i],
                peers=peers_of(rafts, i),
                http=https[i],
                data_dir=self.root / f"node{i}",
                config=self.root / "coordinator.yaml",
                token_file=self.root / "tokens.txt",
                cluster_secret_file=self.root / "secret.txt",
                prefix=self.lab.exec_prefix(i) if self.lab else (),
            )
            cluster.nodes.append(
                Node(i, f"n{i}", rafts[i], https[i], self.root / f"node{i}", args, self.root / f"node{i}.log")
            )
        self.cluster = cluster
        for i in range(3):
            cluster.start(i)
        cluster.wait_leader(60)

    def stop(self) -> None:
        for pid in list(self.stopped):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        if self.pool is not None:
            self.pool.kill_all()
        if self.proxy is not None:
            self.proxy.stop()
        if self.exchange is not None:
            self.exchange.stop()
        if self.cluster is not None:
            self.cluster.kill_all()
        if self.lab is not None:
            self.lab.destroy()
        if self.questdb is not None:
            self.questdb.stop()

    # -- cluster -------------------------------------------------------------------------------------------

    @property
    def nodes(self) -> list[Node]:
        assert self.cluster is not None
        return self.cluster.nodes

    def api(
        self, method: str, path: str, body: Any = None, *, node: int | None = None, timeout_s: float = 3.0
    ) -> tuple[int, Any]:
        """One call to ``node`` (default: each live node in turn, the next one when it does not answer) with the
        operator token, through the recording proxy once it runs (rule 2)."""
        live = [n.index for n in self.nodes if n.alive]
        self.turn += 1
        candidates = [node] if node is not None else live[self.turn % len(live) :] + live[: self.turn % len(live)]
        urls = self.proxy.urls if self.proxy is not None and self.proxy.urls else [n.url for n in self.nodes]
        last: tuple[int, Any] = (0, "no live node")
        for index in candidates:
            try:
                last = http_json(method, urls[index] + path, body, token=self.operator_token, timeout_s=timeout_s)
            except OSError as exc:
                last = (0, repr(exc))
                continue
            if last[0] not in (502, 503, 504):
                return last
        return last

    def leader(self, timeout_s: float = 30.0) -> int:
        """The node every live node agrees is the leader."""
        assert self.cluster is not None
        return self.cluster.wait_leader(timeout_s)

    def view(self, index: int) -> dict[str, Any] | None:
        status, body = self.api("GET", "/v1/cluster", node=index, timeout_s=2.0)
        return body if status == 200 else None

    def kill_node(self, index: int) -> None:
        assert self.cluster is not None
        self.cluster.kill(index)

    def start_node(self, index: int) -> None:
        assert self.cluster is not None
        self.cluster.start(index)

    def pause(self, pid: int) -> None:
        os.kill(pid, signal.SIGSTOP)
        self.stopped.add(pid)

    def resume(self, pid: int) -> None:
        os.kill(pid, signal.SIGCONT)
        self.stopped.discard(pid)

    def node_metrics(self, index: int) -> dict[str, float]:
        """One node's Prometheus samples as {name{labels}: value}, per-job series included (the operator token
        reads them; without a token /metrics sums every job into job_id="(other)")."""
        import urllib.request

        request = urllib.request.Request(
            self.nodes[index].url + "/metrics", headers={"Authorization": f"Bearer {self.operator_token}"}
        )
        with urllib.request.urlopen(request, timeout=3) as answer:
            text = answer.read().decode()
        samples: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                name, _, value = line.rpartition(" ")
                samples[name] = float(value)
        return samples

    # -- workers -------------------------------------------------------------------------------------------

    def start_worker(self) -> WorkerProc:
        assert self.pool is not None
        self.worker_count += 1
        worker = self.pool.start(
            f"w{self.worker_count}", "--token-file", str(self.root / "worker-token.txt"), concurrency=2
        )
        self.workers.append(worker)
        return worker

    def kill_worker(self, worker: WorkerProc) -> None:
        worker.kill()
        self.workers.remove(worker)

    def lease_holders(self) -> dict[str, list[str]]:
        """worker id -> window ids of its live leases."""
        status, body = self.api("GET", "/v1/leases")
        holders: dict[str, list[str]] = {}
        for lease in body.get("leases", []) if status == 200 else []:
            holders.setdefault(lease["worker_id"], []).append(lease["window_id"])
        return holders

    def busy_worker(self, rng: random.Random, timeout_s: float = 20.0) -> WorkerProc:
        """A live worker (chosen by ``rng``) that holds at least one lease right now."""

        def pick() -> WorkerProc | None:
            holders = self.lease_holders()
            busy = [w for w in self.workers if w.name in holders and w.alive]
            return rng.choice(busy) if busy else None

        return wait_for(pick, timeout_s, "a worker holding a lease", interval_s=0.05)

    # -- jobs ----------------------------------------------------------------------------------------------

    def submit(self, series: str, start: int, end: int) -> str:
        def post() -> str | None:
            status, body = self.api("POST", "/v1/jobs", {"series": series, "start": start, "end": end})
            return str(body["job"]["job_id"]) if status in (200, 201) else None

        return wait_for(post, 30, f"job {series} to be accepted", interval_s=0.2)

    def jobs(self, job_ids: list[str]) -> list[dict[str, Any]]:
        status, body = self.api("GET", "/v1/jobs")
        if status != 200:
            return []
        wanted = {j["job_id"]: j for j in body["jobs"] if j["job_id"] in job_ids}
        return [wanted[j] for j in job_ids if j in wanted]

    def progress(self, job_ids: list[str]) -> float:
        jobs = self.jobs(job_ids)
        done = sum(j["windows"]["done"] for j in jobs)
        total = sum(sum(j["windows"].values()) for j in jobs)
        return done / total if total and len(jobs) == len(job_ids) else 0.0

    def wait_progress(self, job_ids: list[str], fraction: float, timeout_s: float = 120.0) -> float:
        return wait_for(
            lambda: (p := self.progress(job_ids)) >= fraction and p,
            timeout_s,
            f"{fraction:.0%} of the windows done",
            interval_s=0.1,
        )

    def wait_done(self, job_ids: list[str], timeout_s: float = 180.0) -> list[dict[str, Any]]:
        def finished() -> list[dict[str, Any]] | None:
            jobs = self.jobs(job_ids)
            return jobs if len(jobs) == len(job_ids) and all(j["state"] != "running" for j in jobs) else None

        return wait_for(finished, timeout_s, f"jobs {job_ids} to finish", interval_s=0.2)

    # -- history -------------------------------------------------------------------------------------------

    def history(self) -> tuple[list[LogicalOp], list[str]]:
        assert self.proxy is not None
        return merge_history(self.proxy.snapshot())

    @contextlib.contextmanager
    def fault(self, tag: str, description: str) -> Iterator[None]:
        """Mark the fault's interval on the history's time line."""
        started = time.monotonic_ns()
        try:
            yield
        finally:
            assert self.proxy is not None
            self.proxy.annotate(tag, started, time.monotonic_ns(), description)
