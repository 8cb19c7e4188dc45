"""A PG wire (protocol 3.0) client that speaks only what a QuestDB bar read needs, decoded with numpy.

Rules:
1. One job: prepare a query whose result is one ``int8`` column and five ``float8`` columns, run it with bind
   parameters, and hand back the columns as numpy arrays. asyncpg builds a Record per row and the caller then
   flattens them; here the result's DataRows are checked and decoded in a few numpy passes over the received
   bytes, straight into the caller's columns (a storage read of 1,000 bars: 0.53-0.57 ms against 0.85-1.04 ms
   for asyncpg with numpy; 10^6 bars: 87-95 ms against 204-219 ms for the Parquet export, docs/benchmarks.md).
2. What it does not speak it refuses with :class:`WireUnsupportedError` before any query runs: an
   authentication other than cleartext or MD5 password, a refused login (the server may want TLS, which asyncpg
   tries first), or a prepared result whose columns are not ``int8`` + 5 ``float8``. The caller then uses
   asyncpg instead (``provider.storage._questdb_read``, rule 6).
3. Messages are walked from a known boundary. A run of DataRows of the common shape (six non-NULL 8-byte
   fields, 79 bytes each) is checked with one vectorized comparison of every row's first 7 bytes (type, length,
   field count) and copied, converted from big-endian, straight into the column arrays; anything else (a row
   with a NULL, a notice, the end of the result) is parsed one message at a time. A NULL field is refused, as
   the Parquet path refuses it.
4. Values never enter SQL text: the series is a text parameter, the bounds are binary ``timestamp`` parameters
   (int64 us since 2000-01-01), both length-prefixed on the wire.
5. Failures: the server's ErrorResponse is :class:`WireServerError` (its message and SQLSTATE), raised after the
   ReadyForQuery that follows it, so the connection stays usable. A lost connection is a ``ConnectionError``.
   A query cancelled while in flight leaves the connection in an unknown state, so it is closed. A message
   larger than :data:`MAX_MESSAGE_BYTES` or of a type this client does not expect breaks the connection.
"""

from __future__ import annotations

import asyncio
import hashlib
import struct
from collections.abc import Sequence
from typing import cast

import numpy as np

__all__ = [
    "MAX_MESSAGE_BYTES",
    "MAX_RESERVED_ROWS",
    "OID_TEXT",
    "OID_TIMESTAMP",
    "WireConnection",
    "WireServerError",
    "WireUnsupportedError",
]

#: Parameter type OIDs this client binds (rule 4).
OID_TEXT = 1043  # varchar, sent as text
OID_TIMESTAMP = 1114  # timestamp without time zone, sent as binary int64 us since 2000-01-01
_PG_EPOCH_US = 946_684_800_000_000
_INT8, _FLOAT8 = 20, 701
#: The result shape rule 1 decodes: one int8 column, then five float8.
RESULT_OIDS = (_INT8, _FLOAT8, _FLOAT8, _FLOAT8, _FLOAT8, _FLOAT8)
#: A larger message is not a bar row or a status message: the connection is treated as broken (rule 5).
MAX_MESSAGE_BYTES = 1 << 24
_PROTOCOL_3 = 196_608
#: At most this many rows are reserved before they arrive (a hint of a sparse decade of 1s slots is not taken).
MAX_RESERVED_ROWS = 1 << 24

#: A DataRow of six non-NULL 8-byte fields, as it lies on the wire (rule 3).
_ROW = np.dtype(
    [("tag", "u1"), ("length", ">i4"), ("fields", ">i2")]
    + [item for i in range(6) for item in ((f"n{i}", ">i4"), (f"v{i}", ">i8" if i == 0 else ">f8"))]
)
_ROW_BYTES = _ROW.itemsize  # 79
#: A row's first 7 bytes (type ``D``, length 78, 6 fields) as one unaligned big-endian word (rule 3): with the
#: result's types checked at prepare (int8 and float8 values are 8 bytes or NULL, and a NULL shortens the
#: message), a row with these 7 bytes has six 8-byte values.
_HEAD = np.dtype({"names": ["head"], "formats": [">u8"], "offsets": [0], "itemsize": _ROW_BYTES})
_HEAD_WORD = (ord("D") << 48) | ((_ROW_BYTES - 1) << 16) | 6
_SYNC = b"S\x00\x00\x00\x04"


