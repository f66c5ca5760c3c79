"""The broker contract: declare, publish (confirmed), consume, settle, inspect, close.

A broker moves :class:`~taskwarren.message.Envelope` objects between named queues.
Every queue ``Q`` has a dead-letter queue ``Q.dead``; every broker can hold a message
back for a delay without any process keeping it in memory. Brokers map their
library's errors to :mod:`taskwarren.errors` at this edge.

Events (a topic exchange), broadcasts (a fanout exchange) and topology inspection are
optional: their default implementations raise :class:`NotSupportedError`.

Threading: a :class:`Broker` is safe to share between threads (publishing from many
web request threads at once). A :class:`Consumer` belongs to one I/O thread, except
:meth:`Consumer.settle` and :meth:`Consumer.wakeup`, which any thread may call.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from taskwarren.errors import NotSupportedError
from taskwarren.message import Envelope
from taskwarren.topology import TopologyItem


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


Action = Ack | Requeue | Republish

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

    @abc.abstractmethod
    def cancel(self) -> None:
        """Stop new deliveries; settling the ones already received still works."""

    @abc.abstractmethod
    def close(self) -> None:
        """Close; unsettled deliveries go back to their queues."""

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        """Bind ``queue`` to the events matching ``patterns`` (durable topic bindings).

        Done on connect and again after every reconnect, with the queue declared.

        Raises:
            NotSupportedError: this broker has no events.
        """
        raise NotSupportedError(f"events are not supported by the {type(self).__name__}")

    def consume_broadcast(self, prefetch: int) -> None:
        """Receive broadcasts: a queue of this consumer's own, bound to the fanout.

        The queue lives as long as the connection (exclusive, auto-delete): a broadcast
        sent while no queue of this consumer exists is never seen here. Its deliveries
        carry ``queue=BROADCAST_EXCHANGE``.

        Raises:
            NotSupportedError: this broker has no broadcasts.
        """
        raise NotSupportedError(f"broadcasts are not supported by the {type(self).__name__}")

    def announce(self, info: dict[str, Any]) -> None:
        """Tell whoever is listening that this worker process is alive (``info``: JSON).

        Called about once a second; costs next to nothing when nobody listens.

        Raises:
            NotSupportedError: this broker cannot carry presence.
        """
        raise NotSupportedError(f"presence is not supported by the {type(self).__name__}")


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
    def stats(self, queue: str) -> QueueStats:
        """Counts of what ``queue`` holds."""

    @abc.abstractmethod
    def purge(self, queue: str) -> int:
        """Remove every ready message of ``queue``; returns how many."""

    @abc.abstractmethod
    def dead_letters(self, queue: str) -> list[Envelope]:
        """Every message in ``queue``'s dead-letter queue, leaving them there."""

    @abc.abstractmethod
    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Move dead letters (all, or those ids) back to ``queue``; returns how many.

        Each copy is published clean with its attempt reset and confirmed before the
        dead letter is removed: an interruption can leave a message in both places,
        never in neither.
        """

    @abc.abstractmethod
    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Delete dead letters (all, or those ids); returns how many."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release connections."""

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        """Declare ``queue`` and bind it to the events matching ``patterns`` (durably).

        Raises:
            NotSupportedError: this broker has no events.
        """
        raise NotSupportedError(f"events are not supported by the {type(self).__name__}")

    def publish_event(self, routing_key: str, envelope: Envelope) -> int | None:
        """Publish an event (confirmed) to every queue whose subscription matches.

        Returns:
            How many queues it reached: ``0`` when none is bound (the broker returned
            it), ``None`` when it reached at least one but the broker does not say
            how many.

        Raises:
            PublishError: it was not confirmed.
            NotSupportedError: this broker has no events.
        """
        raise NotSupportedError(f"events are not supported by the {type(self).__name__}")

    def publish_broadcast(self, envelope: Envelope) -> int | None:
        """Publish a broadcast (confirmed) to every worker process alive now.

        Returns:
            How many processes' queues it reached, as :meth:`publish_event`.

        Raises:
            PublishError: it was not confirmed.
            NotSupportedError: this broker has no broadcasts.
        """
        raise NotSupportedError(f"broadcasts are not supported by the {type(self).__name__}")

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """What live worker processes announced during the next ``listen_s`` seconds.

        Raises:
            NotSupportedError: this broker cannot carry presence.
        """
        raise NotSupportedError(f"presence is not supported by the {type(self).__name__}")

    def check_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """What the broker has of each item, changing nothing: ``ok``, ``missing``,
        ``differs: <why>`` or ``unknown: <why>``, in order.

        Raises:
            NotSupportedError: this broker cannot be inspected.
        """
        raise NotSupportedError(
            f"topology inspection is not supported by the {type(self).__name__}")

    def apply_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """Create what is missing of ``items``; never delete or redeclare what differs.

        Returns:
            Per item: ``ok`` (was there), ``created``, ``differs: <why>`` (left alone),
            or ``skipped: <why>``.

        Raises:
            NotSupportedError: this broker cannot be changed this way.
        """
        raise NotSupportedError(
            f"topology changes are not supported by the {type(self).__name__}")
