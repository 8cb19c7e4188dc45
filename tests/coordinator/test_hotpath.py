"""The hot path (coordinator/_hotpath.py): claims and completions read off the connection by the node itself.

Unit tests pin which heads it takes (rule 1) and hands over (rule 2). The cluster tests speak raw HTTP/1.1 to real
``coordinator serve`` processes: answers in order on one connection, the hand-over to aiohttp at the first other
request, ``Connection: close``, forwarding from a follower, and the same answers as aiohttp's for the same requests.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st
from structlog.testing import capture_logs

from coordinator._hotpath import HOT_ROUTES, MAX_HEAD_BYTES, HotPath
from coordinator.routes import ROUTES
from devkit.cluster import FAST_CONFIG, MIN, Cluster

HOST = "127.0.0.1"
CLAIM = "/v1/windows/claim"
COMPLETE = "/v1/windows/complete"


def request(
    path: str, body: bytes, *headers: str, method: str = "POST", content_type: str = "application/json"
) -> bytes:
    """One HTTP/1.1 request's bytes, with Host, Content-Type and Content-Length unless ``headers`` replace them."""
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}"]
    if content_type:
        lines.append(f"Content-Type: {content_type}")
    if not any(h.lower().startswith("content-length:") for h in headers):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join([*lines, *headers]) + "\r\n\r\n").encode("latin-1") + body


def claim(worker: str, *headers: str) -> bytes:
    return request(CLAIM, json.dumps({"worker_id": worker, "max_windows": 1}).encode(), *headers)


class Answer:
    """One parsed HTTP answer."""

    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status, self.headers, self.body = status, headers, body

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def by_aiohttp(self) -> bool:
        """aiohttp names itself in Server; the hot path writes no Server header."""
        return "aiohttp" in self.headers.get("server", "")


