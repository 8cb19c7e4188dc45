"""The loopback fake exchange itself: Binance's wire format, 400s, rate limits, the admin API and the CLI."""

from __future__ import annotations

import asyncio
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from provider.sources.synthetic import synthetic_arrays

T0_MS = 1_700_000_040_000
MINUTE_MS = 60_000
ROOT = Path(__file__).resolve().parents[2]


async def get(url: str, **params: Any) -> tuple[int, dict[str, str], Any]:
    """GET a klines page; returns status, headers and decoded JSON (or the raw text if it is not JSON)."""
    async with aiohttp.ClientSession() as session, session.get(f"{url}/api/v3/klines", params=params) as response:
        text = await response.text()
        try:
            body: Any = await response.json(content_type=None)
        except ValueError:
            body = text
        return response.status, dict(response.headers), body


async def test_klines_use_binance_row_format(exchange: Any) -> None:
    """Rows are [openTime, price strings..., closeTime, ...] with 12 fields and the synthetic:7 values."""
    status, headers, rows = await get(exchange.url, symbol="BTCUSDT", interval="1m", startTime=T0_MS, limit=3)
    assert status == 200 and headers["X-MBX-USED-WEIGHT-1M"] == "2"
    stamps, values = synthetic_arrays("BTCUSDT", MINUTE_MS, T0_MS, T0_MS + 3 * MINUTE_MS, seed=7)
    assert [row[0] for row in rows] == stamps.tolist()
    assert all(len(row) == 12 and row[6] == row[0] + MINUTE_MS - 1 for row in rows)
    assert all(isinstance(x, str) for row in rows for x in row[1:6])
    assert [[float(x) for x in row[1:6]] for row in rows] == values.tolist()


async def test_end_time_is_inclusive_and_limit_caps_the_page(exchange: Any) -> None:
    """Bars open in [startTime, endTime] inclusive, and at most `limit` of them are served."""
    end = T0_MS + 10 * MINUTE_MS
    _, _, rows = await get(exchange.url, symbol="ETHUSDT", interval="1m", startTime=T0_MS, endTime=end, limit=1000)
    assert [r[0] for r in rows] == [T0_MS + k * MINUTE_MS for k in range(11)]
    _, _, capped = await get(exchange.url, symbol="ETHUSDT", interval="1m", startTime=T0_MS, limit=4)
    assert len(capped) == 4


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"interval": "1m"}, -1121),
        ({"symbol": "NOPE", "interval": "1m"}, -1121),
        ({"symbol": "BTCUSDT", "interval": "7m"}, -1120),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": "1001"}, -1130),
        ({"symbol": "BTCUSDT", "interval": "1m", "limit": "0"}, -1130),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": "abc"}, -1100),
        ({"symbol": "BTCUSDT", "interval": "1m", "startTime": str(T0_MS), "endTime": str(T0_MS - 1)}, -1023),
    ],
)
async def test_bad_parameters_answer_400_with_binance_error_json(
    exchange: Any, params: dict[str, str], code: int
) -> None:
    """Each malformed request gets HTTP 400 and Binance's {code, msg} body."""
    status, _, body = await get(exchange.url, **params)
    assert status == 400 and body["code"] == code and body["msg"]


async def test_rate_limit_then_ban_for_a_client_that_keeps_going(make_exchange: Any, clock: Any) -> None:
    """Past rps the answer is 429 with fractional Retry-After; requests during it are banned until the ban ends."""
    async with make_exchange(seed=7, rps=2, ban_s=5, clock=clock) as exchange:
        params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0_MS, "limit": 1}
        statuses = [(await get(exchange.url, **params))[0] for _ in range(2)]
        clock.now_s += 0.25
        status, headers, body = await get(exchange.url, **params)
        assert statuses == [200, 200] and status == 429 and body["code"] == -1003
        assert headers["Retry-After"] == "0.750"
        status, headers, _ = await get(exchange.url, **params)
        assert status == 418 and headers["Retry-After"] == "5.000" and exchange.during_ban == []
        clock.now_s += 4.9
        status, _, _ = await get(exchange.url, **params)
        assert status == 418 and exchange.during_ban == [clock.now_s] and exchange.bans == 1
        clock.now_s += 0.1
        assert (await get(exchange.url, **params))[0] == 200


