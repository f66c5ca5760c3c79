"""Settling deliveries on the consuming link: coalesced acks, requeues, and republishes.

The longest run of settled deliveries at the head of the unacked list is acked with
one ``multiple=True`` frame per flush. A republish (retry, dead letter) goes over the
publishing connection and joins that run only once the broker confirmed the copy; a
refused copy puts its delivery back in its queue.
"""

from __future__ import annotations

from collections import deque

import structlog

from taskwarren.brokers.base import Ack, Action, Also, Delivery, Republish, Requeue
from taskwarren.brokers.rabbitmq.errors import LinkLostError, mapped
from taskwarren.brokers.rabbitmq.frames import corked
from taskwarren.brokers.rabbitmq.link import Confirmation, Link
from taskwarren.brokers.rabbitmq.outbound import Outbound
from taskwarren.brokers.rabbitmq.topology import route
from taskwarren.message import Envelope, clip

log = structlog.get_logger("taskwarren.rabbitmq")


class Settler:
    """The settlements of one consumer; owned by its I/O thread, except :attr:`queue`.

    Attributes:
        queue: ``(delivery, action)`` waiting to be carried out; any thread appends.
        unacked: delivery tags of the consuming link not yet acked, in delivery order.
        done: tags settled (or their copy confirmed) and not yet acked.
        held: republishes the last flush left in :attr:`queue` (their link blocked).
    """

    def __init__(self, link: Link, out: Outbound) -> None:
        self._link = link
        self._out = out
        self.queue: deque[tuple[Delivery, Action]] = deque()
        self.unacked: deque[int] = deque()
        self.done: set[int] = set()
        self.held = 0

    def forget(self) -> None:
        """Forget the deliveries of a link that is gone (the broker has them back)."""
        self.unacked.clear()
        self.done.clear()

    def flush(self) -> None:
        """Carry out what is queued; ack (coalesced) what is done."""
        link = self._link
        settle_q = self.queue
        if settle_q:
            out = self._republisher(settle_q)
            with corked(link.conn), corked(out.conn if out else None):
                self._settle_all(settle_q, self.done, link.generation, out)
        if self.done:
            self._ack_done()

    def _republisher(self, settle_q: deque[tuple[Delivery, Action]]) -> Link | None:
        """The publishing link for the republishes in ``settle_q``, their queues declared."""
        targets: set[str] = set()
        for _, action in list(settle_q):
            if isinstance(action, Also):
                targets.update(q for q, _ in action.publishes)
                action = action.action
            if isinstance(action, Republish):
                targets.add(action.queue)
        return self._out.for_republishes(targets) if targets else None

    def _settle_all(self, settle_q: deque[tuple[Delivery, Action]], done: set[int],
                    generation: int, out: Link | None) -> None:
        """Ack, requeue, or republish (on ``out``) what ``settle_q`` holds.

        A republish waits in the queue while ``out`` is ``None`` (the publishing link
        blocked or down).
        """
        link = self._link
        ch = link.channel
        waiting: list[tuple[Delivery, Action]] = []
        while settle_q:
            delivery, action = settle_q.popleft()
            if delivery.generation != generation:
                continue  # its connection is gone; the broker redelivers it
            if isinstance(action, Ack):
                done.add(delivery.tag)
            elif isinstance(action, Requeue):
                ch.basic_reject(delivery.tag, requeue=True)
                self.unacked.remove(delivery.tag)
            else:
                if out is None or not out.connected:
                    waiting.append((delivery, action))
                    continue
                copies = self._copies(action)
                confirmed = self._after_confirm(delivery, generation, [q for q, _, _ in copies])
                sent = 0
                try:
                    with mapped():
                        for _, (exchange, routing_key), envelope in copies:
                            out.publish(exchange, routing_key, envelope, confirmed)
                            sent += 1
                except LinkLostError as exc:
                    # Dropping the link fails the confirms of the copies already sent,
                    # which puts the delivery back; with none sent, it waits here.
                    self._out.lost(exc)
                    if not sent:
                        waiting.append((delivery, action))
        settle_q.extend(waiting)
        self.held = len(waiting)

    @staticmethod
    def _copies(action: Republish | Also) -> list[tuple[str, tuple[str, str], Envelope]]:
        """What settling ``action`` publishes: (queue, (exchange, routing key), envelope)."""
        copies = []
        if isinstance(action, Also):
            copies = [(q, route(q, 0.0, False), e) for q, e in action.publishes]
            if isinstance(action.action, Ack):
                return copies
            action = action.action
        copies.append((action.queue, route(action.queue, action.delay_s, action.dead),
                       action.envelope))
        return copies

    def _after_confirm(self, delivery: Delivery, generation: int,
                       queues: list[str]) -> Confirmation:
        """What to do as the broker confirms (or refuses) each of the copies settling
        ``delivery`` published: done once all are confirmed, back to its queue once one
        is refused."""
        left = [len(queues)]

        def confirmed(error: str | None) -> None:
            if error is not None and error.startswith("unroutable"):
                # A queue (or dead-letter queue) was deleted since the publishing link
                # declared it: declare them again before the next republish there.
                self._out.link.declared.difference_update(queues)
            if left[0] <= 0 or self._link.generation != generation \
                    or not self._link.connected:
                return
            if error is None:
                left[0] -= 1
                if left[0] == 0:
                    self.done.add(delivery.tag)
            else:
                left[0] = 0  # settled now: the other confirms change nothing
                log.error("message.republish_failed", task_id=delivery.envelope.message_id[:100],
                          error=clip(error))
                self._link.channel.basic_reject(delivery.tag, requeue=True)
                self.unacked.remove(delivery.tag)
        return confirmed

    def _ack_done(self) -> None:
        """Ack the longest done run at the head with one frame, then the stragglers."""
        ch = self._link.channel
        unacked, done = self.unacked, self.done
        last = 0
        while unacked and unacked[0] in done:
            last = unacked.popleft()
            done.discard(last)
        if last:
            ch.basic_ack(last, multiple=True)
        for tag in done:
            ch.basic_ack(tag)
            unacked.remove(tag)
        done.clear()
