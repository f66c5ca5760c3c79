"""Events reach every subscribed queue; broadcasts reach every consumer alive now."""

from __future__ import annotations

import uuid

from taskwarren.brokers.base import ACK, Consumer
from taskwarren.topology import BROADCAST_EXCHANGE
from tests.contract.support import Harness, collect, ids, quiet
from tests.contract.support import settle as settle_all
from tests.support.rabbit import delete_queues


def reached(count: int | None) -> bool:
    """RabbitMQ says only 'none' (0, returned) or 'some' (None); the others count."""
    return count is None or count > 0


def test_an_event_lands_once_in_every_queue_whose_subscription_matches(h: Harness) -> None:
    other = f"{h.queue}-other"
    key = f"{h.queue}.audit.irs.corporate"
    try:
        h.broker.declare([other])
        h.broker.bind_events(h.queue, [f"{h.queue}.audit.#"])
        h.broker.bind_events(other, [f"{h.queue}.audit.irs.*", f"{h.queue}.email.flagged"])
        event = h.envelope(1).with_headers({"tw-task": None, "tw-event": key})
        count = h.broker.publish_event(key, event)
        assert count in (None, 2)
        mine, theirs = h.consumer(), h.broker.consumer()
        h.consumers.append(theirs)
        theirs.consume(other, 10)
        got_mine, got_theirs = collect(mine, 1), collect(theirs, 1)
        assert ids(got_mine) == ids(got_theirs) == [event.message_id]
        settle_all(mine, [(got_mine[0], ACK)])
        settle_all(theirs, [(got_theirs[0], ACK)])
        assert quiet(mine, 0.3) == [] and quiet(theirs, 0.3) == []
    finally:
        if h.kind == "rabbitmq":
            delete_queues(other, url=h.url)


def test_an_event_no_queue_subscribes_to_is_reported_as_reaching_none(h: Harness) -> None:
    key = f"nobody-{uuid.uuid4().hex[:8]}.listens"
    assert h.broker.publish_event(key, h.envelope(1)) == 0


def test_a_broadcast_reaches_each_live_consumer_once_and_not_a_later_one(h: Harness) -> None:
    first, second = h.consumer(), h.consumer()
    for consumer in (first, second):
        consumer.consume_broadcast(10)
    quiet(first, 0.2)  # the listeners are in place (RabbitMQ: queues bound)
    quiet(second, 0.2)
    sent = h.envelope(7)
    assert reached(h.broker.publish_broadcast(sent))
    late: Consumer = h.consumer()
    late.consume_broadcast(10)
    for consumer in (first, second):
        (got,) = collect(consumer, 1)
        assert got.envelope.message_id == sent.message_id
        assert got.queue == BROADCAST_EXCHANGE
        settle_all(consumer, [(got, ACK)])
        assert quiet(consumer, 0.2) == []
    assert quiet(late, 0.5) == []