class WireServerError(Exception):
    """The server refused a statement (an ErrorResponse): ``sqlstate`` and the server's message."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(f"{message} (SQLSTATE {sqlstate})")
        self.sqlstate = sqlstate


class WireUnsupportedError(Exception):
    """The server wants something this client does not speak (rule 2): use asyncpg instead."""


class _Reply:
    """What the connection expects next; fed the received bytes until :attr:`done`."""

    def __init__(self, conn: WireConnection) -> None:
        self.conn = conn
        self.done = False
        self.error: BaseException | None = None

    def feed(self, buf: bytearray) -> int:
        """Consume the complete messages at the start of ``buf``; return how many bytes were consumed."""
        at, size = 0, len(buf)
        while not self.done:
            at = self.fast(buf, at)
            if size - at < 5:
                break
            length = int.from_bytes(buf[at + 1 : at + 5])
            if length < 4 or length > MAX_MESSAGE_BYTES:
                raise ConnectionError(f"PG wire: a message of {length} bytes (at most {MAX_MESSAGE_BYTES})")
            end = at + 1 + length
            if end > size:
                break
            tag = chr(buf[at])
            body = bytes(buf[at + 5 : end])
            at = end
            if tag == "E":
                self.error = self.error or self.refused(_server_error(body))
                self.done = self.done or isinstance(self.error, WireUnsupportedError)
            elif tag == "Z":
                self.done = True
            elif tag not in "NS":  # notices and parameter status changes carry nothing a read needs
                self.message(tag, body)
        return at

    def fast(self, buf: bytearray, at: int) -> int:
        """Rule 3's vectorized path (rows only); returns the boundary it stopped at."""
        return at

    def refused(self, error: WireServerError) -> Exception:
        """What the server's ErrorResponse means for this reply."""
        return error

    def message(self, tag: str, body: bytes) -> None:
        raise ConnectionError(f"PG wire: unexpected message {tag!r}")


class _Startup(_Reply):
    def __init__(self, conn: WireConnection, user: str, password: str) -> None:
        super().__init__(conn)
        self.user, self.password = user, password

    def refused(self, error: WireServerError) -> Exception:
        # A refused login is the end of the connection (no ReadyForQuery follows). asyncpg may still get in
        # (it tries TLS first and speaks SCRAM); if not, it raises the error a caller expects for it.
        return WireUnsupportedError(f"login refused: {error}")

    def message(self, tag: str, body: bytes) -> None:
        if tag == "K":  # the backend's cancel key: reads are cancelled by closing the connection (rule 5)
            return
        if tag != "R":
            super().message(tag, body)
        code = int.from_bytes(body[:4])
        if code == 0:
            return
        if code == 3:
            secret = self.password
        elif code == 5:
            inner = hashlib.md5((self.password + self.user).encode(), usedforsecurity=False).hexdigest().encode()
            secret = "md5" + hashlib.md5(inner + body[4:8], usedforsecurity=False).hexdigest()
        else:
            self.error = WireUnsupportedError(f"authentication method {code} (cleartext and MD5 are spoken)")
            self.done = True
            return
        self.conn.send(_message(b"p", secret.encode() + b"\x00"))


class _Prepare(_Reply):
    def __init__(self, conn: WireConnection) -> None:
        super().__init__(conn)
        self.oids: tuple[int, ...] | None = None
        self.names: tuple[str, ...] = ()

    def message(self, tag: str, body: bytes) -> None:
        if tag == "T":
            self.names, self.oids = _row_description(body)
        elif tag == "n":
            self.oids = ()
        elif tag not in "1t":  # ParseComplete, ParameterDescription
            super().message(tag, body)


