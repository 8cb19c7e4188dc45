"""Async calls of the coordinator's HTTP API as tests make them, and Prometheus samples read from text.

Rules:
1. ``call`` retries 502/503/504 and connection errors (an election on a loaded machine) with the same
   X-Client-Id/X-Request-Id, like the real client, so a retried write is applied once.
2. Bodies that are not JSON come back as text: tests assert on what the server sent.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from typing import Any

import aiohttp

__all__ = ["call", "metric"]


def metric(text: str, name: str, labels: str = "") -> float:
    """The value of one sample (``name{labels}``) in Prometheus text; 0 when it is absent."""
    prefix = f"{name}{{{labels}}} " if labels else f"{name} "
    for line in text.splitlines():
        if line.startswith(prefix):
            return float(line[len(prefix) :])
    return 0.0


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    body: Any = None,
    *,
    token: str | None = None,
    headers: dict[str, str] | None = None,
    raw: bytes | None = None,
    retry_s: float = 10.0,
) -> tuple[int, Any]:
    """One API call: (status, decoded JSON body), retried for up to ``retry_s`` (rule 1)."""
    sent = {"X-Client-Id": "testkit", "X-Request-Id": f"r{random.getrandbits(64):x}", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    kwargs: dict[str, Any] = {"data": raw} if raw is not None else {"json": body} if body is not None else {}
    if raw is not None:
        sent.setdefault("Content-Type", "application/json")  # what a JSON client sends (a bare POST is refused)
    deadline = time.monotonic() + retry_s
    while True:
        try:
            async with session.request(method, url, headers=sent, **kwargs) as answer:
                text = await answer.text()
                status = answer.status
        except (aiohttp.ClientConnectionError, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
            continue
        if status in (502, 503, 504) and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
            continue
        try:
            return status, json.loads(text)
        except ValueError:
            return status, text
