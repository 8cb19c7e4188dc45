"""pysyncobj's TCP transport, hardened against hostile peers on the Raft port (issue 21, item 5).

pysyncobj 0.3.17 reads a frame (a native int32 length, then zlib(pickle), Fernet-encrypted with a cluster secret)
into ``bytes += chunk`` until the announced length has arrived: a length of 2^31-1 and a stream of zeros kept
its one thread (ticks, elections, replication) copying a growing buffer for as long as the sender liked, secret or
not, since the secret is only checked once a frame is complete. It logged nothing. This module subclasses the
transport, server and connection classes, keeps the wire format and everything else of pysyncobj, and
``RaftNode`` passes :class:`GuardedTransport` as pysyncobj's ``transportClass``.

Rules:
1. A frame's announced length is checked as soon as its 4 header bytes are in, before more of it is read: at most
   one ``recv`` (64 KiB) of an oversized frame is ever buffered. A negative or too large length closes the
   connection. Decompression is bounded the same way (``zlib`` with ``max_length``), so a small frame cannot
   inflate past the limit either.
2. The limit is :data:`HANDSHAKE_FRAME_BYTES` until the peer is authenticated and identified: on an incoming
   connection until it named a cluster member (or ``readonly``) in a frame that, with a cluster secret, decrypted
   with it; on an outgoing one, with a secret, until the peer's first frame decrypted. Handshake frames are a
   32-byte session key or an address (~200 bytes), so nothing large is read or decrypted before authentication.
   After it, the limit is :data:`MAX_FRAME_BYTES`. Without a secret, naming a member is all pysyncobj asks
   (and its pickle then runs whatever a peer sends): the Raft port must be reachable by members only.
3. Buffers are linear: received bytes go into a ``bytearray`` consumed from the front (amortized O(1) per byte),
   and so does the send buffer (pysyncobj re-sliced ``bytes`` on every send, quadratic in the backlog). One
   readiness event reads at most :data:`READ_BUDGET_BYTES` and stops once a whole frame is buffered, so a frame's
   limit is always the one in force after the frames before it were handled.
4. An incoming connection must finish its handshake within pysyncobj's ``connectionTimeout``; at most
   :data:`MAX_PENDING_CONNECTIONS` may be unidentified at once (the oldest is closed first). The listen backlog
   is :data:`LISTEN_BACKLOG`, not 5. A failed ``accept`` (out of file descriptors) is counted and the server
   keeps listening (pysyncobj stopped listening for good).
5. Every rejection closes the connection, counts ``coordinator_raft_rejections_total{reason}`` and logs
   ``raft.peer_rejected`` (WARNING) naming the peer's address, at most once per :data:`LOG_INTERVAL_S` per
   (reason, host), the next line carrying how many were suppressed. Nothing a peer sends is logged.
6. The frame limit is a constant, not configuration: the largest legitimate message follows from the code
   (``MAX_BATCH`` commands of capped wire fields in one log entry after up to ``appendEntriesBatchSizeBytes`` of
   others: 6.0 MiB encrypted and 8.2 MiB inflated at worst; full-dump chunks are 64 KiB), every node must accept
   what any node sends, and a node configured below it would stall replication.
   ``tests/coordinator/test_raft_transport.py`` builds that worst case and checks it fits 3 times over.
7. It overrides name-mangled pysyncobj methods (``_TcpConnection__tryReadBuffer`` and friends):
   :func:`check_pysyncobj` refuses to start on a pysyncobj without them rather than run unguarded.
8. A member's messages pass a gate on their way to pysyncobj, and pysyncobj's messages to members a send gate: a
   node that stands aside because its disk is low drops them all but keepalives, both ways
   (``coordinator/_aside.py`` rule 1); handshakes and admin commands pass neither.
9. Sending keeps pysyncobj's frame (zlib stream of the pickle, Fernet with a secret, int32 length) but a message
   below :data:`STORED_BELOW_BYTES` goes out as one stored deflate block (:func:`deflate`): a valid zlib stream
   that any pysyncobj node inflates, without ``zlib.compress``'s per-call setup, which cost 20-130 us per
   message here, more than the rest of a message's handling (the leader's largest cost per window, profiled in
   docs/benchmarks.md). Larger messages (catch-up batches, dump chunks) are compressed as pysyncobj does.
10. A failed bind of the Raft port is kept in ``TransportGuard.bind_error``. pysyncobj retries a failed bind every
    second without a word, so a node whose port was taken between the CLI's check and the bind served HTTP
    with no Raft at all (503 ``no_leader`` forever, its peers reading an HTTP answer as a frame):
    ``RaftNode.start`` reads it after pysyncobj's first attempt and refuses to start.
"""

