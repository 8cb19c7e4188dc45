"""One coordinator node: the table, its Raft replication, the leader's reaper and the write path.

Rules:
1. Only the leader submits lease commands, and it stamps ``now_ms`` (wall clock) and the policy (TTL,
   max_attempts, window_bars...) into each command before replicating it. Followers forward writes over HTTP
   (``api.py``), so every decision is made by the leader and applied by every replica from the log.
2. Nothing is granted from local state: every grant, renewal and completion is a committed command.
3. "Maybe applied" outcomes (LEADER_CHANGED, UNKNOWN_OUTCOME, ...) are retried with the same
   (client_id, request_id) while this node is still leader and the commit deadline allows; the table returns the
   first result for a duplicate, so a retry never applies twice.
4. The reaper runs on the leader only, every ``reap_interval_ms``; a new leader first waits ``leader_grace_ms``
   (0 = one lease TTL) so that workers can renew leases that look expired only because of the election gap.
5. Each node announces its HTTP address through the log (``announce``), so followers know where to forward; it
   checks every ``_ANNOUNCE_POLL_S`` and re-sends at most every ``_ANNOUNCE_RESEND_S`` (or at once when the leader
   changed), so a fresh cluster knows every address a few heartbeats after its first election.
6. Elections are absorbed: a request that finds no known leader (or a leader whose HTTP address is not yet known)
   waits up to ``coordinator.leader_wait_ms`` for one (:meth:`CoordinatorNode.await_leader`), and only then fails
   with 503. Linearizable reads commit a ``barrier`` no-op first (:meth:`CoordinatorNode.read_barrier`).
7. A node that stands aside because its data dir's disk is low (``raft.py`` rule 12) answers every request that
   needs the leader at once with 503 ``disk_full`` (clients go to another node), instead of waiting for a leader.
8. Seams (``seams.py``): the node reads time only through its :class:`~coordinator.seams.Clock` and replicates
   only through its :class:`~coordinator.seams.Replica`; both are given (defaults: the system clock and the
   pysyncobj-backed ``RaftNode``). The HTTP layer asks the node (``read``, ``is_leader``, ``applied_index``, ...),
   never the replica behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from coordinator._admission import Admission
from coordinator._connections import ConnectionGuard, connection_limits, fd_limit
from coordinator._retention import retention_loop
from coordinator._state import FINGERPRINT_SEP, fingerprint
from coordinator.budget import BudgetService
from coordinator.errors import ApiError, NotLeaderError, UnavailableError, from_result
from coordinator.metrics import ClusterFigures, ConnectionFigures, CoordinatorMetrics
from coordinator.raft import RaftNode, RaftSettings
from coordinator.seams import SYSTEM_CLOCK, Clock, CommitError, Replica, ReplicaFactory
from coordinator.table import Result, Table
from provider.core import AppConfig
from provider.core.obs import get_logger, new_registry

__all__ = ["CoordinatorNode", "NodeSettings", "raft_replica"]

log = get_logger("coordinator.node")
T = TypeVar("T")

#: Commands after which pending work may exist: they wake long-polling claims.
_WAKE_OPS = frozenset({"submit_job", "retry_job", "fail", "expire", "release", "requeue"})
_CLAIM_POLL_S = 0.25
#: How often a request waiting for a leader looks again (pysyncobj has no leader-change event for followers).
_LEADER_POLL_S = 0.01
_ANNOUNCE_POLL_S = 0.05
_ANNOUNCE_RESEND_S = 0.5


@dataclass(frozen=True)
class NodeSettings:
    """Flags of ``coordinator serve``."""

    node_id: str
    raft: str
    peers: tuple[str, ...]
    http_host: str
    http_port: int
    data_dir: Path
    password: str | None = None

    @property
    def http_url(self) -> str:
        host = f"[{self.http_host}]" if ":" in self.http_host else self.http_host
        return f"http://{host}:{self.http_port}"


def raft_replica(settings: NodeSettings, config: AppConfig) -> ReplicaFactory:
    """The real replica of a node: pysyncobj (``raft.py``), set up from the flags and ``coordinator.*``."""
    cfg = config.coordinator
    raft_settings = RaftSettings(
        self_addr=settings.raft,
        peers=settings.peers,
        data_dir=settings.data_dir,
        password=settings.password,
        raft_min_timeout_s=cfg.raft_min_timeout_ms / 1000,
        raft_max_timeout_s=cfg.raft_max_timeout_ms / 1000,
        log_compaction_min_entries=cfg.log_compaction_min_entries,
        fsync=cfg.fsync,
        fsync_interval_ms=cfg.fsync_interval_ms,
        disk_reserve_bytes=cfg.disk_reserve_mb * 2**20,
    )
    return lambda table, on_applied: RaftNode(raft_settings, table, on_applied)


class CoordinatorNode:
    """Wires table, replica, clock, metrics and the background loops of one node (rule 8: clock and replica are
    given; the defaults are the system clock and pysyncobj)."""

    def __init__(
        self,
        settings: NodeSettings,
        config: AppConfig,
        *,
        clock: Clock = SYSTEM_CLOCK,
        replica: ReplicaFactory | None = None,
    ) -> None:
        self.settings = settings
        self.cfg = config.coordinator
        self.backfill = config.seamless_data_provider.backfill_config
        self.clock = clock
        self.table = Table()
        make_replica = replica if replica is not None else raft_replica(settings, config)
        #: Replication (``seams.Replica``); only this module talks to it.
        self.replica: Replica = make_replica(self.table, self._on_applied)
        #: The HTTP server's connection guard (timeouts, caps, fd headroom); ``cli.py`` serves through it.
        self.connections = ConnectionGuard(connection_limits(self.cfg, fd_limit()))
        self.metrics = CoordinatorMetrics(new_registry(), self.figures, self.connection_figures)
        #: Leader-side admission of new jobs: submission rate per client, shedding while Raft is backed up.
        self.admission = Admission(self.cfg.max_submits_per_s_per_client, self.cfg.shed_backlog_commands)
        #: Shared exchange budgets: soft state of the leader (``budget.py``), never replicated.
        self.budget = BudgetService(clock, self.cfg.budget_ttl_ms)
        self.metrics.register(self.budget.collector())
        self._loop: asyncio.AbstractEventLoop | None = None
        self._work = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    # -- lifecycle ----------------------------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._work = asyncio.Event()
        await self._loop.run_in_executor(None, self.replica.start)
        self.connections.start()
        self._tasks = [
            asyncio.create_task(self._reap_loop(), name="reaper"),
            asyncio.create_task(self._announce_loop(), name="announce"),
            asyncio.create_task(retention_loop(self), name="retention"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self.connections.stop()
        self.replica.stop()

    def _on_applied(self, op: str, result: Result) -> None:
        """Runs on pysyncobj's thread after each applied command."""
        loop = self._loop
        if loop is not None and result.ok and op in _WAKE_OPS:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        self._work.set()
        self._work = asyncio.Event()

    # -- the replica as the HTTP layer sees it --------------------------------------------------------------------

    def read(self, fn: Callable[[Table], T]) -> T:
        """Run a read-only function on this node's replica of the table (under the apply lock)."""
        return self.replica.read(fn)

    @property
    def is_leader(self) -> bool:
        """This node leads the cluster now (and is not standing aside)."""
        return self.replica.is_leader

    @property
    def leader_addr(self) -> str | None:
        """The leader's Raft address, when one is known."""
        return self.replica.leader_addr

    @property
    def applied_index(self) -> int:
        """The highest Raft index applied to this replica: data read now is at least this new."""
        return self.replica.last_applied

    @property
    def backlog(self) -> int:
        """Commands of this node waiting to be replicated (admission sheds new jobs above a bound)."""
        return self.replica.backlog

    @property
    def serving(self) -> bool:
        """False while the node stands aside because its data dir's disk is low (rule 7)."""
        return self.replica.serving

    @property
    def term(self) -> int:
        """The current Raft term."""
        return self.replica.term

    @property
    def commit_index(self) -> int:
        """The highest Raft index known committed."""
        return self.replica.commit_index

    def peer_connected(self, addr: str) -> bool:
        """This node holds a working Raft connection to the peer at ``addr``."""
        return self.replica.connected(addr)

    def disk_report(self) -> dict[str, Any]:
        """The data dir's free-space figures and whether the node stands aside (``/healthz``)."""
        return self.replica.disk_report()

    # -- status -------------------------------------------------------------------------------------------------

    @property
    def lease_ttl_ms(self) -> int:
        return self.backfill.distributed_lease_ttl_ms

    def leader_http(self) -> str | None:
        """The leader's HTTP base URL, when a leader is known and has announced itself."""
        addr = self.replica.leader_addr
        if addr is None:
            return None
        if addr == self.settings.raft:
            return self.settings.http_url
        info = self.replica.read(lambda t: t.nodes().get(addr))
        return info["http"] if info else None

    def role(self) -> str:
        if not self.replica.serving:
            return "aside"
        if self.replica.is_leader:
            return "leader"
        return "follower" if self.replica.leader_addr is not None else "candidate"

    def figures(self) -> ClusterFigures:
        stats = self.replica.read(lambda t: t.stats(self.cfg.metrics_max_jobs))
        raft = self.replica
        return ClusterFigures(
            raft.is_leader, raft.term, raft.commit_index, stats, raft.transport_rejections(), raft.disk_report()
        )

    def connection_figures(self) -> ConnectionFigures:
        guard = self.connections
        return ConnectionFigures(guard.open, guard.limits.max_total, dict(guard.counts))

    def ready(self) -> bool:
        """This node can serve: it is the leader, or it knows the leader's HTTP address to forward to."""
        return self.replica.is_leader or self.leader_http() is not None

    def disk_full(self) -> UnavailableError:
        """Rule 7: this node stands aside; another node serves."""
        disk = self.replica.disk_report()
        return UnavailableError(
            f"node {self.settings.node_id} stands aside from the cluster: its data dir {disk['path']} has "
            f"{disk['free_bytes']} bytes free, below the {disk['need_bytes']} it needs; ask another node",
            code="disk_full",
            retry_after_s=1,
        )

    def not_leader(self) -> ApiError:
        leader = self.leader_http()
        if leader is None:
            return UnavailableError(
                f"no Raft leader became known within coordinator.leader_wait_ms={self.cfg.leader_wait_ms} ms "
                "(an election without a majority?); retry shortly or check /v1/cluster on every node",
                retry_after_s=1,
            )
        return NotLeaderError(f"node {self.settings.node_id} is not the leader", leader=leader)

    async def await_leader(self, deadline_s: float | None = None) -> None:
        """Return when this node is the leader; raise ``NotLeaderError`` naming the leader when another node is
        (the API forwards to it); while neither is known, wait until ``deadline_s`` (the node clock's
        ``monotonic_s``; default ``leader_wait_ms`` from now) and then raise ``UnavailableError``."""
        clock = self.clock
        if deadline_s is None:
            deadline_s = clock.monotonic_s() + self.cfg.leader_wait_ms / 1000
        while not self.replica.is_leader:
            if not self.replica.serving:
                raise self.disk_full()
            if self.leader_http() is not None or clock.monotonic_s() >= deadline_s:
                raise self.not_leader()
            await clock.sleep(_LEADER_POLL_S)

    async def leader_changed(self, old_leader: str, until_s: float) -> None:
        """Wait until a leader other than ``old_leader`` (an HTTP URL) is known, or until ``until_s`` (the node
        clock's ``monotonic_s``)."""
        clock = self.clock
        while clock.monotonic_s() < until_s:
            if self.replica.is_leader or self.leader_http() not in (None, old_leader):
                return
            await clock.sleep(_LEADER_POLL_S)

    async def read_barrier(self) -> None:
        """Commit a no-op on the leader: once it is applied here, this replica holds every write acknowledged
        before the call, so a read served from it now is linearizable. Raises like :meth:`execute`. The request id
        only tells ``execute`` that a "maybe applied" barrier may be sent again: it is a no-op, never de-duplicated."""
        await self.execute("barrier", {}, "", "barrier")

    # -- the write path -----------------------------------------------------------------------------------------

    async def execute(self, op: str, kwargs: dict[str, Any], client_id: str, request_id: str) -> Any:
        """Stamp, replicate and apply one command on the leader; return its value or raise ApiError."""
        clock = self.clock
        deadline = clock.monotonic_s() + self.cfg.commit_timeout_ms / 1000
        tagged = f"{request_id}{FINGERPRINT_SEP}{fingerprint(op, kwargs)}" if client_id and request_id else request_id
        while True:
            await self.await_leader()
            args = {**kwargs, "now_ms": clock.wall_ms(), "client_id": client_id, "request_id": tagged}
            try:
                result = await self.replica.submit(op, args, max(deadline - clock.monotonic_s(), 0.01))
            except CommitError as exc:
                if deadline - clock.monotonic_s() > 0.05 and (exc.maybe_applied is False or request_id):
                    self.metrics.commit_retries.inc()
                    log.warning("raft.commit_retry", op=op, reason=exc.reason)
                    await clock.sleep(0.01)
                    continue
                raise UnavailableError(
                    f"{op} was not confirmed within {self.cfg.commit_timeout_ms} ms ({exc.reason}); it may have "
                    "been applied: retry with the same X-Client-Id and X-Request-Id",
                    code="timeout",
                ) from None
            if result.ok:
                return result.value
            if result.code == "lease_lost":
                self.metrics.fenced_rejections.inc()
                log.info(
                    "lease.lost",
                    op=op,
                    lease_id=kwargs.get("lease_id"),
                    token=kwargs.get("token"),
                    key=kwargs.get("key"),
                )
            raise from_result(result.code, result.message, result.field, result.value)

    async def claim(self, worker_id: str, max_windows: int, wait_ms: int, client_id: str, request_id: str) -> Any:
        """Claim windows; with ``wait_ms`` wait (long-poll) for work when none is pending."""
        clock = self.clock
        deadline = clock.monotonic_s() + min(wait_ms, self.cfg.max_claim_wait_ms) / 1000
        attempt = 0
        while True:
            await self.await_leader()
            work = self._work
            if self.replica.read(lambda t: t.pending_count()) > 0:
                args = {"worker_id": worker_id, "max_windows": max_windows, "ttl_ms": self.lease_ttl_ms}
                value = await self.execute("claim", args, client_id, f"{request_id}#{attempt}" if request_id else "")
                attempt += 1
                if value["leases"]:
                    return value
            remaining_s = deadline - clock.monotonic_s()
            if remaining_s <= 0:
                return {"leases": []}
            await clock.wait(work, min(remaining_s, _CLAIM_POLL_S))

    # -- background loops ---------------------------------------------------------------------------------------

    async def reap_once(self) -> list[dict[str, Any]]:
        """One pass of the reaper (rule 4): on a leader past its grace, when a lease is due by the node's wall
        clock, commit ``expire`` and return the leases it expired (logged); otherwise return ``[]``."""
        grace_s = (self.cfg.leader_grace_ms or self.lease_ttl_ms) / 1000
        if not self.replica.is_leader or self.replica.leader_for_s < grace_s:
            return []
        now = self.clock.wall_ms()
        due = self.replica.read(lambda t: t.next_expiry_ms())
        if due is None or due > now:
            return []
        try:
            value = await self.execute("expire", {"max_attempts": self.backfill.max_attempts}, "", "")
        except ApiError as exc:
            log.warning("lease.reap_failed", error=exc.message)
            return []
        expired: list[dict[str, Any]] = value["expired"]
        for item in expired:
            log.info(
                "lease.expired",
                lease_id=item["lease_id"],
                token=item["token"],
                worker_id=item["worker_id"],
                window_id=item.get("window_id"),
                key=item.get("key"),
                state=item["state"],
            )
        return expired

    async def _reap_loop(self) -> None:
        interval_s = self.cfg.reap_interval_ms / 1000
        while True:
            await self.clock.sleep(interval_s)
            await self.reap_once()

    async def _announce_loop(self) -> None:
        me = {"node_id": self.settings.node_id, "http": self.settings.http_url}
        args = {**me, "raft": self.settings.raft}
        clock = self.clock
        sent_to: str | None = None
        sent_at_s = 0.0
        while True:
            have = self.replica.read(lambda t: t.nodes().get(self.settings.raft))
            leader = self.replica.leader_addr
            due = leader != sent_to or clock.monotonic_s() - sent_at_s >= _ANNOUNCE_RESEND_S
            if have != me and leader is not None and due:
                sent_to, sent_at_s = leader, clock.monotonic_s()
                if self.replica.is_leader:
                    with contextlib.suppress(CommitError):
                        await self.replica.submit("announce", args, self.cfg.commit_timeout_ms / 1000)
                else:
                    self.replica.submit_nowait("announce", args)
            await clock.sleep(_ANNOUNCE_POLL_S if have != me else 5.0)
