"""What a broker may do beyond the data path: optional capabilities, as protocols.

:mod:`taskwarren.brokers.base` asks every broker for the data path only; its
docstring has the table of which broker has which capability. Callers ask for one
with :func:`require`, which names the broker and the feature when it is missing::

    admin = require(app.broker, Admin, "dead-letter browsing")
    admin.dead_letters("analysis")

Brokers implement these by having the methods (no registration, no base class); the
protocols are runtime-checkable, so :func:`require` is an ``isinstance`` check.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar, cast, runtime_checkable

from taskwarren.brokers.base import QueueStats
from taskwarren.errors import NotSupportedError
from taskwarren.message import Envelope
from taskwarren.topology import TopologyItem

C = TypeVar("C")


def require(obj: object, capability: Callable[..., C], feature: str) -> C:
    """``obj`` as a ``capability`` (one of the protocols here).

    Args:
        obj: a broker or a consumer.
        capability: the protocol class, e.g. :class:`Admin`.
        feature: what the caller wants, for the error (``"dead-letter browsing"``).

    Raises:
        NotSupportedError: ``obj`` does not implement ``capability``.
    """
    # Typed as a callable, not ``type[C]``: mypy refuses a protocol class for ``type[C]``.
    if not isinstance(obj, cast(type, capability)):
        raise NotSupportedError(f"{feature}: not supported by the {type(obj).__name__}")
    return cast(C, obj)


@runtime_checkable
class Admin(Protocol):
    """Counting and emptying queues, browsing and replaying dead letters."""

    def stats(self, queue: str) -> QueueStats:
        """Counts of what ``queue`` holds."""
        ...

    def purge(self, queue: str) -> int:
        """Remove every ready message of ``queue``; returns how many."""
        ...

    def dead_letters(self, queue: str, limit: int | None = None) -> list[Envelope]:
        """The messages in ``queue``'s dead-letter queue (every one, or the first
        ``limit``: only those are read), leaving them there."""
        ...

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Move dead letters (all, or those ids) back to ``queue``; returns how many.

        Each copy is published clean with its attempt reset and confirmed before the
        dead letter is removed: an interruption can leave a message in both places,
        never in neither.
        """
        ...

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Delete dead letters (all, or those ids); returns how many."""
        ...


@runtime_checkable
class Events(Protocol):
    """Topic events: every queue whose subscription matches gets its own copy."""

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        """Declare ``queue`` and bind it to the events matching ``patterns`` (durably)."""
        ...

    def publish_event(self, routing_key: str, envelope: Envelope) -> int | None:
        """Publish an event (confirmed) to every queue whose subscription matches.

        Returns:
            How many queues it reached: ``0`` when none is bound (the broker returned
            it), ``None`` when it reached at least one but the broker does not say how
            many.

        Raises:
            PublishError: it was not confirmed.
        """
        ...


@runtime_checkable
class Broadcasts(Protocol):
    """Fanout to every live worker process."""

    def publish_broadcast(self, envelope: Envelope) -> int | None:
        """Publish a broadcast (confirmed) to every worker process alive now.

        Returns:
            How many processes' queues it reached, as :meth:`Events.publish_event`.

        Raises:
            PublishError: it was not confirmed.
        """
        ...


@runtime_checkable
class Presence(Protocol):
    """Live worker processes, from their announcements (see :class:`Announcer`)."""

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """What live worker processes announced during the next ``listen_s`` seconds.

        Brokers that store announcements answer at once.
        """
        ...


@runtime_checkable
class Topology(Protocol):
    """Inspecting and creating the broker's topology without ever redeclaring."""

    def check_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """What the broker has of each item, changing nothing.

        Returns:
            Per item, in order: ``ok``, ``missing``, ``differs: <why>`` or
            ``unknown: <why>``.
        """
        ...

    def apply_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """Create what is missing of ``items``; never delete or redeclare what differs.

        Returns:
            Per item: ``ok`` (was there), ``created``, ``differs: <why>`` (left alone),
            or ``skipped: <why>``.
        """
        ...


@runtime_checkable
class EventConsumer(Protocol):
    """A consumer that can bind its queues to events."""

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        """Bind ``queue`` to the events matching ``patterns`` (durable topic bindings).

        Done on connect and again after every reconnect, with the queue declared.
        """
        ...


@runtime_checkable
class BroadcastConsumer(Protocol):
    """A consumer that can receive broadcasts."""

    def consume_broadcast(self, prefetch: int) -> None:
        """Receive broadcasts: a queue of this consumer's own, bound to the fanout.

        The queue lives as long as the connection: a broadcast sent while no queue of
        this consumer exists is never seen here. Its deliveries carry
        ``queue=BROADCAST_EXCHANGE``.
        """
        ...


@runtime_checkable
class Announcer(Protocol):
    """A consumer that can tell listeners its process is alive (see :class:`Presence`)."""

    def announce(self, info: dict[str, Any]) -> None:
        """Say this worker process is alive (``info``: JSON).

        Called about once a second; costs next to nothing when nobody listens.
        """
        ...
