"""The porcupine checker of tools/porcupine against hand-written histories: legal ones pass, broken ones are caught.

Times: ``call``/``ret`` are the recorder's monotonic ns; ``at`` and expiries are epoch ms (lease TTL 3000 ms).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from .lease_check import check_history

pytestmark = [pytest.mark.chaos]

TTL_MS = 3000
W1, W2, W3 = "w_one", "w_two", "w_three"


def claim(call: int, ret: int, *leases: tuple[str, int, int], client: str = "c1", end: int = 500) -> dict[str, Any]:
    """A claim that returned leases (window, token, expires_at_ms) of windows ending at ``end`` (long closed)."""
    body = {
        "leases": [
            {"window_id": w, "token": t, "expires_at_ms": e, "lease_id": f"lease-{t}", "end": end} for w, t, e in leases
        ]
    }
    return {
        "type": "op",
        "client": client,
        "kind": "claim",
        "call_ns": call,
        "return_ns": ret,
        "at_ms": 0,
        "status": 200,
        "request": {"worker_id": client, "max_windows": 2},
        "response": body,
    }


def lease_op(
    kind: str,
    call: int,
    ret: int | None,
    token: int,
    status: int | None,
    *,
    at: int = 0,
    exp: int = 0,
    state: str = "",
    client: str = "c1",
) -> dict[str, Any]:
    """renew / complete / fail / release of ``lease-<token>``; ``ret``/``status`` None = outcome unknown."""
    response: dict[str, Any] | None = None
    if status is not None and 200 <= status < 300:
        response = {"expires_at_ms": exp, "state": state or "done", "lease_id": f"lease-{token}"}
    elif status == 409:
        response = {"error": {"code": "lease_lost", "message": "not the current lease"}}
    elif status is not None:
        response = {"error": {"code": "not_found" if status == 404 else "timeout", "message": "-"}}
    request: dict[str, Any] = {"lease_id": f"lease-{token}"}
    if kind != "release":
        request["token"] = token
    return {
        "type": "op",
        "client": client,
        "kind": kind,
        "call_ns": call,
        "return_ns": ret,
        "at_ms": at if ret is not None else None,
        "status": status,
        "request": request,
        "response": response,
    }


def read_op(
    kind: str, call: int, ret: int | None, status: int | None, response: Any = None, *, job_id: str = ""
) -> dict[str, Any]:
    """A submit, job read or listing as the recorder writes it; ``ret``/``status`` None = outcome unknown."""
    return {
        "type": "op",
        "client": "reader",
        "kind": kind,
        "call_ns": call,
        "return_ns": ret,
        "at_ms": 0 if ret is not None else None,
        "status": status,
        "request": {"job_id": job_id} if job_id else {},
        "response": response,
    }


def listing(call: int, ret: int, *leases: tuple[str, int]) -> dict[str, Any]:
    """GET /v1/leases answered with these (window, token) leases."""
    shown = [{"kind": "window", "window_id": w, "token": t, "lease_id": f"lease-{t}"} for w, t in leases]
    return read_op("list_leases", call, ret, 200, {"leases": shown})


def submitted(call: int, ret: int, job_id: str) -> dict[str, Any]:
    return read_op("submit", call, ret, 201, {"job": {"job_id": job_id}})


def job_read(call: int, ret: int | None, job_id: str, status: int | None) -> dict[str, Any]:
    found = {"job": {"job_id": job_id}} if status == 200 else {"error": {"code": "not_found"}} if status else None
    return read_op("read_job", call, ret, status, found, job_id=job_id)


def run(tmp_path: Path, lines: list[dict[str, Any]]) -> Any:
    history = tmp_path / "history.jsonl"
    history.write_text("".join(json.dumps({"id": i, **line}) + "\n" for i, line in enumerate(lines, 1)))
    return check_history(history, ttl_ms=TTL_MS, visualization=tmp_path / "history.html")


#: A zombie loses its window to another worker after expiry; two windows complete; an unknown-outcome complete.
LEGAL = [
    claim(0, 10, (W1, 1, 4000), (W2, 2, 4000), client="a"),
    lease_op("renew", 20, 30, 1, 200, at=1500, exp=4500, client="a"),
    lease_op("complete", 40, 50, 1, 200, at=1600, client="a"),
    claim(60, 70, (W3, 3, 4100), client="zombie"),
    lease_op("renew", 80, 90, 2, 200, at=1700, exp=4700, client="a"),
    claim(100, 110, (W3, 4, 8200), client="b"),  # granted at 5200 > 4100: t3 had expired
    lease_op("renew", 120, 130, 3, 409, at=5300, client="zombie"),
    lease_op("complete", 140, 150, 3, 409, at=5400, client="zombie"),
    lease_op("complete", 160, None, 2, None, client="a"),  # maybe applied
    lease_op("complete", 170, 180, 4, 200, at=5500, client="b"),
    lease_op("complete", 190, 200, 4, 200, at=5600, client="b"),  # idempotent repeat
    lease_op("complete", 210, 220, 1, 200, at=5700, client="a"),
]

#: The second grant comes before the first lease could expire: only a maybe-applied fail of t1 explains it.
MAYBE_FAIL = [
    claim(0, 10, (W1, 1, 4000), client="a"),
    lease_op("fail", 20, None, 1, None, client="a"),
    claim(30, 40, (W1, 2, 5000), client="b"),  # granted at 2000 < 4000
    lease_op("complete", 50, 60, 2, 200, at=2100, client="b"),
]

#: A window completed before it closed (end 60000) is re-opened by a later job and completed again.
REOPENED = [
    claim(0, 10, (W1, 1, 4000), client="a", end=60_000),
    lease_op("complete", 20, 30, 1, 200, at=1100, client="a"),
    claim(40, 50, (W1, 2, 70_000), client="b", end=60_000),
    lease_op("complete", 60, 70, 2, 200, at=67_100, client="b"),
]

#: Reads through followers that see every acknowledged write (issue 15): listings show only live leases, a
#: listing concurrent with a completion may still show the lease, a job read concurrent with its submit may
#: miss it, and reads of unknown outcome change nothing.
READS = [
    claim(0, 10, (W1, 1, 4000), (W2, 2, 4000), client="a"),
    listing(20, 30, (W1, 1), (W2, 2)),
    lease_op("complete", 40, 60, 1, 200, at=1600, client="a"),
    listing(50, 70, (W1, 1), (W2, 2)),  # concurrent with the complete of t1
    listing(80, 90, (W2, 2)),
    job_read(95, 120, "job-1", 404),  # concurrent with the submit
    submitted(100, 110, "job-1"),
    job_read(130, 140, "job-1", 200),
    read_op("list_jobs", 150, 160, 200, {"jobs": [{"job_id": "job-1"}]}),
    job_read(170, None, "job-1", None),
    read_op("list_leases", 180, None, None),
]

VIOLATIONS = {
    "a stale lease listing shows a lease after its completion was acknowledged": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        lease_op("complete", 20, 30, 1, 200, at=1100, client="a"),
        listing(40, 50, (W1, 1)),
    ],
    "a stale lease listing shows a superseded lease": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        claim(20, 30, (W1, 2, 7100), client="b"),
        listing(40, 50, (W1, 1)),
    ],
    "a stale job read answers 404 after the submit was acknowledged": [
        submitted(0, 10, "job-1"),
        job_read(20, 30, "job-1", 404),
    ],
    "a job read answers 404 after a listing showed the job": [
        read_op("list_jobs", 0, 10, 200, {"jobs": [{"job_id": "job-1"}]}),
        job_read(20, 30, "job-1", 404),
    ],
    "two live leases on one window": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        claim(20, 30, (W1, 2, 5000), client="b"),  # granted at 2000 while t1 lives until 4000
    ],
    "a superseded lease is still renewed": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        claim(20, 30, (W1, 2, 7100), client="b"),
        lease_op("renew", 40, 50, 1, 200, at=4200, exp=7200, client="a"),
    ],
    "a token goes backwards": [
        claim(0, 10, (W1, 5, 4000), client="a"),
        claim(20, 30, (W2, 3, 4000), client="b"),
    ],
    "a stale token completes the window": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        claim(20, 30, (W1, 2, 8000), client="b"),
        lease_op("complete", 40, 50, 1, 200, at=5100, client="a"),
    ],
    "a done window is granted again": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        lease_op("complete", 20, 30, 1, 200, at=1100, client="a"),
        claim(40, 50, (W1, 2, 8000), client="b"),
    ],
    "a granted token is unknown (404): the fencing counter regressed": [
        claim(0, 10, (W1, 7, 4000), client="a"),
        lease_op("renew", 20, 30, 7, 404, at=1100, client="a"),
    ],
    "a live lease is reported lost before its expiry": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        lease_op("renew", 20, 30, 1, 409, at=2000, client="a"),
    ],
    "the completing token is refused on a repeat": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        lease_op("complete", 20, 30, 1, 200, at=1100, client="a"),
        lease_op("complete", 40, 50, 1, 409, at=1200, client="a"),
    ],
    "a reaped lease is renewed again": [
        claim(0, 10, (W1, 1, 4000), client="a"),
        lease_op("renew", 20, 30, 1, 409, at=4100, client="a"),
        lease_op("renew", 40, 50, 1, 200, at=4200, exp=7200, client="a"),
    ],
}


@pytest.mark.parametrize(
    "lines",
    [LEGAL, MAYBE_FAIL, REOPENED, READS],
    ids=["zombie-and-repeats", "maybe-applied-fail", "reopened-window", "reads"],
)
def test_legal_histories_pass(tmp_path: Path, lines: list[dict[str, Any]]) -> None:
    """Legal histories, including expiry, zombies, idempotent completes, maybe-applied operations and reads
    concurrent with writes, pass."""
    result = run(tmp_path, lines)
    assert result.code == 0, (result.summary, result.stderr)
    assert result.summary["result"] == "Ok" and result.summary["illegal_partitions"] == []
    assert not result.visualization.exists()


@pytest.mark.parametrize("name", list(VIOLATIONS))
def test_violations_are_caught_with_a_visualization(tmp_path: Path, name: str) -> None:
    """Each broken history exits 1, names the violating partition and writes porcupine's HTML visualization."""
    result = run(tmp_path, VIOLATIONS[name])
    assert result.code == 1, (name, result.summary, result.stderr)
    assert result.summary["result"] == "Illegal" and result.summary["illegal_partitions"]
    html = result.visualization.read_text()
    assert "<html" in html.lower() and len(html) > 1000


def test_bad_input_is_an_error(tmp_path: Path) -> None:
    """A history the checker cannot read is exit code 2, not a pass."""
    history = tmp_path / "broken.jsonl"
    history.write_text('{"type": "op", "kind": "claim", "call_ns": "soon"}\n')
    result = check_history(history, ttl_ms=TTL_MS, visualization=tmp_path / "v.html")
    assert result.code == 2 and "line 1" in result.stderr
