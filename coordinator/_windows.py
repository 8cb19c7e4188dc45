"""The windows of the lease table, stored as columns: one block of arrays per contiguous run of grid cells.

A window is ``(series, start)`` on its series' grid: ``start = k * span`` and its end is ``start + span``. Until
December 2026 every window was a Python object in a dict (about 450 bytes each with its key and its claim-heap
entry); a million of them took seconds to load, a dump had to walk them all, and their memory stayed fragmented
after they left. Here a window costs 49 bytes of arrays and no Python object.

Rules:
1. Per series, the store keeps sorted, non-overlapping blocks ``[k0, k0 + n)``; each block holds one
   ``array.array`` per field (Python ints in and out, compact, ``tobytes``/``frombytes`` for dumps). A job adds
   whole blocks, or extends the block that ends where it begins: O(1) Python objects per job, not per window.
2. A removed window leaves a hole (state code ``ABSENT``) in its block. :meth:`WindowStore.settle` drops a block
   whose windows are all gone (its arrays go back to the allocator at once; big ones to the OS) and splits a
   block that is mostly holes, so retired windows never pin memory for long.
3. :class:`Window` is a view ``(block, index)``: reading or writing an attribute reads or writes the arrays.
   Views are made on demand and never kept in the table; two views of one window are equal, not identical.
4. A window's jobs are one of the store's interned job-id tuples (``jobsets``), referenced by index: equal sets
   are one tuple object (table.py rule 9). The claim rank of a set is derived from its jobs once, when it is
   interned, by the ``rank_of`` function the table gives (a job's rank never changes).
5. Pure data: no clock, I/O or randomness.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from coordinator._records import DONE, FAILED, LEASED, PENDING

__all__ = ["ABSENT", "STATE_CODE", "STATES", "Block", "Window", "WindowStore"]

STATES = (PENDING, LEASED, DONE, FAILED)
STATE_CODE = {name: i for i, name in enumerate(STATES)}
#: State code of a hole: a cell of a block without a window.
ABSENT = -1

#: Array type codes of the columns, in dump order (``_snapshot.py``).
COLUMNS = (
    ("state", "b"),
    ("attempts", "i"),
    ("not_before", "q"),
    ("lease", "q"),
    ("done_token", "q"),
    ("done_at", "q"),
    ("rows", "q"),
    ("jobset", "I"),
)
#: A block is split when more than half of it is holes and it has at least this many cells (rule 2); holes in
#: runs shorter than ``_KEEP_GAP`` stay inside the pieces.
_SPLIT_MIN_CELLS = 64
_KEEP_GAP = 16

Rank = tuple[int, int]


class Block:
    """A run ``[k0, k0 + n)`` of grid cells of one series, one array per field (rule 1)."""

    __slots__ = (
        "attempts",
        "done_at",
        "done_token",
        "errors",
        "jobset",
        "k0",
        "lease",
        "live",
        "n",
        "not_before",
        "rows",
        "series",
        "span",
        "state",
    )

    def __init__(self, series: str, span: int, k0: int) -> None:
        self.series = series
        self.span = span
        self.k0 = k0
        self.n = 0
        #: Windows present (cells not ABSENT).
        self.live = 0
        self.state = array("b")
        self.attempts = array("i")
        self.not_before = array("q")
        self.lease = array("q")
        self.done_token = array("q")
        self.done_at = array("q")
        self.rows = array("q")
        self.jobset = array("I")
        #: Non-empty ``last_error`` texts by cell index (few windows have one).
        self.errors: dict[int, str] = {}

    @property
    def end_k(self) -> int:
        return self.k0 + self.n

    def extend(self, count: int, jobset: int) -> None:
        """Append ``count`` fresh pending windows of job set ``jobset``."""
        self.state.extend(array("b", bytes(count)))
        zeros_i = array("i", bytes(4 * count))
        zeros_q = array("q", bytes(8 * count))
        self.attempts.extend(zeros_i)
        self.not_before.extend(zeros_q)
        self.lease.extend(zeros_q)
        self.done_token.extend(zeros_q)
        self.done_at.extend(zeros_q)
        self.rows.extend(array("q", [-1]) * count)
        self.jobset.extend(array("I", [jobset]) * count)
        self.n += count
        self.live += count

    def column(self, name: str) -> array[Any]:
        arr: array[Any] = getattr(self, name)
        return arr

    def piece(self, lo: int, hi: int) -> Block:
        """A new block of cells ``[lo, hi)`` of this one (indexes relative to ``k0``)."""
        out = Block(self.series, self.span, self.k0 + lo)
        for name, _ in COLUMNS:
            setattr(out, name, self.column(name)[lo:hi])
        out.n = hi - lo
        out.live = sum(1 for s in out.state if s != ABSENT)
        out.errors = {i - lo: text for i, text in self.errors.items() if lo <= i < hi}
        return out


class JobSets:
    """Interned job-id tuples and their claim ranks (rule 4)."""

    __slots__ = ("index", "rank_of", "ranks", "tuples")

    def __init__(self, rank_of: Callable[[tuple[str, ...]], Rank | None]) -> None:
        self.rank_of = rank_of
        self.tuples: list[tuple[str, ...]] = []
        self.ranks: list[Rank | None] = []
        self.index: dict[tuple[str, ...], int] = {}

    def intern(self, jobs: tuple[str, ...]) -> int:
        ix = self.index.get(jobs)
        if ix is None:
            ix = self.index[jobs] = len(self.tuples)
            self.tuples.append(jobs)
            self.ranks.append(self.rank_of(jobs))
        return ix


class Window:
    """A view of one window of a block (rule 3); attributes read and write the block's arrays."""

    __slots__ = ("_b", "_i", "_sets", "end", "series", "start")

    def __init__(self, block: Block, i: int, sets: JobSets) -> None:
        self._b = block
        self._i = i
        self._sets = sets
        self.series = block.series
        self.start = (block.k0 + i) * block.span
        self.end = self.start + block.span

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Window) and other._b is self._b and other._i == self._i

    def __hash__(self) -> int:
        return hash((self.series, self.start))

    @property
    def key(self) -> tuple[str, int]:
        return (self.series, self.start)

    @property
    def state(self) -> str:
        return STATES[self._b.state[self._i]]

    @state.setter
    def state(self, value: str) -> None:
        self._b.state[self._i] = STATE_CODE[value]

    @property
    def attempts(self) -> int:
        return self._b.attempts[self._i]

    @attempts.setter
    def attempts(self, value: int) -> None:
        self._b.attempts[self._i] = value

    @property
    def not_before_ms(self) -> int:
        return self._b.not_before[self._i]

    @not_before_ms.setter
    def not_before_ms(self, value: int) -> None:
        self._b.not_before[self._i] = value

    @property
    def lease(self) -> int:
        return self._b.lease[self._i]

    @lease.setter
    def lease(self, value: int) -> None:
        self._b.lease[self._i] = value

    @property
    def done_token(self) -> int:
        return self._b.done_token[self._i]

    @done_token.setter
    def done_token(self, value: int) -> None:
        self._b.done_token[self._i] = value

    @property
    def done_at_ms(self) -> int:
        return self._b.done_at[self._i]

    @done_at_ms.setter
    def done_at_ms(self, value: int) -> None:
        self._b.done_at[self._i] = value

    @property
    def rows(self) -> int:
        return self._b.rows[self._i]

    @rows.setter
    def rows(self, value: int) -> None:
        self._b.rows[self._i] = value

    @property
    def last_error(self) -> str:
        return self._b.errors.get(self._i, "")

    @last_error.setter
    def last_error(self, value: str) -> None:
        if value:
            self._b.errors[self._i] = value
        else:
            self._b.errors.pop(self._i, None)

    @property
    def jobs(self) -> tuple[str, ...]:
        """Ids of the live (not cancelled) jobs that cover this window; one shared tuple per job set."""
        return self._sets.tuples[self._b.jobset[self._i]]

    @jobs.setter
    def jobs(self, value: tuple[str, ...]) -> None:
        self._b.jobset[self._i] = self._sets.intern(value)

    @property
    def rank(self) -> Rank | None:
        """Claim order key: (-priority, job seq) of the best live job, or None when no live job covers it."""
        return self._sets.ranks[self._b.jobset[self._i]]


