"""The window lifecycle as data: one table of ``(state, event) -> next state`` that every command consults.

Like h11's ``_state.py``, the legal moves of a window are a table, not code spread over the commands.

Rules:
1. A window is ``pending``, ``leased``, ``done`` or ``failed``. :data:`TRANSITIONS` lists every legal move; a move
   that is not in it is illegal.
2. A command asks :func:`next_state` before it mutates anything; an illegal move is answered with an error
   ``Result`` (or, for a sweep such as ``expire`` or a claim's queue, the window is skipped) and changes nothing.
   The table's ``_move`` is the only code that changes a window's state, and only along this table.
3. Each event names the command (and the case of it) that makes the move: :data:`EVENTS` holds the text the
   docs show. The state diagram of docs/coordinator.md is :func:`render_state_diagram` (a test compares them).
4. Pure data and functions: no I/O, clock or logging.
"""

from __future__ import annotations

from coordinator._records import DONE, FAILED, LEASED, PENDING

__all__ = [
    "CLAIM",
    "COMPLETE",
    "EVENTS",
    "EXPIRE_FINAL",
    "EXPIRE_RETRY",
    "FAIL_FINAL",
    "FAIL_RETRY",
    "MARK_DONE",
    "RELEASE",
    "REOPEN",
    "REQUEUE",
    "RETRY",
    "STATES",
    "TRANSITIONS",
    "next_state",
    "render_state_diagram",
]

STATES = (PENDING, LEASED, DONE, FAILED)

CLAIM = "claim"
COMPLETE = "complete"
FAIL_RETRY = "fail_retry"
FAIL_FINAL = "fail_final"
EXPIRE_RETRY = "expire_retry"
EXPIRE_FINAL = "expire_final"
RELEASE = "release"
RETRY = "retry"
REOPEN = "reopen"
REQUEUE = "requeue"
MARK_DONE = "mark_done"

#: Every event, in the order the docs list them, with the command and case that makes it (rule 3).
EVENTS: dict[str, str] = {
    CLAIM: "`claim`: a worker takes the window (attempt + 1, a new token)",
    COMPLETE: "`complete` with the current token (repeating it with the same token succeeds again)",
    FAIL_RETRY: "`fail`, retryable and attempts < max_attempts: pending again after retry_backoff_ms * 2^(n-1)",
    FAIL_FINAL: "`fail`, not retryable or attempts == max_attempts",
    EXPIRE_RETRY: "`expire` (the leader's reaper) of a lease past its expiry, attempts < max_attempts",
    EXPIRE_FINAL: "`expire` of a lease past its expiry, attempts == max_attempts",
    RELEASE: "`release` (a draining worker, or an operator): the attempt is not counted",
    RETRY: "`retry_job`: the failed windows of a job, attempts reset",
    REOPEN: "`submit_job` of a job needing bars that closed after the window completed",
    REQUEUE: "`requeue` (operator, any state): attempts reset, a live lease revoked",
    MARK_DONE: "`mark_done` (operator, any state): a live lease revoked; never re-opened",
}

#: The legal moves (rule 1).
TRANSITIONS: dict[tuple[str, str], str] = {
    (PENDING, CLAIM): LEASED,
    (LEASED, COMPLETE): DONE,
    (LEASED, FAIL_RETRY): PENDING,
    (LEASED, FAIL_FINAL): FAILED,
    (LEASED, EXPIRE_RETRY): PENDING,
    (LEASED, EXPIRE_FINAL): FAILED,
    (LEASED, RELEASE): PENDING,
    (FAILED, RETRY): PENDING,
    (DONE, REOPEN): PENDING,
    **{(state, REQUEUE): PENDING for state in STATES},
    **{(state, MARK_DONE): DONE for state in STATES},
}


def next_state(state: str, event: str) -> str | None:
    """The state ``event`` moves a window in ``state`` to, or None when the move is illegal (rule 2)."""
    return TRANSITIONS.get((state, event))


def render_state_diagram() -> str:
    """The window lifecycle section of docs/coordinator.md: a Mermaid state diagram and the table of moves."""
    lines = ["```mermaid", "stateDiagram-v2", f"    [*] --> {PENDING}: submit_job"]
    order = {key: n for n, key in enumerate((s, e) for e in EVENTS for s in STATES)}  # not the dict's own order
    for state, event in sorted(TRANSITIONS, key=lambda move: order.get(move, len(order))):
        lines.append(f"    {state} --> {TRANSITIONS[(state, event)]}: {event}")
    lines += ["```", "", "| event | from | to | made by |", "|---|---|---|---|"]
    for event, text in EVENTS.items():
        moves = [(s, TRANSITIONS[(s, event)]) for s in STATES if (s, event) in TRANSITIONS]
        sources = ", ".join(s for s, _ in moves) if len(moves) < len(STATES) else "any"
        targets = ", ".join(sorted({t for _, t in moves}))
        lines.append(f"| {event} | {sources} | {targets} | {text} |")
    return "\n".join(lines) + "\n"
