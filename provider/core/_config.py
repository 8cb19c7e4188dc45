"""Configuration schema: one YAML file, one frozen dataclass per component.

Rules:
1. The seed's ``seamless_data_provider`` block is accepted exactly as written (DESIGN.md section 3).
2. Further top-level sections configure the services: ``coordinator``, ``worker``, ``storage``, ``sla``,
   ``conformance``.
3. An unknown key is an error naming its full dotted path; a bad value is an error naming the key, the value and
   what is allowed (:class:`ConfigError`, a ``ValueError``). Validation never uses ``assert``.
4. Precedence: CLI flags override the file, the file overrides these defaults (``dataclasses.replace`` at the
   edge). Nothing here reads the environment or the clock; ``load_config`` is the only function that reads a file.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from provider.core.errors import ConfigError

__all__ = [
    "AppConfig",
    "BackfillConfig",
    "ConformanceConfig",
    "CoordinatorConfig",
    "SLAConfig",
    "SeamlessConfig",
    "STORAGE_DSN_ENV",
    "StorageConfig",
    "WorkerConfig",
    "config_from_mapping",
    "load_config",
]

STRATEGIES = ("fail_fast", "auto_backfill", "partial_fill", "seamless")
BACKFILL_MODES = ("background", "sync")


def _spec(
    default: Any,
    *,
    lo: float | None = None,
    hi: float | None = None,
    choices: tuple[Any, ...] = (),
    doc: str = "",
    factory: Any = None,
) -> Any:
    meta = {"lo": lo, "hi": hi, "choices": choices, "doc": doc}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass(frozen=True)
class BackfillConfig:
    """How missing data is fetched: single-flight, leases, windows, retries."""

    #: ``background`` returns and backfills behind the caller; ``sync`` waits (AUTO_BACKFILL always waits).
    mode: str = _spec(
        "background", choices=BACKFILL_MODES, doc="whether backfills outlive the fetch (background) or block it (sync)"
    )
    #: How long a finished in-process backfill stays deduplicated.
    single_flight_ttl_ms: int = _spec(60_000, lo=0, doc="ms a finished in-process backfill stays deduplicated")
    #: Lease time to live; workers renew every TTL/3.
    distributed_lease_ttl_ms: int = _spec(120_000, lo=300, hi=86_400_000, doc="lease TTL in ms")
    #: Bars per backfill window; window k covers [k*span, (k+1)*span).
    window_bars: int = _spec(900, lo=1, hi=1_000_000, doc="bars per window")
    #: Outbound fetches in flight, per worker / per provider.
    max_concurrent_requests: int = _spec(8, lo=1, hi=1024, doc="outbound fetches in flight")
    #: Attempts per window before it is failed.
    max_attempts: int = _spec(6, lo=1, hi=100, doc="attempts per window")
    #: First retry delay; retry n waits retry_backoff_ms * 2**(n-1) plus jitter.
    retry_backoff_ms: int = _spec(500, lo=0, hi=3_600_000, doc="first retry delay in ms")
    #: Jitter as a fraction of the delay, uniform in [0, jitter_ratio * d].
    jitter_ratio: float = _spec(0.25, lo=0.0, hi=1.0, doc="jitter fraction of the delay")


@dataclass(frozen=True)
class SeamlessConfig:
    """The seed's ``seamless_data_provider`` block."""

    strategy: str = _spec("seamless", choices=STRATEGIES, doc="availability strategy")
    enable_background_backfill: bool = _spec(True, doc="allow backfills that outlive the fetch")
    backfill_config: BackfillConfig = _spec(None, factory=BackfillConfig)
    #: Seconds an L1 memory-cache entry lives.
    cache_ttl: int = _spec(3600, lo=0, hi=31_536_000, doc="L1 cache TTL in seconds")
    #: Where conformance reports go (provider/reports.py rule 1); checked when the provider is built.
    report_sink: str = _spec(
        "qmtl://observability/seamless",
        doc="report sink: `file:///dir[?max_bytes=N&max_files=N&keep=N]`, `http(s)://host/path`, "
        "`qmtl://observability/seamless[/<node_id>]` (under report_base), `memory` or `none`",
    )
    #: What ``qmtl://observability/seamless/<node_id>`` resolves under; null is the bounded file sink in the temp dir.
    report_base: str | None = _spec(
        None,
        doc="`file:///dir` or `http(s)://host/path` that qmtl:// report URIs resolve under "
        "(`<base>/observability/seamless/<node_id>`); null: the file sink at `<system temp dir>/seamless-reports`, "
        "16 MiB and 1000 files at most",
    )
    #: Whether an L1 cache hit publishes its cached report again.
    republish_cache_hits: bool = _spec(False, doc="publish the cached report again on every L1 cache hit")


