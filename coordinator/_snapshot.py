"""The lease table's snapshot format: compact, versioned bytes instead of a pickle of Python objects.

Layout (format 5): ``MAGIC`` (8 bytes), then a little-endian u32 header length, a JSON header, and the numpy
columns it lists, back to back. The whole body after the magic is zlib-compressed (level 1: fast, and the
columns are mostly runs). The header holds the small parts (scalars, series, jobs, live leases, keyed leases,
remembered results, nodes), the window blocks ``[series index, k0, n]`` and the job sets (lists of job indexes);
the columns are the blocks' arrays (``_windows.py``) concatenated, one value per cell:

    state (i8, -1 for a hole), attempts (i32), not_before, lease, done_token, done_at, rows (i64), jobset (u32
    index into the header's job sets), and the non-empty ``last_error`` strings by cell in the header.

Formats 2-4 stored one row per window (series index, start, end, the same fields, ``jobs_n`` + ``jobs``); format
3 is 4 without the jobs' ``trace``, format 2 also without their ``owner``. They load into blocks once.

Rules:
1. ``encode`` reads the table and nothing else; it runs in pysyncobj's forked dump writer (``SnapshotBlob``
   defers it there), so the node never stalls on it. It copies the blocks' arrays and makes no object per window.
2. Derived state is rebuilt, not stored: the claim heaps (one run entry per run of pending windows of one rank,
   ``_state.py`` rule 4), the expiry heap, window counts, the identical-job index, the job sets' claim ranks, the
   idle keys (in ``_keys`` order, which is the order they became idle: ``_keyed.py`` rule 4), the running jobs and
   the count of retired jobs. The observable order is the same (DESIGN.md rule 1).
3. ``decode`` accepts formats 2 to 5 and, once, for migration, the format-1 dict pysyncobj unpickles from dumps
   written before December 2026 (``{"format": 1, "state": TableState.__dict__}``).
4. A new field means a new format number and a decoder for the old one; never change what a number means.
"""

from __future__ import annotations

import heapq
import itertools
import json
import struct
import zlib
from array import array
from collections import OrderedDict
from typing import Any

import numpy as np

from coordinator._records import LEASED, PENDING, JobRec, KeyRec, LeaseRec, Result, SeriesRec
from coordinator._state import TableState
from coordinator._windows import ABSENT, COLUMNS, STATE_CODE, STATES, Block

__all__ = ["FORMAT", "MAGIC", "SnapshotBlob", "decode", "encode"]

MAGIC = b"SDPTBL\x00\x02"
FORMAT = 5
#: Formats ``decode`` reads: 2 (jobs without an owner: they count against no client's limits), 3 (jobs without a
#: trace), 4 (a row per window) and 5.
_READABLE = (2, 3, 4, 5)
_DTYPE = {"b": "int8", "i": "int32", "q": "int64", "I": "uint32"}
#: The per-window row columns of formats 2-4, by their names there.
_ROW_I64 = ("start", "end", "not_before_ms", "lease", "done_token", "done_at_ms", "rows")
_ROW_TO_BLOCK = {"not_before_ms": "not_before", "done_at_ms": "done_at"}


class SnapshotBlob:
    """What the consumer hands to pysyncobj: pickled (in the forked writer) as the plain bytes of ``encode``."""

    def __init__(self, table: TableState) -> None:
        self._table = table

    def __reduce__(self) -> tuple[Any, ...]:
        return (bytes, (encode(self._table),))


def _result_row(key: tuple[str, str], seen: tuple[str, int, Result]) -> list[Any]:
    op, at_ms, r = seen
    return [key[0], key[1], op, at_ms, r.ok, r.value, r.code, r.message, r.field]


def _header(t: TableState, series: list[str], job_ids: list[str]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "clock_ms": t._clock_ms,
        "token": t._token,
        "job_seq": t._job_seq,
        "stale_claims": t._stale_claims,
        "series": [[name, t._series[name].interval_ms, t._series[name].window_bars] for name in series],
        "jobs": [
            [
                j.job_id,
                j.seq,
                j.series,
                j.start,
                j.end,
                j.priority,
                j.w_lo,
                j.w_hi,
                j.submitted_at_ms,
                j.cancelled,
                [j.counts[s] for s in STATES],
                j.finished_at_ms,
                j.retired_at_ms,
                j.owner,
                j.trace,
            ]
            for j in (t._jobs[job_id] for job_id in job_ids)
        ],
        "leases": [
            [
                r.token,
                r.kind,
                list(r.target) if r.kind == "window" else r.target,
                r.worker_id,
                r.granted_at_ms,
                r.expires_at_ms,
            ]
            for r in t._leases.values()
        ],
        "keys": [[k, r.group, r.state, r.token] for k, r in t._keys.items()],
        "groups": [[g, v[0], v[1]] for g, v in t._groups.items()],
        "nodes": t._nodes,
        "done_tokens": [[tok, key[0], key[1]] for tok, key in t._done_tokens.items()],
        "dedup": [_result_row(key, seen) for key, seen in t._dedup.items()],
    }


