"""The lease table's snapshot format: compact, versioned bytes instead of a pickle of Python objects.

Layout (format 4; format 3 is the same without the jobs' ``trace``, format 2 also without their ``owner``):
``MAGIC`` (8 bytes), then a little-endian u32 header length, a JSON header, and the numpy columns it lists, back to
back. The whole body after the magic is zlib-compressed (level 1: fast, and the columns are mostly runs). The
header holds the small parts (scalars, series, jobs, live leases, keyed leases, remembered results, nodes); the
windows are columns, one value per window:

    series (u32 index into the header's series list), start, end (i64), state (u8), attempts (i32),
    not_before_ms, lease, done_token, done_at_ms, rows (i64), jobs_n (u16) + jobs (u32 indexes into the job list),
    and the non-empty ``last_error`` strings by window index in the header.

Rules:
1. ``encode`` reads the table and nothing else; it runs in pysyncobj's forked dump writer (``SnapshotBlob``
   defers it there), so the node never stalls on it.
2. Derived state is rebuilt, not stored: the claim heaps, the expiry heap, window counts, the identical-job index
   every window's claim rank (the best live job among its jobs), the idle keys (in ``_keys`` order, which is
   the order they became idle: ``_keyed.py`` rule 4), the running jobs and the count of retired jobs. Rebuilt
   heaps hold no stale entries; the observable order is the same (DESIGN.md rule 1).
3. ``decode`` accepts format 2 bytes and, once, for migration, the format-1 dict pysyncobj unpickles from dumps
   written before December 2026 (``{"format": 1, "state": TableState.__dict__}``).
4. A new field means a new format number and a decoder for the old one; never change what a number means.
5. ``decode`` pauses the cyclic garbage collector while it builds the objects (it creates two per window; the
   collector would otherwise walk the growing table again and again); the caller freezes them afterwards.
"""

from __future__ import annotations

import gc
import heapq
import json
import struct
import zlib
from collections import OrderedDict
from typing import Any

import numpy as np

from coordinator._records import DONE, FAILED, LEASED, PENDING, JobRec, KeyRec, LeaseRec, Result, SeriesRec, WindowRec
from coordinator._state import TableState

__all__ = ["FORMAT", "MAGIC", "SnapshotBlob", "decode", "encode"]

MAGIC = b"SDPTBL\x00\x02"
FORMAT = 4
#: Formats ``decode`` reads: 2 (jobs without an owner: they count against no client's limits), 3 (jobs without a
#: trace) and 4.
_READABLE = (2, 3, 4)
_STATES = (PENDING, LEASED, DONE, FAILED)
_STATE_CODE = {name: i for i, name in enumerate(_STATES)}
_I64 = ("start", "end", "not_before_ms", "lease", "done_token", "done_at_ms", "rows")


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
                [j.counts[s] for s in _STATES],
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
    """The table as format-4 bytes."""
    series = list(t._series)
    series_ix = {name: i for i, name in enumerate(series)}
    job_ids = list(t._jobs)
    job_ix = {job_id: i for i, job_id in enumerate(job_ids)}
    ws = list(t._windows.values())
    cols: dict[str, np.ndarray[Any, Any]] = {
        "series": np.fromiter((series_ix[w.series] for w in ws), np.uint32, len(ws)),
        "state": np.fromiter((_STATE_CODE[w.state] for w in ws), np.uint8, len(ws)),
        "attempts": np.fromiter((w.attempts for w in ws), np.int32, len(ws)),
        "jobs_n": np.fromiter((len(w.jobs) for w in ws), np.uint16, len(ws)),
    }
    for name in _I64:
        cols[name] = np.fromiter((getattr(w, name) for w in ws), np.int64, len(ws))
    cols["jobs"] = np.fromiter((job_ix[j] for w in ws for j in w.jobs), np.uint32)
    header = _header(t, series, job_ids)
    header["errors"] = [[i, w.last_error] for i, w in enumerate(ws) if w.last_error]
    header["columns"] = [[name, str(col.dtype), len(col)] for name, col in cols.items()]
    head = json.dumps(header, separators=(",", ":")).encode()
    body = b"".join([struct.pack("<I", len(head)), head, *(col.tobytes() for col in cols.values())])
    return MAGIC + zlib.compress(body, 1)