@dataclass(frozen=True)
class CoordinatorConfig:
    """Coordinator service settings (``coordinator:``); flags of ``coordinator serve`` override them."""

    #: Interval of the leader's stale-claim reaper.
    reap_interval_ms: int = _spec(250, lo=10, hi=60_000, doc="stale-claim reaper interval in ms")
    #: After an election the new leader waits this long before reaping, so live workers can renew.
    leader_grace_ms: int = _spec(0, lo=0, hi=3_600_000, doc="grace before reaping; 0 means one lease TTL")
    #: Largest accepted HTTP request body.
    max_body_bytes: int = _spec(1_048_576, lo=1024, hi=67_108_864, doc="request body cap in bytes")
    #: A worker's requests read off the connection without aiohttp's request machinery (coordinator/_hotpath.py).
    hot_path: bool = _spec(
        True,
        doc="serve a worker's claims, completions, renewals and heartbeats without aiohttp's request "
        "machinery (false: aiohttp serves every request)",
    )
    #: How long one replicated command may take before the API answers 503.
    commit_timeout_ms: int = _spec(5_000, lo=100, hi=120_000, doc="replicated command timeout in ms")
    #: Longest a claim may wait for work (``wait_ms``).
    max_claim_wait_ms: int = _spec(30_000, lo=0, hi=300_000, doc="longest claim long-poll in ms")
    #: Most windows a single job may create.
    max_windows_per_job: int = _spec(100_000, lo=1, hi=100_000_000, doc="windows one job may create")
    #: Most QMTL keys the table remembers (coordinator/_keyed.py rule 3).
    max_keys: int = _spec(
        100_000,
        lo=1,
        hi=10_000_000,
        doc="QMTL keys remembered; finished keys are forgotten oldest first, and at the cap with every key leased "
        "a claim of a new key is refused (429)",
    )
    #: The cluster's Raft election timeout range; each node times out within its own slice of it, by its rank in
    #: the sorted Raft addresses (coordinator/raft.py rule 10: pysyncobj raftMinTimeout / raftMaxTimeout).
    raft_min_timeout_ms: int = _spec(
        400, lo=50, hi=60_000, doc="lower bound of the cluster's Raft election timeout range (each node: a slice)"
    )
    raft_max_timeout_ms: int = _spec(
        700, lo=100, hi=120_000, doc="upper bound of the cluster's Raft election timeout range (each node: a slice)"
    )
    #: Log entries between snapshots (pysyncobj logCompactionMinEntries).
    log_compaction_min_entries: int = _spec(50_000, lo=100, hi=100_000_000, doc="entries between snapshots")
    #: How long a request waits for a known leader (an election, a fresh start) before it is answered 503.
    leader_wait_ms: int = _spec(5_000, lo=0, hi=120_000, doc="wait for a leader before answering 503, in ms")
    #: A job done, failed or cancelled this long leaves the lease table (its windows go; a summary stays).
    job_retention_s: int = _spec(604_800, lo=1, hi=315_360_000, doc="finished jobs' windows kept this long, in s")
    #: When the Raft journal reaches the disk: before each acknowledgement, every interval, or when the OS likes.
    fsync: str = _spec("batch", choices=("always", "batch", "never"), doc="journal durability policy")
    #: Longest time between two journal syncs under ``fsync: batch`` while writes arrive.
    fsync_interval_ms: int = _spec(10, lo=1, hi=10_000, doc="journal sync interval in ms (fsync: batch)")
    #: Admission control per client (the token's name; every caller is ``anonymous`` without tokens): running jobs,
    #: outstanding (pending + leased) windows of its running jobs, and job submissions per second (coordinator/
    #: table.py rule 11, handlers.py). Over a limit a submission is answered 429 with Retry-After.
    max_live_jobs_per_client: int = _spec(10_000, lo=1, hi=10_000_000, doc="running jobs one client may have")
    max_outstanding_windows_per_client: int = _spec(
        1_000_000, lo=1, hi=1_000_000_000, doc="pending + leased windows of one client's running jobs"
    )
    max_submits_per_s_per_client: float = _spec(
        500.0, lo=0, hi=1_000_000, doc="job submissions per second and client (bursts of 2 s); 0 = unlimited"
    )
    #: The leader refuses new jobs (429) while this many commands wait to be replicated, so that its apply loop
    #: keeps up with heartbeats; claims, renewals and completions are never shed.
    shed_backlog_commands: int = _spec(
        2_048, lo=1, hi=1_000_000, doc="commands waiting for replication above which new jobs are refused"
    )
    #: Free space the data dir's filesystem keeps beyond the next dump; below it the node stands aside from Raft
    #: and rejoins once one more reserve is free (coordinator/_disk.py). 0 turns the watchdog off.
    disk_reserve_mb: int = _spec(
        64,
        lo=0,
        hi=1_048_576,
        doc="MiB the data dir keeps free beyond the next dump; below that the node stands aside from Raft (no "
        "appends, votes or candidacy) and rejoins once one more reserve is free; 0 turns this off",
    )
    #: Without tokens, the ``Host`` names a request may carry besides IP addresses, ``localhost`` and the ``--http``
    #: host (coordinator/_browser.py: a DNS-rebinding page cannot reach the API under its own name).
    allowed_hosts: tuple[str, ...] = _spec((), doc="extra Host names accepted without tokens (a YAML list)")
    #: Without tokens, the foreign origins (``scheme://host:port``) a browser may send writes from.
    allowed_origins: tuple[str, ...] = _spec((), doc="origins allowed to send writes without tokens (a YAML list)")
    #: Longest time to receive a request's headers, from the connection's accept or from the first byte after a
    #: keep-alive pause; a slower client is disconnected (coordinator/_connections.py).
    http_header_timeout_ms: int = _spec(
        10_000, lo=100, hi=600_000, doc="time to receive a request's headers before the connection is closed, in ms"
    )
    #: Longest time to receive a request's body once its headers are in.
    http_body_timeout_ms: int = _spec(
        30_000, lo=100, hi=3_600_000, doc="time to receive a request's body before the connection is closed, in ms"
    )
    #: Longest keep-alive pause between two requests on one connection (clients keep theirs shorter: aiohttp 15 s).
    http_idle_timeout_ms: int = _spec(
        60_000, lo=100, hi=3_600_000, doc="keep-alive pause before an idle connection is closed, in ms"
    )
    #: Open HTTP connections in all; lowered at start to fit the file-descriptor limit (raised to the hard limit)
    #: minus the forwarding pools and a reserve. At the cap a new connection evicts the oldest stalled one.
    http_max_connections: int = _spec(
        8_192, lo=16, hi=1_000_000, doc="open HTTP connections in all (lowered to fit the fd limit at start)"
    )
    #: Open HTTP connections from one peer address; one more is answered 503 and closed.
    http_max_connections_per_peer: int = _spec(
        1_024, lo=1, hi=1_000_000, doc="open HTTP connections from one peer address"
    )
    #: Follower -> leader connections for forwarded requests other than long polls.
    forward_max_connections: int = _spec(
        128, lo=1, hi=4_096, doc="follower-to-leader connections for forwarded requests other than long polls"
    )
    #: Follower -> leader connections that may hold a forwarded long-poll claim; further long polls queue for one
    #: (within their own wait), so long polls never take the connections writes need.
    forward_long_poll_connections: int = _spec(
        64, lo=1, hi=4_096, doc="follower-to-leader connections that hold forwarded long-poll claims"
    )
    #: Running jobs with their own ``backfill_completion_ratio{job_id,series}`` series, the first in claim order;
    #: the others are summed into ``job_id="(other)"`` (coordinator/metrics.py rule 3). 100 bars still read in the
    #: dashboard's job panel and cost about 12 KB per scrape; 30,000 cost 2.6 MB and a new series per job.
    #: Shared exchange budgets (docs/coordinator.md): a worker not heard from for this long loses its share of its
    #: source's limits, and a new leader grants no increase for this long (workers re-register meanwhile).
    budget_ttl_ms: int = _spec(
        3_000,
        lo=300,
        hi=600_000,
        doc="shared exchange budget: a worker's share lapses without a heartbeat for this long",
    )
    metrics_max_jobs: int = _spec(
        100,
        lo=0,
        hi=100_000,
        doc="running jobs shown one by one in backfill_completion_ratio (first in claim order); the others are "
        'summed into job_id="(other)"',
    )


