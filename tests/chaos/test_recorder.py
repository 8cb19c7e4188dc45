"""``merge_history`` (rule 5 of ``recorder.py``): completions carried by a claim become complete operations."""

from __future__ import annotations

from typing import Any

from .recorder import Attempt, merge_history


def attempt(request_id: str, request: dict[str, Any], status: int | None, response: Any, ret: int | None) -> Attempt:
    return Attempt("claim", "c1", request_id, 0, request, 100, ret, 5 if ret else None, status, response)


def done(token: int) -> dict[str, Any]:
    return {"lease_id": f"lease-{token}", "token": token, "rows": 1}


def test_carried_completions_become_complete_operations_with_the_claims_interval() -> None:
    """An answered claim yields its items' outcomes (200, 409); an unanswered one yields unknown completes; a
    refused one (400: nothing applied) yields none."""
    answered = {"worker_id": "w", "complete": [done(1), done(2)]}
    completed = [
        {"window_id": "w_a", "state": "done", "lease_id": "lease-1"},
        {"lease_id": "lease-2", "error": {"code": "lease_lost", "message": "fenced"}},
    ]
    ops, problems = merge_history(
        [
            attempt("r1", answered, 200, {"leases": [], "completed": completed}, 300),
            attempt("r2", {"worker_id": "w", "complete": [done(3)]}, None, None, None),
            attempt("r3", {"worker_id": "w", "complete": [done(4)]}, 400, {"error": {"code": "invalid"}}, 200),
        ]
    )
    assert problems == []
    completes = [(op.token, op.status, op.call_ns, op.return_ns) for op in ops if op.kind == "complete"]
    assert sorted(completes, key=lambda c: c[0] or 0) == [(1, 200, 100, 300), (2, 409, 100, 300), (3, None, 100, None)]
    refused = [op for op in ops if op.kind == "complete" and op.token == 2]
    assert refused[0].lease_lost
    assert [op.kind for op in ops].count("claim") == 3
