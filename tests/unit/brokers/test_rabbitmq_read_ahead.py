"""py-amqp's frame reads served from large ``recv`` calls (frames.ReadAhead): the same
frames, in order, fewer system calls, nothing lost across a timeout mid-frame."""

from __future__ import annotations

import socket
import struct
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from amqp.transport import TCPTransport

from taskwarren.brokers.rabbitmq.frames import ReadAhead, read_ahead


def frame(kind: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", kind, channel, len(payload)) + payload + b"\xce"


class CountingSocket:
    """A socket whose ``recv`` calls are counted."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.recvs = 0

    def recv(self, n: int, flags: int = 0) -> bytes:
        self.recvs += 1
        return self.sock.recv(n, flags)


class Wire:
    """A py-amqp TCP transport reading from one end of a socket pair, with read-ahead."""

    def __init__(self) -> None:
        self.ours, self.broker = socket.socketpair()
        self.counting = CountingSocket(self.ours)
        transport: Any = TCPTransport.__new__(TCPTransport)
        transport.sock = self.counting
        transport._read_buffer = b""
        transport.raise_on_initial_eintr = True
        self.transport = transport
        conn = type("Conn", (), {"transport": transport})()
        reader = read_ahead(conn)
        assert isinstance(reader, ReadAhead)
        self.reader = reader

    def read_frame(self) -> tuple[int, int, bytes]:
        kind, channel, payload = self.transport.read_frame()
        return kind, channel, bytes(payload)

    def close(self) -> None:
        self.ours.close()
        self.broker.close()


@pytest.fixture
def wire() -> Iterator[Wire]:
    w = Wire()
    yield w
    w.close()


def test_many_frames_sent_at_once_come_out_whole_and_in_order_from_few_reads(
        wire: Wire) -> None:
    frames = [(1 + i % 3, i % 5, f"payload {i}".encode() * (i % 7)) for i in range(300)]
    wire.broker.sendall(b"".join(frame(*f) for f in frames))

    got = [wire.read_frame() for _ in frames]

    assert got == frames
    assert wire.counting.recvs <= 3  # py-amqp alone: three per frame, 900
    assert wire.reader.buffered() == 0 and not wire.reader.has_frame()


def test_a_frame_cut_by_a_timeout_is_kept_and_read_whole_once_the_rest_comes(
        wire: Wire) -> None:
    whole = frame(3, 1, b"x" * 5000)
    after = frame(1, 1, b"next")
    wire.ours.settimeout(0.05)
    wire.broker.sendall(whole[:2500])

    with pytest.raises(socket.timeout):
        wire.read_frame()
    assert wire.reader.buffered() == 2500 and not wire.reader.has_frame()

    wire.broker.sendall(whole[2500:] + after)
    assert wire.read_frame() == (3, 1, b"x" * 5000)
    assert wire.read_frame() == (1, 1, b"next")
    with pytest.raises(socket.timeout):  # nothing more: nothing made up either
        wire.read_frame()


def test_a_header_cut_by_a_timeout_is_kept_too(wire: Wire) -> None:
    whole = frame(2, 7, b"header payload")
    wire.ours.settimeout(0.05)
    wire.broker.sendall(whole[:3])

    with pytest.raises(socket.timeout):
        wire.read_frame()

    wire.broker.sendall(whole[3:])
    assert wire.read_frame() == (2, 7, b"header payload")


def test_a_frame_larger_than_the_read_ahead_arrives_whole(wire: Wire) -> None:
    big = bytes(range(256)) * 8192  # 2 MiB
    wire.ours.settimeout(10)
    writer = threading.Thread(target=wire.broker.sendall,
                              args=(frame(3, 1, big) + frame(8, 0, b""),))
    writer.start()
    try:
        assert wire.read_frame() == (3, 1, big)
        assert wire.read_frame() == (8, 0, b"")
    finally:
        writer.join()


def test_has_frame_says_whether_a_whole_frame_waits(wire: Wire) -> None:
    wire.ours.settimeout(1)
    wire.broker.sendall(frame(1, 1, b"one") + frame(1, 1, b"two")[:5])
    assert wire.read_frame() == (1, 1, b"one")  # reads both, hands out one
    assert not wire.reader.has_frame() and wire.reader.buffered() == 5
    wire.broker.sendall(frame(1, 1, b"two")[5:])
    assert wire.read_frame() == (1, 1, b"two")
    wire.broker.sendall(frame(1, 1, b"three") * 2)
    assert wire.read_frame() == (1, 1, b"three")
    assert wire.reader.has_frame()


@pytest.mark.timeout(20)
# Cut in the header, after it, in the payload, before the end byte.
@pytest.mark.parametrize("cut", [3, 7, 20, 27])
def test_a_read_without_a_timeout_stops_at_a_partial_frame_instead_of_spinning(
        wire: Wire, cut: int) -> None:
    whole = frame(3, 1, b"p" * 20)  # 28 bytes
    wire.ours.settimeout(0)  # py-amqp's drain_events(timeout=0)
    wire.broker.sendall(whole[:cut])

    with pytest.raises(socket.timeout):
        wire.read_frame()  # py-amqp alone spins here until the rest comes

    wire.broker.sendall(whole[cut:])
    wire.ours.settimeout(5)
    assert wire.read_frame() == (3, 1, b"p" * 20)
