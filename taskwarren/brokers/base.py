"""The broker contract: the data path every broker has, and nothing more.

A broker moves :class:`~taskwarren.message.Envelope` objects between named queues.
Every queue ``Q`` has a dead-letter queue ``Q.dead``; every broker can hold a message
back for a delay without any process keeping it in memory. Brokers map their
library's errors to :mod:`taskwarren.errors` at this edge, once.

The contract::

    Broker                            Consumer (one per worker process)
      location  (for logs, masked)      consume(queue, prefetch)   start delivery
      declare(queues)                   poll(timeout_s)            deliveries that arrived
      publish(queue, envelopes)         settle(delivery, action)   Ack | Requeue | Republish | Also
      consumer()                        wakeup()                   end a blocked poll
      close()                           pending()                  settlements not yet done
                                        is_stale(delivery)         its link is gone
                                        cancel()                   stop new deliveries
                                        close()

The executor decides what becomes of a :class:`Delivery` (an :data:`Action`); the
consumer carries it out: a :class:`Republish` (and what an :class:`Also` publishes) is
confirmed before the delivery is removed, so a message is always held durably somewhere.

Everything else a broker may or may not do is a capability protocol in
:mod:`taskwarren.brokers.capabilities`, asked for with
:func:`~taskwarren.brokers.capabilities.require` (which raises
:class:`~taskwarren.errors.NotSupportedError` naming the broker and the feature):

=====================  ==============================================  ======  ======  ========
capability             methods                                         memory  sqlite  rabbitmq
=====================  ==============================================  ======  ======  ========
``Admin``              stats, purge, dead_letters, replay/purge_dead   yes     yes     yes
``Events``             bind_events, publish_event                      yes     yes     yes
``Broadcasts``         publish_broadcast                               yes     yes     yes
``Presence``           presence                                        yes     yes     yes
``Topology``           check_topology, apply_topology                  no      no      yes
``EventConsumer``      (consumer) subscribe                            yes     yes     yes
``BroadcastConsumer``  (consumer) consume_broadcast                    yes     yes     yes
``Announcer``          (consumer) announce                             yes     yes     yes
=====================  ==============================================  ======  ======  ========

Threading: a :class:`Broker` is safe to share between threads (publishing from many
web request threads at once). A :class:`Consumer` belongs to one I/O thread, except
:meth:`Consumer.settle`, :meth:`Consumer.wakeup` and :meth:`Consumer.is_stale`, which
any thread may call.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from taskwarren.message import Envelope


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to a consumer, to be settled exactly once.

    Attributes:
        envelope: the message.
        queue: the queue it came from.
        tag: the consumer's handle for settling it.
        redelivered: it was delivered before and not settled (a crash, a stop).
        delivery_count: how many times it was delivered before, where the broker
            counts (quorum queues, SQLite); ``0`` where it does not.
        generation: the consumer connection it arrived on; settling a delivery of an
            older connection is a no-op (the broker has already taken it back).
    """

    envelope: Envelope
    queue: str
    tag: int
    redelivered: bool = False
    delivery_count: int = 0
    generation: int = 0


@dataclass(frozen=True, slots=True)
class Ack:
    """The message is done with: remove it."""


@dataclass(frozen=True, slots=True)
class Requeue:
    """Give the message back to its queue unchanged (it was not started)."""


@dataclass(frozen=True, slots=True)
class Republish:
    """Publish ``envelope`` (confirmed), then remove the delivered message.

    Attributes:
        queue: the main queue the new copy is for.
        envelope: the new copy (a retry with attempt + 1, or a dead letter).
        delay_s: hold the new copy back this long before it is ready.
        dead: put it in ``queue``'s dead-letter queue instead.
    """

    queue: str
    envelope: Envelope
    delay_s: float = 0.0
    dead: bool = False


