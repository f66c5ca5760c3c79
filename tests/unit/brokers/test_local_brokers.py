"""The memory and SQLite brokers behave alike where they share code (brokers/_local.py)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taskwarren.brokers.base import REQUEUE, Broker, Republish
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.brokers.sqlite import SQLiteBroker
from taskwarren.errors import ConfigurationError
from taskwarren.message import H_ERROR, H_ERROR_TYPE, H_REASON, Envelope, encode
from taskwarren.topology import MAX_DELAY_S
from tests.contract.support import collect, eventually, settle

QUEUE = "jobs"
#: Builds the broker under test, with a delivery limit.
Make = Callable[..., Broker]


def message(n: int = 0) -> Envelope:
    return encode("unit.task", QUEUE, f'{{"n": {n}}}'.encode())


@pytest.fixture(params=["memory", "sqlite"])
def make(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Make]:
    """Builds the local broker under test with a given delivery limit."""
    made: list[Broker] = []

    def build(delivery_limit: int = 50) -> Broker:
        broker: Broker
        if request.param == "memory":
            broker = MemoryBroker(delivery_limit=delivery_limit)
        else:
            broker = SQLiteBroker(tmp_path / "tw.db", delivery_limit=delivery_limit)
        made.append(broker)
        return broker

    yield build
    for broker in made:
        broker.close()


def test_a_message_past_the_delivery_limit_is_dead_lettered_saying_how_often(make: Make) -> None:
    broker: Broker = make(delivery_limit=2)
    broker.publish(QUEUE, [message()])
    consumer = broker.consumer()
    consumer.consume(QUEUE, 1)
    deadline = time.monotonic() + 10
    while broker.stats(QUEUE).dead == 0 and time.monotonic() < deadline:
        for delivery in consumer.poll(0.1):
            consumer.settle(delivery, REQUEUE)

    (letter,) = broker.dead_letters(QUEUE)
    assert letter.headers[H_ERROR_TYPE] == "DeliveryLimitExceeded"
    assert letter.headers[H_REASON] == "delivery limit of 2 exceeded"
    assert letter.headers[H_ERROR] == "delivery limit of 2 exceeded: delivered 3 times"
    consumer.close()


def test_a_fractional_delay_is_kept_not_rounded_up_to_whole_seconds(make: Make) -> None:
    broker: Broker = make()
    consumer = broker.consumer()
    consumer.consume(QUEUE, 1)
    sent = time.monotonic()
    broker.publish(QUEUE, [message()], delay_s=0.2)

    (got,) = collect(consumer, 1, timeout_s=0.8)  # a second's rounding would miss this

    assert time.monotonic() - sent >= 0.2
    assert got.envelope.message_id
    consumer.close()


def test_a_publish_delay_past_the_longest_is_refused(make: Make) -> None:
    broker: Broker = make()

    with pytest.raises(ConfigurationError):
        broker.publish(QUEUE, [message()], delay_s=MAX_DELAY_S + 1)

    assert broker.stats(QUEUE).ready == 0


def test_a_retry_delay_past_the_longest_is_held_for_the_longest_not_raised(
    make: Make,
) -> None:
    broker: Broker = make()
    broker.publish(QUEUE, [message()])
    consumer = broker.consumer()
    consumer.consume(QUEUE, 1)
    (got,) = collect(consumer, 1)

    settle(consumer, [(got, Republish(QUEUE, got.envelope, delay_s=MAX_DELAY_S * 2))])

    eventually(lambda: broker.stats(QUEUE).delayed == 1)
    assert broker.stats(QUEUE).ready == 0
    consumer.close()


def test_an_event_reaches_each_matching_queue_once(make: Make) -> None:
    broker: Broker = make()
    broker.bind_events("b-audit", ["order.*", "order.#"])
    broker.bind_events("a-mail", ["#"])
    broker.bind_events("c-other", ["invoice.*"])

    assert broker.publish_event("order.paid", message()) == 2

    assert [broker.stats(q).ready for q in ("a-mail", "b-audit", "c-other")] == [1, 1, 0]


def test_a_huge_message_id_is_logged_clipped_when_its_message_is_dead_lettered(
    make: Make,
) -> None:
    from dataclasses import replace

    import structlog

    from taskwarren.message import MAX_ECHO_CHARS

    broker: Broker = make(delivery_limit=0)
    broker.publish(QUEUE, [replace(message(), message_id="i" * 100_000)])
    consumer = broker.consumer()
    consumer.consume(QUEUE, 1)
    with structlog.testing.capture_logs() as logs:
        deadline = time.monotonic() + 10
        while broker.stats(QUEUE).dead == 0 and time.monotonic() < deadline:
            for delivery in consumer.poll(0.1):
                consumer.settle(delivery, REQUEUE)
    (dead,) = [e for e in logs if e["event"] == "message.dead_lettered"]
    assert dead["task_id"].startswith("iii") and len(dead["task_id"]) < MAX_ECHO_CHARS + 50
    consumer.close()