from __future__ import annotations

import errno
import functools
import socket
import struct
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any

import pysyncobj.pickle as syncobj_pickle
from cryptography.fernet import InvalidToken
from pysyncobj.dns_resolver import globalDnsResolver
from pysyncobj.monotonic import monotonic as syncobj_monotonic
from pysyncobj.poller import POLL_EVENT_TYPE
from pysyncobj.tcp_connection import CONNECTION_STATE, TcpConnection
from pysyncobj.tcp_server import TcpServer
from pysyncobj.transport import TCPTransport

from provider.core.obs import get_logger

__all__ = [
    "HANDSHAKE_FRAME_BYTES",
    "MAX_FRAME_BYTES",
    "REASONS",
    "FrameError",
    "FrameReader",
    "GuardedTransport",
    "TransportGuard",
    "check_pysyncobj",
    "decode_frame",
    "deflate",
]

log = get_logger("coordinator.raft")

#: Largest frame, and largest decompressed message, of an authenticated peer (rule 6: 4x the worst legitimate).
MAX_FRAME_BYTES = 32 * 2**20
#: Largest frame, and decompressed message, before the peer is authenticated and identified (rule 2).
HANDSHAKE_FRAME_BYTES = 16 * 2**10
#: Most bytes one readiness event reads from one connection, so one socket cannot hold the tick thread.
READ_BUDGET_BYTES = 2**20
#: Most incoming connections that have not finished their handshake at once.
MAX_PENDING_CONNECTIONS = 64
#: Listen backlog. pysyncobj's is 5: a burst of a few connections filled it, and the next connect (a member's
#: reconnect, say) waited for a SYN retransmit, 1 s and more.
LISTEN_BACKLOG = 128
#: At most one log line per (reason, peer host) per this many seconds.
LOG_INTERVAL_S = 10.0
#: Why a peer or frame was refused (the values of the metric's ``reason`` label).
REASONS = (
    "frame_too_large",
    "message_too_large",
    "bad_frame",
    "auth_failed",
    "unknown_peer",
    "handshake_timeout",
    "too_many_pending",
    "accept_failed",
)
_HEADER = struct.Struct("i")  # pysyncobj's: native byte order and size
#: Messages shorter than this go out as one stored deflate block (rule 9); at most 65,535 bytes fit in one.
STORED_BELOW_BYTES = 2**16
_STORED_HEAD = struct.Struct("<HH")
_ADLER = struct.Struct(">I")
#: RFC 1950 header (deflate, 32 KiB window, no dictionary, check bits) + the first byte of a final stored block.
_ZLIB_STORED_PREFIX = b"\x78\x01\x01"


def deflate(data: bytes) -> bytes:
    """``data`` as a zlib stream (rule 9): one stored block below :data:`STORED_BELOW_BYTES`, else
    ``zlib.compress(data, 3)`` as pysyncobj sends it. Both inflate with ``zlib.decompress``."""
    n = len(data)
    if n >= STORED_BELOW_BYTES:
        return zlib.compress(data, 3)
    return b"".join((_ZLIB_STORED_PREFIX, _STORED_HEAD.pack(n, n ^ 0xFFFF), data, _ADLER.pack(zlib.adler32(data))))


_RETRY = (errno.EAGAIN, errno.EWOULDBLOCK)