@dataclass(frozen=True)
class WorkerConfig:
    """Worker daemon settings (``worker:``); flags of ``worker run`` override them."""

    concurrency: int = _spec(4, lo=1, hi=256, doc="windows processed at once")
    #: Long-poll time of one claim request.
    claim_wait_ms: int = _spec(2_000, lo=0, hi=60_000, doc="claim long-poll in ms")
    #: Time a SIGTERM'd worker has to finish or release its windows.
    shutdown_grace_ms: int = _spec(20_000, lo=0, hi=600_000, doc="graceful shutdown budget in ms")
    #: Per-process, per-source request budget (0 = unlimited).
    requests_per_minute: int = _spec(1_100, lo=0, hi=10_000_000, doc="source requests per minute")
    #: Per-process, per-source request weight budget (0 = unlimited); Binance allows 6000/min per IP.
    weight_per_minute: int = _spec(5_000, lo=0, hi=10_000_000, doc="source request weight per minute")
    #: The source's whole limits, shared by every worker of the source through the coordinator (0 = no shared
    #: budget for that quantity). ``requests_per_minute`` / ``weight_per_minute`` above stay the floor a worker
    #: falls back to while the coordinator is unreachable (docs/worker.md, "Shared exchange budget").
    shared_requests_per_minute: int = _spec(
        0, lo=0, hi=10_000_000, doc="the source's requests per minute shared by all workers (0 = not shared)"
    )
    shared_weight_per_minute: int = _spec(
        0, lo=0, hi=10_000_000, doc="the source's request weight per minute shared by all workers (0 = not shared)"
    )
    #: How long one budget heartbeat long-polls for news (a ban, a new share) before it is renewed.
    budget_wait_ms: int = _spec(1_000, lo=0, hi=10_000, doc="budget heartbeat long-poll in ms")
    #: Pending windows per worker process the autoscaler aims for.
    autoscale_windows_per_worker: int = _spec(8, lo=1, hi=100_000, doc="target backlog per worker")
    #: Autoscaler decision period.
    autoscale_interval_ms: int = _spec(2_000, lo=100, hi=600_000, doc="autoscaler period in ms")
    #: Sources tried in order when ``--source`` fails a window after its retries (``--fallback-source``).
    fallback_sources: tuple[str, ...] = _spec((), doc="ordered fallback source specs (a YAML list)")
    #: How often a worker polls its storage's WAL status (``seamless_storage_wal_suspended``).
    storage_check_interval_ms: int = _spec(15_000, lo=100, hi=600_000, doc="WAL status poll period in ms")