def encode(t: TableState) -> bytes:
    """The table as format-5 bytes (rule 1)."""
    series = list(t._series)
    series_ix = {name: i for i, name in enumerate(series)}
    job_ids = list(t._jobs)
    job_ix = {job_id: i for i, job_id in enumerate(job_ids)}
    blocks = t._windows.blocks
    cols = {
        name: np.frombuffer(b"".join(b.column(name).tobytes() for b in blocks), np.dtype(_DTYPE[code]))
        for name, code in COLUMNS
    }
    present = cols["state"] != ABSENT
    used = np.unique(cols["jobset"][present])  # the job sets of present windows, renumbered densely
    cols["jobset"] = np.where(present, np.searchsorted(used, cols["jobset"]), 0).astype(np.uint32)
    sets = t._windows.sets.tuples
    header = _header(t, series, job_ids)
    header["blocks"] = [[series_ix[b.series], b.k0, b.n] for b in blocks]
    header["jobsets"] = [[job_ix[j] for j in sets[ix]] for ix in used.tolist()]
    header["errors"] = [[n, i, text] for n, b in enumerate(blocks) for i, text in b.errors.items()]
    header["columns"] = [[name, str(col.dtype), len(col)] for name, col in cols.items()]
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join([struct.pack("<I", len(head)), head, *(col.tobytes() for col in cols.values())])
    return MAGIC + zlib.compress(body, 1)


def decode(data: Any) -> TableState | None:
    """A table from a snapshot (format 2 to 5 bytes, or a format-1 dict); None when ``data`` is neither."""
    if isinstance(data, dict):
        return _decode_format1(data)
    if not isinstance(data, (bytes, bytearray)) or not data.startswith(MAGIC):
        return None
    body = zlib.decompress(memoryview(data)[len(MAGIC) :])
    (size,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + size])
    if header.get("format") not in _READABLE:
        return None
    cols: dict[str, np.ndarray[Any, Any]] = {}
    offset = 4 + size
    for name, dtype, count in header["columns"]:
        cols[name] = np.frombuffer(body, np.dtype(dtype), count, offset)
        offset += cols[name].nbytes
    t = TableState()
    _load_header(t, header)
    if header["format"] >= 5:
        _load_blocks(t, header, cols)
    else:
        _load_rows(t, header, cols)
    _rebuild(t)
    return t


#: Attributes of TableState added after format 1 that are derived from the others (rebuilt, never stored).
_DERIVED_SINCE_FORMAT1 = frozenset({"_idle_keys", "_owners", "_running", "_jobs_retired"})


def _load_header(t: TableState, h: dict[str, Any]) -> None:
    t._clock_ms, t._token, t._job_seq, t._stale_claims = h["clock_ms"], h["token"], h["job_seq"], h["stale_claims"]
    t._series = {name: SeriesRec(interval, bars) for name, interval, bars in h["series"]}
    series_names = {name: name for name in t._series}  # one string object per series, shared by its windows
    for row in h["jobs"]:
        job = JobRec(row[0], row[1], series_names.get(row[2], row[2]), *row[3:9])
        job.cancelled = row[9]
        job.counts = dict(zip(STATES, row[10], strict=True))
        job.finished_at_ms, job.retired_at_ms = row[11], row[12]
        job.owner = row[13] if len(row) > 13 else ""  # format 2 recorded no owner
        job.trace = row[14] if len(row) > 14 else ""  # formats 2 and 3 recorded no trace
        t._jobs[job.job_id] = job
    for token, kind, target, worker, granted, expires in h["leases"]:
        key = (series_names.get(target[0], target[0]), target[1]) if kind == "window" else target
        t._leases[token] = LeaseRec(token, kind, key, worker, granted, expires)
    for key, group, state, token in h["keys"]:
        rec = t._keys[key] = KeyRec(group)
        rec.state, rec.token = state, token
    t._groups = {g: [known, done] for g, known, done in h["groups"]}
    t._nodes = h["nodes"]
    t._done_tokens = OrderedDict((tok, (series_names.get(s, s), start)) for tok, s, start in h["done_tokens"])
    t._dedup = OrderedDict(
        ((c, r), (op, at_ms, Result(ok, value, code, message, field)))
        for c, r, op, at_ms, ok, value, code, message, field in h["dedup"]
    )


