"""The faults of the chaos scenarios. Each takes the environment, the scenario's seeded RNG and its job ids,
injects its fault during the backfill, heals it, and returns a one-line description for the report.

Rules:
1. Every choice (which node or worker, how long, which exchange errors, when to heal) comes from the RNG, so a
   seed replays the same schedule of faults (the cluster's own timing still varies from run to run).
2. A fault leaves the environment whole: killed coordinators are restarted, killed workers replaced, paused
   processes continued, partitions healed, QuestDB running again.
3. Every fault is marked on the history's time line (``env.fault``), for porcupine's visualization.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections.abc import Callable

from devkit.polling import wait_for

from .chaos_env import ChaosEnv

__all__ = ["FAULTS", "Fault"]

Fault = Callable[[ChaosEnv, random.Random, list[str]], str]


def _wait_rejoined(env: ChaosEnv, timeout_s: float = 60.0) -> int:
    """All three nodes are up and agree on one leader."""
    return env.leader(timeout_s)


def kill_leader_repeatedly(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """kill -9 of the leader three times; each time the old leader is restarted once a new one is elected."""
    victims = []
    for round_no in range(3):
        leader = env.leader()
        before = env.progress(job_ids)
        with env.fault("kill-leader", f"kill -9 leader n{leader} (round {round_no + 1})"):
            env.kill_node(leader)
            new = (
                wait_for(
                    lambda old=leader: (i := env.cluster.leader_index()) is not None and i != old and i + 1,
                    30,
                    "a new leader",
                )
                - 1
            )
            time.sleep(rng.uniform(0.2, 1.5))  # the old leader stays dead a little longer
            env.start_node(leader)
            _wait_rejoined(env)
        victims.append(f"n{leader}->n{new}")
        # let the backfill move on before the next kill
        env.wait_progress(job_ids, min(1.0, before + rng.uniform(0.03, 0.08)), 60)
    return "kill -9 leader x3: " + ", ".join(victims)


def kill_follower(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    leader = env.leader()
    victim = rng.choice([i for i in range(3) if i != leader])
    down_s = rng.uniform(1.0, 3.0)
    with env.fault("kill-follower", f"kill -9 follower n{victim}"):
        env.kill_node(victim)
        time.sleep(down_s)
        env.start_node(victim)
        _wait_rejoined(env)
    return f"kill -9 follower n{victim}, down {down_s:.1f} s"


def kill_workers(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """kill -9 of two workers that hold leases; replacements start after a seeded pause."""
    names = []
    for _ in range(2):
        victim = env.busy_worker(rng)
        with env.fault("kill-worker", f"kill -9 worker {victim.name}"):
            env.kill_worker(victim)
        names.append(victim.name)
        time.sleep(rng.uniform(0.2, 1.0))
    for _ in names:
        env.start_worker()
    return f"kill -9 workers {', '.join(names)} while holding leases"


def zombie_worker(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """SIGSTOP a worker holding leases until they are reaped and re-granted, then SIGCONT it."""
    victim = env.busy_worker(rng)
    assert victim.proc is not None
    pid = victim.proc.pid
    stale_before = max(
        env.node_metrics(i).get("backfill_stale_claims_total", 0) for i in range(3) if env.nodes[i].alive
    )
    extra_s = rng.uniform(0.5, 2.0)
    with env.fault("zombie", f"SIGSTOP worker {victim.name} past its TTL"):
        env.pause(pid)
        started = time.monotonic()
        wait_for(
            lambda: (
                max(env.node_metrics(i).get("backfill_stale_claims_total", 0) for i in range(3) if env.nodes[i].alive)
                > stale_before
            ),
            30,
            "the zombie's leases to be reaped",
        )
        time.sleep(extra_s)
        env.resume(pid)
    paused_s = time.monotonic() - started
    wait_for(lambda: victim.metric_sum("worker_leases_lost_total") >= 1, 30, "the zombie to drop its lost lease")
    return f"SIGSTOP worker {victim.name} for {paused_s:.1f} s (TTL {env.ttl_ms / 1000:.0f} s)"


def partition_leader(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """Cut the leader off from the other two nodes (nftables in its namespace), elect a new one, heal."""
    leader = env.leader()
    hold_s = rng.uniform(1.0, 3.0)
    others = [i for i in range(3) if i != leader]
    how = "nftables DROP in its netns" if env.lab else "SIGSTOP (no network namespaces here)"
    with env.fault("partition", f"partition leader n{leader} ({how})"):
        if env.lab:
            env.lab.partition(leader)
        else:
            env.pause(env.nodes[leader].proc.pid)  # type: ignore[union-attr]

        def majority_leader() -> int | None:
            views = [env.view(i) for i in others]
            ids = {v["leader_id"] for v in views if v and v["leader"]}
            return next(iter(ids)) if len(ids) == 1 and f"n{leader}" not in ids else None

        new = wait_for(majority_leader, 30, "the majority to elect a new leader")
        time.sleep(hold_s)
        if env.lab:
            env.lab.heal(leader)
        else:
            env.resume(env.nodes[leader].proc.pid)  # type: ignore[union-attr]
        _wait_rejoined(env)
    return f"partition leader n{leader} ({how}); majority elected {new}; healed after {hold_s:.1f} s more"


def exchange_faults(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """A seeded mix of 429, 418 ban, 5xx, timeouts, bad JSON and short pages, queued on the exchange."""
    faults: list[dict[str, object]] = []
    faults += [
        {"kind": "rate_limit", "retry_after_s": round(rng.uniform(0.2, 0.8), 2)} for _ in range(rng.randint(2, 4))
    ]
    faults += [{"kind": "fail", "status": rng.choice([500, 502, 503])} for _ in range(rng.randint(2, 4))]
    faults += [{"kind": "delay", "delay_s": 2.5} for _ in range(rng.randint(1, 2))]  # the source times out at 1 s
    faults += [{"kind": "bad_json"} for _ in range(rng.randint(1, 2))]
    faults += [{"kind": "short"} for _ in range(rng.randint(1, 2))]
    faults.append({"kind": "ban", "seconds": round(rng.uniform(0.8, 1.6), 2)})
    rng.shuffle(faults)
    assert env.exchange is not None
    with env.fault("exchange", f"{len(faults)} exchange faults"):
        env.exchange.admin("faults", [{**f, "count": 1} for f in faults])
        wait_for(
            lambda: env.exchange.stats()["pending_faults"] == [],
            60,  # type: ignore[union-attr]
            "every injected exchange fault to be served",
        )
    statuses = set(env.exchange.stats()["statuses"])
    assert {"418", "429"} <= statuses and statuses & {"500", "502", "503"}, statuses
    kinds = sorted({str(f["kind"]) for f in faults})
    return f"{len(faults)} exchange faults ({', '.join(kinds)})"


def restart_questdb(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """kill -9 of QuestDB in the middle of the writes, restarted after a seeded pause on the same data."""
    assert env.questdb is not None and env.questdb.pid is not None
    down_s = rng.uniform(0.3, 1.5)
    with env.fault("questdb", "kill -9 QuestDB"):
        os.killpg(env.questdb.pid, signal.SIGKILL)
        env.questdb.stop()  # reaps it
        time.sleep(down_s)
        env.questdb.start()
    return f"kill -9 QuestDB, restarted after {down_s:.1f} s (+{env.questdb.start_duration_s:.1f} s start)"


def restart_whole_cluster(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """kill -9 of all three coordinators at once; acknowledged state must come back."""
    down_s = rng.uniform(0.5, 2.0)
    with env.fault("kill-all", "kill -9 all coordinators"):
        for i in range(3):
            env.kill_node(i)
        time.sleep(down_s)
        for i in range(3):
            env.start_node(i)
        _wait_rejoined(env)
    return f"kill -9 all three coordinators, down {down_s:.1f} s"


def pause_leader(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """SIGSTOP of the leader past the election timeout (a long GC pause or a frozen VM), then SIGCONT."""
    leader = env.leader()
    pid = env.nodes[leader].proc.pid  # type: ignore[union-attr]
    hold_s = rng.uniform(2.0, 4.0)
    with env.fault("pause-leader", f"SIGSTOP leader n{leader}"):
        env.pause(pid)
        time.sleep(hold_s)
        env.resume(pid)
        _wait_rejoined(env)
    return f"SIGSTOP leader n{leader} for {hold_s:.1f} s"


def drain_worker(env: ChaosEnv, rng: random.Random, job_ids: list[str]) -> str:
    """SIGTERM a busy worker whose fetches hang: it must exit 0 within its grace period, releasing its leases."""
    assert env.exchange is not None
    # every fetch times out for a while (1 s client timeout, retried), so windows outlive the 3 s grace
    env.exchange.admin("faults", {"kind": "delay", "count": 60, "delay_s": 2.5})
    time.sleep(1.5)  # windows past their fetch finish within ~0.5 s: the leases still held now are hanging
    victim = env.busy_worker(rng)
    with env.fault("drain", f"SIGTERM worker {victim.name}"):
        victim.signal(signal.SIGTERM)
        assert victim.proc is not None
        code = victim.proc.wait(timeout=30)
        env.workers.remove(victim)
    assert code == 0, f"worker {victim.name} exited {code} on SIGTERM"
    released = [op for op in env.history()[0] if op.kind == "release" and op.client == victim.name and op.ok]
    assert released, f"worker {victim.name} released nothing on SIGTERM"
    env.start_worker()
    return f"SIGTERM worker {victim.name} while its fetches hang: exit 0, {len(released)} leases released"


FAULTS: dict[str, Fault] = {
    "leader-kill": kill_leader_repeatedly,
    "follower-kill": kill_follower,
    "worker-kill": kill_workers,
    "zombie-worker": zombie_worker,
    "leader-partition": partition_leader,
    "exchange-faults": exchange_faults,
    "questdb-restart": restart_questdb,
    "cluster-restart": restart_whole_cluster,
    "leader-pause": pause_leader,
    "worker-drain": drain_worker,
}
