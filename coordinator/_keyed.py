"""QMTL keyed leases: ``claim``/``complete``/``fail`` of an opaque key, fenced by the table's one token counter.

Rules:
1. A key is held by at most one live lease. Claiming a key whose lease has not expired is a ``conflict``; a
   lease past its expiry that the reaper has not reached yet is taken over (and counted as a stale claim).
2. complete/fail with a token that is not the key's current lease return ``lease_lost``; complete is idempotent
   for the same token. A finished key may be claimed again (a new backfill of the same range).
3. Completion ratio of a key's group = its done keys / its known keys. The group is the first two ``:``
   fields of the key (QMTL keys read ``node_id:interval:start:end:...``). At most ``KEYS_MAX`` keys are
   remembered; beyond that the oldest finished ones are forgotten, deterministically.
"""

from __future__ import annotations

from typing import Any

from coordinator._records import KeyRec, Result, lease_id_of
from coordinator._state import MAX_TTL_MS, TableState, invalid, is_int, is_text, lease_lost, not_found

__all__ = ["KEYS_MAX", "KeyedCommands", "key_group"]

KEYS_MAX = 100_000


def key_group(key: str) -> str:
    return ":".join(key.split(":", 2)[:2])


class KeyedCommands(TableState):
    """The keyed-lease commands of the table."""

    def key_claim(
        self,
        *,
        key: Any,
        lease_ms: Any,
        worker_id: Any = "qmtl",
        now_ms: Any,
        client_id: Any = "",
        request_id: Any = "",
    ) -> Result:
        """Lease ``key`` for ``lease_ms`` unless someone else holds it."""
        return self._once(
            "key_claim", client_id, request_id, now_ms, lambda now: self._key_claim(key, lease_ms, worker_id, now)
        )

    def _key_claim(self, key: Any, lease_ms: Any, worker_id: Any, now: int) -> Result:
        if not is_text(key):
            return invalid("key", "must be a non-empty printable string of at most 1000 chars")
        if not is_int(lease_ms) or not 1 <= lease_ms <= MAX_TTL_MS:
            return invalid("lease_ms", f"must be an integer from 1 to {MAX_TTL_MS}")
        if not is_text(worker_id, 200):
            return invalid("worker_id", "must be a non-empty printable string of at most 200 chars")
        rec = self._keys.get(key)
        if rec is not None and rec.state == "leased":
            held = self._leases.get(rec.token)
            if held is not None and held.expires_at_ms > now:
                return Result.error(
                    "conflict", f"key {key!r} is held by {held.worker_id} until {held.expires_at_ms}", "key"
                )
            if held is not None:
                del self._leases[rec.token]
                self._stale_claims += 1
        if rec is None:
            rec = self._keys[key] = KeyRec(key_group(key))
            self._groups.setdefault(rec.group, [0, 0])[0] += 1
            self._forget_keys()
        else:
            self._keys.move_to_end(key)
            if rec.state == "done":
                self._groups[rec.group][1] -= 1
        lease = self._add_lease("key", key, worker_id, now, lease_ms)
        rec.state, rec.token = "leased", lease.token
        return Result.success(
            {
                "lease": {
                    "token": lease.token,
                    "lease_until_ms": lease.expires_at_ms,
                    "lease_id": lease_id_of(lease.token),
                    "key": key,
                },
                "completion_ratio": self._ratio(rec.group),
            }
        )

    def key_complete(self, *, key: Any, token: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Finish the key's lease successfully."""
        return self._once(
            "key_complete", client_id, request_id, now_ms, lambda now: self._key_finish(key, token, "done")
        )

    def key_fail(
        self, *, key: Any, token: Any, reason: Any = "", now_ms: Any, client_id: Any = "", request_id: Any = ""
    ) -> Result:
        """Finish the key's lease with a failure; the key may be claimed again."""
        if not isinstance(reason, str):
            return invalid("reason", "must be a string")
        return self._once("key_fail", client_id, request_id, now_ms, lambda now: self._key_finish(key, token, "failed"))

    def _key_finish(self, key: Any, token: Any, state: str) -> Result:
        if not is_text(key):
            return invalid("key", "must be a non-empty printable string of at most 1000 chars")
        if not is_int(token) or token < 1:
            return invalid("token", f"{token!r} is not an integer >= 1")
        rec = self._keys.get(key)
        if rec is None:
            return not_found("key", key)
        if rec.token == token and rec.state == state == "done":
            return Result.success({"completion_ratio": self._ratio(rec.group)})
        if rec.token != token or rec.state != "leased" or token not in self._leases:
            return lease_lost(lease_id_of(token), token)
        del self._leases[token]
        rec.state = state
        if state == "done":
            self._groups[rec.group][1] += 1
        return Result.success({"completion_ratio": self._ratio(rec.group)})

    def _expire_key(self, key: str, token: int) -> None:
        rec = self._keys.get(key)
        if rec is not None and rec.token == token and rec.state == "leased":
            rec.state = "expired"

    def _ratio(self, group: str) -> float:
        known, done = self._groups.get(group, (0, 0))
        return done / known if known else 0.0

    def _forget_keys(self) -> None:
        while len(self._keys) > KEYS_MAX:
            victim = next((k for k, r in self._keys.items() if r.state != "leased"), None)
            if victim is None:
                return
            rec = self._keys.pop(victim)
            group = self._groups[rec.group]
            group[0] -= 1
            group[1] -= rec.state == "done"
            if group[0] == 0:
                del self._groups[rec.group]