class WindowStore:
    """Every window of the table, by series, in blocks (rules 1-2); a mapping of ``(series, start)`` to views."""

    def __init__(self, rank_of: Callable[[tuple[str, ...]], Rank | None]) -> None:
        self.sets = JobSets(rank_of)
        #: series -> (sorted k0 of its blocks, its blocks)
        self._series: dict[str, tuple[list[int], list[Block]]] = {}
        self._dirty: dict[int, Block] = {}
        self._count = 0

    # -- lookups ------------------------------------------------------------------------------------------------

    def _find(self, series: str, start: int) -> tuple[Block, int] | None:
        found = self._series.get(series)
        if not found:
            return None
        k0s, blocks = found
        span = blocks[0].span
        k, rest = divmod(start, span)
        if rest:
            return None
        at = bisect.bisect_right(k0s, k) - 1
        if at < 0:
            return None
        block = blocks[at]
        i = k - block.k0
        if i >= block.n or block.state[i] == ABSENT:
            return None
        return block, i

    def get(self, key: tuple[str, int]) -> Window | None:
        found = self._find(key[0], key[1])
        return Window(found[0], found[1], self.sets) if found is not None else None

    def __getitem__(self, key: tuple[str, int]) -> Window:
        window = self.get(key)
        if window is None:
            raise KeyError(key)
        return window

    def __contains__(self, key: object) -> bool:
        return isinstance(key, tuple) and len(key) == 2 and self._find(key[0], key[1]) is not None

    def __len__(self) -> int:
        return self._count

    @property
    def blocks(self) -> list[Block]:
        """Every block, by series then k0."""
        return [block for _, blocks in self._series.values() for block in blocks]

    def in_range(self, series: str, k_lo: int, k_hi: int) -> Iterator[Window]:
        """The windows of ``series`` with grid index in ``[k_lo, k_hi)``, in start order."""
        for part in self.cells(series, k_lo, k_hi):
            if isinstance(part, Window):
                yield part

    def cells(self, series: str, k_lo: int, k_hi: int) -> list[Window | tuple[int, int]]:
        """Cells ``[k_lo, k_hi)`` of ``series`` in order: a view per window and ``(ka, kb)`` per run of cells
        without one."""
        out: list[Window | tuple[int, int]] = []
        found = self._series.get(series)
        k0s, blocks = found if found else ([], [])
        k = k_lo
        at = max(bisect.bisect_right(k0s, k_lo) - 1, 0)
        missing_from = -1
        while k < k_hi:
            block = blocks[at] if at < len(blocks) else None
            if block is None or k < block.k0:  # a gap before the next block (or after the last)
                gap_end = min(k_hi, block.k0) if block is not None else k_hi
                if missing_from < 0:
                    missing_from = k
                k = gap_end
                continue
            if k >= block.end_k:
                at += 1
                continue
            state = block.state
            for i in range(k - block.k0, min(k_hi, block.end_k) - block.k0):
                if state[i] == ABSENT:
                    if missing_from < 0:
                        missing_from = block.k0 + i
                    continue
                if missing_from >= 0:
                    out.append((missing_from, block.k0 + i))
                    missing_from = -1
                out.append(Window(block, i, self.sets))
            k = min(k_hi, block.end_k)
            at += 1
        if missing_from >= 0:
            out.append((missing_from, k_hi))
        return out

    def items(self) -> Iterator[tuple[tuple[str, int], Window]]:
        for window in self.values():
            yield window.key, window

    def values(self) -> Iterator[Window]:
        for block in self.blocks:
            state = block.state
            for i in range(block.n):
                if state[i] != ABSENT:
                    yield Window(block, i, self.sets)

    # -- changes ------------------------------------------------------------------------------------------------

    def fill(self, series: str, span: int, ka: int, kb: int, jobs: tuple[str, ...]) -> None:
        """Create fresh pending windows of ``jobs`` on every cell of ``[ka, kb)``, none of which has a window."""
        jobset = self.sets.intern(jobs)
        k0s, blocks = self._series.setdefault(series, ([], []))
        k = ka
        while k < kb:
            at = bisect.bisect_right(k0s, k) - 1
            block = blocks[at] if at >= 0 else None
            if block is not None and k < block.end_k:  # holes inside a block
                stop = min(kb, block.end_k)
                for i in range(k - block.k0, stop - block.k0):
                    self._renew_cell(block, i, jobset)
                k = stop
                continue
            nxt = k0s[at + 1] if at + 1 < len(k0s) else kb
            stop = min(kb, nxt)
            if block is not None and block.end_k == k:  # coalesce with the block that ends here (rule 1)
                block.extend(stop - k, jobset)
            else:
                block = Block(series, span, k)
                block.extend(stop - k, jobset)
                k0s.insert(at + 1, k)
                blocks.insert(at + 1, block)
            self._count += stop - k
            k = stop

    def _renew_cell(self, block: Block, i: int, jobset: int) -> None:
        block.state[i] = 0
        block.attempts[i] = 0
        block.not_before[i] = block.lease[i] = block.done_token[i] = block.done_at[i] = 0
        block.rows[i] = -1
        block.jobset[i] = jobset
        block.errors.pop(i, None)
        block.live += 1
        self._count += 1

    def remove(self, window: Window) -> None:
        """Take ``window`` out of the table (a hole until :meth:`settle`)."""
        block, i = window._b, window._i
        if block.state[i] == ABSENT:
            return
        block.state[i] = ABSENT
        block.errors.pop(i, None)
        block.live -= 1
        self._count -= 1
        self._dirty[id(block)] = block

    def settle(self) -> None:
        """Drop empty blocks and split mostly-empty ones (rule 2); call after a command removed windows."""
        dirty, self._dirty = self._dirty, {}
        for block in dirty.values():
            found = self._series.get(block.series)
            if not found:
                continue
            k0s, blocks = found
            at = bisect.bisect_left(k0s, block.k0)
            if at >= len(blocks) or blocks[at] is not block:
                continue
            if block.live == 0:
                pieces: list[Block] = []
            elif 2 * block.live < block.n and block.n >= _SPLIT_MIN_CELLS:
                pieces = [block.piece(lo, hi) for lo, hi in _present_runs(block)]
            else:
                continue
            blocks[at : at + 1] = pieces
            k0s[at : at + 1] = [piece.k0 for piece in pieces]
            if not blocks:
                del self._series[block.series]

    def add_block(self, block: Block) -> None:
        """Place a block built elsewhere (a dump being loaded); it must overlap no other block."""
        k0s, blocks = self._series.setdefault(block.series, ([], []))
        at = bisect.bisect_left(k0s, block.k0)
        k0s.insert(at, block.k0)
        blocks.insert(at, block)
        self._count += block.live


def _present_runs(block: Block) -> list[tuple[int, int]]:
    """Runs of cells of ``block`` to keep: windows, with holes shorter than ``_KEEP_GAP`` between them kept."""
    present = np.frombuffer(block.state, np.int8) != ABSENT
    idx = np.flatnonzero(present)
    if not len(idx):
        return []
    breaks = np.flatnonzero(np.diff(idx) > _KEEP_GAP)
    starts = np.concatenate(([idx[0]], idx[breaks + 1]))
    ends = np.concatenate((idx[breaks], [idx[-1]])) + 1
    return list(zip(starts.tolist(), ends.tolist(), strict=True))
