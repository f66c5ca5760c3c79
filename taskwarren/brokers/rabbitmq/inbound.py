"""A delivery whose frames were all read ahead, handed to its consumer in one step.

py-amqp takes a delivery through three frame reads (each parsing a frame header, then
slicing payload and end byte), its frame handler three times, a ``Message`` filled in
two calls, and its channel's generic method dispatch (listeners, one-shot waiters, the
argument decoder): about 170 us of an idle worker's enqueue-to-start latency, traced
(benchmarks/README.md). When a
``basic.deliver``'s method, header and body frames are all in the read-ahead buffer
(:class:`~taskwarren.brokers.rabbitmq.frames.ReadAhead`), :func:`take_delivery`
parses them in one pass and calls the channel's own ``basic.deliver`` handler, which
calls the consumer's callback as py-amqp would.

Anything unusual is left to py-amqp, untouched: other frames, a frame not wholly
read yet, a header whose properties do not decode (py-amqp's path, through the
tolerant frame handler, dead-letters it), a ``content_encoding`` (py-amqp decodes the
body), a channel closing, an unknown consumer tag, a waiter for the method.
"""

from __future__ import annotations

from struct import unpack_from
from typing import Any

from amqp.basic_message import Message
from amqp.serialization import loads

from taskwarren.brokers.rabbitmq.frames import H_UNREADABLE, ReadAhead
from taskwarren.message import Envelope

__all__ = ["envelope_of", "take_delivery"]

#: Method, content header and content body frame types (AMQP 0-9-1), and a frame's end.
_METHOD, _HEADER, _BODY, _FRAME_END = 1, 2, 3, 0xCE
#: ``basic.deliver``'s class and method ids, and its arguments' layout (py-amqp's codes).
_DELIVER = (60, 60)
_DELIVER_ARGS = "sLbss"


def _frame(buf: bytes, pos: int, kind: int, channel: int) -> tuple[int, int] | None:
    """Payload start and end of the whole frame at ``pos`` if it is of ``kind`` on
    ``channel`` (``-1``: any channel), else ``None``."""
    if len(buf) - pos < 7:
        return None
    frame_type, frame_channel, size = unpack_from(">BHI", buf, pos)
    end = pos + 7 + size
    if (frame_type != kind or (channel >= 0 and frame_channel != channel)
            or len(buf) <= end or buf[end] != _FRAME_END):
        return None
    return pos + 7, end


def _split(buf: bytes, pos: int) -> tuple[int, bytes, bytes, bytes, int, int] | None:
    """A ``basic.deliver`` wholly in ``buf`` from ``pos``: its channel, method payload,
    header payload and body, where its last frame ends, and how many frames it took."""
    method = _frame(buf, pos, _METHOD, -1)
    if (method is None or method[1] - method[0] < 4
            or unpack_from(">HH", buf, method[0]) != _DELIVER):
        return None
    channel = unpack_from(">H", buf, pos + 1)[0]
    header = _frame(buf, method[1] + 1, _HEADER, channel)
    if header is None or header[1] - header[0] < 14:
        return None
    (body_size,) = unpack_from(">Q", buf, header[0] + 4)
    chunks: list[bytes] = []
    got, at, frames = 0, header[1] + 1, 2
    while got < body_size:
        body = _frame(buf, at, _BODY, channel)
        if body is None:
            return None
        chunks.append(buf[body[0]:body[1]])
        got += body[1] - body[0]
        at, frames = body[1] + 1, frames + 1
    if got != body_size:
        return None  # py-amqp's to judge
    return (channel, buf[method[0]:method[1]], buf[header[0]:header[1]],
            chunks[0] if len(chunks) == 1 else b"".join(chunks), at, frames)


def take_delivery(conn: Any, reader: ReadAhead) -> bool:
    """Hand the ``basic.deliver`` at the head of ``reader``'s buffer to its consumer, if
    it is wholly there and plain; ``False`` (nothing read) leaves it to py-amqp."""
    buf, pos = reader.window()
    if not buf:
        return False
    found = _split(buf, pos)
    if found is None:
        return False
    channel_id, method, header, body, end, frames = found
    channels = getattr(conn, "channels", None)
    channel: Any = channels.get(channel_id) if isinstance(channels, dict) else None
    pending, handlers = getattr(channel, "_pending", None), getattr(channel, "_callbacks", None)
    if (not isinstance(pending, dict) or not isinstance(handlers, dict)
            or not isinstance(getattr(channel, "callbacks", None), dict)
            or getattr(channel, "is_closing", True) or _DELIVER in pending
            or _DELIVER not in handlers):
        return False  # a channel closing, a waiter, or a py-amqp laid out otherwise
    msg = Message(frame_method=_DELIVER, frame_args=method)
    try:
        msg.inbound_header(header)
    except Exception:  # py-amqp's path decides (dead-letters it)
        return False
    props = msg.properties
    if props.get("content_encoding") and getattr(channel, "auto_decode", True):
        return False
    args, _ = loads(_DELIVER_ARGS, method, 4)
    if args[0] not in channel.callbacks:
        return False
    headers = props.get("application_headers")
    if isinstance(headers, dict):
        headers.pop(H_UNREADABLE, None)  # ours to set only (frames.tolerant_frames)
    if body:
        msg.body = body
    msg.ready = True
    reader.consume(end)
    conn.bytes_recv = getattr(conn, "bytes_recv", 0) + frames  # py-amqp's heartbeat clock
    handlers[_DELIVER](*args, msg)
    return True


def envelope_of(msg: Any) -> Envelope:
    """The envelope of a message py-amqp delivered."""
    props = msg.properties
    body = msg.body
    if isinstance(body, str):  # py-amqp decodes when a content_encoding is set
        body = body.encode()
    return Envelope(
        message_id=str(props.get("message_id") or ""),
        body=bytes(body),
        headers=dict(props.get("application_headers") or {}),
        content_type=str(props.get("content_type") or ""),
        timestamp=_timestamp(props.get("timestamp")),
    )


def _timestamp(value: Any) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return 0
