"""Shared exchange budgets: the leader's registry of live workers per source and each one's share of its limits.

Rules:
1. Pure and soft: time arrives as ``now_ms`` (the leader's monotonic clock, in ms); no I/O, asyncio, logging or
   clock. Nothing here is replicated: a new leader starts an empty board and workers re-register on their next
   heartbeat (they carry what they use and any ban they know, so the new board relearns both).
2. A source's bound is, per quantity (requests per minute, weight per minute), the smallest limit any live worker
   of it declares; ``None`` means the quantity is unlimited and is not shared.
3. Fair target = bound / live workers. A worker's *held* amount is what it may be using now: the larger of what it
   reported using in its last heartbeat and the grant last sent to it. A grant never exceeds the bound minus the
   other workers' held amounts, so held amounts never sum above the bound, joins and leaves included: a joiner is
   granted its share as the others confirm (in their next heartbeat) that they shrank.
4. A new board (a new leader) grants no increase during its first ``ttl_ms``: workers it has not heard from may
   still use the old leader's grants until their own copy lapses.
5. A worker not heard from for ``ttl_ms`` is dropped and its held amount freed (a crash frees its share). The
   worker's copy of a grant lapses ``ttl_ms`` after it *sent* the heartbeat, before the board frees it here.
6. A block (418 ban, 429 cooldown, exhausted weight window) reported by any worker closes the source for every
   worker until its deadline; blocks only extend.
7. Each source has a ``version`` that changes whenever an answer of the source may change (membership, a held
   amount, a block): long-polling heartbeats wait on it.
8. Bounded: at most ``max_sources`` sources and ``max_workers`` workers per source; beyond, a heartbeat gets an
   error result and nothing changes. A source whose last worker left is forgotten once its block has ended.
9. A heartbeat with ``register=False`` (a long poll re-read after its wait) refreshes a worker that is still a
   member and never adds one back: a worker that left while its long poll was parked (it cancels the poll, but
   the leader does not know) must not reappear and hold a share until the ttl frees it. It gets a zero grant.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["BudgetBoard", "Heartbeat", "Quantities", "Share"]

#: (requests per minute, weight per minute); ``None`` = unlimited.
Quantities = tuple[float | None, float | None]
_NONE: Quantities = (None, None)
#: A worker whose reported block is this much shorter than the board's is told at once instead of parked.
_BLOCK_SLACK_MS = 50


@dataclass(frozen=True)
class Heartbeat:
    """One worker's report for one source."""

    source: str
    worker_id: str
    #: The source's limits as this worker's config declares them (rule 2).
    limits: Quantities
    #: What the worker applies now (its last grant, or its per-process floor); ``None`` = nothing limited.
    using: Quantities = _NONE
    #: Milliseconds the worker's own gate stays closed, and why (``banned``, ``rate_limited``, ``weight``).
    blocked_ms: int = 0
    blocked_reason: str = ""
    #: The worker is leaving (graceful stop): its share is freed at once.
    leave: bool = False
    #: False for a parked long poll re-read after its wait: never re-adds a worker that left meanwhile (rule 9).
    register: bool = True


@dataclass(frozen=True)
class Share:
    """The answer to a heartbeat: this worker's grant and the source's state."""

    source: str
    workers: int
    grant: Quantities
    target: Quantities
    blocked_ms: int
    blocked_reason: str
    version: int
    #: True when the worker should hear this at once (its grant or block differs from what it reported).
    news: bool


@dataclass
class _Member:
    limits: Quantities
    using: Quantities
    granted: Quantities
    seen_ms: int

    def held(self) -> Quantities:
        return (_max(self.using[0], self.granted[0]), _max(self.using[1], self.granted[1]))


@dataclass
class _Source:
    members: dict[str, _Member] = field(default_factory=dict)
    block_until_ms: int = 0
    block_reason: str = ""
    version: int = 0


def _max(a: float | None, b: float | None) -> float | None:
    """The larger amount; ``None`` (unlimited) dominates."""
    if a is None or b is None:
        return None
    return max(a, b)


def _min_limit(values: list[float | None]) -> float | None:
    limited = [v for v in values if v is not None]
    return min(limited) if limited else None


