"""Messages held back for a while: by a retry's Republish, or by publish(delay_s=...)."""

from __future__ import annotations

import time

from taskwarren.brokers.base import Republish
from taskwarren.message import H_ATTEMPT
from tests.contract.support import Harness, collect, ids, quiet
from tests.contract.support import settle as settle_all


def test_a_republish_with_a_one_second_delay_arrives_after_one_second_and_not_before(
    h: Harness,
) -> None:
    (sent,) = h.publish(1)
    consumer = h.consumer()
    (got,) = collect(consumer, 1)
    retry = got.envelope.with_headers({H_ATTEMPT: 1})

    started = time.monotonic()
    early = settle_all(consumer, [(got, Republish(h.queue, retry, delay_s=1))])
    early += quiet(consumer, 0.9 - (time.monotonic() - started))
    later = collect(consumer, 1, timeout_s=3)
    elapsed = time.monotonic() - started

    assert early == []
    assert ids(later) == [sent.message_id]
    assert later[0].envelope.attempt == 1
    # Timed on the monotonic clock; the embedded broker keeps due times on the wall clock
    # (they outlive the process), which a clock adjustment may move by a few ms (seen
    # once in CI: 0.998 s).
    assert 0.98 <= elapsed < 1.6


def test_a_long_delay_does_not_hold_back_a_short_one_published_after_it(h: Harness) -> None:
    long_env, short_env = h.envelope(1), h.envelope(2)
    h.broker.publish(h.queue, [long_env], delay_s=30)
    h.broker.publish(h.queue, [short_env], delay_s=1)
    consumer = h.consumer()

    got = collect(consumer, 1, timeout_s=3)

    assert ids(got) == [short_env.message_id]
    assert quiet(consumer, 0.2) == []
    delayed = h.broker.stats(h.queue).delayed
    assert delayed in (None, 1)
