"""What the memory and SQLite brokers share: held deliveries, the delivery limit, fan-out, delays.

Both keep a consumer's unsettled deliveries in :class:`Holdings`, dead-letter a message
redelivered past their ``delivery_limit`` with :func:`dead_past_limit`, pick an event's
queues with :func:`subscribers`, and hold a message back for :func:`hold_s` after
checking the delay with :func:`check_delay`. Replay's clean copy is
:func:`taskwarren.message.revived`, which every broker uses.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Generic, TypeVar

import structlog

from taskwarren.brokers.base import Delivery
from taskwarren.message import MAX_ECHO_CHARS, Envelope, clip, failure_headers
from taskwarren.topology import BROADCAST_EXCHANGE, MAX_DELAY_S, delay_seconds, topic_matches

log = structlog.get_logger("taskwarren.brokers")

#: What a broker keeps to find a held delivery's message again.
Ref = TypeVar("Ref")


class Holdings(Generic[Ref]):
    """The deliveries one consumer holds unsettled, by tag, and the room its prefetch leaves.

    Attributes:
        prefetch: the queues consumed, each with the deliveries it may hold at most.
        broadcast_queue: this consumer's broadcast queue, if any; its deliveries show
            :data:`~taskwarren.topology.BROADCAST_EXCHANGE` as their queue.
    """

    def __init__(self) -> None:
        self.prefetch: dict[str, int] = {}
        self.broadcast_queue = ""
        self._items: dict[int, tuple[str, Ref]] = {}
        self._per_queue: Counter[str] = Counter()
        self._tags = itertools.count(1)

    def __len__(self) -> int:
        return len(self._items)

    def deliver(self, queue: str, envelope: Envelope, count: int, ref: Ref) -> Delivery:
        """Hold a message of ``queue`` delivered ``count`` times before; its delivery."""
        tag = next(self._tags)
        self._items[tag] = (queue, ref)
        self._per_queue[queue] += 1
        shown = BROADCAST_EXCHANGE if queue == self.broadcast_queue else queue
        return Delivery(envelope, shown, tag, count > 0, count)

    def get(self, tag: int) -> tuple[str, Ref] | None:
        """The queue and reference of a held delivery, ``None`` if not held."""
        return self._items.get(tag)

    def pop(self, tag: int) -> tuple[str, Ref] | None:
        """Stop holding a delivery; its queue and reference, ``None`` if not held."""
        item = self._items.pop(tag, None)
        if item is not None:
            self._per_queue[item[0]] -= 1
        return item

    def pop_all(self) -> list[tuple[str, Ref]]:
        """Stop holding every delivery; their queues and references, most recent first."""
        items = [self._items[tag] for tag in sorted(self._items, reverse=True)]
        self._items.clear()
        self._per_queue.clear()
        return items

    def room(self, freed: Mapping[str, int] | None = None) -> dict[str, int]:
        """How many more deliveries each queue may hand out, once ``freed`` are settled."""
        freed = freed or {}
        room = {q: n - self._per_queue[q] + freed.get(q, 0) for q, n in self.prefetch.items()}
        return {q: n for q, n in room.items() if n > 0}


def dead_past_limit(envelope: Envelope, queue: str, count: int, limit: int) -> Envelope | None:
    """The dead letter of a message of ``queue`` delivered ``count`` times, past ``limit``.

    Returns:
        ``None`` while ``count`` is within the limit; else the copy to dead-letter (the
        event is logged), as a quorum queue's ``x-delivery-limit`` would.
    """
    if count <= limit:
        return None
    reason = f"delivery limit of {limit} exceeded"
    log.warning("message.dead_lettered", task_id=clip(envelope.message_id, MAX_ECHO_CHARS),
                queue=queue, reason=reason, deliveries=count)
    return envelope.with_headers(failure_headers(
        "DeliveryLimitExceeded", f"{reason}: delivered {count} times", reason=reason))


def subscribers(bindings: Iterable[tuple[str, str]], routing_key: str) -> list[str]:
    """The queues, in name order, whose ``(queue, pattern)`` bindings match ``routing_key``."""
    return sorted({queue for queue, pattern in bindings if topic_matches(pattern, routing_key)})


def check_delay(delay_s: float) -> None:
    """Refuse a publish delay longer than RabbitMQ's delay levels could hold.

    Raises:
        ConfigurationError: the delay is beyond :data:`~taskwarren.topology.MAX_DELAY_S`.
    """
    if delay_s > 0:
        delay_seconds(delay_s)


def hold_s(delay_s: float) -> float:
    """Seconds a message held back ``delay_s`` waits (a delay that is not positive is none)."""
    return min(delay_s, MAX_DELAY_S) if delay_s > 0 else 0.0
