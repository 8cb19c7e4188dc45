"""Every rule of alert_rules.yml fires in a real Prometheus scraping a real cluster, worker and provider, and none
fires on a healthy run.

The stack, all on loopback: 3 ``coordinator serve`` nodes, one ``worker run`` on QuestDB (dev mode, so a WAL can be
suspended) fed by devkit/fake_exchange.py, two providers in this process sharing one registry served by
``provider.serve_metrics``, and the ``prometheus`` binary on configs generated from the repo's files (prom_kit.py:
one minute lasts two seconds). Each condition is provoked the way it happens in production; the test waits on
Prometheus' /api/v1/alerts with deadlines.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import shutil
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import yaml

from devkit import services as devservices
from devkit.cluster import Cluster, make_cluster
from devkit.polling import http_json
from devkit.ports import free_port
from devkit.workers import Exchange, WorkerPool
from provider import SeamlessDataProvider
from provider.core.obs import new_registry
from provider.sources import open_source

from .prom_kit import RULES, Prometheus

pytestmark = [pytest.mark.cluster, pytest.mark.slow, pytest.mark.timeout(300)]

HOUR_MS = 3_600_000
CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 3_000,
            "window_bars": 60,
            "max_attempts": 2,
            "retry_backoff_ms": 100,
        }
    },
    "coordinator": {"leader_grace_ms": 300, "reap_interval_ms": 100},
    "worker": {"storage_check_interval_ms": 300, "claim_wait_ms": 500},
}
ALERTS = {rule["alert"] for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]}


async def until(check: Callable[[], Any], timeout_s: float, what: str) -> Any:
    """Poll a blocking ``check`` (in a thread, so the providers keep running) until it is truthy."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = await asyncio.to_thread(check)
        except OSError as exc:
            last = exc
        else:
            if last:
                return last
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}; last: {last!r}")


@pytest.fixture(scope="module")
def dev_questdb() -> Iterator[Any]:
    """A QuestDB of this module in dev mode, where ``ALTER TABLE t SUSPEND WAL`` is allowed."""
    with devservices.QuestDBServer(extra_conf={**devservices.QUESTDB_TEST_CONF, "dev.mode.enabled": "true"}) as server:
        yield server


class Stack:
    """The running parts and a recorder of every alert state Prometheus reports."""

    def __init__(self, cluster: Cluster, worker_pool: WorkerPool, prom: Prometheus) -> None:
        self.cluster, self.pool, self.prom = cluster, worker_pool, prom
        self.seen: dict[str, set[str]] = {}
        #: The first report of each alert, for failure messages.
        self.first: dict[str, dict[str, Any]] = {}

    def record(self) -> dict[str, set[str]]:
        for alert in self.prom.alerts():
            name = alert["labels"]["alertname"]
            self.seen.setdefault(name, set()).add(alert["state"])
            self.first.setdefault(name, {**alert, "seen_at": time.time()})
        return self.seen

    def firing(self) -> set[str]:
        return {name for name, states in self.record().items() if "firing" in states}

    async def wait_firing(self, names: set[str], timeout_s: float) -> None:
        started = time.monotonic()
        try:
            await until(lambda: names <= self.firing(), timeout_s, f"alerts {sorted(names)} to fire")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nseen: {self.seen}\nnow: {self.snapshot()}") from None
        print(f"{sorted(names)} fired after {time.monotonic() - started:.1f} s")

    def snapshot(self) -> dict[str, Any]:
        """What Prometheus holds now, for failure messages."""
        queries = ("up", "coordinator_is_leader", "coordinator_raft_term", "backfill_windows", "backfill_leases_active")
        return {
            q: [(r["metric"].get("instance"), r["metric"].get("state"), r["value"][1]) for r in self.prom.query(q)]
            for q in queries
        }

    def submit(self, series: str, hours: int) -> str:
        for url in self.cluster.urls:
            status, answer = http_json("POST", f"{url}/v1/jobs", {"series": series, "start": 0, "end": hours * HOUR_MS})
            if status in (200, 201):
                return str(answer["job"]["job_id"])
        raise AssertionError(f"no node accepted the job: {status} {answer}")

    def job(self, job_id: str) -> dict[str, Any] | None:
        for url in self.cluster.urls:
            with contextlib.suppress(OSError):
                status, answer = http_json("GET", f"{url}/v1/jobs/{job_id}")
                if status == 200:
                    return dict(answer["job"])
        return None


