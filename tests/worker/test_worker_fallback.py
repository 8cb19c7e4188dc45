"""``worker run --source binance:A --fallback-source binance:B``: a window A cannot serve is served by B, once.

Real coordinator and worker processes; the two exchanges are loopback stand-ins (devkit.fake_exchange)
served from this test's event loop, the first answering 500 to every request for one window.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pandas as pd
import pytest
from aiohttp import web

from devkit.fake_exchange import FakeExchange
from devkit.polling import http_json, wait_for
from devkit.stack import start_stack
from provider.sources import open_source
from provider.storage import open_storage

ROOT = Path(__file__).resolve().parents[2]
SERIES = "ohlcv:binance:BTC/USDT:1m"
MIN = 60_000
WINDOW_BARS = 100
SPAN = WINDOW_BARS * MIN
T0 = (1_700_000_000_000 // SPAN) * SPAN
BROKEN = T0 + SPAN


@pytest.mark.cluster
@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_worker_falls_back_for_the_window_the_first_source_fails(tmp_path):
    """Every bar is stored; the worker's log and the storage ledger name the fallback for the broken window and
    the first source for the others; B is asked for it once."""

    class WindowFailingExchange(FakeExchange):
        async def _klines(self, request: web.Request) -> web.Response:
            if request.query.get("startTime") == str(BROKEN):
                return web.json_response({"code": -1000, "msg": "internal error"}, status=500)
            response: web.Response = await super()._klines(request)
            return response

    dsn = f"sqlite:///{tmp_path / 'bars.db'}"
    stack = await asyncio.to_thread(start_stack, tmp_path, size=1, window_bars=WINDOW_BARS)
    try:
        async with WindowFailingExchange(seed=7) as first, FakeExchange(seed=7) as second:
            primary, fallback = f"binance:{first.url}", f"binance:{second.url}"
            stack.start_worker(primary, dsn, concurrency=1, extra_args=("--fallback-source", fallback))
            status, body = await asyncio.to_thread(
                http_json,
                "POST",
                f"{stack.urls[0]}/v1/jobs",
                {"series": SERIES, "start": T0, "end": T0 + 3 * SPAN},
            )
            assert status in (200, 201), body
            job_id = body["job"]["job_id"]

            def done() -> bool:
                _, answer = http_json("GET", f"{stack.urls[0]}/v1/jobs/{job_id}")
                job = answer.get("job", answer)
                if job["state"] == "failed":
                    raise AssertionError(f"job failed: {job}\n{stack.logs()}")
                return bool(job["state"] == "done")

            await asyncio.to_thread(wait_for, done, 120, "the job to finish")
            starts_first = {s: n for (_, s), n in first.by_start.items()}
            starts_second = {s: n for (_, s), n in second.by_start.items()}
            assert starts_second == {BROKEN: 1}
            assert starts_first[BROKEN] >= 2 and starts_first[T0] == 1 and starts_first[T0 + 2 * SPAN] == 1
            reference = open_source(fallback)
            try:
                expected = await reference.fetch(SERIES, T0, T0 + 3 * SPAN)
            finally:
                await reference.aclose()
        storage = await open_storage(dsn)
        try:
            pd.testing.assert_frame_equal(await storage.read(SERIES, T0, T0 + 3 * SPAN), expected)
            ledger = [(w.start_ms, w.end_ms, w.source) for w in await storage.windows(SERIES)]
        finally:
            await storage.aclose()
        events = []
        for line in (tmp_path / "worker0.log").read_text(errors="replace").splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        done_lines = [e for e in events if isinstance(e, dict) and e.get("event") == "worker.window_done"]
        by_source = sorted(e["source"] for e in done_lines)
        assert by_source == sorted([primary, primary, fallback]), done_lines
        fell_back = next(e for e in done_lines if e["source"] == fallback)
        # the ledger names the source of each window: the fallback for the broken one, the first source elsewhere
        assert ledger == [
            (T0, BROKEN, primary),
            (BROKEN, BROKEN + SPAN, fallback),
            (BROKEN + SPAN, BROKEN + 2 * SPAN, primary),
        ]
        assert len(fell_back["failed_sources"]) == 1 and fell_back["failed_sources"][0].startswith(primary)
    finally:
        await asyncio.to_thread(stack.close)
