"""Operator actions on the lease table: release a lease, requeue a window, mark a window done.

Rules:
1. Each is a replicated command (``@command``) that follows the window lifecycle table (``_lifecycle.py``):
   ``release`` moves a leased window back to pending without counting the attempt; ``requeue`` and ``mark_done``
   apply to a window in any state and revoke its live lease (its holder's next renew or complete gets
   ``lease_lost``).
2. An operator's "done" is final: the window is never re-opened for bars that close later.
3. Like every command they validate first and return a :class:`Result`; an illegal move changes nothing.
"""

from __future__ import annotations

from typing import Any

from coordinator._commands import command
from coordinator._keyed import KeyedCommands
from coordinator._lifecycle import MARK_DONE, RELEASE, REQUEUE
from coordinator._records import Result, lease_id_of, token_of_lease_id
from coordinator._state import invalid, not_found, window_value
from provider.core import parse_window_id

__all__ = ["OperatorCommands"]


class OperatorCommands(KeyedCommands):
    """The operator commands of the table (they release keyed leases too, hence the keyed base)."""

    @command
    def release(self, *, lease_id: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Operator: end a live lease; its window goes back to pending and the attempt is not counted."""
        return self._once("release", client_id, request_id, now_ms, lambda now: self._release(lease_id, now))

    def _release(self, lease_id: Any, now: int) -> Result:
        number = token_of_lease_id(lease_id)
        if number == 0 or number > self._token:
            return not_found("lease_id", lease_id)
        rec = self._leases.get(number)
        window = self._windows.get(rec.target) if rec is not None and rec.kind == "window" else None
        if rec is None or (rec.kind == "window" and (window is None or not self._can(window, RELEASE))):
            return Result.error("lease_lost", f"lease {lease_id} is no longer live; nothing changed", "lease_id")
        del self._leases[number]
        if window is None:
            self._expire_key(rec.target, number)
            return Result.success({"lease_id": lease_id, "key": rec.target, "state": "expired"})
        window.lease = 0
        window.attempts = max(window.attempts - 1, 0)
        window.not_before_ms = 0
        self._move(window, RELEASE)
        self._enqueue(window, now)
        return Result.success({"lease_id": lease_id, **window_value(window)})

    @command
    def requeue(self, *, window_id: Any, reason: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Operator: put any window back to pending with its attempts cleared, revoking a live lease."""
        return self._once(
            "requeue", client_id, request_id, now_ms, lambda now: self._operate(window_id, reason, REQUEUE, now)
        )

    @command
    def mark_done(
        self, *, window_id: Any, reason: Any, now_ms: Any, client_id: Any = "", request_id: Any = ""
    ) -> Result:
        """Operator: mark any window done, revoking a live lease (its holder's complete then gets lease_lost)."""
        return self._once(
            "mark_done", client_id, request_id, now_ms, lambda now: self._operate(window_id, reason, MARK_DONE, now)
        )

    def _operate(self, wid: Any, reason: Any, event: str, now: int) -> Result:
        if not isinstance(reason, str):
            return invalid("reason", "must be a string")
        try:
            series, start = parse_window_id(wid)
        except ValueError:
            return not_found("window_id", wid)
        window = self._windows.get((str(series), start))
        if window is None:
            return not_found("window_id", wid)
        if not self._can(window, event):
            return Result.error("conflict", f"window {wid} is {window.state}: {event} does not apply", "window_id")
        held = self._leases.get(window.lease) if window.lease else None
        self._reset(window, event, now)
        window.done_at_ms = window.end  # an operator's "done" is final: never re-opened for bars closed later
        window.last_error = f"{'requeued' if event == REQUEUE else 'marked done'} by operator: {reason[:200]}"
        revoked = {"lease_id": lease_id_of(held.token), "worker_id": held.worker_id} if held is not None else {}
        return Result.success({**window_value(window), **revoked})
