"""The guarded Raft transport without processes: frame bounds, linear buffering, decoding in pysyncobj's order,
rate-limited rejection logs, and the guarded connection on a real socket under pysyncobj's poller."""

from __future__ import annotations

import contextlib
import random
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pysyncobj.pickle as syncobj_pickle
import pytest
from pysyncobj import SyncObj, SyncObjConf
from pysyncobj.encryptor import getEncryptor
from pysyncobj.poller import createPoller
from pysyncobj.tcp_connection import CONNECTION_STATE
from structlog.testing import capture_logs

from coordinator import _raft_transport as transport
from coordinator._raft_transport import (
    HANDSHAKE_FRAME_BYTES,
    MAX_FRAME_BYTES,
    FrameError,
    FrameReader,
    TransportGuard,
    check_pysyncobj,
    decode_frame,
)
from coordinator.raft import MAX_BATCH, RaftNode, RaftSettings, TableConsumer
from coordinator.table import Table
from devkit.polling import wait_for
from devkit.ports import free_port

SECRET = "a-cluster-secret-of-some-length"


def frame(payload: bytes) -> bytes:
    return struct.pack("i", len(payload)) + payload


def encode(message: Any, *, encryptor: Any = None, timestamp: int = 1, rand_key: bytes | None = None) -> bytes:
    """A frame exactly as pysyncobj's TcpConnection.send builds it, without the length header."""
    if rand_key:
        message = (rand_key, message)
    data = zlib.compress(syncobj_pickle.dumps(message), 3)
    return encryptor.encrypt_at_time(data, timestamp) if encryptor is not None else data


# -- FrameReader ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("chunk", [1, 3, 4, 5, 64, 10_000])
def test_frames_are_reassembled_from_any_chunking(chunk: int) -> None:
    """Frames of 0 bytes to 3 KB split into chunks of any size come out whole, in order, and nothing stays behind."""
    payloads = [b"", b"x", bytes(range(256)) * 12, b"tail"]
    stream = b"".join(frame(p) for p in payloads)
    reader = FrameReader(HANDSHAKE_FRAME_BYTES)
    out: list[bytes] = []
    for i in range(0, len(stream), chunk):
        reader.feed(stream[i : i + chunk])
        while (got := reader.next_frame()) is not None:
            out.append(got)
    assert out == payloads
    assert reader.buffered == 0


@pytest.mark.parametrize(
    ("announced", "reason"),
    [(2**31 - 1, "frame_too_large"), (1024 + 1, "frame_too_large"), (-1, "bad_frame"), (-(2**31), "bad_frame")],
)
def test_a_bad_length_is_refused_as_soon_as_its_header_is_in(announced: int, reason: str) -> None:
    """A length above the limit or below zero raises when the 4th header byte arrives, before any body is read;
    a frame exactly at the limit passes."""
    reader = FrameReader(1024)
    header = struct.pack("i", announced)
    reader.feed(header[:3])
    with pytest.raises(FrameError) as caught:
        reader.feed(header[3:])
    assert caught.value.reason == reason
    assert reader.buffered == 4

    at_limit = FrameReader(1024)
    at_limit.feed(frame(bytes(1024)))
    assert at_limit.next_frame() == bytes(1024)


def test_the_limit_in_force_is_the_one_after_the_previous_frame() -> None:
    """A big frame queued behind a handshake frame is refused under the handshake limit, and read once the limit
    was raised (what trust() does after the handshake frame was handled)."""
    big = bytes(HANDSHAKE_FRAME_BYTES + 1)
    stream = frame(b"address") + frame(big)
    strict = FrameReader(HANDSHAKE_FRAME_BYTES)
    strict.feed(stream)
    assert strict.next_frame() == b"address"
    with pytest.raises(FrameError):
        strict.next_frame()

    trusting = FrameReader(HANDSHAKE_FRAME_BYTES)
    trusting.feed(stream)
    assert trusting.next_frame() == b"address"
    trusting.max_frame_bytes = MAX_FRAME_BYTES
    assert trusting.next_frame() == big


