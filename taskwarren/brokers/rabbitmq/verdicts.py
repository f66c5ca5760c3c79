"""Deliveries a consumer settles itself, never running them: unreadable, or overdue.

A delivery whose headers py-amqp could not decode arrives marked (see
:mod:`~taskwarren.brokers.rabbitmq.frames`) and is dead-lettered. A message whose
runs kept outliving the broker's consumer timeout (the broker took it back each
time) is dead-lettered when it comes back, or it would run for ever.
"""

from __future__ import annotations

from collections import OrderedDict

import structlog

from taskwarren.brokers.base import Ack, Action, Delivery, Republish
from taskwarren.brokers.rabbitmq.errors import PRECONDITION_FAILED, LinkLostError, RefusedError
from taskwarren.brokers.rabbitmq.frames import H_UNREADABLE
from taskwarren.errors import BrokerError
from taskwarren.message import MAX_ECHO_CHARS, clip, failure_headers
from taskwarren.topology import BROADCAST_EXCHANGE

log = structlog.get_logger("taskwarren.rabbitmq")

#: A message whose delivery outlived the broker's consumer timeout this many times is
#: dead-lettered when it comes back (the broker closes the channel and requeues it).
CONSUMER_TIMEOUT_STRIKES = 2
#: Messages whose consumer timeouts a consumer remembers (oldest forgotten first).
OVERDUE_MEMORY = 1000


def unreadable(delivery: Delivery) -> Action:
    """Dead-letter a delivery whose headers could not be decoded, never running it."""
    envelope = delivery.envelope
    # Set by frames.py (a producer's own header of that name is dropped), and clipped
    # again all the same: it goes into a log line and a header.
    why = clip(str(envelope.headers.get(H_UNREADABLE)), MAX_ECHO_CHARS)
    reason = f"its headers could not be decoded ({why})"
    log.error("message.rejected", task_id=envelope.message_id[:100], queue=delivery.queue,
              error_type="UnreadableHeaders", error=why)
    if delivery.queue == BROADCAST_EXCHANGE:
        return Ack()  # a broadcast names its dead-letter queue in the headers it lost
    headers = failure_headers("UnreadableHeaders", reason, reason=reason)
    return Republish(delivery.queue, envelope.with_headers(headers), dead=True)


def _overdue(delivery: Delivery, times: int) -> Action:
    """Dead-letter a delivery whose runs kept outliving the broker's consumer timeout."""
    envelope = delivery.envelope
    reason = (f"its delivery outlived the broker's consumer timeout {times} times (the "
              f"broker took it back each time); give the task a time_limit below "
              f"consumer_timeout, or raise consumer_timeout")
    log.error("message.rejected", task_id=envelope.message_id[:100], queue=delivery.queue,
              error_type="ConsumerTimeout", error=reason)
    if delivery.queue == BROADCAST_EXCHANGE:
        return Ack()
    headers = failure_headers("ConsumerTimeout", reason, reason=reason)
    return Republish(delivery.queue, envelope.with_headers(headers), dead=True)


class Strikes:
    """Consumer timeouts per message id, for one consumer (bounded)."""

    def __init__(self) -> None:
        self._overdue: OrderedDict[str, int] = OrderedDict()  # message id -> timeouts

    def note(self, exc: BrokerError, message_id: str, outlived: bool) -> None:
        """Charge ``message_id`` if the broker gave up waiting for its ack.

        When the oldest unacked delivery outlives its consumer timeout, RabbitMQ up to
        4.2 closes the channel (PRECONDITION_FAILED, "... timed out") and 4.3 cancels
        the consumer (basic.cancel); either way the message goes back to the queue, and
        a task that always runs longer would run forever.

        Args:
            exc: why the consuming link was lost.
            message_id: the oldest unacked delivery's message.
            outlived: that delivery is older than its consumer timeout (a cancel counts
                only then: a cancel also comes when a queue is deleted).
        """
        text = getattr(exc, "reply_text", "") or str(exc)
        timed_out = (isinstance(exc, RefusedError) and exc.reply_code == PRECONDITION_FAILED
                     and "timed out" in text)
        cancelled = isinstance(exc, LinkLostError) and exc.cancelled
        if timed_out or (cancelled and outlived):
            self.charge(message_id, text)

    def charge(self, message_id: str, why: str) -> None:
        """Count one consumer timeout against ``message_id``."""
        times = self._overdue.pop(message_id, 0) + 1
        self._overdue[message_id] = times
        while len(self._overdue) > OVERDUE_MEMORY:
            self._overdue.popitem(last=False)
        log.error("message.consumer_timeout", task_id=message_id[:100], times=times,
                  error=why[:200], advice="give the task a time_limit below the broker's "
                  "consumer_timeout, or raise consumer_timeout (and TASKWARREN_CONSUMER_"
                  "TIMEOUT_S to match)")

    def verdict(self, delivery: Delivery) -> Action | None:
        """The dead-lettering of ``delivery`` if it struck out; ``None`` to run it."""
        message_id = delivery.envelope.message_id
        times = self._overdue.get(message_id, 0)
        if times < CONSUMER_TIMEOUT_STRIKES:
            return None
        del self._overdue[message_id]
        return _overdue(delivery, times)