class FrameError(Exception):
    """A frame broke a rule; it never leaves this module: the connection is closed and the reason counted."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class FrameReader:
    """Splits a byte stream into frames; refuses an announced length above ``max_frame_bytes`` (or below 0) as
    soon as its header is in. No I/O."""

    def __init__(self, max_frame_bytes: int) -> None:
        self.max_frame_bytes = max_frame_bytes
        self._buf = bytearray()

    @property
    def buffered(self) -> int:
        return len(self._buf)

    def clear(self) -> None:
        self._buf = bytearray()

    def _size(self) -> int | None:
        """The announced length of the frame at the front, checked; None while its header is incomplete."""
        if len(self._buf) < _HEADER.size:
            return None
        (size,) = _HEADER.unpack_from(self._buf)
        if size < 0:
            raise FrameError("bad_frame", f"negative frame length {size}")
        if size > self.max_frame_bytes:
            raise FrameError("frame_too_large", f"frame of {size} bytes announced, limit {self.max_frame_bytes}")
        return int(size)

    def feed(self, data: bytes) -> None:
        self._buf += data
        self._size()

    @property
    def has_frame(self) -> bool:
        size = self._size()
        return size is not None and len(self._buf) >= _HEADER.size + size

    def next_frame(self) -> bytes | None:
        """The frame at the front without its header, or None while it is incomplete."""
        size = self._size()
        if size is None or len(self._buf) < _HEADER.size + size:
            return None
        end = _HEADER.size + size
        with memoryview(self._buf) as view:
            frame = bytes(view[_HEADER.size : end])
        del self._buf[:end]  # advances the bytearray's start: no copy of the rest
        return frame


def decode_frame(
    frame: bytes, *, encryptor: Any, last_timestamp: int, rand_key: bytes | None, max_message_bytes: int
) -> tuple[Any, int]:
    """pysyncobj's frame -> (message, Fernet timestamp), in its order: authenticate and decrypt (with a secret),
    inflate at most ``max_message_bytes``, unpickle, check the session key. Raises :class:`FrameError`."""
    timestamp = last_timestamp
    data = frame
    if encryptor is not None:
        try:
            timestamp = int(encryptor.extract_timestamp(frame))
            data = encryptor.decrypt(frame)
        except (InvalidToken, ValueError, TypeError):
            raise FrameError("auth_failed", "frame does not decrypt with the cluster secret") from None
        if timestamp < last_timestamp:
            raise FrameError("auth_failed", "frame older than the previous one (replayed?)")
    inflater = zlib.decompressobj()
    try:
        plain = inflater.decompress(data, max_message_bytes)
    except zlib.error:
        raise FrameError("bad_frame", "not zlib data") from None
    if inflater.unconsumed_tail or (not inflater.eof and len(plain) >= max_message_bytes):
        raise FrameError("message_too_large", f"message inflates past {max_message_bytes} bytes")
    if not inflater.eof:
        raise FrameError("bad_frame", "truncated zlib data")
    try:
        message = syncobj_pickle.loads(plain)
    except Exception:
        raise FrameError("bad_frame", "not a pysyncobj message") from None
    if rand_key:
        if not (isinstance(message, tuple) and len(message) == 2 and message[0] == rand_key):
            raise FrameError("auth_failed", "wrong session key")
        message = message[1]
    return message, timestamp


class TransportGuard:
    """Rejection counts (read by the metrics collector on another thread) and rate-limited rejection logs."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, log_interval_s: float = LOG_INTERVAL_S) -> None:
        self._clock = clock
        self._interval_s = log_interval_s
        self._lock = threading.Lock()
        self._counts = dict.fromkeys(REASONS, 0)
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (reason, host) -> (last line, suppressed)
        #: Why the last attempt to bind the Raft port failed (None once it is bound): rule 10.
        self.bind_error: OSError | None = None

    def rejections(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counts)

    def reject(self, peer: str, reason: str, detail: str) -> bool:
        """Count a rejection; log it unless (reason, host) was logged within the interval. True when logged."""
        now = self._clock()
        key = (reason, peer.rsplit(":", 1)[0])
        with self._lock:
            self._counts[reason] = self._counts.get(reason, 0) + 1
            last, suppressed = self._logged.get(key, (None, 0))
            if last is not None and now - last < self._interval_s:
                self._logged[key] = (last, suppressed + 1)
                return False
            if len(self._logged) >= 1024:  # many hosts: forget those quiet for an interval
                self._logged = {k: v for k, v in self._logged.items() if now - v[0] < self._interval_s}
            self._logged[key] = (now, 0)
        log.warning("raft.peer_rejected", peer=peer, reason=reason, detail=detail, suppressed=suppressed)
        return True


