"""Publishing, consuming and settling, and getting messages back from consumers that leave."""

from __future__ import annotations

import multiprocessing
import os
import signal
import threading
import time

import pytest

from taskwarren.brokers.base import ACK, REQUEUE, Also, Delivery, Republish
from taskwarren.message import H_ATTEMPT, Envelope
from tests.contract.support import Harness, collect, eventually, hold_until_killed, ids, quiet
from tests.contract.support import settle as settle_all


def test_a_published_message_is_consumed_with_the_same_id_body_headers_and_content_type(
    h: Harness,
) -> None:
    (sent,) = h.publish(1)
    consumer = h.consumer()

    (got,) = collect(consumer, 1)

    env = got.envelope
    assert (env.message_id, env.body, env.content_type, env.timestamp) == (
        sent.message_id, sent.body, sent.content_type, sent.timestamp)
    assert {k: env.headers.get(k) for k in sent.headers} == sent.headers
    assert (got.queue, got.redelivered, got.delivery_count) == (h.queue, False, 0)


def test_many_published_messages_are_all_confirmed_and_consumed_in_order(h: Harness) -> None:
    sent = h.publish(200)
    eventually(lambda: h.broker.stats(h.queue).ready == 200)
    consumer = h.consumer(prefetch=50)

    got: list[Delivery] = []
    deadline = time.monotonic() + 10
    while len(got) < 200 and time.monotonic() < deadline:
        batch = consumer.poll(0.25)
        got += batch
        for delivery in batch:
            consumer.settle(delivery, ACK)

    assert ids(got) == ids(sent)
    settle_all(consumer, [])
    eventually(lambda: h.broker.stats(h.queue).ready == 0)