async def repeat(action: Callable[[], Awaitable[Any]], stop: asyncio.Event) -> None:
    while not stop.is_set():
        await action()


@contextlib.asynccontextmanager
async def running(action: Callable[[], Awaitable[Any]]) -> AsyncIterator[None]:
    """Run ``action`` over and over in the background until the block ends."""
    stop = asyncio.Event()
    task = asyncio.create_task(repeat(action, stop))
    try:
        yield
    finally:
        stop.set()
        await task


async def test_every_alert_fires_in_prometheus_and_none_on_a_healthy_run(tmp_path: Path, dev_questdb: Any) -> None:
    """Healthy run: no alert even pending. Then each rule's condition is provoked and each rule reaches firing."""
    table = f"alerts_{secrets.token_hex(4)}"
    storage = f"{dev_questdb.dsn}&table={table}"
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(CONFIG), encoding="utf-8")
    healthy_ex = Exchange.start("--seed", "7")
    gappy_ex = Exchange.start("--seed", "8", "--gaps", "0.3")
    (tmp_path / "cluster").mkdir()
    cluster = make_cluster(tmp_path / "cluster", 3, CONFIG)
    pool = WorkerPool(
        tmp_path, cluster.urls, f"binance:{healthy_ex.url}?timeout_s=5", storage, tmp_path / "config.yaml"
    )
    registry = new_registry()
    healthy_source, gappy_source = open_source(f"binance:{healthy_ex.url}"), open_source(f"binance:{gappy_ex.url}")
    healthy = SeamlessDataProvider(
        strategy="auto_backfill",
        storage_source=f"sqlite:///{tmp_path / 'healthy.db'}",
        backfiller=healthy_source,
        registry=registry,
        partial_ok=True,
    )
    gappy = SeamlessDataProvider(
        strategy="auto_backfill",
        storage_source=f"sqlite:///{tmp_path / 'gappy.db'}",
        backfiller=gappy_source,
        registry=registry,
        partial_ok=True,
        report_sink=f"http://127.0.0.1:{free_port('127.0.0.1')}/reports",  # nothing listens: reports are dropped
    )
    prom: Prometheus | None = None
    try:
        for i in range(3):
            cluster.start(i)
        await asyncio.to_thread(cluster.wait_leader, 30.0)
        worker = await asyncio.to_thread(pool.start, "w-alerts")
        metrics = await healthy.serve_metrics(0)
        targets = {
            "coordinator": [node.http for node in cluster.nodes],
            "worker": [f"127.0.0.1:{worker.metrics_port}"],
            "provider": [f"127.0.0.1:{metrics.port}"],
        }
        t0 = time.monotonic()
        prom = Prometheus.start(tmp_path, targets, free_port("127.0.0.1"))
        stack = Stack(cluster, pool, prom)
        await until(prom.ready, 30, "prometheus to be ready")

        # -- healthy run: a job done by the worker, provider fetches, every target up; nothing pending or firing.
        job = stack.submit("ohlcv:binance:BTC/USDT:1m", 2)
        await until(lambda: (stack.job(job) or {}).get("state") == "done", 60, "the healthy job to finish")
        for hour in range(3):
            await healthy.fetch(hour * HOUR_MS, (hour + 1) * HOUR_MS, node_id="ohlcv:binance:ETH/USDT:1m")
        await until(lambda: len(prom.targets_up()) == 5 and all(prom.targets_up().values()), 30, "5 targets up")
        for metric in ("seamless_storage_wal_suspended", "seamless_sla_deadline_seconds_count", "backfill_windows"):
            await until(lambda m=metric: prom.query(m), 30, f"{metric} scraped")
        # Prometheus evaluates rules before its first scrapes land (absent(coordinator_is_leader) is true then):
        # the healthy watch starts with the first evaluation that saw every target, and lasts five seconds.
        data_at = time.time()
        await until(lambda: prom.evaluated_after(data_at), 30, "an evaluation over scraped data")
        watch_from = time.time()
        await until(lambda: stack.record() is not None and prom.evaluated_after(watch_from + 5), 30, "5 s of rules")
        assert stack.seen == {}, f"alerts on a healthy run: {stack.first}"

        # -- phase A: suspend the worker's WAL (its writes then fail), stale keyed leases, slow and gappy fetches
        # (whose reports go to a collector that is not there).
        conn = await asyncpg.connect(dev_questdb.pg_dsn)
        try:
            await conn.execute(f'ALTER TABLE "{table}" SUSPEND WAL')
        finally:
            await conn.close()
        stack.submit("ohlcv:binance:SOL/USDT:1m", 1)
        gappy_ex.admin("faults", {"kind": "delay", "count": 100_000, "delay_s": 1.3})
        keys = iter(range(10**9))
        span = iter(range(1000, 10**6))

        async def stale_key() -> None:
            key = f"alerts:60:{next(keys)}:0:BTC/USDT:USDT"
            await asyncio.to_thread(
                http_json, "POST", f"{cluster.urls[0]}/v1/leases/claim", {"key": key, "lease_ms": 1}
            )
            await asyncio.sleep(0.3)

        async def slow_gappy_fetch() -> None:
            start = next(span) * 10 * HOUR_MS
            await gappy.fetch(start, start + 10 * HOUR_MS, node_id="ohlcv:binance:BTC/USDT:1m")

        async with running(slow_gappy_fetch):
            async with running(stale_key):
                await stack.wait_firing({"SeamlessWALSuspended", "SeamlessWindowsFailed", "SeamlessStaleClaimRate"}, 90)
            # -- phase B: no worker left while a job waits.
            worker.kill()
            stalled = stack.submit("ohlcv:binance:BNB/BTC:1m", 2)
            await stack.wait_firing(
                {"SeamlessSLAP99Degraded", "SeamlessConformanceFlagSpike", "SeamlessReportsDropped"}, 90
            )
        await stack.wait_firing({"SeamlessBackfillStalled", "SeamlessPendingWithoutWorkers"}, 90)
        assert (stack.job(stalled) or {}).get("completion_ratio") == 0.0

        # -- phase C: the leader dies three times in a row (flapping), then two of three nodes die (no leader).
        print(f"phase C at {time.monotonic() - t0:.1f} s")
        for _ in range(3):
            leader = await asyncio.to_thread(cluster.wait_leader, 30.0)
            cluster.kill(leader)
            await asyncio.to_thread(cluster.wait_leader, 30.0)
            cluster.start(leader)
        await stack.wait_firing({"SeamlessLeaderFlapping"}, 60)
        leader = await asyncio.to_thread(cluster.wait_leader, 30.0)
        cluster.kill(leader)
        cluster.kill(next(i for i in range(3) if i != leader))
        await stack.wait_firing({"SeamlessNoLeader"}, 60)

        assert stack.firing() >= ALERTS, f"never fired: {sorted(ALERTS - stack.firing())}"
    finally:
        await healthy.aclose()
        await gappy.aclose()
        await healthy_source.aclose()
        await gappy_source.aclose()
        if prom is not None:
            prom.stop()
        pool.kill_all()
        cluster.kill_all()
        healthy_ex.stop()
        gappy_ex.stop()
        shutil.rmtree(tmp_path / "tsdb", ignore_errors=True)
