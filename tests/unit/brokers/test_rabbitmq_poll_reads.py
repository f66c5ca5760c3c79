"""The consumer reads its links only when there is something to read.

An empty read through py-amqp (``drain_events(timeout=0)``) raises a timeout through
several layers before the consumer catches it: tens of microseconds on the I/O
thread, between a delivery arriving and its executor starting. These tests count
reads against a real broker; they time nothing.
"""

from __future__ import annotations

import select
import time
from collections.abc import Callable
from typing import Any

import pytest

from taskwarren import Warren
from taskwarren.brokers.base import ACK, Delivery
from taskwarren.brokers.rabbitmq import RabbitMQConsumer
from taskwarren.brokers.rabbitmq.errors import mapped


class Reads:
    """Counts a connection's ``drain_events`` calls, and those that found nothing."""

    def __init__(self, conn: Any) -> None:
        self.calls = 0
        self.empty = 0
        real: Callable[..., None] = conn.drain_events

        def counted(timeout: float | None = None) -> None:
            self.calls += 1
            try:
                real(timeout=timeout)
            except TimeoutError:
                self.empty += 1
                raise

        conn.drain_events = counted



def first_deliveries(consumer: RabbitMQConsumer, timeout_s: float = 10.0) -> list[Delivery]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = consumer.poll(0.2)
        if got:
            return got
    raise AssertionError("no delivery arrived")


def test_a_poll_that_reads_a_delivery_makes_no_empty_read(app: Warren, queue: str) -> None:
    consumer = app.broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    try:
        consumer.consume(queue, 10)
        consumer.poll(0)  # connected and consuming
        reads = Reads(consumer._link.conn)
        empty_polls = 0
        for n in range(5):
            app.tasks["brokers.noop"].send(n)
            before = reads.empty
            (delivery,) = first_deliveries(consumer)
            empty_polls += reads.empty > before
            consumer.settle(delivery, ACK)
        assert reads.calls >= 5
        assert empty_polls == 0, "a poll read its link past the delivery, into a timeout"
    finally:
        consumer.close()


def test_a_poll_that_read_the_socket_dry_looks_at_it_once(
        app: Warren, queue: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The wait's select finds the delivery, one read takes all the socket had, and the
    poll returns it without a second look (the next poll's select sees what comes)."""
    from taskwarren.brokers.rabbitmq import consumer as consumer_module

    consumer = app.broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    selects = []
    real_select = select.select

    class Counting:
        @staticmethod
        def select(*args: Any) -> Any:
            selects.append(args[0])
            return real_select(*args)

    try:
        consumer.consume(queue, 10)
        consumer.poll(0)
        monkeypatch.setattr(consumer_module, "select", Counting)
        monkeypatch.setattr("taskwarren.brokers.rabbitmq.link.select", Counting)
        looked = []
        for n in range(5):
            app.tasks["brokers.noop"].send(n)
            got: list[Delivery] = []
            while not got:
                before = len(selects)
                got = consumer.poll(5.0)
            looked.append(len(selects) - before)
            for delivery in got:
                consumer.settle(delivery, ACK)
        assert looked.count(1) >= 4, looked  # (a delivery cut in two segments needs two)
    finally:
        consumer.close()


def test_idle_polls_do_not_read_either_link(app: Warren, queue: str) -> None:
    consumer = app.broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    try:
        consumer.consume(queue, 10)
        consumer.poll(0)
        consumer.announce({"child": 0})  # opens the publishing link, as a worker does
        assert consumer._out.link.connected
        confirm = Reads(consumer._out.link.conn)
        deadline = time.monotonic() + 10
        while not confirm.calls:  # the announcement's confirm, read by some poll
            assert time.monotonic() < deadline, "the announcement's confirm was never read"
            consumer.poll(0.05)
        consumed, published = Reads(consumer._link.conn), Reads(consumer._out.link.conn)
        for _ in range(20):
            consumer.poll(0)
        assert (consumed.calls, published.calls) == (0, 0)
    finally:
        consumer.close()


def test_a_send_reads_its_link_only_for_the_confirm(app: Warren) -> None:
    noop = app.tasks["brokers.noop"]
    noop.send(0)  # connected, queue declared
    broker: Any = app.broker
    reads = Reads(broker._link.conn)
    for n in range(5):
        noop.send(n)
    # py-amqp reads the socket before every publish unless told not to: an empty read,
    # before the message's bytes leave.
    assert reads.calls >= 5, "the confirms were read somewhere else"
    assert reads.empty == 0, "a send made an empty read"


def test_a_poll_does_not_sleep_on_the_socket_while_whole_frames_wait_read_ahead(
        app: Warren, queue: str) -> None:
    noop = app.tasks["brokers.noop"]
    for n in range(20):
        noop.send(n)
    consumer = app.broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    try:
        consumer.consume(queue, 20)
        got = []
        while len(got) < 20:
            got.extend(first_deliveries(consumer, timeout_s=20))
        for delivery in got:
            consumer.settle(delivery, ACK)
        consumer.poll(0)  # sends the ack: the window is open again
        for n in range(20, 40):
            noop.send(n)
        link = consumer._link
        sock = link.conn.sock
        deadline = time.monotonic() + 10
        while not select.select([sock], [], [], 0.1)[0]:
            assert time.monotonic() < deadline, "no delivery reached the socket"
        time.sleep(0.3)  # the rest of them too
        # One message handled, the frames of the others read ahead: the socket is empty
        # and nothing more comes until they are acked.
        with mapped():
            assert link.drain(0)
        got = list(consumer._incoming)
        consumer._incoming.clear()
        assert link.conn.reader is not None and link.conn.reader.has_frame()

        started = time.monotonic()
        while len(got) < 20:
            got.extend(consumer.poll(30))
        # Sleeping on the socket (until a heartbeat or the 30 s) would have been the bug.
        assert time.monotonic() - started < 5
    finally:
        consumer.close()