def test_from_many_threads_at_once_every_message_is_stored(h: Harness) -> None:
    def send(batch: int) -> None:
        envs = [h.envelope(batch * 100 + n) for n in range(25)]
        h.broker.publish(h.queue, envs)
        sent.extend(envs)

    sent: list[Envelope] = []
    h.broker  # noqa: B018 - one broker, made before the threads share it
    threads = [threading.Thread(target=send, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    eventually(lambda: h.broker.stats(h.queue).ready == 200)
    got = collect(h.consumer(prefetch=200), 200)
    assert sorted(ids(got)) == sorted(ids(sent))


def test_an_acked_message_is_gone(h: Harness) -> None:
    h.publish(1)
    consumer = h.consumer()
    (got,) = collect(consumer, 1)

    settle_all(consumer, [(got, ACK)])
    h.close_consumer(consumer)

    assert quiet(h.consumer(), 0.3) == []
    assert h.broker.stats(h.queue).ready == 0


def test_a_requeued_message_comes_back_marked_redelivered(h: Harness) -> None:
    (sent,) = h.publish(1)
    consumer = h.consumer()
    (first,) = collect(consumer, 1)

    again = settle_all(consumer, [(first, REQUEUE)])
    again += collect(consumer, 1 - len(again), timeout_s=3)

    (second,) = again
    assert second.envelope.message_id == sent.message_id
    assert second.envelope.body == sent.body
    assert second.redelivered
    assert second.delivery_count == 1


def test_a_consumer_closed_without_settling_gives_its_messages_back_redelivered(
    h: Harness,
) -> None:
    sent = h.publish(3)
    first = h.consumer()
    assert len(collect(first, 3)) == 3

    h.close_consumer(first)
    got = collect(h.consumer(), 3)

    assert sorted(ids(got)) == sorted(ids(sent))
    assert all(d.redelivered for d in got)


def test_a_consumer_process_killed_with_sigkill_gives_its_message_to_a_new_consumer(
    h: Harness,
) -> None:
    if h.kind == "memory":
        pytest.skip("the memory broker lives inside one process")
    (sent,) = h.publish(1)
    h.broker  # noqa: B018 - declare the queue before the child consumes it
    receive, report = multiprocessing.get_context("fork").Pipe(duplex=False)
    child = multiprocessing.get_context("fork").Process(
        target=hold_until_killed, args=(h.kind, h.url, h.queue, 1.0, report), daemon=True)
    child.start()
    try:
        assert receive.poll(10), "the child never got the message"
        assert receive.recv() == sent.message_id
        assert quiet(h.consumer(), 0.2) == []  # the child holds it
    finally:
        assert child.pid is not None
        os.kill(child.pid, signal.SIGKILL)
        child.join()

    got = collect(h.consumers[0], 1, timeout_s=10)

    assert ids(got) == [sent.message_id]
    assert got[0].redelivered


def test_wakeup_makes_a_blocked_poll_return_at_once(h: Harness) -> None:
    consumer = h.consumer()
    consumer.poll(0)
    timer = threading.Timer(0.2, consumer.wakeup)
    started = time.monotonic()
    timer.start()

    assert consumer.poll(5.0) == []

    assert time.monotonic() - started < 1.0
    timer.join()


def test_a_settlement_from_another_thread_is_carried_out_by_the_next_poll(h: Harness) -> None:
    h.publish(1)
    consumer = h.consumer(prefetch=1)
    (got,) = collect(consumer, 1)
    thread = threading.Thread(target=consumer.settle, args=(got, REQUEUE))
    thread.start()
    thread.join()

    again = collect(consumer, 1, timeout_s=3)

    assert ids(again) == [got.envelope.message_id]
    assert again[0].redelivered


def test_a_settlement_from_another_thread_ends_a_blocked_poll(h: Harness) -> None:
    h.publish(1)
    consumer = h.consumer(prefetch=1)
    (got,) = collect(consumer, 1)
    timer = threading.Timer(0.2, consumer.settle, args=(got, REQUEUE))
    started = time.monotonic()
    timer.start()

    consumer.poll(5.0)

    assert time.monotonic() - started < 1.5
    timer.join()


def test_a_message_published_while_a_consumer_waits_arrives_within_a_fraction_of_a_second(
    h: Harness,
) -> None:
    consumer = h.consumer()
    consumer.poll(0)
    published_at: list[float] = []

    def publish() -> None:
        h.publish(1)
        published_at.append(time.monotonic())

    timer = threading.Timer(0.3, publish)
    timer.start()
    got = collect(consumer, 1, timeout_s=5)
    arrived = time.monotonic()
    timer.join()

    assert len(got) == 1
    assert arrived - published_at[0] < 0.25


def test_a_cancelled_consumer_gets_nothing_new_but_can_still_settle(h: Harness) -> None:
    h.publish(1)
    consumer = h.consumer()
    (held,) = collect(consumer, 1)

    consumer.cancel()
    h.publish(1)
    assert quiet(consumer, 0.3) == []
    settle_all(consumer, [(held, ACK)])
    h.close_consumer(consumer)

    eventually(lambda: h.broker.stats(h.queue).ready == 1)


def test_also_publishes_its_records_before_the_delivery_is_settled(h: Harness) -> None:
    """An Also settlement (a job's lifecycle event, then the ack or the retry copy): the
    records land in their queue, the settlement is done, nothing is left behind."""
    records = f"{h.queue}-records"
    h.others.append(records)
    h.broker.declare([records])
    sent = h.publish(2)
    consumer = h.consumer()
    first, second = collect(consumer, 2)
    notes = [h.envelope(100 + i) for i in range(3)]
    retry = second.envelope.with_headers({H_ATTEMPT: 1})
    came = settle_all(consumer, [
        (first, Also(ACK, ((records, notes[0]), (records, notes[1])))),
        (second, Also(Republish(h.queue, retry), ((records, notes[2]),))),
    ])
    (again,) = came or collect(consumer, 1)  # the retry copy
    assert again.envelope.message_id == sent[1].message_id and again.envelope.attempt == 1
    settle_all(consumer, [(again, ACK)])
    reader = h.consumer_of(records, prefetch=10)
    got = collect(reader, 3)
    assert sorted(ids(got)) == sorted(n.message_id for n in notes)
    settle_all(reader, [(d, ACK) for d in got])
    assert quiet(consumer, 0.3) == []
    eventually(lambda: h.broker.stats(h.queue).ready == 0)