@dataclass(frozen=True, slots=True)
class Also:
    """Publish ``publishes`` (confirmed), then settle the delivery as ``action``.

    What a middleware records of a delivery (a job's lifecycle event) is held durably
    before the delivery is removed, without the executor waiting for the confirm. If
    the broker refuses one, the delivery goes back to its queue.

    Attributes:
        action: the settlement once they are confirmed.
        publishes: ``(queue, envelope)`` pairs, each to a declared queue.
    """

    action: Ack | Republish
    publishes: tuple[tuple[str, Envelope], ...]


Action = Ack | Requeue | Republish | Also


def settlement(action: Action) -> Ack | Requeue | Republish:
    """The settlement ``action`` stands for, past what it publishes first."""
    return action.action if isinstance(action, Also) else action

ACK = Ack()
REQUEUE = Requeue()


@dataclass(frozen=True, slots=True)
class QueueStats:
    """What a queue holds.

    Attributes:
        queue: the queue's name.
        ready: messages waiting to be delivered.
        unacked: delivered and not yet settled (``None`` where the broker cannot tell).
        consumers: consumers attached (``None`` where the broker cannot tell).
        dead: messages in the dead-letter queue.
        delayed: messages waiting out a delay for this queue (``None`` if unknown).
    """

    queue: str
    ready: int
    unacked: int | None
    consumers: int | None
    dead: int
    delayed: int | None


class Consumer(abc.ABC):
    """Deliveries from some queues, for one worker process."""

    #: Whether the consumer may be used (:meth:`poll`, :meth:`consume`, :meth:`settle`,
    #: the capabilities' ``announce``) from another thread than the one that made it,
    #: one thread at a time: a worker child's lone idle executor then polls itself
    #: (``worker/turns.py``).
    polls_from_any_thread = False

    @abc.abstractmethod
    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        """Start (or, with a new prefetch, restart) delivery from ``queue``.

        Args:
            queue: the queue.
            prefetch: deliveries held unsettled at most.
            timeout_s: ask the broker to allow a delivery to stay unsettled this long
                (RabbitMQ's per-consumer ``x-consumer-timeout``, 3.12+; older brokers
                ignore it and apply their global ``consumer_timeout``).
        """

    @abc.abstractmethod
    def poll(self, timeout_s: float) -> list[Delivery]:
        """Carry out pending settlements, then return deliveries that arrived.

        Blocks up to ``timeout_s`` when there is nothing to return, and returns early
        when :meth:`wakeup` is called or a settlement is queued. Reconnects on its own
        after a broken link (deliveries of the old link are then stale).
        """

    @abc.abstractmethod
    def settle(self, delivery: Delivery, action: Action) -> None:
        """Queue the settlement of ``delivery``; it is carried out by the next poll.

        Thread-safe. A :class:`Republish` is confirmed before the delivery is removed.
        """

    @abc.abstractmethod
    def wakeup(self) -> None:
        """Make a blocked :meth:`poll` return soon. Thread-safe, signal-safe."""

    @abc.abstractmethod
    def pending(self) -> int:
        """Settlements queued or awaiting a confirm."""

    def is_stale(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` came over a link that is gone. Thread-safe.

        The broker has taken such a delivery back and hands it out again: running it
        would run the message twice. Brokers without links never have stale ones.
        """
        return False

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop new deliveries; settling the ones already received still works."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close; unsettled deliveries go back to their queues."""


class Broker(abc.ABC):
    """A place queues live."""

    #: Human-readable location for logs, with any password masked.
    location: str = ""

    @abc.abstractmethod
    def declare(self, queues: Iterable[str]) -> None:
        """Make sure ``queues`` (with their dead-letter queues and bindings) exist."""

    @abc.abstractmethod
    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        """Store ``envelopes`` durably for ``queue``; returns once all are confirmed.

        Raises:
            PublishError: some message was not confirmed; it may or may not be stored.
        """

    @abc.abstractmethod
    def consumer(self) -> Consumer:
        """A new consumer with its own connection."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""