class _Rows(_Reply):
    """A result's rows, decoded as they arrive into the columns' own arrays (rule 3)."""

    def __init__(self, conn: WireConnection, names: tuple[str, ...], capacity: int) -> None:
        super().__init__(conn)
        self.names = names
        self.stamps = np.empty(capacity, dtype=np.int64)
        self.prices = np.empty((5, capacity), dtype=np.float64)
        self.count = 0

    def fast(self, buf: bytearray, at: int) -> int:
        count = (len(buf) - at) // _ROW_BYTES
        if count == 0 or buf[at] != 0x44:  # 'D'
            return at
        odd = (np.frombuffer(buf, dtype=_HEAD, count=count, offset=at)["head"] >> 8) != _HEAD_WORD
        good = int(odd.argmax()) if odd.any() else count
        if good:
            self.take(np.frombuffer(buf, dtype=_ROW, count=good, offset=at))  # the copy is made before return
        # the caller resizes the bytearray next: no view of it may outlive this call
        return at + good * _ROW_BYTES

    def take(self, rows: np.ndarray) -> None:
        """Append rows of the wire's layout (big-endian, converted on the copy)."""
        n, at = len(rows), self.count
        if at + n > len(self.stamps):
            self.grow(at + n)
        self.stamps[at : at + n] = rows["v0"]
        for index in range(5):
            self.prices[index, at : at + n] = rows[f"v{index + 1}"]
        self.count += n

    def grow(self, need: int) -> None:
        capacity = max(need, 2 * len(self.stamps))
        stamps, prices = np.empty(capacity, dtype=np.int64), np.empty((5, capacity), dtype=np.float64)
        stamps[: self.count], prices[:, : self.count] = self.stamps[: self.count], self.prices[:, : self.count]
        self.stamps, self.prices = stamps, prices

    def message(self, tag: str, body: bytes) -> None:
        if tag == "D":
            row = _odd_row(body)
            if isinstance(row, tuple):  # raised after ReadyForQuery: the connection stays usable
                index, what = row
                name = self.names[index] if index < len(self.names) else str(index)
                message = f"column {name!r} of a row is {what}; a bar row has six 8-byte values"
                self.error = self.error or WireServerError("22004", message)
            else:
                self.take(row)
        elif tag not in "2CIs":  # BindComplete, CommandComplete, EmptyQueryResponse, PortalSuspended
            super().message(tag, body)

    def columns(self) -> tuple[np.ndarray, np.ndarray]:
        """The int64 first column and the ``(5, N)`` float64 block of the others (each row contiguous); copied
        into arrays of their own size when they fill at most half of what was reserved."""
        n = self.count
        stamps, prices = self.stamps[:n], self.prices[:, :n]
        if n <= len(self.stamps) // 2:
            stamps, prices = stamps.copy(), prices.copy()
        return stamps, prices