class BudgetBoard:
    """The registry of one leader term (module rules)."""

    def __init__(self, *, now_ms: int, ttl_ms: int, max_sources: int = 64, max_workers: int = 1024) -> None:
        if ttl_ms <= 0:
            raise ValueError(f"ttl_ms {ttl_ms!r} must be > 0")
        self.ttl_ms = ttl_ms
        self.max_sources = max_sources
        self.max_workers = max_workers
        #: Rule 4: no increase before this.
        self.grace_until_ms = now_ms + ttl_ms
        self._sources: dict[str, _Source] = {}
        #: Blocks set or extended, per (source, reason), since the board started (a metric).
        self.blocks: dict[tuple[str, str], int] = {}

    def version(self, source: str) -> int:
        """The source's version (0 for an unknown source)."""
        entry = self._sources.get(source)
        return entry.version if entry is not None else 0

    def sources(self) -> list[str]:
        """Known sources, sorted."""
        return sorted(self._sources)

    def heartbeat(self, beat: Heartbeat, now_ms: int) -> Share | str:
        """Register or refresh a worker and return its share, or an error message (rule 8; nothing changed)."""
        entry = self._sources.get(beat.source)
        if entry is None:
            if len(self._sources) >= self.max_sources:
                return f"source {beat.source!r} would exceed the {self.max_sources} sources the board keeps"
            entry = self._sources[beat.source] = _Source()
        self._expire(entry, now_ms)
        if beat.worker_id not in entry.members and not beat.leave and len(entry.members) >= self.max_workers:
            return f"worker {beat.worker_id!r} would exceed the {self.max_workers} workers of source {beat.source!r}"
        self._note_block(beat, entry, now_ms)
        if beat.leave:
            if entry.members.pop(beat.worker_id, None) is not None:
                entry.version += 1
            share = self._answer(beat, entry, _NONE, now_ms)
            self._forget_if_idle(beat.source, entry, now_ms)
            return share
        member = entry.members.get(beat.worker_id)
        before = member.held() if member is not None else None
        if member is None and not beat.register:
            zero = (0.0 if beat.limits[0] is not None else None, 0.0 if beat.limits[1] is not None else None)
            share = self._answer(beat, entry, zero, now_ms)
            self._forget_if_idle(beat.source, entry, now_ms)
            return share
        if member is None:
            member = entry.members[beat.worker_id] = _Member(beat.limits, beat.using, _NONE, now_ms)
            member.granted = (0.0 if beat.limits[0] is not None else None, 0.0 if beat.limits[1] is not None else None)
            entry.version += 1
        member.limits, member.using, member.seen_ms = beat.limits, beat.using, now_ms
        grant = self._grant(entry, beat.worker_id, member, now_ms)
        member.granted = grant
        if member.held() != before:
            entry.version += 1
        return self._answer(beat, entry, grant, now_ms)

    def expire(self, now_ms: int) -> list[str]:
        """Drop every worker not heard from for ``ttl_ms`` (rule 5); returns the sources that changed."""
        changed = []
        for name, entry in list(self._sources.items()):
            if self._expire(entry, now_ms):
                changed.append(name)
            self._forget_if_idle(name, entry, now_ms)
        return changed

    def view(self, now_ms: int) -> list[dict[str, object]]:
        """Every source's workers and amounts (the operator's ``GET /v1/budget``)."""
        out: list[dict[str, object]] = []
        for name in self.sources():
            entry = self._sources[name]
            bound = self._bound(entry)
            n = len(entry.members)
            out.append(
                {
                    "source": name,
                    "workers": n,
                    "bound": list(bound),
                    "target": list(self._target(bound, n)),
                    "blocked_ms": max(0, entry.block_until_ms - now_ms),
                    "blocked_reason": entry.block_reason,
                    "version": entry.version,
                    "members": {
                        wid: {"granted": list(m.granted), "using": list(m.using), "age_ms": now_ms - m.seen_ms}
                        for wid, m in sorted(entry.members.items())
                    },
                }
            )
        return out

    def figures(self) -> dict[str, tuple[int, Quantities]]:
        """Per source: live workers and the fair target (metrics)."""
        result = {}
        for name, entry in self._sources.items():
            n = len(entry.members)
            result[name] = (n, self._target(self._bound(entry), n))
        return result

    # -- internals ---------------------------------------------------------------------------------------------

    def _expire(self, entry: _Source, now_ms: int) -> bool:
        gone = [wid for wid, m in entry.members.items() if now_ms - m.seen_ms >= self.ttl_ms]
        for wid in gone:
            del entry.members[wid]
        if gone:
            entry.version += 1
        return bool(gone)

    def _forget_if_idle(self, name: str, entry: _Source, now_ms: int) -> None:
        if not entry.members and entry.block_until_ms <= now_ms:
            self._sources.pop(name, None)

    def _note_block(self, beat: Heartbeat, entry: _Source, now_ms: int) -> None:
        if beat.blocked_ms <= 0:
            return
        until = now_ms + beat.blocked_ms
        if until > entry.block_until_ms + _BLOCK_SLACK_MS:
            entry.block_until_ms = until
            entry.block_reason = beat.blocked_reason or "blocked"
            entry.version += 1
            key = (beat.source, entry.block_reason)
            self.blocks[key] = self.blocks.get(key, 0) + 1

    @staticmethod
    def _bound(entry: _Source) -> Quantities:
        members = list(entry.members.values())
        return (_min_limit([m.limits[0] for m in members]), _min_limit([m.limits[1] for m in members]))

    @staticmethod
    def _target(bound: Quantities, n: int) -> Quantities:
        return (
            None if bound[0] is None else bound[0] / max(n, 1),
            None if bound[1] is None else bound[1] / max(n, 1),
        )

    def _grant(self, entry: _Source, worker_id: str, member: _Member, now_ms: int) -> Quantities:
        bound = self._bound(entry)
        target = self._target(bound, len(entry.members))
        others = [m.held() for wid, m in entry.members.items() if wid != worker_id]
        grant: list[float | None] = []
        for q in (0, 1):
            limit, fair = bound[q], target[q]
            if limit is None or fair is None:
                grant.append(None)
                continue
            held = [h[q] for h in others]
            taken = sum(h for h in held if h is not None) if all(h is not None for h in held) else limit
            amount = max(0.0, min(fair, limit - taken))
            if now_ms < self.grace_until_ms:  # rule 4: keep what it had, never more
                using = member.using[q]
                amount = min(amount, using if using is not None else 0.0)
            grant.append(amount)
        return (grant[0], grant[1])

    def _answer(self, beat: Heartbeat, entry: _Source, grant: Quantities, now_ms: int) -> Share:
        bound = self._bound(entry)
        blocked_ms = max(0, entry.block_until_ms - now_ms)
        news = grant != beat.using or blocked_ms > beat.blocked_ms + _BLOCK_SLACK_MS
        return Share(
            source=beat.source,
            workers=len(entry.members),
            grant=grant,
            target=self._target(bound, len(entry.members)),
            blocked_ms=blocked_ms,
            blocked_reason=entry.block_reason if blocked_ms else "",
            version=entry.version,
            news=news,
        )
