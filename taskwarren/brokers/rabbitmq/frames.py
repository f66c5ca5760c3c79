"""Frames on the wire: corked writes, read-ahead, no read before a publish, a tolerant
frame handler, and ``basic.publish`` written in one step (:func:`publish_frames`).

Four patches of py-amqp's behaviour, all on its private parts (its transport's
``_write``, ``_read`` and ``_read_buffer``, its local copy of the client capabilities,
its ``frame_handler``): kept here, and nowhere else but ``inbound.py``, which hands a
delivery read ahead whole to py-amqp's channel (its ``_callbacks`` and ``_pending``).
"""

from __future__ import annotations

import contextlib
import errno
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Any

from amqp import method_framing
from amqp.serialization import dumps as amqp_dumps

from taskwarren.brokers.rabbitmq.errors import HEADER_ERRORS

#: Bytes gathered before a corked connection writes them out.
CORK_BYTES = 128 * 1024
#: Bytes a read-ahead transport asks the socket for at least.
READ_AHEAD_BYTES = 64 * 1024


@contextlib.contextmanager
def corked(conn: Any) -> Iterator[Callable[[], None]]:
    """Gather the frames written inside the block into few large writes.

    py-amqp writes every message with its own ``sendall``; a batch of publishes (or of
    acks) costs one system call per message. Inside this block writes are buffered and
    go out when :data:`CORK_BYTES` gather, when the yielded ``flush`` is called (do so
    before waiting for an answer), and at the end. Plain TCP only; TLS writes directly.
    """
    transport = getattr(conn, "transport", None)
    real = getattr(transport, "_write", None)
    if real is None or type(transport).__name__ != "TCPTransport":
        yield lambda: None
        return
    chunks: list[bytes] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        if chunks:
            data = b"".join(chunks)
            chunks.clear()
            pending = 0
            real(data)

    def buffered(data: Any) -> None:
        nonlocal pending
        chunks.append(bytes(data))  # py-amqp hands a view of a buffer it reuses
        pending += len(data)
        if pending >= CORK_BYTES:
            flush()

    transport._write = buffered  # type: ignore[union-attr]
    try:
        yield flush
    finally:
        transport._write = real  # type: ignore[union-attr]
        flush()


class ReadAhead:
    """A plain TCP transport's reads, served from large ``recv`` calls.

    py-amqp reads every frame with three exact-sized ``recv`` calls (header, payload,
    end byte): nine system calls for a small message, most of a busy I/O thread's
    reading. Here one ``recv`` of up to :data:`READ_AHEAD_BYTES` serves every frame it
    holds. The bytes not yet handed out are ``transport._read_buffer`` (py-amqp's
    own, which it fills again with a partial frame when a read times out) followed by
    ``self._buf[self._pos:]``; the offset spares copying the rest on every read.
    """

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self._recv = transport.sock.recv
        self._buf = b""
        self._pos = 0

    def buffered(self) -> int:
        """Bytes read from the socket and not handed out yet."""
        return len(self.transport._read_buffer) + len(self._buf) - self._pos

    def has_frame(self) -> bool:
        """Whether a whole frame is buffered (reading it then touches no socket)."""
        if self.transport._read_buffer:
            return False  # rare (after a timeout): the next read joins the two
        start = self._pos
        if len(self._buf) - start < 7:
            return False
        size = int.from_bytes(self._buf[start + 3:start + 7], "big")
        return len(self._buf) - start >= 8 + size

    def window(self) -> tuple[bytes, int]:
        """The buffer and the offset of its first byte not handed out yet; ``(b"", 0)``
        while py-amqp holds a partial frame of its own (then only :meth:`read` serves)."""
        if self.transport._read_buffer:
            return b"", 0
        return self._buf, self._pos

    def consume(self, end: int) -> None:
        """Mark the bytes of :meth:`window` before ``end`` as handed out."""
        self._pos = end

    def fill(self) -> int:
        """Add what the socket holds now to the buffer, without waiting: the bytes read
        (0: none yet). For a socket a ``select`` found readable: the frames are then
        served from the buffer, with no timeout set on the socket for them."""
        try:
            data = self._recv(READ_AHEAD_BYTES, socket.MSG_DONTWAIT)
        except (BlockingIOError, InterruptedError):
            return 0
        if not data:
            raise OSError("Server unexpectedly closed connection")
        rest = self._buf[self._pos:]
        if self.transport._read_buffer:
            rest = bytes(self.transport._read_buffer) + rest
            self.transport._read_buffer = b""
        self._buf, self._pos = (rest + data if rest else data), 0
        return len(data)

    def read(self, n: int, initial: bool = False) -> bytes:
        """Exactly ``n`` bytes (py-amqp's ``_read``, with its errors)."""
        buf, pos = self._buf, self._pos
        end = pos + n
        if end <= len(buf) and not self.transport._read_buffer:
            self._pos = end
            return buf[pos:end]
        rbuf: bytes = bytes(self.transport._read_buffer) + buf[pos:]
        self._buf, self._pos = b"", 0
        try:
            while len(rbuf) < n:
                try:
                    data = self._recv(max(READ_AHEAD_BYTES, n - len(rbuf)))
                except OSError as exc:
                    # Nothing more yet on a socket without a timeout: a timeout, at any of
                    # the frame's reads (py-amqp spins on the rest of a frame, and keeps
                    # what it read of the frame on a timeout at any of them).
                    if exc.errno == errno.EAGAIN or (exc.errno == errno.EINTR and initial
                                                     and self.transport.raise_on_initial_eintr):
                        raise TimeoutError() from exc
                    if exc.errno == errno.EINTR:
                        continue
                    raise
                if not data:
                    raise OSError("Server unexpectedly closed connection")
                rbuf += data
        except BaseException:
            self.transport._read_buffer = rbuf  # py-amqp adds the partial frame before it
            raise
        self.transport._read_buffer = b""
        self._buf, self._pos = rbuf, n
        return rbuf[:n]


