"""Settings shared by the security tests."""

from __future__ import annotations

from typing import Any

__all__ = ["SECURE_CONFIG"]

#: A small body cap (413 tests), windows of 60 bars (small backfills), a 10 s TTL.
SECURE_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {"distributed_lease_ttl_ms": 10_000, "window_bars": 60, "retry_backoff_ms": 100}
    },
    "coordinator": {"max_body_bytes": 4096, "leader_grace_ms": 500, "max_claim_wait_ms": 1000},
    "worker": {"claim_wait_ms": 500, "shutdown_grace_ms": 2000},
}