def test_buffering_is_linear() -> None:
    """A frame of MAX_FRAME_BYTES fed in 8 KiB pieces is reassembled in well under 3 s (0.15 s measured; pysyncobj's
    ``bytes += piece`` copies the buffer per piece: 6 s for a quarter of that frame, quadratic)."""
    piece = bytes(8 * 1024)
    reader = FrameReader(MAX_FRAME_BYTES)
    started = time.perf_counter()
    reader.feed(struct.pack("i", MAX_FRAME_BYTES))
    for _ in range(MAX_FRAME_BYTES // len(piece)):
        reader.feed(piece)
        assert reader.next_frame() is None or reader.buffered == 0
    elapsed_s = time.perf_counter() - started
    assert reader.buffered == 0
    assert elapsed_s < 3.0, f"{elapsed_s:.2f} s to buffer {MAX_FRAME_BYTES} bytes"


# -- decode_frame -----------------------------------------------------------------------------------------------


def decode(data: bytes, **kwargs: Any) -> Any:
    options: dict[str, Any] = {"encryptor": None, "last_timestamp": 0, "rand_key": None, "max_message_bytes": 2**20}
    return decode_frame(data, **{**options, **kwargs})


def test_frames_decode_as_pysyncobj_encodes_them() -> None:
    """A plain frame, and an encrypted frame with a session key, decode to the message and its timestamp."""
    message = {"type": "append_entries", "term": 3, "entries": [(b"\x01cmd", 7, 3)]}
    assert decode(encode(message)) == (message, 0)
    fernet = getEncryptor(SECRET)
    data = encode(message, encryptor=fernet, timestamp=42, rand_key=b"k" * 32)
    assert decode(data, encryptor=fernet, rand_key=b"k" * 32, last_timestamp=41) == (message, 42)


@pytest.mark.parametrize("size", [0, 1, 325, transport.STORED_BELOW_BYTES - 1, transport.STORED_BELOW_BYTES, 300_000])
def test_deflate_is_a_zlib_stream_any_pysyncobj_inflates(size: int) -> None:
    """Rule 9: what ``deflate`` makes inflates with plain ``zlib.decompress`` (an unmodified pysyncobj peer) and
    with the guarded reader; below the threshold it is one stored block (11 bytes of framing, no zlib setup),
    from it on it is compressed as pysyncobj does."""
    data = bytes(random.Random(size).getrandbits(8) for _ in range(min(size, 4096))) * (size // 4096 + 1)
    data = data[:size]
    packed = transport.deflate(data)
    assert zlib.decompress(packed) == data
    if size < transport.STORED_BELOW_BYTES:
        assert len(packed) == size + 11
    else:
        assert packed == zlib.compress(data, 3)
    message = {"type": "append_entries", "entries": [(data, 7, 3)]}
    plain = transport.deflate(syncobj_pickle.dumps(message))
    assert decode(plain) == (message, 0)


def test_a_sent_message_arrives_whole_at_a_plain_pysyncobj_reader(guarded: Any) -> None:
    """The guarded connection's ``send`` writes pysyncobj's frame (int32 length, zlib stream of the pickle): the
    other end decodes it exactly as pysyncobj 0.3.17 does."""
    conn, theirs, *_ = guarded
    message = {"type": "append_entries", "term": 3, "entries": [(b"\x01cmd" * 50, 7, 3)]}
    conn.send(message)
    conn.send(["status"])
    theirs.settimeout(5)
    got = b""
    while True:
        got += theirs.recv(65536)
        sizes: list[int] = []
        pos = 0
        while pos + 4 <= len(got) and pos + 4 + struct.unpack("i", got[pos : pos + 4])[0] <= len(got):
            sizes.append(struct.unpack("i", got[pos : pos + 4])[0])
            pos += 4 + sizes[-1]
        if len(sizes) == 2:
            break
    first = got[4 : 4 + sizes[0]]
    second = got[8 + sizes[0] :]
    assert syncobj_pickle.loads(zlib.decompress(first)) == message
    assert syncobj_pickle.loads(zlib.decompress(second)) == ["status"]


@pytest.mark.parametrize(
    ("make", "options", "reason"),
    [
        (lambda f: encode("x", encryptor=getEncryptor("another-secret-entirely")), {}, "auth_failed"),
        (lambda f: b"\x00" * 120, {}, "auth_failed"),
        (lambda f: encode("x", encryptor=f, timestamp=5), {"last_timestamp": 6}, "auth_failed"),
        (lambda f: encode("x", encryptor=f, rand_key=b"a" * 32), {"rand_key": b"b" * 32}, "auth_failed"),
        (lambda f: encode("x", encryptor=f), {"rand_key": b"b" * 32}, "auth_failed"),
    ],
    ids=["wrong-secret", "junk", "replayed", "wrong-session-key", "no-session-key"],
)
def test_encrypted_frames_that_do_not_authenticate_are_refused(
    make: Callable[[Any], bytes], options: dict[str, Any], reason: str
) -> None:
    """With a cluster secret, junk, another secret, an older timestamp or a wrong session key is auth_failed."""
    fernet = getEncryptor(SECRET)
    with pytest.raises(FrameError) as caught:
        decode(make(fernet), encryptor=fernet, **options)
    assert caught.value.reason == reason


def test_decompression_is_bounded_and_junk_is_refused() -> None:
    """A 1 KiB frame that inflates past the limit is message_too_large; non-zlib, truncated zlib and zlib of
    something that is not a pickle are bad_frame."""
    bomb = zlib.compress(bytes(2**21), 9)
    assert len(bomb) < 4096
    cases = {
        "message_too_large": bomb,
        "bad_frame": b"not zlib at all",
    }
    for reason, data in cases.items():
        with pytest.raises(FrameError) as caught:
            decode(data)
        assert caught.value.reason == reason
    for data in (zlib.compress(syncobj_pickle.dumps("abc" * 100))[:-6], zlib.compress(b"\xff\xfe not a pickle")):
        with pytest.raises(FrameError) as caught:
            decode(data)
        assert caught.value.reason == "bad_frame"


# -- the bound stays above every legitimate message -------------------------------------------------------------


def _text(rng: random.Random, chars: int) -> str:
    """Incompressible text of 4-byte UTF-8 characters: the largest a capped wire field can be on the wire."""
    return "".join(chr(rng.randrange(0x10000, 0x10FFFF)) for _ in range(chars))


def worst_command(rng: random.Random) -> tuple[str, dict[str, Any]]:
    """The largest command the API can build: a key of 1000 chars, a reason of 2000 (provider/core/_models.py),
    200-char client and request ids (coordinator/api.py), all 4-byte characters."""
    return (
        "key_fail",
        {
            "key": _text(rng, 1000),
            "token": 10**18 - 1,
            "reason": _text(rng, 2000),
            "now_ms": 2**62,
            "client_id": "c:" + _text(rng, 200),
            "request_id": "key_fail|" + _text(rng, 200),
        },
    )


def test_the_largest_legitimate_frame_is_far_below_the_bound() -> None:
    """An AppendEntries carrying ~1 MiB of entries plus one log entry of MAX_BATCH worst-case commands, encrypted,
    is under a third of MAX_FRAME_BYTES both as a frame and inflated, and so is a full-dump chunk (pysyncobj's
    logCompactionBatchSize of incompressible bytes). Protocol-2 pickles store bytes as latin-1 text, so the log
    entries inflate to ~1.5x their size inside the message."""
    rng = random.Random(21)
    entry = b"\x00" + syncobj_pickle.dumps((0, ([worst_command(rng) for _ in range(MAX_BATCH)],)))
    conf = RaftSettings("127.0.0.1:1", (), Path("unused")).conf(lambda old, new: None)
    # pysyncobj adds entries to one AppendEntries until their commands reach appendEntriesBatchSizeBytes: at worst
    # just under that many bytes, then the biggest entry.
    sizes = [64 * 1024] * 15 + [64 * 1024 - 1]
    assert sum(sizes) == conf.appendEntriesBatchSizeBytes - 1
    earlier = [(rng.randbytes(size), i, 1) for i, size in enumerate(sizes)]
    append = {
        "type": "append_entries",
        "term": 2**31,
        "commit_index": 2**40,
        "entries": [*earlier, (entry, 17, 1)],
        "prevLogIdx": 2**40,
        "prevLogTerm": 2**31,
    }
    dump_chunk = {
        "type": "append_entries",
        "term": 2**31,
        "commit_index": 2**40,
        "serialized": (rng.randbytes(conf.logCompactionBatchSize), False, False),
    }
    fernet = getEncryptor(SECRET)
    for name, message in (("AppendEntries", append), ("dump chunk", dump_chunk)):
        plain = syncobj_pickle.dumps((b"k" * 32, message))
        data = encode(message, encryptor=fernet, rand_key=b"k" * 32)
        assert len(plain) < MAX_FRAME_BYTES / 3, f"{len(plain)} bytes inflated"
        assert len(data) < MAX_FRAME_BYTES / 3, f"{len(data)} bytes"
        assert decode(data, encryptor=fernet, rand_key=b"k" * 32, max_message_bytes=MAX_FRAME_BYTES)[0] == message
        print(f"\nlargest {name}: {len(data):,} bytes on the wire, {len(plain):,} inflated")


# -- TransportGuard ---------------------------------------------------------------------------------------------


def test_rejections_are_counted_always_and_logged_once_per_interval_per_host() -> None:
    """Every rejection counts; a (reason, host) pair logs at most once per interval, the next line saying how many
    were suppressed; another host or reason logs at once."""
    now = [100.0]
    guard = TransportGuard(clock=lambda: now[0], log_interval_s=10.0)
    with capture_logs() as logs:
        assert guard.reject("10.0.0.5:4000", "frame_too_large", "d")
        assert not guard.reject("10.0.0.5:4001", "frame_too_large", "d")
        assert not guard.reject("10.0.0.5:4002", "frame_too_large", "d")
        assert guard.reject("10.0.0.6:4000", "frame_too_large", "d")
        assert guard.reject("10.0.0.5:4003", "auth_failed", "d")
        now[0] += 10.0
        assert guard.reject("10.0.0.5:4004", "frame_too_large", "d")
    assert [(e["event"], e["peer"], e["reason"], e["suppressed"]) for e in logs] == [
        ("raft.peer_rejected", "10.0.0.5:4000", "frame_too_large", 0),
        ("raft.peer_rejected", "10.0.0.6:4000", "frame_too_large", 0),
        ("raft.peer_rejected", "10.0.0.5:4003", "auth_failed", 0),
        ("raft.peer_rejected", "10.0.0.5:4004", "frame_too_large", 2),
    ]
    assert all(e["log_level"] == "warning" for e in logs)
    counts = guard.rejections()
    assert counts["frame_too_large"] == 5 and counts["auth_failed"] == 1
    assert set(counts) == set(transport.REASONS)


def test_pysyncobj_internals_are_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed pysyncobj has every internal the transport overrides; one missing refuses to start."""
    check_pysyncobj()
    monkeypatch.delattr(transport.TcpConnection, "_TcpConnection__processSend")
    with pytest.raises(RuntimeError, match="_TcpConnection__processSend"):
        check_pysyncobj()


# -- a guarded connection on a real socket ----------------------------------------------------------------------


@pytest.fixture
def guarded() -> Iterator[tuple[Any, socket.socket, list[Any], TransportGuard, Callable[..., None]]]:
    """A guarded (incoming) connection on one end of a socket pair under pysyncobj's poller, the other end, the
    messages it received, its guard, and ``pump(until)`` that polls until a condition holds (5 s at most)."""
    poller = createPoller("auto")
    with socket.create_server(("127.0.0.1", 0)) as server:
        theirs = socket.create_connection(server.getsockname())
        ours, _ = server.accept()
    ours.setblocking(False)
    guard = TransportGuard()
    received: list[Any] = []
    conn = transport._GuardedConnection(
        guard, "10.9.8.7:6543", incoming=True, poller=poller, socket=ours, timeout=30.0, recvBufferSize=2**16
    )
    conn.setOnMessageReceivedCallback(received.append)

    def pump(until: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 5
        while not until():
            assert time.monotonic() < deadline, "condition not reached"
            poller.poll(0.05)

    yield conn, theirs, received, guard, pump
    conn.disconnect()
    theirs.close()


def test_a_connection_passes_frames_and_cuts_off_a_huge_one(guarded: Any) -> None:
    """Frames within the handshake limit are delivered; a 2^31-1 length closes the connection after at most one
    read of it, counts frame_too_large and logs the peer's address; the sender sees the connection closed."""
    conn, theirs, received, guard, pump = guarded
    theirs.sendall(frame(encode("127.0.0.1:9000")) + frame(encode(["status"])))
    pump(lambda: len(received) == 2)
    assert received == ["127.0.0.1:9000", ["status"]]

    with capture_logs() as logs:
        theirs.sendall(struct.pack("i", 2**31 - 1) + bytes(2**16))
        pump(lambda: conn.state == CONNECTION_STATE.DISCONNECTED)
    assert guard.rejections()["frame_too_large"] == 1
    assert [(e["peer"], e["reason"]) for e in logs] == [("10.9.8.7:6543", "frame_too_large")]
    theirs.settimeout(5)
    # Closed: end of stream, or a reset since the junk was left unread (an open socket would time out instead).
    with contextlib.suppress(ConnectionResetError):
        assert theirs.recv(1) == b""


def test_trust_lifts_the_handshake_limit(guarded: Any) -> None:
    """Before trust() a frame above the handshake limit is refused; after it the same frame is delivered."""
    conn, theirs, received, guard, pump = guarded
    big = {"type": "append_entries", "data": random.Random(1).randbytes(HANDSHAKE_FRAME_BYTES * 4)}
    conn.trust()
    theirs.sendall(frame(encode(big)))
    pump(lambda: len(received) == 1)
    assert received == [big] and guard.rejections()["frame_too_large"] == 0


# -- the transport inside pysyncobj -----------------------------------------------------------------------------


def _free_addr() -> str:
    return f"127.0.0.1:{free_port()}"


def one_node(tmp_path: Path, password: str | None = None) -> tuple[RaftNode, tuple[str, int]]:
    """A started one-node RaftNode (the guarded transport) that leads, and its Raft address; stop it when done."""
    addr = _free_addr()
    node = RaftNode(RaftSettings(addr, (), tmp_path, password=password), Table(), lambda op, result: None)
    node.start()
    wait_for(lambda: node.is_leader, 10, "the node to lead")
    host, port = addr.rsplit(":", 1)
    return node, (host, int(port))


def closed_by_peer(sock: socket.socket, timeout_s: float) -> bool:
    """Whether the other end closes ``sock`` within ``timeout_s`` (end of stream or reset)."""
    sock.settimeout(timeout_s)
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


@pytest.mark.parametrize("password", [None, SECRET], ids=["open", "secret"])
def test_a_pysyncobj_peer_replicates_through_the_guarded_port_and_junk_does_not_stop_it(
    tmp_path: Path, password: str | None
) -> None:
    """A one-node RaftNode with the guarded transport: junk with a huge length is cut off and counted, the node
    stays leader, and a stock pysyncobj read-only peer (with the secret when one is set) still handshakes and
    replicates a command committed after the junk."""
    node, addr = one_node(tmp_path, password)
    peer_table = Table()
    peer: SyncObj | None = None
    try:
        with socket.create_connection(addr, timeout=5) as junk:
            junk.sendall(struct.pack("i", 2**31 - 1))
            with pytest.raises(OSError):
                for _ in range(1000):
                    junk.sendall(bytes(2**16))
        assert node.transport_rejections()["frame_too_large"] >= 1
        assert node.is_leader
        done = threading.Event()
        raft = node.settings.self_addr
        node._consumer.apply_batch(
            [("announce", {"node_id": "n0", "raft": raft, "http": "http://x:1"})],
            callback=lambda result, error: done.set(),
        )
        assert done.wait(5)
        consumer = TableConsumer(peer_table, threading.Lock(), lambda op, result: None)
        peer = SyncObj(None, [raft], SyncObjConf(password=password, connectionRetryTime=0.2), consumers=[consumer])
        wait_for(lambda: raft in peer_table.nodes(), 10, "the read-only peer to replicate the command")
    finally:
        if peer is not None:
            peer.destroy()
        node.stop()


def test_silent_and_surplus_handshakes_are_closed(tmp_path: Path) -> None:
    """A connection that never completes its handshake is closed after connectionTimeout (3.5 s), not before 3 s;
    the 65th open handshake closes the oldest one at once (65 connects queue in the listen backlog, which was 5).
    Both are counted."""
    node, addr = one_node(tmp_path)
    try:
        with socket.create_connection(addr, timeout=5) as silent:
            opened = time.monotonic()
            assert closed_by_peer(silent, 10)
            assert 3.0 <= time.monotonic() - opened < 8.0
        assert node.transport_rejections()["handshake_timeout"] == 1
        with contextlib.ExitStack() as stack:
            crowd = [
                stack.enter_context(socket.create_connection(addr, timeout=5))
                for _ in range(transport.MAX_PENDING_CONNECTIONS + 1)
            ]
            assert closed_by_peer(crowd[0], 2)
            assert not closed_by_peer(crowd[-1], 0.2)
            assert node.transport_rejections()["too_many_pending"] == 1
    finally:
        node.stop()
