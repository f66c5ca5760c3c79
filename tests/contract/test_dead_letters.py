"""Dead letters (by Republish and by the delivery limit), purging, and the counts users see."""

from __future__ import annotations

import time

from taskwarren.brokers.base import REQUEUE, Republish
from taskwarren.message import (
    H_ERROR,
    H_ERROR_TYPE,
    H_FAILED_AT,
    H_REASON,
    H_TRACEBACK,
    Envelope,
    failure_headers,
)
from tests.contract.support import Harness, collect, dead_reason, eventually, ids, quiet
from tests.contract.support import settle as settle_all


def make_dead(h: Harness, count: int, attempt: int = 0) -> list[Envelope]:
    """Publish ``count`` messages and dead-letter them as a worker does; the dead copies."""
    h.publish(count, attempt=attempt)
    consumer = h.consumer(prefetch=count)
    got = collect(consumer, count)
    assert len(got) == count
    dead = [d.envelope.with_headers(failure_headers("ValueError", f"bad input {i}",
                                                    reason="not retried"))
            for i, d in enumerate(got)]
    settle_all(consumer, [(d, Republish(h.queue, env, dead=True))
                          for d, env in zip(got, dead, strict=True)])
    h.close_consumer(consumer)
    eventually(lambda: h.broker.stats(h.queue).dead == count)
    return dead


def make_dead_from(h: Harness, sent: Envelope) -> Envelope:
    """Consume ``sent`` and dead-letter it with a traceback; the dead copy."""
    consumer = h.consumer()
    (got,) = collect(consumer, 1)
    assert got.envelope.message_id == sent.message_id
    dead = got.envelope.with_headers(failure_headers("KeyError", "'user'", "Traceback ...",
                                                     reason="not retried"))
    settle_all(consumer, [(got, Republish(h.queue, dead, dead=True))])
    h.close_consumer(consumer)
    eventually(lambda: h.broker.stats(h.queue).dead == 1)
    return dead


def test_a_republish_to_dead_lands_in_dead_letters_with_its_headers_and_the_original_is_gone(
    h: Harness,
) -> None:
    (sent,) = h.publish(1)

    dead = make_dead_from(h, sent)

    (letter,) = h.broker.dead_letters(h.queue)
    assert letter.message_id == sent.message_id
    assert letter.body == sent.body
    for name in (H_ERROR, H_ERROR_TYPE, H_FAILED_AT, H_REASON, H_TRACEBACK):
        assert letter.headers[name] == dead.headers[name]
    assert quiet(h.consumer(), 0.3) == []
    assert h.broker.stats(h.queue).ready == 0


def test_a_message_delivered_more_often_than_the_delivery_limit_is_dead_lettered(
    h: Harness,
) -> None:
    broker = h.make_broker(delivery_limit=2)
    sent = h.envelope(7)
    broker.publish(h.queue, [sent])
    consumer = h.consumer(broker)

    deliveries = 0
    deadline = time.monotonic() + 15
    while broker.stats(h.queue).dead == 0 and time.monotonic() < deadline:
        for delivery in consumer.poll(0.1):
            deliveries += 1
            consumer.settle(delivery, REQUEUE)

    (letter,) = broker.dead_letters(h.queue)
    assert letter.message_id == sent.message_id
    assert "delivery" in dead_reason(letter) and "limit" in dead_reason(letter)
    assert deliveries == 3  # the first delivery and two more: then the limit of 2 is passed
    assert quiet(consumer, 0.2) == []
    assert broker.stats(h.queue).ready == 0


def test_purge_removes_ready_messages(h: Harness) -> None:
    h.publish(5)
    eventually(lambda: h.broker.stats(h.queue).ready == 5)

    assert h.broker.purge(h.queue) == 5

    assert h.broker.stats(h.queue).ready == 0
    assert quiet(h.consumer(), 0.3) == []


def test_stats_count_ready_dead_and_consuming(h: Harness) -> None:
    h.publish(3)
    consumer = h.consumer(prefetch=1)
    (got,) = collect(consumer, 1)
    settle_all(consumer, [(got, Republish(h.queue, got.envelope, dead=True))])

    eventually(lambda: (h.broker.stats(h.queue).ready, h.broker.stats(h.queue).dead) == (1, 1))
    stats = h.broker.stats(h.queue)
    assert stats.queue == h.queue
    assert stats.unacked in (None, 1)
    assert stats.consumers in (None, 1)

    h.close_consumer(consumer)
    eventually(lambda: h.broker.stats(h.queue).ready == 2)
    assert h.broker.stats(h.queue).consumers in (None, 0)
    assert h.broker.stats(h.queue).unacked in (None, 0)


def test_dead_letters_leaves_the_messages_in_place(h: Harness) -> None:
    dead = make_dead(h, 2)

    first = h.broker.dead_letters(h.queue)
    second = h.broker.dead_letters(h.queue)

    assert sorted(ids(first)) == sorted(ids(dead))
    assert sorted(ids(second)) == sorted(ids(dead))
    assert h.broker.stats(h.queue).dead == 2


def test_replay_dead_puts_them_back_with_attempt_zero_and_the_same_id(h: Harness) -> None:
    dead = make_dead(h, 2, attempt=3)
    chosen, other = dead

    assert h.broker.replay_dead(h.queue, [chosen.message_id]) == 1
    assert ids(h.broker.dead_letters(h.queue)) == [other.message_id]
    assert h.broker.replay_dead(h.queue, None) == 1
    assert h.broker.dead_letters(h.queue) == []

    got = collect(h.consumer(), 2)
    assert sorted(ids(got)) == sorted(ids(dead))
    for delivery in got:
        assert delivery.envelope.attempt == 0
        assert not {H_ERROR, H_ERROR_TYPE, H_FAILED_AT, H_REASON} & set(delivery.envelope.headers)


def test_purge_dead_deletes_the_chosen_ids_or_all(h: Harness) -> None:
    first, *rest = make_dead(h, 3)

    assert h.broker.purge_dead(h.queue, [first.message_id]) == 1
    assert sorted(ids(h.broker.dead_letters(h.queue))) == sorted(ids(rest))
    assert h.broker.purge_dead(h.queue, None) == 2
    assert h.broker.dead_letters(h.queue) == []
    assert h.broker.stats(h.queue).dead == 0


def test_dead_letters_with_a_limit_reads_only_the_first_and_leaves_all_in_place(
        h: Harness) -> None:
    dead = make_dead(h, 3)

    first = h.broker.dead_letters(h.queue, 2)

    assert len(first) == 2 and set(ids(first)) <= set(ids(dead))
    eventually(lambda: h.broker.stats(h.queue).dead == 3)
    assert sorted(ids(h.broker.dead_letters(h.queue))) == sorted(ids(dead))
    assert h.broker.dead_letters(h.queue, 0) == []
