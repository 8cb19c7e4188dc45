"""What one HTTP request costs a server in aiohttp, against the floor of a bare asyncio protocol, same run.

The coordinator leader's CPU per window (bench_coordinator.py) is a third aiohttp's request and response
machinery; this bench measures that third in isolation, to size what a leaner server of the two hot routes
(claim, complete) would save. Each server runs in a child process on uvloop, as ``coordinator serve`` does, and
answers a claim-shaped POST: a small JSON body in, a one-lease JSON answer out, ``X-Request-Id`` echoed. Servers:

- ``aiohttp app``: a ``web.Application`` with one middleware and one route (how ``coordinator/api.py`` serves);
- ``aiohttp low-level``: aiohttp's ``web.Server`` with one handler (no application, router or middleware);
- ``bare protocol``: an ``asyncio.Protocol`` that splits keep-alive requests on ``Content-Length`` and writes the
  answer's bytes. It is the floor (socket I/O, JSON and the least parsing), not a server: no limits, no chunked
  bodies, no errors. The baseline of the ratio column.

``--clients`` keep-alive clients (aiohttp, in this process) loop on the POST; after a warm-up, the server's
user + system CPU (``/proc/PID/stat``) over the measured seconds is divided by the requests answered. Servers
alternate within each round; figures are medians of ``--rounds`` rounds.

Run: ``.venv/bin/python -m bench.bench_http_floor [--clients 64] [--duration 5] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench._common import emit, table

SERVERS = ("aiohttp app", "aiohttp low-level", "bare protocol")
BASELINE = "bare protocol"
PATH = "/v1/windows/claim"
_ANSWER = {"leases": [{"lease_id": "l" * 22, "token": 12345, "window_id": "w" * 40, "start_ms": 1, "end_ms": 2}]}


def answer() -> dict[str, Any]:
    """The claim-shaped answer every server builds per request."""
    return {"leases": [dict(lease) for lease in _ANSWER["leases"]]}


async def _app_server(port: int) -> None:
    @web.middleware
    async def request_id(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id", "-")
        return response

    async def claim(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.json_response(answer())

    app = web.Application(middlewares=[request_id])
    app.router.add_post(PATH, claim)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()


async def _low_level_server(port: int) -> None:
    async def handler(request: web.BaseRequest) -> web.Response:
        json.loads(await request.read())
        response = web.json_response(answer())
        response.headers["X-Request-Id"] = request.headers.get("X-Request-Id", "-")
        return response

    await asyncio.get_running_loop().create_server(web.Server(handler, access_log=None), "127.0.0.1", port)


class _BareProtocol(asyncio.Protocol):
    """Keep-alive requests split on Content-Length; the floor, not a server (module docstring)."""

    def __init__(self) -> None:
        self.buffer = b""
        self.transport: Any = None

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            headers = {}
            for line in self.buffer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                headers[name.strip().lower()] = value.strip()
            size = int(headers.get(b"content-length", b"0"))
            if len(self.buffer) < end + 4 + size:
                return
            json.loads(self.buffer[end + 4 : end + 4 + size])
            self.buffer = self.buffer[end + 4 + size :]
            body = json.dumps(answer()).encode()
            head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: %d\r\n"
            rid = headers.get(b"x-request-id", b"-")
            self.transport.write(head % len(body) + b"X-Request-Id: " + rid + b"\r\n\r\n" + body)


async def _bare_server(port: int) -> None:
    await asyncio.get_running_loop().create_server(_BareProtocol, "127.0.0.1", port)


async def serve(kind: str, port: int) -> None:
    """The child side: serve ``kind`` on ``port`` until killed."""
    starters = {"aiohttp app": _app_server, "aiohttp low-level": _low_level_server, "bare protocol": _bare_server}
    await starters[kind](port)
    print("ready", flush=True)
    await asyncio.Event().wait()


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of process ``pid``."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def measure(kind: str, clients: int, duration_s: float, warmup_s: float = 1.0) -> dict[str, float]:
    """Requests per second and the server's CPU per request, ``kind`` in a fresh child process."""
    port = free_port()
    cmd = [sys.executable, "-m", "bench.bench_http_floor", "--serve", kind, "--port", str(port)]
    proc = await asyncio.create_subprocess_exec(*cmd, stdout=asyncio.subprocess.PIPE)
    try:
        assert proc.stdout is not None
        if (await proc.stdout.readline()).strip() != b"ready":
            raise SystemExit(f"{kind} server did not start")
        done = 0
        counting = stop = False
        url = f"http://127.0.0.1:{port}{PATH}"

        async def client(session: aiohttp.ClientSession, k: int) -> None:
            nonlocal done
            body = {"worker_id": f"w{k}", "max_windows": 1}
            while not stop:
                async with session.post(url, json=body, headers={"X-Request-Id": f"r{k}"}) as response:
                    await response.json()
                if counting:
                    done += 1

        connector = aiohttp.TCPConnector(limit=clients + 8)
        async with aiohttp.ClientSession(connector=connector) as session:
            tasks = [asyncio.create_task(client(session, k)) for k in range(clients)]
            await asyncio.sleep(warmup_s)
            counting, started, cpu_started = True, time.perf_counter(), cpu_s(proc.pid)
            await asyncio.sleep(duration_s)
            counting, elapsed, cpu_used = False, time.perf_counter() - started, cpu_s(proc.pid) - cpu_started
            stop = True
            await asyncio.gather(*tasks)
        return {"requests_per_s": done / elapsed, "server_cpu_us_per_request": cpu_used * 1e6 / max(done, 1)}
    finally:
        proc.kill()
        await proc.wait()


async def main_async(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """Per server: the medians over the rounds, and the CPU per request of each round."""
    runs: dict[str, list[dict[str, float]]] = {kind: [] for kind in SERVERS}
    for round_no in range(args.rounds):
        order = SERVERS if round_no % 2 == 0 else tuple(reversed(SERVERS))
        for kind in order:
            runs[kind].append(await measure(kind, args.clients, args.duration))
    results: dict[str, dict[str, Any]] = {}
    for kind, samples in runs.items():
        results[kind] = {key: statistics.median(run[key] for run in samples) for key in samples[0]}
        results[kind]["cpu_us_runs"] = [round(run["server_cpu_us_per_request"], 1) for run in samples]
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=64, help="concurrent keep-alive clients")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds per server and round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (servers alternate); medians are reported")
    parser.add_argument("--serve", choices=SERVERS, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        import uvloop

        uvloop.run(serve(args.serve, args.port))
        return
    results = asyncio.run(main_async(args))
    floor = results[BASELINE]["server_cpu_us_per_request"]
    print(f"\n{args.clients} keep-alive clients, claim-shaped POST, {args.duration:g} s, median of {args.rounds} "
          f"rounds; 1-minute load average at the end {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs\n")  # fmt: skip
    rows = [
        [kind, r["requests_per_s"], r["server_cpu_us_per_request"], f"{r['server_cpu_us_per_request'] / floor:.2f}x",
         ", ".join(f"{v:g}" for v in r["cpu_us_runs"])]
        for kind, r in results.items()
    ]  # fmt: skip
    print(table(["server", "requests/s", "server CPU us/request", f"/ {BASELINE}", "CPU us per round"], rows))
    emit("http_floor", {"clients": args.clients, "duration_s": args.duration, "servers": results})


if __name__ == "__main__":
    main()
