"""A delivery read ahead whole is taken in one step (inbound.take_delivery); anything
else is left to py-amqp, with nothing read. Checked frame by frame on a socket pair,
then end to end on the real broker against py-amqp's own reading of the same messages."""

from __future__ import annotations

import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import amqp
import pytest
from amqp.serialization import dumps
from amqp.transport import TCPTransport

from taskwarren import Warren
from taskwarren.brokers.base import ACK
from taskwarren.brokers.rabbitmq import H_UNREADABLE, RabbitMQConsumer
from taskwarren.brokers.rabbitmq import link as link_module
from taskwarren.brokers.rabbitmq.frames import ReadAhead, read_ahead
from taskwarren.brokers.rabbitmq.inbound import take_delivery
from tests.support.rabbit import connection, queue_counts


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


def deliver_frames(channel: int, tag: int, body_chunks: list[bytes],
                   properties: bytes = struct.pack(">H", 0x0080) + b"\x04id-1") -> bytes:
    """basic.deliver on ``channel`` (consumer tag ``ct``), its header and body frames."""
    args = struct.pack(">HH", 60, 60) + dumps("sLbss", ["ct", tag, False, "ex", "rk"])
    size = sum(len(c) for c in body_chunks)
    header = struct.pack(">HHQ", 60, 0, size) + properties
    return (frame(1, channel, args) + frame(2, channel, header)
            + b"".join(frame(3, channel, c) for c in body_chunks))


#: A headers table holding a timestamp 2**40 s out (year 36812): py-amqp cannot decode it.
_FAR_FUTURE = b"\x07sent-at" + b"T" + struct.pack(">Q", 2**40)
FAR_FUTURE_TABLE = struct.pack(">I", len(_FAR_FUTURE)) + _FAR_FUTURE


class Unreadable(amqp.Message):  # type: ignore[misc]
    """A message published with :data:`FAR_FUTURE_TABLE` as its only property."""

    def _serialize_properties(self) -> bytes:
        return struct.pack(">H", 0x2000) + FAR_FUTURE_TABLE


class Channel:
    """What take_delivery asks of a py-amqp channel, recording what it hands over."""

    def __init__(self) -> None:
        self.is_closing = False
        self.auto_decode = True
        self._pending: dict[Any, Any] = {}
        self.got: list[tuple[Any, ...]] = []
        self.callbacks: dict[str, Any] = {"ct": None}
        self._callbacks = {(60, 60): lambda *args: self.got.append(args)}


class Wire:
    """A read-ahead py-amqp transport on one end of a socket pair, and a connection."""

    def __init__(self) -> None:
        self.ours, self.broker = socket.socketpair()
        transport: Any = TCPTransport.__new__(TCPTransport)
        transport.sock = self.ours
        transport._read_buffer = b""
        self.channel = Channel()
        self.conn: Any = type("Conn", (), {"transport": transport, "bytes_recv": 0,
                                           "channels": {1: self.channel}})()
        reader = read_ahead(self.conn)
        assert isinstance(reader, ReadAhead)
        self.reader = reader

    def send(self, data: bytes) -> None:
        self.broker.sendall(data)
        deadline = time.monotonic() + 5
        while self.reader.fill() == 0:  # loopback: there at once, but do not race it
            assert time.monotonic() < deadline, "the socket pair lost bytes"


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.ours.close()
    w.broker.close()


def test_a_whole_delivery_is_taken_in_one_step(wire: Wire) -> None:
    wire.send(deliver_frames(1, 7, [b'{"a": 1}']))

    assert take_delivery(wire.conn, wire.reader)

    ((consumer_tag, tag, redelivered, exchange, routing_key, msg),) = wire.channel.got
    assert (consumer_tag, tag, redelivered, exchange, routing_key) == ("ct", 7, False, "ex", "rk")
    assert msg.body == b'{"a": 1}'
    assert msg.properties == {"message_id": "id-1"}
    assert wire.conn.bytes_recv == 3  # py-amqp's heartbeat clock counts frames
    assert wire.reader.buffered() == 0


def test_a_delivery_cut_anywhere_is_left_whole_until_its_last_byte_comes(wire: Wire) -> None:
    data = deliver_frames(1, 1, [b"x" * 10, b"y" * 5])  # two body frames
    for cut in range(1, len(data)):
        wire.send(data[cut - 1:cut])
        assert not take_delivery(wire.conn, wire.reader), f"taken with {cut} bytes"
        assert wire.reader.buffered() == cut  # nothing read past
    wire.send(data[-1:])

    assert take_delivery(wire.conn, wire.reader)
    assert wire.channel.got[0][-1].body == b"x" * 10 + b"y" * 5


def test_deliveries_read_together_are_taken_one_by_one_in_order(wire: Wire) -> None:
    wire.send(b"".join(deliver_frames(1, n, [str(n).encode()]) for n in range(1, 4))
              + frame(8, 0, b""))  # and a heartbeat after them

    while take_delivery(wire.conn, wire.reader):
        pass

    assert [args[1] for args in wire.channel.got] == [1, 2, 3]
    assert wire.reader.buffered() == 8  # the heartbeat is py-amqp's to read
    kind, channel, payload = wire.conn.transport.read_frame()
    assert (kind, channel, bytes(payload)) == (8, 0, b"")


