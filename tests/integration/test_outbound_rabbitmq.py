"""The consumer's publishing link on the real RabbitMQ: refused declares, deleted queues."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest

from taskwarren.brokers.base import Delivery, Republish
from taskwarren.brokers.rabbitmq import RabbitMQBroker
from taskwarren.brokers.rabbitmq.consumer import RabbitMQConsumer
from taskwarren.message import Envelope, encode
from taskwarren.settings import Settings
from taskwarren.topology import DELAY_DELIVER_EXCHANGE, dead_queue
from tests.support.rabbit import Release, connection, queue_counts, unique_queue

pytestmark = pytest.mark.rabbitmq
TASK = "outbound.echo"


@pytest.fixture
def broker(rabbit_url: str, queue: str) -> Iterator[RabbitMQBroker]:
    b = RabbitMQBroker(Settings(url=rabbit_url, queue_type="quorum"))
    b.declare([queue])
    yield b
    b.close()


@pytest.fixture
def consumer(broker: RabbitMQBroker, queue: str) -> Iterator[RabbitMQConsumer]:
    c = broker.consumer()
    assert isinstance(c, RabbitMQConsumer)
    c.consume(queue, 10)
    yield c
    c.close()


def send(broker: RabbitMQBroker, queue: str, n: int) -> Envelope:
    env = encode(TASK, queue, json.dumps({"n": n}).encode())
    broker.publish(queue, [env])
    return env


class Inbox:
    """Polls a consumer (settling, reconnecting as it goes) and keeps what arrives."""

    def __init__(self, consumer: RabbitMQConsumer) -> None:
        self.consumer = consumer
        self.arrived: dict[str, Delivery] = {}

    def poll(self) -> None:
        for delivery in self.consumer.poll(0.1):
            self.arrived[delivery.envelope.message_id] = delivery

    def take(self, message_id: str, timeout_s: float = 30.0) -> Delivery:
        """The delivery of ``message_id``, once it arrived.

        The first one waits for the consumer's connection too: on a loaded machine (CI
        runs three pytests and private broker nodes side by side) one attempt may time
        out and the next come after a backoff.
        """
        self.until(lambda: message_id in self.arrived, timeout_s, f"{message_id} delivered")
        return self.arrived.pop(message_id)

    def until(self, predicate: Callable[[], object], timeout_s: float = 10.0,
              what: str = "condition") -> None:
        """Keep polling until ``predicate()`` holds."""
        deadline = time.monotonic() + timeout_s
        while not predicate():
            assert time.monotonic() < deadline, f"{what} not reached in time"
            self.poll()


def ready_count(queue: str, url: str) -> int:
    try:
        return queue_counts(queue, url)[0]
    except Exception:
        return -1  # not there (yet)


@pytest.fixture
def vhost_url(rabbit_release: Release, rabbit_url: str) -> Iterator[str]:
    """A vhost of its own on the shared node: the test deletes a shared exchange there."""
    name = unique_queue("twtest-vhost")
    rabbit_release.ctl("add_vhost", name)
    try:
        rabbit_release.ctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
        yield rabbit_url.rsplit("/", 1)[0] + "/" + name
    finally:
        rabbit_release.ctl("delete_vhost", name)


def test_a_refused_declare_on_the_publishing_link_leaves_later_republishes_confirmed(
    vhost_url: str,
) -> None:
    queue, other = unique_queue(), unique_queue()
    broker = RabbitMQBroker(Settings(url=vhost_url, queue_type="quorum"))
    broker.declare([queue])
    consumer = broker.consumer()
    assert isinstance(consumer, RabbitMQConsumer)
    try:
        consumer.consume(queue, 10)
        inbox = Inbox(consumer)
        first = inbox.take(send(broker, queue, 1).message_id)
        consumer.settle(first, Republish(queue, first.envelope))  # the publishing link is up
        inbox.until(lambda: consumer.pending() == 0, what="the first retry confirmed")

        with connection(vhost_url) as conn:
            conn.channel().exchange_delete(DELAY_DELIVER_EXCHANGE)
        # Declaring a new target binds it to that exchange: refused (404), which closes
        # the publishing channel; py-amqp reopens it without confirm mode.
        second = inbox.take(send(broker, queue, 2).message_id)
        consumer.settle(second, Republish(other, second.envelope))
        inbox.until(lambda: ready_count(other, vhost_url) == 1, timeout_s=20.0,
                    what="the copy in its target, once its declare went through")

        # A later retry is confirmed (and its original acked), not left waiting for ever
        # on a channel that never confirms.
        third = inbox.take(send(broker, queue, 3).message_id)
        consumer.settle(third, Republish(queue, third.envelope))
        inbox.until(lambda: consumer.pending() == 0, what="all confirmed")
    finally:
        consumer.close()
        broker.close()


def test_a_dead_letter_queue_deleted_under_a_running_consumer_is_declared_again(
    rabbit_url: str, queue: str, broker: RabbitMQBroker, consumer: RabbitMQConsumer,
) -> None:
    dead = dead_queue(queue)
    inbox = Inbox(consumer)
    first = inbox.take(send(broker, queue, 1).message_id)
    consumer.settle(first, Republish(queue, first.envelope, dead=True))
    inbox.until(lambda: ready_count(dead, rabbit_url) == 1, what="first dead letter")

    with connection(rabbit_url) as conn:
        conn.channel().queue_delete(dead)

    # The worker runs the next message, fails it for good, and dead-letters it. The first
    # copy comes back unroutable and its original is redelivered; the worker then runs it
    # again and dead-letters it again: that copy must land.
    message_id = send(broker, queue, 2).message_id
    for _ in range(3):
        got = inbox.take(message_id)
        consumer.settle(got, Republish(queue, got.envelope, dead=True))
        inbox.until(lambda: consumer.pending() == 0, what="the dead letter settled")
        if ready_count(dead, rabbit_url) == 1:
            break
    assert ready_count(dead, rabbit_url) == 1
    inbox.until(lambda: consumer.pending() == 0 and ready_count(queue, rabbit_url) == 0,
                what="the original gone")
