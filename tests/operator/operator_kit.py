"""Shared pieces of the operator tests: the cluster's tokens and config, and ``Ops``, a handle on that cluster."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from devkit.cluster import MIN, Cluster
from devkit.polling import http_json

OPERATOR_TOKEN = "op-0123456789abcdef0123"
WORKER_TOKEN = "wk-0123456789abcdef0123"
READER_TOKEN = "rd-0123456789abcdef0123"

#: Leases live a minute, so nothing expires during a test; the reaper waits an hour after an election, so a keyed
#: lease claimed for 1 ms stays listed as stale instead of being collected at once.
OPERATOR_CONFIG: dict[str, Any] = {
    "seamless_data_provider": {
        "backfill_config": {
            "distributed_lease_ttl_ms": 60_000,
            "window_bars": 15,
            "max_attempts": 3,
            "retry_backoff_ms": 200,
        }
    },
    "coordinator": {"leader_grace_ms": 3_600_000, "reap_interval_ms": 100},
}
#: Bars per window times the 1m interval.
WINDOW_MS = 15 * MIN
_PRIORITY = itertools.count(1000)


@dataclass
class Ops:
    """The shared cluster plus token files and a few API shortcuts for arranging a test's state."""

    cluster: Cluster
    token_files: dict[str, Path]

    @property
    def urls(self) -> str:
        return ",".join(self.cluster.urls)

    def api(self, method: str, path: str, body: Any = None, token: str = OPERATOR_TOKEN) -> tuple[int, Any]:
        """One call to the first node (followers forward writes); 5xx answers fail the test at once."""
        status, answer = http_json(method, self.cluster.urls[0] + path, body, token=token, timeout_s=15.0)
        assert status < 500, (method, path, status, answer)
        return status, answer

    def submit(self, symbol: str, windows: int) -> dict[str, Any]:
        """A job of ``windows`` windows on its own series, ranked above every earlier job."""
        body = {
            "series": f"ohlcv:test:{symbol}:1m",
            "start": 0,
            "end": windows * WINDOW_MS,
            "priority": next(_PRIORITY),
        }
        status, answer = self.api("POST", "/v1/jobs", body, token=WORKER_TOKEN)
        assert status == 201, answer
        return dict(answer["job"])

    def claim(self, worker_id: str, count: int = 1) -> list[dict[str, Any]]:
        status, answer = self.api(
            "POST", "/v1/windows/claim", {"worker_id": worker_id, "max_windows": count}, token=WORKER_TOKEN
        )
        assert status == 200 and len(answer["leases"]) == count, answer
        return list(answer["leases"])

    def job(self, job_id: str) -> dict[str, Any]:
        status, answer = self.api("GET", f"/v1/jobs/{job_id}", token=READER_TOKEN)
        assert status == 200, answer
        return dict(answer["job"])

    def leases(self) -> dict[str, dict[str, Any]]:
        status, answer = self.api("GET", "/v1/leases", token=READER_TOKEN)
        assert status == 200, answer
        return {lease["lease_id"]: lease for lease in answer["leases"]}