def decode(data: Any) -> TableState | None:
    """A table from a snapshot (format 2 or 3 bytes, or a format-1 dict); None when ``data`` is neither."""
    if isinstance(data, dict):
        return _decode_format1(data)
    if not isinstance(data, (bytes, bytearray)) or not data.startswith(MAGIC):
        return None
    body = zlib.decompress(memoryview(data)[len(MAGIC) :])
    (size,) = struct.unpack_from("<I", body)
    header = json.loads(body[4 : 4 + size])
    if header.get("format") not in _READABLE:
        return None
    cols: dict[str, Any] = {}
    offset = 4 + size
    for name, dtype, count in header["columns"]:
        col = np.frombuffer(body, np.dtype(dtype), count, offset)
        offset += col.nbytes
        cols[name] = col.tolist()
    t = TableState()
    enabled = gc.isenabled()
    gc.disable()  # a million new containers would trigger full collections over and over (rule 5)
    try:
        _load_header(t, header)
        _load_windows(t, header, cols)
        _rebuild(t)
    finally:
        if enabled:
            gc.enable()
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
        job.counts = dict(zip(_STATES, row[10], strict=True))
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


def _load_windows(t: TableState, h: dict[str, Any], cols: dict[str, list[Any]]) -> None:
    series = list(t._series)
    job_ids = list(t._jobs)
    errors = dict(h["errors"])
    jobs_flat = cols["jobs"]
    pos = 0
    windows = t._windows
    shared: dict[tuple[int, ...], tuple[str, ...]] = {}  # one tuple per distinct job set, as the table has them
    new = WindowRec.__new__
    fields = zip(
        cols["series"],
        cols["start"],
        cols["end"],
        cols["state"],
        cols["attempts"],
        cols["not_before_ms"],
        cols["lease"],
        cols["done_token"],
        cols["done_at_ms"],
        cols["rows"],
        cols["jobs_n"],
        strict=True,
    )
    for i, (s, start, end, state, attempts, not_before, lease, done_token, done_at, rows, n) in enumerate(fields):
        w = new(WindowRec)
        w.series, w.start, w.end, w.state, w.attempts = series[s], start, end, _STATES[state], attempts
        w.not_before_ms, w.lease, w.done_token, w.done_at_ms, w.rows = not_before, lease, done_token, done_at, rows
        w.last_error = errors.get(i, "")
        ixs = tuple(jobs_flat[pos : pos + n])
        w.jobs = shared.get(ixs) or shared.setdefault(ixs, tuple(job_ids[j] for j in ixs))
        w.rank = None
        pos += n
        windows[(w.series, start)] = w


def _rebuild(t: TableState) -> None:
    """Derived state (rule 2): counts, job index, ranks, claim heaps, expiry heap, idle keys, owners, running jobs."""
    ranks = {job.job_id: (-job.priority, job.seq) for job in t._jobs.values()}
    for w in t._windows.values():
        t._window_counts[w.state] += 1
        if w.jobs:
            w.rank = ranks[w.jobs[0]] if len(w.jobs) == 1 else min(ranks[j] for j in w.jobs)
            if w.state == PENDING:
                entry = (w.rank[0], w.rank[1], w.start, w.series)
                if w.not_before_ms > t._clock_ms:
                    t._delayed.append((w.not_before_ms, *entry))
                else:
                    t._ready.append(entry)
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
    """Format 1: pysyncobj unpickled ``{"format": 1, "state": TableState.__dict__}`` with our record classes."""
    state = data.get("state")
    if data.get("format") != 1 or not isinstance(state, dict):
        return None
    fresh = TableState()
    if set(state) | _DERIVED_SINCE_FORMAT1 != set(fresh.__dict__):
        return None
    fresh.__dict__.update(state)
    _derive_idle_keys(fresh)
    for job in fresh._jobs.values():  # written before retention: these slots did not exist
        if not hasattr(job, "retired_at_ms"):
            job.finished_at_ms = job.retired_at_ms = 0
        if not hasattr(job, "owner"):  # nor this one, before admission limits
            job.owner = ""
        if not hasattr(job, "trace"):  # nor this one, before traces
            job.trace = ""
    _derive_job_figures(fresh)
    shared: dict[tuple[str, ...], tuple[str, ...]] = {}
    for window in fresh._windows.values():  # lists then, shared tuples now
        ids = tuple(window.jobs)
        window.jobs = shared.setdefault(ids, ids)
    return fresh