def test_a_bodyless_delivery_is_taken_with_an_empty_body(wire: Wire) -> None:
    wire.send(deliver_frames(1, 2, []))

    assert take_delivery(wire.conn, wire.reader)
    assert wire.channel.got[0][-1].body in (b"", "")


@pytest.mark.parametrize("why", ["other frame first", "channel closing", "waiter",
                                 "unknown consumer", "encoded body", "bad header",
                                 "another py-amqp", "short method frame"])
def test_anything_unusual_is_left_to_py_amqp_with_nothing_read(wire: Wire, why: str) -> None:
    data = deliver_frames(1, 3, [b"{}"])
    if why == "other frame first":
        data = frame(8, 0, b"") + data
    elif why == "channel closing":
        wire.channel.is_closing = True
    elif why == "waiter":
        wire.channel._pending[(60, 60)] = object()
    elif why == "unknown consumer":
        wire.channel.callbacks = {}
    elif why == "another py-amqp":  # one that keeps its waiters elsewhere
        del wire.channel._pending
    elif why == "short method frame":  # malformed: py-amqp's to refuse
        data = frame(1, 1, b"\x00\x3c") + data
    elif why == "encoded body":
        data = deliver_frames(1, 3, [b"{}"], struct.pack(">H", 0x4000) + b"\x05utf-8")
    else:  # a timestamp past year 9999: py-amqp raises (frames.tolerant_frames mends it)
        data = deliver_frames(1, 3, [b"{}"], struct.pack(">H", 0x2000) + FAR_FUTURE_TABLE)
    wire.send(data)

    assert not take_delivery(wire.conn, wire.reader)
    assert wire.reader.buffered() == len(data)
    assert wire.channel.got == [] and wire.conn.bytes_recv == 0


def test_a_producers_unreadable_header_is_dropped_as_py_amqp_s_path_drops_it(
        wire: Wire) -> None:
    table = dumps("F", [{H_UNREADABLE: "forged", "tw-task": "t"}])
    wire.send(deliver_frames(1, 4, [b"{}"], struct.pack(">H", 0x2000) + table))

    assert take_delivery(wire.conn, wire.reader)
    assert wire.channel.got[0][-1].properties["application_headers"] == {"tw-task": "t"}


# -- the real broker ------------------------------------------------------------------



def test_on_the_broker_every_kind_of_message_arrives_as_py_amqp_reads_it(
        app: Warren, queue: str, rabbit_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain, large (several body frames), empty, encoded, forged and unreadable
    messages, queued first so that they arrive together: each arrives with the body and
    properties py-amqp gives the same message, and the plain ones in one step."""
    taken = []

    def counting(conn: Any, reader: ReadAhead) -> bool:
        ok = take_delivery(conn, reader)
        taken.append(ok)
        return ok

    monkeypatch.setattr(link_module, "take_delivery", counting)
    app.tasks["brokers.noop"].send(0)  # declares the queue
    sent = [
        amqp.Message(b'{"n": 1}', message_id="plain", application_headers={"tw-task": "t"}),
        amqp.Message(b"z" * 300_000, message_id="large"),  # past frame_max: 3 body frames
        amqp.Message(b"", message_id="empty"),
        amqp.Message("caf\u00e9", message_id="encoded", content_encoding="utf-8"),
        amqp.Message(b"{}", message_id="forged", application_headers={H_UNREADABLE: "x"}),
        amqp.Message(b'{"n": 2}', message_id="plain-2", delivery_mode=2, priority=3),
    ]
    with connection(rabbit_url) as conn:
        ch = conn.channel()
        for msg in sent:
            ch.basic_publish(msg, exchange="", routing_key=queue)
        ch.basic_publish(Unreadable(b"{}"), exchange="", routing_key=queue)
    consumer = app.broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    got = {}
    try:
        consumer.consume(queue, 100)
        deadline = time.monotonic() + 20
        while len(got) < len(sent) + 1 and time.monotonic() < deadline:
            for d in consumer.poll(0.2):
                got[d.envelope.message_id] = d
                consumer.settle(d, ACK)
    finally:
        consumer.close()
    expected = {"plain", "large", "empty", "encoded", "forged", "plain-2"}
    assert expected <= set(got) and len(got) == len(expected) + 1, sorted(got)  # + the task's
    # The unreadable one never reaches the caller: the consumer dead-letters it.
    assert queue_counts(queue + ".dead", rabbit_url)[0] == 1
    assert got["plain"].envelope.body == b'{"n": 1}'
    assert got["plain"].envelope.headers == {"tw-task": "t"}
    assert got["large"].envelope.body == b"z" * 300_000
    assert got["empty"].envelope.body == b""
    assert got["encoded"].envelope.body == "caf\u00e9".encode()
    assert H_UNREADABLE not in got["forged"].envelope.headers
    assert got["plain-2"].envelope.body == b'{"n": 2}'
    assert any(taken), "no delivery was taken in one step"