async def read_answer(reader: asyncio.StreamReader) -> Answer:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    status = int(head[0].split(" ")[1])
    headers = {}
    for line in head[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return Answer(status, headers, await reader.readexactly(int(headers["content-length"])))


async def exchange(url: str, data: bytes, answers: int) -> tuple[list[Answer], bytes]:
    """Send ``data`` on one connection, read ``answers`` answers, then whatever follows before the server closes
    or 0.5 s pass (b"" when it closed)."""
    reader, writer = await asyncio.open_connection(urlsplit(url).hostname, urlsplit(url).port)
    try:
        writer.write(data)
        got = [await asyncio.wait_for(read_answer(reader), 15) for _ in range(answers)]
        try:
            rest = await asyncio.wait_for(reader.read(1), 0.5)
        except TimeoutError:
            rest = b"(open)"
        return got, rest
    finally:
        writer.close()


# -- rule 1 and 2: which heads the hot path takes ------------------------------------------------------------------


async def _never(_: Any) -> web.StreamResponse:
    raise AssertionError("not called")


def hot_path(max_body: int = 4096) -> HotPath:
    hot = HotPath(lambda *_: _never(None), None, max_body)
    for path in (CLAIM, COMPLETE):
        hot.add(path, _never)
    return hot


def head_of(data: bytes) -> bytes:
    return data[: data.index(b"\r\n\r\n")]


def test_a_plain_claim_or_complete_is_taken() -> None:
    """The head of what a worker sends is parsed: its route, its headers in any case, its body length."""
    data = claim("w1", "X-Request-Id: r-1", "connection: Keep-Alive")
    head = hot_path().parse(head_of(data), len(head_of(data)) + 4)
    assert head is not None
    assert head.path == CLAIM and head.length == len(b'{"worker_id": "w1", "max_windows": 1}')
    assert head.headers["x-request-id"] == "r-1" and head.headers.get("X-REQUEST-ID") == "r-1"
    assert "Host" in head.headers and not head.close
    closing = request(COMPLETE, b"{}", "Connection: close", content_type="application/json; charset=utf-8")
    parsed = hot_path().parse(head_of(closing), 0)
    assert parsed is not None and parsed.path == COMPLETE and parsed.close


def test_every_hot_route_is_a_post_without_path_parameters() -> None:
    """The hot path matches exact paths of POST requests: each route it serves must be one, or it never matches."""
    by_name = {route.name: route for route in ROUTES}
    for name in HOT_ROUTES:
        route = by_name[name]
        assert route.method == "POST" and "{" not in route.path and not route.query, name


HANDED_OVER: list[tuple[str, Callable[[], bytes]]] = [
    ("another route", lambda: request("/v1/jobs", b"{}")),
    ("a query string", lambda: request(CLAIM + "?consistency=stale", b"{}")),
    ("another method", lambda: request(CLAIM, b"", method="PUT")),
    ("HTTP/1.0", lambda: request(CLAIM, b"{}").replace(b"HTTP/1.1", b"HTTP/1.0", 1)),
    ("a repeated field", lambda: request(CLAIM, b"{}", "X-Request-Id: a", "X-Request-Id: b")),
    ("two lengths", lambda: request(CLAIM, b"{}", "Content-Length: 2", "Content-Length: 2")),
    ("chunked", lambda: request(CLAIM, b"", "Transfer-Encoding: chunked")),
    ("Expect", lambda: request(CLAIM, b"{}", "Expect: 100-continue")),
    ("Upgrade", lambda: request(CLAIM, b"{}", "Upgrade: websocket")),
    ("no length", lambda: request(CLAIM, b"", "Content-Length: x")),
    ("a negative length", lambda: request(CLAIM, b"", "Content-Length: -1")),
    ("a body above the cap", lambda: request(CLAIM, b"", "Content-Length: 4097")),
    ("no content type", lambda: request(CLAIM, b"{}", content_type="")),
    ("form data", lambda: request(CLAIM, b"{}", content_type="application/x-www-form-urlencoded")),
    ("a json look-alike", lambda: request(CLAIM, b"{}", content_type="application/jsonp")),
    ("Connection: upgrade", lambda: request(CLAIM, b"{}", "Connection: Upgrade")),
    ("a folded line", lambda: request(CLAIM, b"{}", "X-Note: a", " b")),
    ("a control character", lambda: request(CLAIM, b"{}", "X-Note: a\x01b")),
    ("non-ASCII", lambda: request(CLAIM, b"{}", "X-Note: caf\xe9")),
    ("a name with a space", lambda: request(CLAIM, b"{}", "X Note: a")),
    ("a bare LF", lambda: request(CLAIM, b"{}", "X-Note: a\nX-Other: b")),
]


@pytest.mark.parametrize("make", [m for _, m in HANDED_OVER], ids=[name for name, _ in HANDED_OVER])
def test_anything_else_is_handed_to_aiohttp(make: Callable[[], bytes]) -> None:
    """Rule 2: a head the hot path does not read without doubt is aiohttp's to answer."""
    assert hot_path().parse(head_of(make()), 0) is None


class FakeTransport(asyncio.Transport):
    """Records what the protocol writes and does to the connection."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = self.paused = False

    def write(self, data: Any) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class Recorder(asyncio.Protocol):
    """Stands in for aiohttp's protocol: records the connection and the bytes it is given."""

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = bytearray()

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data


async def _echo(request: Any) -> web.StreamResponse:
    return web.json_response({"got": json.loads(await request.read())}, headers={"X-Request-Id": "e"})


async def _respond(request: Any, route: str, handler: Any) -> web.StreamResponse:
    response: web.StreamResponse = await handler(request)
    return response


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def front_of(respond: Any = None) -> tuple[asyncio.Protocol, FakeTransport, Recorder]:
    """A hot path serving CLAIM with ``_echo`` on a fake connection; the Recorder stands in for aiohttp."""
    hot = HotPath(respond or _respond, None, 4096)
    hot.add(CLAIM, _echo)
    recorder = Recorder()
    front = hot.protocol(lambda: recorder)
    transport = FakeTransport()
    front.connection_made(transport)
    return front, transport, recorder


async def test_a_body_in_pieces_is_answered_once_complete_and_pipelined_bytes_wait() -> None:
    """The head, then the body a byte at a time: nothing is answered until the body is complete. A second request
    written while the first is served waits for the first answer, then is answered after it."""
    front, transport, recorder = front_of()
    data = request(CLAIM, b'{"n": 1}')
    split = data.index(b"\r\n\r\n") + 4
    front.data_received(data[:split])
    for i in range(split, len(data) - 1):
        front.data_received(data[i : i + 1])
        await settle()
        assert transport.written == b""
    front.data_received(data[-1:] + request(CLAIM, b'{"n": 2}'))
    await settle()
    answers = bytes(transport.written).split(b"HTTP/1.1 200 OK")[1:]
    assert len(answers) == 2 and answers[0].endswith(b'{"got": {"n": 1}}') and answers[1].endswith(b'{"n": 2}}')
    assert b"Content-Length: 17\r\n" in answers[0] and b"X-Request-Id: e\r\n" in answers[0]
    assert recorder.transport is None and not transport.closed


async def test_the_hand_over_gives_aiohttp_every_byte_from_the_other_request_on() -> None:
    """A hot request, then another route, then a hot one: the first is answered here; aiohttp's protocol gets the
    connection and exactly the bytes from the second request on, and everything after."""
    front, transport, recorder = front_of()
    other = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    front.data_received(request(CLAIM, b"{}") + other)
    await settle()
    assert transport.written.startswith(b"HTTP/1.1 200 OK") and recorder.transport is transport
    assert bytes(recorder.received) == other
    front.data_received(request(CLAIM, b"{}"))
    await settle()
    assert bytes(recorder.received) == other + request(CLAIM, b"{}")
    assert transport.written.count(b"HTTP/1.1") == 1


def test_an_answer_it_cannot_write_is_a_500_not_a_hang() -> None:
    """A handler's answer is a ``web.Response`` of bytes; anything else is written as a 500 JSON error."""
    data = hot_path().render(web.StreamResponse(), close=False)
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 500 Internal Server Error\r\n")
    assert json.loads(body)["error"]["code"] == "internal"
    assert f"Content-Length: {len(body)}".encode() in head


async def test_a_failure_while_answering_aborts_the_connection_and_is_logged() -> None:
    """Should writing an answer fail (``respond`` answers every error itself), the connection is aborted, not
    left waiting, and the failure is logged."""

    async def broken(request: Any, route: str, handler: Any) -> web.StreamResponse:
        raise RuntimeError("bug")

    front, transport, _ = front_of(broken)
    with capture_logs() as logs:
        front.data_received(request(CLAIM, b"{}"))
        await settle()
    assert transport.closed and transport.written == b""
    assert [log["event"] for log in logs] == ["hotpath.answer_failed"]


_GOOD_LINES = [b"Host: 127.0.0.1", b"X-Request-Id: r-1", b"Connection: close", b"X-Empty:", b"Authorization: Bearer t"]
_BAD_LINES = [
    b"content-length: 2",
    b"Content-Length: +2",
    b"Transfer-Encoding: chunked",
    b"Connection: keep-alive, Upgrade",
    b" folded",
    b"X-Note: caf\xc3\xa9",
]
_LINES = st.one_of(st.sampled_from(_GOOD_LINES), st.sampled_from(_GOOD_LINES + _BAD_LINES), st.binary(max_size=40))
_HEADS = st.lists(_LINES, max_size=6, unique=True).flatmap(
    lambda extra: st.permutations([b"Content-Type: application/json", b"Content-Length: 2", *extra])
)


@given(first=st.sampled_from([b"POST /v1/windows/claim HTTP/1.1", b"POST /v1/windows/claim  HTTP/1.1"]), lines=_HEADS)
@settings(max_examples=400, deadline=None)
def test_any_head_parses_without_error_and_only_what_rule_1_allows_is_taken(first: bytes, lines: list[bytes]) -> None:
    """Whatever bytes a head holds, parsing never raises; a head it takes has one JSON Content-Length within the
    cap, visible-ASCII fields each named once, and none of the fields that hand a request over."""
    head = b"\r\n".join([first, *lines])
    parsed = hot_path().parse(head, len(head) + 4)
    if parsed is None:
        return
    names = [line.split(b":", 1)[0].lower() for line in lines]
    assert len(names) == len(set(names)) and all(line.isascii() and b":" in line for line in lines)
    assert all(0x20 <= byte < 0x7F or byte == 0x09 for line in lines for byte in line)
    assert not {b"transfer-encoding", b"expect", b"upgrade"} & set(names)
    assert parsed.length <= 4096 and parsed.headers["Content-Type"].lower().startswith("application/json")
    assert parsed.length == int(parsed.headers["content-length"])


# -- the cluster: raw HTTP/1.1 against coordinator serve -----------------------------------------------------------


@pytest.fixture
def node(cluster_factory: Callable[..., Cluster]) -> Cluster:
    """A one-node cluster with one job of four windows (nothing else claims them)."""
    cluster = cluster_factory(1)
    cluster.wait_leader()
    return cluster


async def submit(url: str, windows: int) -> None:
    body = json.dumps({"series": "ohlcv:test:HOT/USD:1m", "start": 0, "end": windows * 15 * MIN}).encode()
    answers, _ = await exchange(url, request("/v1/jobs", body), 1)
    assert answers[0].status == 201, answers[0].body


@pytest.mark.cluster
async def test_pipelined_requests_are_answered_in_order_by_the_hot_path(node: Cluster) -> None:
    """Three requests written at once on one connection: two claims and a completion of the first lease, answered
    in order (X-Request-Id), each with its status, JSON, Content-Length and Date, and none by aiohttp."""
    url = node.urls[0]
    await submit(url, 4)
    answers, _ = await exchange(url, claim("w1", "X-Request-Id: a") + claim("w2", "X-Request-Id: b"), 2)
    assert [a.headers["x-request-id"] for a in answers] == ["a", "b"]
    assert all(a.status == 200 and not a.by_aiohttp and a.headers["date"].endswith("GMT") for a in answers)
    assert answers[0].headers["content-type"] == "application/json; charset=utf-8"
    first, second = (a.json()["leases"][0] for a in answers)
    assert (first["start"], second["start"]) == (0, 15 * MIN)
    body = json.dumps({"lease_id": first["lease_id"], "token": first["token"], "rows": 15}).encode()
    bad = json.dumps({"lease_id": second["lease_id"], "token": second["token"] + 1, "rows": 15}).encode()
    answers, _ = await exchange(url, request(COMPLETE, body) + request(COMPLETE, bad), 2)
    assert answers[0].status == 200 and answers[0].json()["state"] == "done"
    assert answers[1].status == 409 and answers[1].json()["error"]["code"] == "lease_lost"


@pytest.mark.cluster
async def test_the_first_other_request_hands_the_connection_to_aiohttp(node: Cluster) -> None:
    """A claim, then GET /healthz, then a claim on one connection: all three answered in order; from the GET on,
    aiohttp answers (rule 2)."""
    url = node.urls[0]
    health = f"GET /healthz HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()
    answers, _ = await exchange(url, claim("w1", "X-Request-Id: 1") + health + claim("w2", "X-Request-Id: 3"), 3)
    assert [a.status for a in answers] == [200, 200, 200]
    assert [a.by_aiohttp for a in answers] == [False, True, True]
    assert answers[0].json() == answers[2].json() == {"leases": []}
    assert (answers[0].headers["x-request-id"], answers[2].headers["x-request-id"]) == ("1", "3")


@pytest.mark.cluster
async def test_connection_close_and_end_of_input_close_after_the_answer(node: Cluster) -> None:
    """``Connection: close`` is answered, then the server closes; so is a request followed by the end of input."""
    url = node.urls[0]
    answers, rest = await exchange(url, claim("w1", "Connection: close"), 1)
    assert answers[0].status == 200 and answers[0].headers["connection"] == "close" and rest == b""
    reader, writer = await asyncio.open_connection(urlsplit(url).hostname, urlsplit(url).port)
    writer.write(claim("w2"))
    writer.write_eof()
    answer = await asyncio.wait_for(read_answer(reader), 15)
    assert answer.status == 200 and await asyncio.wait_for(reader.read(), 15) == b""
    writer.close()


PARITY: list[tuple[str, str, bytes, tuple[str, ...]]] = [
    ("bad JSON", CLAIM, b"{not json", ()),
    ("a list", CLAIM, b"[1, 2]", ()),
    ("a bad field", CLAIM, b'{"worker_id": "p", "max_windows": "2"}', ()),
    ("an unknown lease", COMPLETE, b'{"lease_id": "nope", "token": 1, "rows": 0}', ()),
    ("a foreign origin", CLAIM, b'{"worker_id": "p"}', ("Origin: http://evil.example",)),
    ("a foreign host", COMPLETE, b"{}", ("Host: evil.example",)),
    ("a bad client id", CLAIM, b'{"worker_id": "p"}', ("X-Client-Id: " + "x" * 201,)),
]


@pytest.mark.cluster
@pytest.mark.parametrize(("path", "body", "headers"), [p[1:] for p in PARITY], ids=[p[0] for p in PARITY])
async def test_the_hot_path_answers_as_aiohttp_does(
    shared_cluster: Cluster, path: str, body: bytes, headers: tuple[str, ...]
) -> None:
    """The same request, on the hot path and (with a query string, which hands it over) through aiohttp, on the
    leader and on a follower: the same status and the same JSON."""
    for url in shared_cluster.urls:
        sent = request(path, body, *headers)
        if any(h.startswith("Host:") for h in headers):
            sent = sent.replace(f"Host: {HOST}\r\n".encode(), b"", 1)
        hot, _ = await exchange(url, sent, 1)
        slow, _ = await exchange(url, sent.replace(path.encode(), path.encode() + b"?via=aiohttp", 1), 1)
        assert not hot[0].by_aiohttp and slow[0].by_aiohttp
        assert (hot[0].status, hot[0].json()) == (slow[0].status, slow[0].json()), url


@pytest.mark.cluster
async def test_a_head_too_long_or_a_body_too_large_is_aiohttps_refusal(shared_cluster: Cluster) -> None:
    """A head beyond MAX_HEAD_BYTES and a Content-Length above max_body_bytes (4096 here) are handed over and
    refused by aiohttp as before (431 or 400; 413)."""
    url = shared_cluster.urls[0]
    long_head = request(CLAIM, b"{}", "X-Note: " + "a" * MAX_HEAD_BYTES)
    answers, _ = await exchange(url, long_head, 1)
    assert answers[0].status in (400, 431) and answers[0].by_aiohttp
    answers, _ = await exchange(url, request(CLAIM, b"", "Content-Length: 5000"), 1)
    assert answers[0].status == 413 and answers[0].by_aiohttp
    assert answers[0].json()["error"]["code"] == "too_large"


@pytest.mark.cluster
async def test_hot_requests_are_counted_under_their_route(shared_cluster: Cluster) -> None:
    """``coordinator_http_requests_total{route="/v1/windows/claim"}`` counts hot requests as it counts others."""
    url = shared_cluster.urls[0]

    async def counted() -> float:
        answers, _ = await exchange(url, f"GET /metrics HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode(), 1)
        for line in answers[0].body.decode().splitlines():
            if line.startswith('coordinator_http_requests_total{route="/v1/windows/claim",status="400"}'):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    before = await counted()
    answers, _ = await exchange(url, request(CLAIM, b"{not json") * 3, 3)
    assert [a.status for a in answers] == [400, 400, 400] and not answers[0].by_aiohttp
    assert await counted() == before + 3


@pytest.mark.cluster
async def test_hot_path_false_leaves_every_request_to_aiohttp(cluster_factory: Callable[..., Cluster]) -> None:
    """Rule 6: with ``coordinator.hot_path: false`` a claim is aiohttp's, as every other request."""
    cluster = cluster_factory(1, {**FAST_CONFIG, "coordinator": {**FAST_CONFIG["coordinator"], "hot_path": False}})
    cluster.wait_leader()
    answers, _ = await exchange(cluster.urls[0], claim("w1"), 1)
    assert answers[0].status == 200 and answers[0].by_aiohttp and answers[0].json() == {"leases": []}