def _load_blocks(t: TableState, h: dict[str, Any], cols: dict[str, np.ndarray[Any, Any]]) -> None:
    """Format 5: the blocks as they were, their arrays copied out of the body, no object per window."""
    job_ids = list(t._jobs)
    sets = t._windows.sets
    for ixs in h["jobsets"]:  # interned in order, so set i of the dump is set i here
        sets.intern(tuple(job_ids[j] for j in ixs))
    series = list(t._series)
    errors: dict[int, dict[int, str]] = {}
    for n, i, text in h["errors"]:
        errors.setdefault(n, {})[i] = text
    at = 0
    for n, (s, k0, size) in enumerate(h["blocks"]):
        name = series[s]
        block = Block(name, t._series[name].span_ms, k0)
        for col, code in COLUMNS:
            arr = array(code)
            arr.frombytes(cols[col][at : at + size].tobytes())
            setattr(block, col, arr)
        block.n = size
        block.live = int(np.count_nonzero(cols["state"][at : at + size] != ABSENT))
        block.errors = errors.get(n, {})
        t._windows.add_block(block)
        at += size


def _load_rows(t: TableState, h: dict[str, Any], cols: dict[str, np.ndarray[Any, Any]]) -> None:
    """Formats 2-4: one row per window, in any order; made into blocks once (rule 3)."""
    job_ids = list(t._jobs)
    jobs_flat, counts = cols["jobs"].tolist(), cols["jobs_n"].tolist()
    sets = t._windows.sets
    pos = 0
    jobset = np.empty(len(counts), np.uint32)
    for row, count in enumerate(counts):
        jobset[row] = sets.intern(tuple(job_ids[j] for j in jobs_flat[pos : pos + count]))
        pos += count
    names = list(t._series)
    rows = {name: cols[name] for name in ("series", "start", "state", "attempts", *_ROW_I64[2:])}
    rows["jobset"] = jobset
    _place_rows(t, [names[s] for s in cols["series"].tolist()], rows, dict(h["errors"]))


def _place_rows(t: TableState, series: list[str], rows: dict[str, Any], errors: dict[int, str]) -> None:
    """Windows given as rows (``series`` per row, columns by row-format names) become blocks of the store."""
    if not series:
        return
    names = sorted(set(series))
    code = {name: i for i, name in enumerate(names)}
    s_ix = np.array([code[name] for name in series], np.int64)
    start = np.asarray(rows["start"], np.int64)
    order = np.lexsort((start, s_ix))
    spans = np.array([t._series[name].span_ms for name in names], np.int64)
    k = start[order] // spans[s_ix[order]]
    s_sorted = s_ix[order]
    breaks = np.flatnonzero((np.diff(s_sorted) != 0) | (np.diff(k) != 1)) + 1
    bounds = [0, *breaks.tolist(), len(order)]
    by_block = {name: np.asarray(rows[name])[order] for name in rows if name not in ("series", "start")}
    row_of = order.tolist()
    for lo, hi in itertools.pairwise(bounds):
        name = names[int(s_sorted[lo])]
        block = Block(name, int(spans[s_sorted[lo]]), int(k[lo]))
        for col, type_code in COLUMNS:
            values = by_block[_row_name(col)][lo:hi].astype(np.dtype(_DTYPE[type_code]))
            arr = array(type_code)
            arr.frombytes(values.tobytes())
            setattr(block, col, arr)
        block.n = block.live = hi - lo
        block.errors = {i - lo: errors[row_of[i]] for i in range(lo, hi) if row_of[i] in errors}
        t._windows.add_block(block)


def _row_name(col: str) -> str:
    for row_name, block_name in _ROW_TO_BLOCK.items():
        if block_name == col:
            return row_name
    return col