class WireConnection(asyncio.Protocol):
    """One PG wire connection; at most one statement in flight (the caller serializes)."""

    def __init__(self) -> None:
        self._transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._reply: _Reply | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._lost: BaseException | None = None
        self._prepared: dict[str, tuple[tuple[int, ...], tuple[str, ...]]] = {}

    @classmethod
    async def open(
        cls, host: str, port: int, *, user: str, password: str, database: str, timeout_s: float
    ) -> WireConnection:
        """Connect and authenticate (rule 2: :class:`WireUnsupportedError` for other auth methods)."""
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(loop.create_connection(cls, host, port), timeout_s)
        params = b"".join(f"{k}\x00{v}\x00".encode() for k, v in (("user", user), ("database", database)))
        startup = struct.pack("!ii", 8 + len(params) + 1, _PROTOCOL_3) + params + b"\x00"
        try:
            await asyncio.wait_for(conn._request(startup, _Startup(conn, user, password)), timeout_s)
        except BaseException:
            conn.close()
            raise
        return conn

    @property
    def closed(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    async def prepare(self, name: str, sql: str, param_oids: Sequence[int]) -> None:
        """Prepare ``sql`` as statement ``name`` (once per connection); rule 2 checks its result columns."""
        if name in self._prepared:
            return
        head = (
            name.encode()
            + b"\x00"
            + sql.encode()
            + b"\x00"
            + struct.pack(f"!h{len(param_oids)}i", len(param_oids), *param_oids)
        )
        describe = _message(b"D", b"S" + name.encode() + b"\x00")
        reply = _Prepare(self)
        await self._request(_message(b"P", head) + describe + _SYNC, reply)
        if reply.oids != RESULT_OIDS:
            raise WireUnsupportedError(f"result columns of type OIDs {reply.oids}, expected {RESULT_OIDS}")
        self._prepared[name] = tuple(param_oids), reply.names

    async def fetch(
        self, name: str, params: Sequence[str | int], *, rows_hint: int = 1024
    ) -> tuple[np.ndarray, np.ndarray]:
        """Run prepared statement ``name``: the int64 first column and the ``(5, N)`` float64 block of the rest.
        Text parameters are ``str``; timestamp parameters are epoch us (``int``). ``rows_hint`` rows are
        reserved up front (untouched pages cost no memory; more are made room for as they arrive)."""
        oids, names = self._prepared[name]
        formats, values = [], []
        for oid, value in zip(oids, params, strict=True):
            if oid == OID_TIMESTAMP:
                formats.append(1)
                values.append(struct.pack("!iq", 8, int(value) - _PG_EPOCH_US))
            else:
                data = str(value).encode()
                formats.append(0)
                values.append(struct.pack("!i", len(data)) + data)
        bind = (
            b"\x00"
            + name.encode()
            + b"\x00"
            + struct.pack(f"!h{len(formats)}hh", len(formats), *formats, len(values))
            + b"".join(values)
            + b"\x00\x01\x00\x01"  # every result column in binary
        )
        reply = _Rows(self, names, max(1, min(rows_hint, MAX_RESERVED_ROWS)))
        await self._request(_message(b"B", bind) + b"E\x00\x00\x00\x09\x00\x00\x00\x00\x00" + _SYNC, reply)
        return reply.columns()

    async def _request(self, data: bytes, reply: _Reply) -> None:
        if self._lost is not None or self._transport is None:
            raise ConnectionResetError(f"PG wire: the connection is closed ({self._lost!r})")
        if self._reply is not None:
            raise RuntimeError("PG wire: one statement at a time per connection")
        self._reply, self._waiter = reply, asyncio.get_running_loop().create_future()
        self._transport.write(data)
        try:
            await self._waiter
        except asyncio.CancelledError:
            self.close()  # rule 5: whatever the server still sends would be read as the next reply
            raise
        finally:
            self._reply = self._waiter = None
        if reply.error is not None:
            raise reply.error

    def send(self, data: bytes) -> None:
        if self._transport is not None:
            self._transport.write(data)

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self._buf += data
        reply, waiter = self._reply, self._waiter
        if reply is None or waiter is None or waiter.done():
            return  # nothing asked for: kept until the connection is used (an unasked message breaks it then)
        try:
            consumed = reply.feed(self._buf)
        except Exception as exc:  # a protocol violation: the connection is unusable
            self.close()
            waiter.set_exception(exc)
            return
        del self._buf[:consumed]
        if reply.done:
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = exc or ConnectionResetError("closed")
        self._transport = None
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_exception(ConnectionResetError(f"PG wire: connection lost ({self._lost!r})"))


def _message(tag: bytes, body: bytes) -> bytes:
    return tag + struct.pack("!i", len(body) + 4) + body


def _server_error(body: bytes) -> WireServerError:
    fields = {part[:1]: part[1:].decode(errors="replace") for part in body.split(b"\x00") if part}
    return WireServerError(fields.get(b"C", "?????"), fields.get(b"M", "(no message)"))


def _row_description(body: bytes) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The names and type OIDs of a RowDescription's fields."""
    count, at, names, oids = int.from_bytes(body[:2]), 2, [], []
    for _ in range(count):
        end = body.index(b"\x00", at)
        names.append(body[at:end].decode(errors="replace"))
        oids.append(int.from_bytes(body[end + 7 : end + 11]))
        at = end + 19
    return tuple(names), tuple(oids)


def _odd_row(body: bytes) -> np.ndarray | tuple[int, str]:
    """A DataRow rule 3's fast path did not take: six 8-byte fields, or the index of the first field that is not
    and what it is instead."""
    count = int.from_bytes(body[:2])
    if count != 6:
        raise ConnectionError(f"PG wire: a row of {count} fields, expected 6")
    at = 2
    for index in range(6):
        length = int.from_bytes(body[at : at + 4], signed=True)
        if length != 8:
            return index, "NULL" if length == -1 else f"{length} bytes long"
        at += 12
    return np.frombuffer(b"D" + (_ROW_BYTES - 1).to_bytes(4) + body, dtype=_ROW).copy()