async def test_whole_second_retry_after_and_tolerance(make_exchange: Any, clock: Any) -> None:
    """integer_retry_after rounds Retry-After up; tolerance=1 answers one more 429 during a cooldown, then bans."""
    async with make_exchange(rpm=1, tolerance=1, integer_retry_after=True, clock=clock) as exchange:
        params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0_MS, "limit": 1}
        first = await get(exchange.url, **params)
        clock.now_s += 0.5
        results = [await get(exchange.url, **params) for _ in range(3)]
    assert [first[0]] + [r[0] for r in results] == [200, 429, 429, 418]
    assert results[0][1]["Retry-After"] == "60" and results[2][1]["Retry-After"] == "1"


async def test_admin_routes_drive_faults_from_another_process(exchange: Any) -> None:
    """POST /_admin/faults queues faults, /_admin/ban bans, /_admin/reset clears, /_admin/stats reports."""
    params = {"symbol": "BTCUSDT", "interval": "1m", "startTime": T0_MS, "limit": 5}
    async with aiohttp.ClientSession() as session:
        async with session.post(
            f"{exchange.url}/_admin/faults",
            json=[{"kind": "fail", "count": 2, "status": 503}, {"kind": "short", "bars": 2}],
        ) as r:
            assert r.status == 200 and len((await r.json())["pending_faults"]) == 3
        async with session.post(f"{exchange.url}/_admin/faults", json={"kind": "meteor"}) as r:
            assert r.status == 400 and "meteor" in (await r.json())["error"]["message"]
        results = [await get(exchange.url, **params) for _ in range(4)]
        assert [r[0] for r in results] == [503, 503, 200, 200]
        assert [len(r[2]) for r in results[2:]] == [2, 5]
        async with session.post(f"{exchange.url}/_admin/ban", json={"seconds": 30}) as r:
            assert r.status == 200
        assert (await get(exchange.url, **params))[0] == 418
        async with session.get(f"{exchange.url}/_admin/stats") as r:
            stats = await r.json()
        assert stats["total"] == 5 and stats["statuses"] == {"200": 2, "418": 1, "503": 2} and stats["bans"] == 1
        assert stats["by_start"] == [["BTCUSDT", T0_MS, 5]]
        async with session.post(f"{exchange.url}/_admin/reset") as r:
            assert (await r.json())["total"] == 0
        assert (await get(exchange.url, **params))[0] == 200


async def test_exchange_info_lists_the_markets(exchange: Any) -> None:
    """/api/v3/exchangeInfo lists every configured symbol with its base and quote assets."""
    async with aiohttp.ClientSession() as session, session.get(f"{exchange.url}/api/v3/exchangeInfo") as r:
        info = await r.json()
    assert {(s["symbol"], s["baseAsset"], s["quoteAsset"]) for s in info["symbols"]} >= {("BTCUSDT", "BTC", "USDT")}


async def test_command_line_prints_its_url_and_serves_until_sigterm() -> None:
    """`python -m devkit.fake_exchange --port 0 --seed 7` prints a URL, serves synthetic:7, and exits 0 on TERM."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "devkit.fake_exchange",
        "--port",
        "0",
        "--seed",
        "7",
        "--rpm",
        "600",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        url = (await asyncio.wait_for(process.stdout.readline(), timeout=30)).decode().strip()
        assert url.startswith("http://127.0.0.1:")
        status, _, rows = await get(url, symbol="BTCUSDT", interval="1m", startTime=T0_MS, limit=2)
        _, values = synthetic_arrays("BTC/USDT", MINUTE_MS, T0_MS, T0_MS + 2 * MINUTE_MS, seed=7)
        assert status == 200 and float(rows[1][4]) == values[1, 3]
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), timeout=30)
    assert process.returncode == 0, stderr.decode()
