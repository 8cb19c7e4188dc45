"""QMTL keyed leases: ``claim``/``complete``/``fail`` of an opaque key, fenced by the table's one token counter.

Rules:
1. A key is held by at most one live lease. Claiming a key whose lease has not expired is a ``conflict``; a
   lease past its expiry that the reaper has not reached yet is taken over (and counted as a stale claim).
2. complete/fail with a token that is not the key's current lease return ``lease_lost``; complete is idempotent
   for the same token. A finished key may be claimed again (a new backfill of the same range).
3. Completion ratio of a key's group = its done keys / its known keys. The group is the first two ``:``
   fields of the key (QMTL keys read ``node_id:interval:start:end:...``).
4. At most ``max_keys`` keys are remembered (``coordinator.max_keys``, stamped into each claim by the leader so
   every replica applies the same cap; ``KEYS_MAX`` when absent). A claim of a new key at the cap forgets the
   idle key (done, failed or expired) that changed state longest ago, in O(1): ``_keys`` moves a key to its end
   whenever its state changes, and ``_idle_keys`` holds the idle ones in that same order (derived, rebuilt from
   ``_keys`` when a snapshot is loaded). A live lease is never forgotten: when every key is leased the claim is
   refused with ``capacity`` (HTTP 429, Retry-After: the earliest lease expiry, 1-60 s) and nothing changes.
"""

from __future__ import annotations

from typing import Any

from coordinator._commands import command
from coordinator._records import KeyRec, Result, lease_id_of
from coordinator._state import MAX_TTL_MS, TableState, invalid, is_int, is_text, lease_lost, not_found

__all__ = ["KEYS_MAX", "KeyedCommands", "key_group"]

KEYS_MAX = 100_000
_RETRY_MIN_MS, _RETRY_MAX_MS = 1_000, 60_000


def key_group(key: str) -> str:
    return ":".join(key.split(":", 2)[:2])


class KeyedCommands(TableState):
    """The keyed-lease commands of the table."""

    @command
    def key_claim(
        self,
        *,
        key: Any,
        lease_ms: Any,
        worker_id: Any = "qmtl",
        now_ms: Any,
        max_keys: Any = KEYS_MAX,
        client_id: Any = "",
        request_id: Any = "",
    ) -> Result:
        """Lease ``key`` for ``lease_ms`` unless someone else holds it."""
        return self._once(
            "key_claim",
            client_id,
            request_id,
            now_ms,
            lambda now: self._key_claim(key, lease_ms, worker_id, max_keys, now),
        )

    def _key_claim(self, key: Any, lease_ms: Any, worker_id: Any, max_keys: Any, now: int) -> Result:
        if not is_text(key):
            return invalid("key", "must be a non-empty printable string of at most 1000 chars")
        if not is_int(lease_ms) or not 1 <= lease_ms <= MAX_TTL_MS:
            return invalid("lease_ms", f"must be an integer from 1 to {MAX_TTL_MS}")
        if not is_text(worker_id, 200):
            return invalid("worker_id", "must be a non-empty printable string of at most 200 chars")
        if not is_int(max_keys) or max_keys < 1:
            return invalid("max_keys", "must be an integer >= 1")
        rec = self._keys.get(key)
        if rec is None and len(self._keys) >= max_keys and not self._idle_keys:
            return self._at_capacity(max_keys, now)
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
            while len(self._keys) >= max_keys and self._idle_keys:
                self._forget_key(self._idle_keys.popitem(last=False)[0])
            rec = self._keys[key] = KeyRec(key_group(key))
            self._groups.setdefault(rec.group, [0, 0])[0] += 1
        else:
            self._keys.move_to_end(key)
            self._idle_keys.pop(key, None)
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

    @command
    def key_complete(self, *, key: Any, token: Any, now_ms: Any, client_id: Any = "", request_id: Any = "") -> Result:
        """Finish the key's lease successfully."""
        return self._once(
            "key_complete", client_id, request_id, now_ms, lambda now: self._key_finish(key, token, "done")
        )

    @command
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
        self._set_idle(key, rec, state)
        if state == "done":
            self._groups[rec.group][1] += 1
        return Result.success({"completion_ratio": self._ratio(rec.group)})

    def _expire_key(self, key: str, token: int) -> None:
        rec = self._keys.get(key)
        if rec is not None and rec.token == token and rec.state == "leased":
            self._set_idle(key, rec, "expired")

    def _set_idle(self, key: str, rec: KeyRec, state: str) -> None:
        """Rule 4: a key whose lease ended moves to the end of ``_keys`` and of ``_idle_keys``."""
        rec.state = state
        self._keys.move_to_end(key)
        self._idle_keys[key] = None
        self._idle_keys.move_to_end(key)

    def _at_capacity(self, max_keys: int, now: int) -> Result:
        wait_ms = (self._expiry[0][0] - now) if self._expiry else _RETRY_MAX_MS
        return Result(
            False,
            {"retry_after_ms": min(max(wait_ms, _RETRY_MIN_MS), _RETRY_MAX_MS)},
            "capacity",
            f"the table holds {len(self._keys)} keys (coordinator.max_keys = {max_keys}), every one leased: "
            "retry when a lease ends, raise coordinator.max_keys, or release abandoned leases "
            "(scripts/lease_recover.py release-keys)",
            "key",
        )

    def _ratio(self, group: str) -> float:
        known, done = self._groups.get(group, (0, 0))
        return done / known if known else 0.0

    def _forget_key(self, key: str) -> None:
        rec = self._keys.pop(key)
        group = self._groups[rec.group]
        group[0] -= 1
        group[1] -= rec.state == "done"
        if group[0] == 0:
            del self._groups[rec.group]