#: The environment variable the CLIs read a storage DSN from, so that its password stays out of ``ps``.
STORAGE_DSN_ENV = "SEAMLESS_STORAGE_DSN"


@dataclass(frozen=True)
class StorageConfig:
    """Storage settings (``storage:``)."""

    dsn: str = _spec("sqlite:///seamless.db", doc="questdb://, postgresql:// or sqlite:/// DSN")
    #: Longest a write waits for QuestDB's WAL to apply so that a following read sees it.
    wal_apply_timeout_ms: int = _spec(30_000, lo=0, hi=600_000, doc="read-your-writes wait in ms")
    #: Connection pool size for readers.
    pool_size: int = _spec(4, lo=1, hi=256, doc="connections per pool")


@dataclass(frozen=True)
class SLAConfig:
    """Default SLA budgets (``sla:``); ``null`` means no budget."""

    total_deadline_ms: int | None = _spec(None, lo=1, doc="whole fetch budget in ms")
    max_wait_storage_ms: int | None = _spec(None, lo=1, doc="storage phase budget in ms")
    max_wait_backfill_ms: int | None = _spec(None, lo=1, doc="backfill phase budget in ms")
    max_wait_live_ms: int | None = _spec(None, lo=1, doc="live phase budget in ms")
    max_lag_seconds: float | None = _spec(None, lo=0.0, doc="freshness: newest bar may lag by at most this")
    min_coverage: float | None = _spec(None, lo=0.0, hi=1.0, doc="fraction of the request that must be covered")


@dataclass(frozen=True)
class ConformanceConfig:
    """Conformance settings (``conformance:``)."""

    #: The schema registry's JSON file (docs/provider.md, "Schema registry"): subjects, versions and policies
    #: shared by every process that names it. ``null`` keeps the registry in memory: ``ohlcv@1`` only.
    schema_registry_path: str | None = _spec(
        None,
        doc="JSON file of the schema registry (read by the provider, written by `coordinator schema`); "
        "null = in memory, ohlcv@1 only",
    )