class _GuardedConnection(TcpConnection):
    """pysyncobj's connection with bounded, linear buffers (rules 1-3); ``peer`` names the other end in logs."""

    recvLastTimestamp: int  # pysyncobj's: the Fernet timestamp of the last frame (a replay check)

    def __init__(self, guard: TransportGuard, peer: str, *, incoming: bool, **kwargs: Any) -> None:
        self.guard = guard
        self.peer = peer
        self.incoming = incoming
        self.opened_s = time.monotonic()
        self.reader = FrameReader(HANDSHAKE_FRAME_BYTES)
        super().__init__(**kwargs)
        self._TcpConnection__writeBuffer = bytearray()

    def _reset(self) -> None:
        # An outgoing connection without a secret talks to the member it dialled: nothing to authenticate.
        trusted = not self.incoming and self.encryptor is None
        self.reader = FrameReader(MAX_FRAME_BYTES if trusted else HANDSHAKE_FRAME_BYTES)
        self.opened_s = time.monotonic()

    def trust(self) -> None:
        """The peer is authenticated and identified: allow frames up to MAX_FRAME_BYTES."""
        self.reader.max_frame_bytes = MAX_FRAME_BYTES

    def connect(self, host: str, port: int) -> bool:
        self._reset()
        connected = bool(super().connect(host, port))
        self._TcpConnection__writeBuffer = bytearray()
        return connected

    def disconnect(self) -> None:
        super().disconnect()
        if self.state == CONNECTION_STATE.DISCONNECTED:  # not reconnected by the callback: free the buffer
            self.reader.clear()

    def reject(self, error: FrameError) -> None:
        self.guard.reject(self.peer, error.reason, error.detail)
        self.disconnect()

    def _TcpConnection__tryReadBuffer(self) -> None:
        budget = READ_BUDGET_BYTES
        while budget > 0 and not self.reader.has_frame:
            got = self._read_chunk()
            if got == 0:
                break
            budget -= got
        self._TcpConnection__lastReadTime = time.monotonic()

    def _read_chunk(self) -> int:
        sock = self._TcpConnection__socket
        try:
            chunk = sock.recv(self._TcpConnection__recvBufferSize)
        except OSError as exc:
            if exc.errno not in _RETRY:
                self.disconnect()
            return 0
        if not chunk:
            self.disconnect()
            return 0
        try:
            self.reader.feed(chunk)
        except FrameError as exc:
            self.reject(exc)
            return 0
        return len(chunk)

    def _TcpConnection__processParseMessage(self) -> Any:
        if self.state == CONNECTION_STATE.DISCONNECTED:
            return None
        try:
            frame = self.reader.next_frame()
            if frame is None:
                return None
            message, timestamp = decode_frame(
                frame,
                encryptor=self.encryptor,
                last_timestamp=self.recvLastTimestamp,
                rand_key=self.recvRandKey,
                max_message_bytes=self.reader.max_frame_bytes,
            )
        except FrameError as exc:
            self.reject(exc)
            return None
        self.recvLastTimestamp = timestamp
        return message

    def send(self, message: Any) -> None:
        """pysyncobj's ``send`` with the framing of rule 9."""
        if self.sendRandKey:
            message = (self.sendRandKey, message)
        data = deflate(syncobj_pickle.dumps(message))
        if self.encryptor:
            data = self.encryptor.encrypt_at_time(data, int(syncobj_monotonic()))
        buf = self._TcpConnection__writeBuffer
        if not isinstance(buf, bytearray):  # pysyncobj resets it to bytes() on disconnect
            buf = self._TcpConnection__writeBuffer = bytearray(buf)
        buf += _HEADER.pack(len(data))
        buf += data
        self._TcpConnection__trySendBuffer()

    def _TcpConnection__processSend(self) -> bool:
        buf = self._TcpConnection__writeBuffer
        if not buf:
            return False
        if not isinstance(buf, bytearray):  # pysyncobj resets it to bytes() on disconnect
            buf = self._TcpConnection__writeBuffer = bytearray(buf)
        try:
            sent = self._TcpConnection__socket.send(buf)
        except OSError as exc:
            if exc.errno not in _RETRY:
                self.disconnect()
            return False
        if sent <= 0:
            return False
        del buf[:sent]
        return True


