"""A delivery the broker gave up on (consumer timeout) is dead-lettered when it returns.

RabbitMQ up to 4.2 closes the channel (tested against a real node in
tests/integration/test_delivery_path_rabbitmq.py); 4.3 cancels the consumer instead,
which these tests feed to the consumer directly.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import SimpleNamespace

import pytest
from amqp import exceptions as amqp_errors

from taskwarren.brokers.base import Republish
from taskwarren.brokers.rabbitmq import RabbitMQConsumer, parse_urls
from taskwarren.brokers.rabbitmq.errors import LinkLostError, translate
from taskwarren.message import H_ERROR_TYPE
from taskwarren.settings import Settings

URL = "amqp://guest:guest@127.0.0.1:1/%2F"  # never connected to


@pytest.fixture
def consumer() -> Iterator[RabbitMQConsumer]:
    c = RabbitMQConsumer(Settings(url=URL, consumer_timeout_s=5), parse_urls(URL))
    yield c
    c.close()


def arrive(consumer: RabbitMQConsumer, tag: int, message_id: str) -> None:
    msg = SimpleNamespace(delivery_info={"delivery_tag": tag, "redelivered": tag > 1},
                          properties={"message_id": message_id}, body=b"{}")
    consumer._receiver("q")(msg)


def cancelled() -> LinkLostError:
    """py-amqp's basic.cancel, as the consumer sees it (mapped to ours)."""
    error = translate(amqp_errors.ConsumerCancelled("amq.ctag-1", (60, 30)))
    assert isinstance(error, LinkLostError) and error.cancelled
    return error


def test_a_delivery_cancelled_twice_after_outliving_the_timeout_is_dead_lettered_on_return(
    consumer: RabbitMQConsumer,
) -> None:
    for tag in (1, 2):
        arrive(consumer, tag, "id-1")
        consumer._received[tag] = ("id-1", "q", time.monotonic() - 6)  # ran 6 s > 5 s
        consumer._lost(cancelled())
        consumer._unacked.clear()  # the reconnect forgets the old link's deliveries

    arrive(consumer, 3, "id-1")

    (delivery, action), = consumer._settle_q
    assert delivery.tag == 3
    assert isinstance(action, Republish) and action.dead
    assert action.envelope.headers[H_ERROR_TYPE] == "ConsumerTimeout"
    assert 3 not in [d.tag for d in consumer._incoming], "it is not handed out to run"


def test_a_cancel_while_the_oldest_delivery_is_young_charges_nothing(
    consumer: RabbitMQConsumer,
) -> None:
    for tag in (1, 2, 3):
        arrive(consumer, tag, "id-2")
        consumer._lost(cancelled())  # a deleted queue, say: not a timeout
        consumer._unacked.clear()

    arrive(consumer, 4, "id-2")

    assert not consumer._settle_q
    assert [d.tag for d in consumer._incoming] == [1, 2, 3, 4]