def read_ahead(conn: Any) -> ReadAhead | None:
    """Serve ``conn``'s reads from large ``recv`` calls (plain TCP; TLS reads as before)."""
    transport: Any = getattr(conn, "transport", None)
    if type(transport).__name__ != "TCPTransport" or not hasattr(transport, "_read"):
        return None
    reader = ReadAhead(transport)
    transport._read = reader.read
    return reader


def without_publish_reads(conn: Any) -> None:
    """Stop py-amqp reading the socket before every publish on ``conn`` (once connected).

    When the client announced the ``connection.blocked`` capability, py-amqp's
    ``basic_publish`` first makes an empty read (``drain_events(timeout=0)``), a timeout
    raised through its layers: about 40 us of a single send at idle, before its bytes
    leave. That read cannot stop the publish it precedes, and a link hears the broker's
    blocked notices anyway whenever it reads (every wait for a confirm), and checks them
    before each batch. The broker got the capability in the handshake and keeps sending
    the notices; only py-amqp's local copy of it changes.
    """
    props = getattr(conn, "client_properties", None)
    if not isinstance(props, dict):
        return
    capabilities = dict(props.get("capabilities") or {})
    if capabilities.get("connection.blocked"):
        capabilities["connection.blocked"] = False
        conn.client_properties = {**props, "capabilities": capabilities}


#: Header a delivery carries when its own headers could not be decoded (set by this
#: client only, in place of the headers; its value says why). A header of that name
#: sent by a producer is dropped on receipt.
H_UNREADABLE = "tw-unreadable"
#: Longest reason put in :data:`H_UNREADABLE`.
_WHY_CHARS = 200
#: Method and content header frame types (AMQP 0-9-1).
_FRAME_METHOD, _FRAME_HEADER = 1, 2


def tolerant_frames(connection: Any, callback: Any) -> Callable[[Any], Any]:
    """py-amqp's frame handler, but a content header it cannot decode does not raise.

    py-amqp decodes properties on the I/O thread while it reads frames; one message with,
    say, a header timestamp 2**40 seconds out raised ``ValueError`` there, every time it
    was delivered. Such a header frame is rewritten: its headers table becomes
    ``{H_UNREADABLE: why}`` (other properties kept when they decode), so the delivery
    arrives, and its consumer dead-letters it. Any producer may send a header named
    :data:`H_UNREADABLE` too: on a message whose header frame decoded, it is dropped.
    """
    rewritten: set[int] = set()  # channels whose pending message's header we rewrote

    def delivered(channel: int, method_sig: Any, args: Any, content: Any) -> Any:
        if content is not None and channel not in rewritten:
            headers = content.properties.get("application_headers")
            if isinstance(headers, dict):
                headers.pop(H_UNREADABLE, None)
        rewritten.discard(channel)
        return callback(channel, method_sig, args, content)

    handle = method_framing.frame_handler(connection, delivered)

    def on_frame(frame: Any) -> Any:
        frame_type, channel, buf = frame
        if frame_type != _FRAME_HEADER:
            if frame_type == _FRAME_METHOD:
                rewritten.discard(channel)  # a new method: no message of ours is pending
            return handle(frame)
        try:
            return handle(frame)
        except HEADER_ERRORS as exc:
            # py-amqp still waits for this message's header: give it one it can read.
            why = f"{type(exc).__name__}: {exc}"[:_WHY_CHARS]
            rewritten.add(channel)  # before handle: a bodyless message is delivered in it
            try:
                return handle((frame_type, channel, _readable_header(bytes(buf), why)))
            except HEADER_ERRORS:
                return handle((frame_type, channel, _readable_header(bytes(buf), why, False)))

    return on_frame