class _GuardedServer(TcpServer):
    """pysyncobj's server, accepting into guarded connections; a failed accept does not stop it (rule 4)."""

    def __init__(self, *args: Any, accepted: Callable[[Any, str], Any], guard: TransportGuard, **kwargs: Any) -> None:
        self._accepted = accepted
        self._guard = guard
        super().__init__(*args, **kwargs)

    def bind(self) -> None:
        try:
            super().bind()
        except OSError as exc:  # rule 10: pysyncobj swallows it and retries every second, silently
            self._TcpServer__socket.close()  # pysyncobj leaves the failed socket open
            self._guard.bind_error = exc
            raise
        self._guard.bind_error = None
        self._TcpServer__socket.listen(LISTEN_BACKLOG)

    def _TcpServer__onNewConnection(self, descr: int, event: int) -> None:
        if event & POLL_EVENT_TYPE.READ:
            try:
                sock, addr = self._TcpServer__socket.accept()
            except OSError as exc:
                if exc.errno not in _RETRY:  # EMFILE and friends: pysyncobj stopped listening for good here
                    self._guard.reject(f"{self._TcpServer__host}:{self._TcpServer__port}", "accept_failed", repr(exc))
            else:
                self._TcpServer__onNewConnectionCallback(self._accepted(sock, f"{addr[0]}:{addr[1]}"))
        if event & POLL_EVENT_TYPE.ERROR:
            self.unbind()