def _rebuild(t: TableState) -> None:
    """Derived state (rule 2): counts, ranks, claim heaps, expiry heap, job index, idle keys, owners, running jobs."""
    ranks = t._windows.sets.ranks
    rank_list = sorted({r for r in ranks if r is not None})
    rank_id = np.array([rank_list.index(r) if r is not None else -1 for r in ranks] or [-1], np.int64)
    clock = t._clock_ms
    for block in t._windows.blocks:
        state = np.frombuffer(block.state, np.int8)
        for code, count in enumerate(np.bincount(state[state >= 0], minlength=len(STATES)).tolist()):
            t._window_counts[STATES[code]] += count
        cell_rank = rank_id[np.frombuffer(block.jobset, np.uint32)]
        not_before = np.frombuffer(block.not_before, np.int64)
        pending = (state == STATE_CODE[PENDING]) & (cell_rank >= 0)
        for i in np.flatnonzero(pending & (not_before > clock)).tolist():
            r = rank_list[cell_rank[i]]
            t._delayed.append((int(not_before[i]), r[0], r[1], (block.k0 + i) * block.span, block.series))
        key = np.where(pending & (not_before <= clock), cell_rank, -1)
        edges = np.flatnonzero(np.diff(key)) + 1
        for lo, hi in zip([0, *edges.tolist()], [*edges.tolist(), block.n], strict=True):
            if key[lo] >= 0:
                r = rank_list[key[lo]]
                t._ready.append((r[0], r[1], (block.k0 + lo) * block.span, block.series, (block.k0 + hi) * block.span))
    heapq.heapify(t._ready)
    heapq.heapify(t._delayed)
    t._expiry = [(r.expires_at_ms, r.token) for r in t._leases.values()]
    heapq.heapify(t._expiry)
    _derive_idle_keys(t)
    _derive_owners(t)
    _derive_job_figures(t)
    for job in t._jobs.values():
        if not job.cancelled and not job.retired_at_ms:
            t._job_index[(job.series, job.start, job.end, job.priority)] = job.job_id


def _derive_owners(t: TableState) -> None:
    for job in t._jobs.values():
        if job.owner and not job.cancelled:
            t._charge(job.owner, 0, job.counts[PENDING] + job.counts[LEASED])


def _derive_idle_keys(t: TableState) -> None:
    t._idle_keys = OrderedDict((key, None) for key, rec in t._keys.items() if rec.state != "leased")


def _derive_job_figures(t: TableState) -> None:
    """The running jobs and the count of retired ones (``_state.py`` rule 7)."""
    t._running = {job.job_id: job for job in t._jobs.values() if job.state == "running"}
    t._jobs_retired = sum(1 for job in t._jobs.values() if job.retired_at_ms)


def _decode_format1(data: dict[str, Any]) -> TableState | None:
    """Format 1: pysyncobj unpickled ``{"format": 1, "state": TableState.__dict__}`` with our record classes, the
    windows a dict of ``WindowRec`` objects; they become blocks, and the derived state is rebuilt."""
    state = data.get("state")
    if data.get("format") != 1 or not isinstance(state, dict):
        return None
    fresh = TableState()
    if set(state) | _DERIVED_SINCE_FORMAT1 != set(fresh.__dict__):
        return None
    derived = _DERIVED_SINCE_FORMAT1 | {"_windows", "_ready", "_delayed", "_expiry", "_window_counts", "_job_index"}
    for name, value in state.items():
        if name not in derived:
            setattr(fresh, name, value)
    for job in fresh._jobs.values():  # written before retention: these slots did not exist
        if not hasattr(job, "retired_at_ms"):
            job.finished_at_ms = job.retired_at_ms = 0
        if not hasattr(job, "owner"):  # nor this one, before admission limits
            job.owner = ""
        if not hasattr(job, "trace"):  # nor this one, before traces
            job.trace = ""
    windows = list(state["_windows"].values())
    rows: dict[str, Any] = {
        "start": [w.start for w in windows],
        "state": [STATE_CODE[w.state] for w in windows],
        "jobset": [fresh._windows.sets.intern(tuple(w.jobs)) for w in windows],
    }
    for name in ("attempts", *_ROW_I64[2:]):
        rows[name] = [getattr(w, name, -1 if name == "rows" else 0) for w in windows]
    errors = {i: w.last_error for i, w in enumerate(windows) if getattr(w, "last_error", "")}
    _place_rows(fresh, [w.series for w in windows], rows, errors)
    _rebuild(fresh)
    return fresh