def _readable_header(buf: bytes, why: str, keep: bool = True) -> bytes:
    """A content header frame payload whose headers table says only ``why``.

    ``keep``: keep the other properties (content type, message id...); otherwise drop
    them all. Layout: class, weight, body size (12 bytes), flags, then the properties
    in flag order: content type, content encoding, headers (a length-prefixed table).
    """
    table: bytes = amqp_dumps("F", [{H_UNREADABLE: why}])
    flags = struct.unpack_from(">H", buf, 12)[0]
    if not keep or not flags & 0x2000:
        return buf[:12] + struct.pack(">H", 0x2000) + table
    offset = 14
    for bit in (0x8000, 0x4000):  # the two short strings before the table
        if flags & bit:
            offset += 1 + buf[offset]
    (length,) = struct.unpack_from(">I", buf, offset)
    return buf[:offset] + table + buf[offset + 4 + length:]


#: The content properties :func:`publish_frames` writes itself: flag bit and kind, in
#: the order of the header frame (AMQP 0-9-1; ``s`` shortstr, ``F`` table, ``o`` octet,
#: ``L`` long long). A message with any other property goes through py-amqp.
_PROPERTIES = (("content_type", 0x8000, "s"), ("application_headers", 0x2000, "F"),
               ("delivery_mode", 0x1000, "o"), ("message_id", 0x0080, "s"),
               ("timestamp", 0x0040, "L"), ("app_id", 0x0008, "s"))
_KNOWN = frozenset(name for name, _, _ in _PROPERTIES)
_INT32 = 2147483647


def _short(value: str) -> bytes | None:
    data = value.encode("utf-8", "surrogatepass")
    return None if len(data) > 255 else bytes((len(data),)) + data


def _table(headers: dict[str, Any]) -> bytes | None:
    """A headers table of strings, booleans, numbers and ``None`` as py-amqp writes it;
    ``None`` for anything else (py-amqp's to write, or refuse)."""
    out = []
    for key, value in headers.items():
        name = _short(key) if isinstance(key, str) else None
        if name is None:
            return None
        out.append(name)
        if isinstance(value, str):
            data = value.encode("utf-8", "surrogatepass")
            out.append(struct.pack(">cI", b"S", len(data)) + data)
        elif isinstance(value, bool):
            out.append(b"t\x01" if value else b"t\x00")
        elif isinstance(value, float):
            out.append(struct.pack(">cd", b"d", value))
        elif isinstance(value, int):
            if not -(2**63) <= value < 2**63:
                return None
            out.append(struct.pack(">ci", b"I", value) if -_INT32 <= value <= _INT32
                       else struct.pack(">cq", b"L", value))
        elif value is None:
            out.append(b"V")
        else:
            return None
    data = b"".join(out)
    return struct.pack(">I", len(data)) + data


def publish_frames(channel: int, frame_max: int, exchange: str, routing_key: str,
                   mandatory: bool, properties: dict[str, Any], body: bytes) -> bytes | None:
    """A ``basic.publish`` (method, content header and body frames) as the bytes py-amqp
    would write, or ``None`` if it has a property or header value outside those written
    here (then py-amqp writes it).

    py-amqp builds a message object, runs its generic method sender and serialises the
    properties through a ``BytesIO`` (about a hundred calls): a fifth of an idle
    producer's time before its bytes leave (benchmarks/README.md).
    """
    if not _KNOWN.issuperset(properties):
        return None
    exchange_b, key_b = _short(exchange), _short(routing_key)
    if exchange_b is None or key_b is None:
        return None
    flags, fields = 0, []
    for name, bit, kind in _PROPERTIES:
        value = properties.get(name)
        if value is None:
            continue
        flags |= bit
        field = (_short(value or "") if kind == "s" else _table(value) if kind == "F"
                 else bytes((value,)) if kind == "o" else struct.pack(">Q", value))
        if field is None:
            return None
        fields.append(field)
    method = b"\x00\x3c\x00\x28\x00\x00" + exchange_b + key_b + (b"\x01" if mandatory else b"\x00")
    header = struct.pack(">HHQH", 60, 0, len(body), flags) + b"".join(fields)
    out = [struct.pack(">BHI", 1, channel, len(method)), method, b"\xce",
           struct.pack(">BHI", 2, channel, len(header)), header, b"\xce"]
    chunk = frame_max - 8
    for start in range(0, len(body), chunk):
        part = body[start:start + chunk]
        out += (struct.pack(">BHI", 3, channel, len(part)), part, b"\xce")
    return b"".join(out)