@dataclass(frozen=True)
class AppConfig:
    """The whole configuration file."""

    seamless_data_provider: SeamlessConfig = _spec(None, factory=SeamlessConfig)
    coordinator: CoordinatorConfig = _spec(None, factory=CoordinatorConfig)
    worker: WorkerConfig = _spec(None, factory=WorkerConfig)
    storage: StorageConfig = _spec(None, factory=StorageConfig)
    sla: SLAConfig = _spec(None, factory=SLAConfig)
    conformance: ConformanceConfig = _spec(None, factory=ConformanceConfig)


T = TypeVar("T")


def _describe(meta: typing.Mapping[str, Any], kind: str) -> str:
    if meta.get("choices"):
        return "one of " + ", ".join(repr(c) for c in meta["choices"])
    lo, hi = meta.get("lo"), meta.get("hi")
    if lo is not None and hi is not None:
        return f"{kind} from {lo} to {hi}"
    if lo is not None:
        return f"{kind} >= {lo}"
    return kind


def _string_list(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise ConfigError(path, value, "a list of non-empty strings")
    return tuple(value)


def _convert(value: Any, hint: Any, path: str, meta: typing.Mapping[str, Any]) -> Any:
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        if value is None:
            return None
        hint = next(a for a in args if a is not type(None))
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            raise ConfigError(path, value, "a mapping of settings")
        return _build(typing.cast(type, hint), value, path)
    if typing.get_origin(hint) is tuple:
        return _string_list(value, path)
    kind = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}[hint]
    allowed = _describe(meta, kind)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, hint) and not isinstance(value, bool)
    if not ok:
        raise ConfigError(path, value, allowed)
    if hint is float:
        value = float(value)
    if meta.get("choices") and value not in meta["choices"]:
        raise ConfigError(path, value, allowed)
    lo, hi = meta.get("lo"), meta.get("hi")
    if hint in (int, float) and ((lo is not None and value < lo) or (hi is not None and value > hi)):
        raise ConfigError(path, value, allowed)
    return value


def _build(cls: type[T], mapping: dict[str, Any], path: str) -> T:
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, raw in mapping.items():
        full = f"{path}.{key}" if path else str(key)
        if key not in fields:
            raise ConfigError(full, raw, "a known key: " + ", ".join(sorted(fields)), unknown=True)
        values[key] = _convert(raw, hints[key], full, fields[key].metadata)
    return cls(**values)


def config_from_mapping(data: Any) -> AppConfig:
    """Build an :class:`AppConfig` from parsed YAML, validating every key and value."""
    if data is None:
        return AppConfig()
    if not isinstance(data, dict):
        raise ConfigError(
            "(top level)", data, "a mapping with sections " + ", ".join(f.name for f in dataclasses.fields(AppConfig))
        )
    return _build(AppConfig, data, "")


def load_config(path: str | Path | None) -> AppConfig:
    """Read and validate a YAML config file; ``None`` gives the defaults."""
    if path is None:
        return AppConfig()
    import yaml  # local: keep `import provider.core` cheap

    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("(file)", str(source), f"a readable YAML file ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError("(file)", str(source), f"valid YAML ({exc})") from None
    return config_from_mapping(data)


def describe_schema() -> list[tuple[str, str, Any, str]]:
    """Every leaf key as ``(path, type, default, doc)``; the configuration reference is checked against it."""
    rows: list[tuple[str, str, Any, str]] = []

    def walk(cls: type, prefix: str) -> None:
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            path = f"{prefix}.{f.name}" if prefix else f.name
            hint = hints[f.name]
            if dataclasses.is_dataclass(hint):
                walk(typing.cast(type, hint), path)
                continue
            default = f.default if f.default is not dataclasses.MISSING else None
            kind = getattr(hint, "__name__", str(hint))
            for name in ("float", "int", "str"):
                kind = kind.replace(f"{name} | None", f"{name} or null")
            if typing.get_origin(hint) is tuple:
                kind = "list of str"
            allowed = _describe(f.metadata, kind)
            rows.append((path, kind, default, f"{f.metadata.get('doc', '')}; {allowed}"))

    walk(AppConfig, "")
    return rows