class GuardedTransport(TCPTransport):
    """pysyncobj's TCP transport with guarded connections, handshake deadlines and rejection logs."""

    def __init__(
        self,
        syncObj: Any,
        selfNode: Any,
        otherNodes: Any,
        *,
        guard: TransportGuard,
        gate: Callable[[Any], bool] | None = None,
        send_gate: Callable[[Any], bool] | None = None,
    ) -> None:
        check_pysyncobj()
        self._guard = guard
        self._gate = gate
        self._send_gate = send_gate
        super().__init__(syncObj, selfNode, otherNodes)

    def _onMessageReceived(self, node: Any, message: Any) -> None:
        """Rule 8: a member's message reaches pysyncobj only through the gate."""
        if self._gate is None or self._gate(message):
            super()._onMessageReceived(node, message)

    def send(self, node: Any, message: Any) -> bool:
        """Rule 8: a message to a member leaves only through the send gate (a dropped one counts as sent:
        pysyncobj looks at the connection, not at this answer)."""
        if self._send_gate is not None and not self._send_gate(message):
            return True
        return bool(super().send(node, message))

    def _connection(self, sock: socket.socket | None, peer: str, *, incoming: bool) -> _GuardedConnection:
        conf = self._syncObj.conf
        if sock is not None:  # what pysyncobj's server does with an accepted socket
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, conf.sendBufferSize)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, conf.recvBufferSize)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
        return _GuardedConnection(
            self._guard,
            peer,
            incoming=incoming,
            poller=self._syncObj._poller,
            socket=sock,
            timeout=conf.connectionTimeout,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            keepalive=None if incoming else conf.tcp_keepalive,
        )

    def _createServer(self) -> None:
        conf = self._syncObj.conf
        if conf.bindAddress is None:
            raise ValueError("GuardedTransport needs SyncObjConf.bindAddress (coordinator/raft.py sets it)")
        host, port = conf.bindAddress.rsplit(":", 1)
        self._server = _GuardedServer(
            self._syncObj._poller,
            globalDnsResolver().resolve(host),
            port,
            onNewConnection=self._onNewIncomingConnection,
            sendBufferSize=conf.sendBufferSize,
            recvBufferSize=conf.recvBufferSize,
            connectionTimeout=conf.connectionTimeout,
            accepted=functools.partial(self._connection, incoming=True),
            guard=self._guard,
        )

    def addNode(self, node: Any) -> None:
        super().addNode(node)
        if node not in self._connections:
            return
        # pysyncobj made a plain connection for the node this side dials: replace it before it is ever used.
        conn = self._connection(None, node.address, incoming=False)
        conn.encryptor = self._syncObj.encryptor
        conn.setOnConnectedCallback(functools.partial(self._onOutgoingConnected, conn))
        conn.setOnMessageReceivedCallback(functools.partial(self._onMessageReceived, node))
        conn.setOnDisconnectedCallback(functools.partial(self._onDisconnected, conn))
        conn._reset()
        self._connections[node] = conn

    def _onNewIncomingConnection(self, conn: _GuardedConnection) -> None:
        super()._onNewIncomingConnection(conn)
        if len(self._unknownConnections) > MAX_PENDING_CONNECTIONS:
            oldest = min(self._unknownConnections, key=lambda c: c.opened_s)
            self._guard.reject(oldest.peer, "too_many_pending", f"over {MAX_PENDING_CONNECTIONS} handshakes open")
            oldest.disconnect()

    def _onIncomingMessageReceived(self, conn: _GuardedConnection, message: Any) -> None:
        try:
            super()._onIncomingMessageReceived(conn, message)
        except TypeError:  # an unhashable "address": pysyncobj would raise into its tick loop and keep the socket
            self._guard.reject(conn.peer, "unknown_peer", "named no cluster member")
            conn.disconnect()
            return
        if conn in self._unknownConnections:
            return  # key exchange done, or an admin command answered: still no member
        if conn.state == CONNECTION_STATE.DISCONNECTED:
            self._guard.reject(conn.peer, "unknown_peer", "named no cluster member")
            return
        conn.trust()

    def _onOutgoingMessageReceived(self, conn: _GuardedConnection, message: Any) -> None:
        super()._onOutgoingMessageReceived(conn, message)
        conn.trust()  # the member we dialled answered with the cluster secret

    def _onTick(self) -> None:
        super()._onTick()
        deadline_s = time.monotonic() - self._syncObj.conf.connectionTimeout
        for conn in [c for c in self._unknownConnections if c.opened_s < deadline_s]:
            self._guard.reject(conn.peer, "handshake_timeout", "no handshake within connectionTimeout")
            conn.disconnect()


#: pysyncobj internals this module overrides or reads (rule 7).
_INTERNALS: tuple[tuple[type, str], ...] = (
    (TcpConnection, "_TcpConnection__tryReadBuffer"),
    (TcpConnection, "_TcpConnection__processParseMessage"),
    (TcpConnection, "_TcpConnection__processSend"),
    (TcpConnection, "_TcpConnection__trySendBuffer"),
    (TcpConnection, "send"),
    (TcpServer, "_TcpServer__onNewConnection"),
    (TCPTransport, "_createServer"),
    (TCPTransport, "_onNewIncomingConnection"),
    (TCPTransport, "_onIncomingMessageReceived"),
    (TCPTransport, "_onOutgoingMessageReceived"),
    (TCPTransport, "_onTick"),
    (TCPTransport, "_onMessageReceived"),
    (TCPTransport, "send"),
)


def check_pysyncobj() -> None:
    """Raise RuntimeError when the installed pysyncobj lacks an internal this module overrides."""
    missing = [f"{cls.__name__}.{name}" for cls, name in _INTERNALS if not hasattr(cls, name)]
    if missing:
        needs = "coordinator/_raft_transport.py needs them"
        raise RuntimeError(f"pysyncobj changed: {', '.join(missing)} missing; {needs}")
