"""Names and arguments of exchanges, queues and bindings, and delay-level routing keys.

The design (see README, "Topology"): every task message goes through the durable
direct exchange ``taskwarren`` with routing key = queue name. Dead letters go through
``taskwarren.dlx`` into ``Q.dead``. Delays use :data:`DELAY_LEVELS` binary levels:
level ``n`` holds messages for ``2**n`` seconds, then dead-letters them to level
``n - 1``; the routing key spells the delay in binary, highest level first.
Events go through the durable topic exchange ``taskwarren.events`` (bindings are
subscriptions) and broadcasts through the durable fanout ``taskwarren.broadcast``.
"""

from __future__ import annotations

import functools
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from taskwarren.errors import ConfigurationError

#: The direct exchange every task message is published to (routing key = queue).
EXCHANGE = "taskwarren"
#: The direct exchange dead letters go to (routing key = the original queue).
DEAD_LETTER_EXCHANGE = "taskwarren.dlx"
#: Suffix of a queue's dead-letter queue.
DEAD_SUFFIX = ".dead"
#: Number of binary delay levels: delays up to 2**28 - 1 seconds (about 8.5 years).
DELAY_LEVELS = 28
#: The topic exchange a message leaves the delay levels through.
DELAY_DELIVER_EXCHANGE = "taskwarren.delay.deliver"
#: Longest delay the levels can express, in seconds.
MAX_DELAY_S = 2**DELAY_LEVELS - 1

_QUEUE_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]{0,199}$")


def check_queue_name(queue: str) -> str:
    """Return ``queue`` if it is a usable queue name.

    Raises:
        ConfigurationError: the name is empty, too long, ends in ``.dead``, starts
            with ``amq.`` or ``taskwarren.``, or holds characters other than letters,
            digits, ``_``, ``.`` and ``-`` (``*`` and ``#`` would break topic routing).
    """
    if (
        not _QUEUE_NAME_RE.match(queue)
        or queue.endswith(DEAD_SUFFIX)
        or queue.startswith(("amq.", "taskwarren."))
        or ".." in queue
        or queue.endswith(".")
    ):
        raise ConfigurationError(
            f"invalid queue name {queue!r}: use letters, digits, '_', '.', '-'; "
            "not ending in '.dead', not starting with 'amq.' or 'taskwarren.'"
        )
    return queue


def dead_queue(queue: str) -> str:
    """Name of the dead-letter queue of ``queue``."""
    return queue + DEAD_SUFFIX


def delay_exchange(level: int) -> str:
    """Name of delay level ``level``'s exchange (and of its queue)."""
    return f"taskwarren.delay.{level}"


def delay_seconds(delay_s: float) -> int:
    """Round a delay up to whole seconds (never earlier) and check its range.

    Raises:
        ConfigurationError: the delay is negative or beyond :data:`MAX_DELAY_S`.
    """
    if delay_s < 0 or math.isnan(delay_s):
        raise ConfigurationError(f"delay must not be negative, got {delay_s}")
    seconds = math.ceil(delay_s)
    if seconds > MAX_DELAY_S:
        raise ConfigurationError(f"delay {delay_s}s exceeds the maximum of {MAX_DELAY_S}s")
    return seconds


def delay_routing_key(delay_s: float, queue: str) -> str:
    """Routing key that carries a message through the delay levels into ``queue``.

    The first :data:`DELAY_LEVELS` words are the delay's bits, highest level first.
    """
    seconds = delay_seconds(delay_s)
    bits = ".".join("1" if seconds >> level & 1 else "0" for level in _levels_high_first())
    return f"{bits}.{queue}"


def delay_entry_exchange(delay_s: float) -> str:
    """The level a delayed message is published to: that of its highest set bit.

    Entering at the top level would be just as correct (levels whose bit is 0 pass the
    message on through exchange-to-exchange bindings), but every such hop is a topic
    match the broker makes while the publisher waits for its confirm.
    """
    return delay_exchange(delay_seconds(delay_s).bit_length() - 1)


def delay_from_routing_key(routing_key: str) -> tuple[int, str]:
    """Inverse of :func:`delay_routing_key`: ``(seconds, queue)``."""
    words = routing_key.split(".", DELAY_LEVELS)
    seconds = 0
    for bit, level in zip(words[:DELAY_LEVELS], _levels_high_first(), strict=True):
        if bit == "1":
            seconds |= 1 << level
    return seconds, words[DELAY_LEVELS]


def _levels_high_first() -> range:
    return range(DELAY_LEVELS - 1, -1, -1)


def level_binding_keys(level: int) -> tuple[str, str]:
    """Binding keys of level ``level``'s exchange: (to its own queue, to the level below).

    Keys whose bit at this level is 1 wait in this level's queue; keys whose bit is
    0 pass straight on to the next level down.
    """
    prefix = "*." * (DELAY_LEVELS - 1 - level)
    return f"{prefix}1.#", f"{prefix}0.#"


def next_level_exchange(level: int) -> str:
    """Where level ``level`` passes messages on to (and dead-letters expired ones to)."""
    return delay_exchange(level - 1) if level > 0 else DELAY_DELIVER_EXCHANGE


def deliver_binding_key(queue: str) -> str:
    """Binding key from the deliver exchange to ``queue``: all bits, then the exact name."""
    return "*." * DELAY_LEVELS + queue


def delay_queue_arguments(level: int) -> dict[str, Any]:
    """Arguments of delay level ``level``'s queue.

    Quorum, with at-least-once dead-lettering: a message leaves a level only once the
    next level (or its target queue) has confirmed it. Classic queues dead-letter at most
    once, and a broker that restarts expires a level's messages before the queues they
    move on to are back: seen here, every message waiting in one level was dropped.
    """
    return {
        "x-queue-type": "quorum",
        "x-message-ttl": level_ttl_ms(level),
        "x-dead-letter-exchange": next_level_exchange(level),
        "x-dead-letter-strategy": "at-least-once",
        "x-overflow": "reject-publish",
    }


def level_ttl_ms(level: int) -> int:
    """Message TTL of delay level ``level``'s queue, in milliseconds."""
    return 1000 << level


#: Delivery limit of a quorum dead-letter queue: browsing hands every dead letter back,
#: which counts as a delivery; this many browses take centuries (RabbitMQ 4.x applies a
#: default of 20 when none is set; ``-1``, "unlimited" on 4.x, drops at once on 3.x).
DEAD_DELIVERY_LIMIT = 2**31 - 1


def dead_queue_arguments(queue_type: str, legacy: bool = False) -> dict[str, Any]:
    """Arguments of a dead-letter queue: the type of its main queue.

    A classic queue lives on one node: in a cluster, with that node down, declaring it
    fails and nothing could be dead-lettered. Quorum dead-letter queues are replicated
    like the queue they serve, and carry an explicit, practically unreachable delivery
    limit (they have no dead-letter exchange of their own).

    Args:
        queue_type: ``quorum`` or ``classic``.
        legacy: the arguments earlier versions declared (no delivery limit); such a
            queue is still used, and browsing refreshes its dead letters instead.
    """
    args: dict[str, Any] = {"x-queue-type": queue_type}
    if queue_type == "quorum" and not legacy:
        args["x-delivery-limit"] = DEAD_DELIVERY_LIMIT
    return args


def queue_arguments(
    queue: str, queue_type: str, delivery_limit: int
) -> dict[str, Any]:
    """Arguments of a main task queue.

    The dead-letter routing key is pinned to the queue name: messages that reached the
    queue through the delay levels carry a longer routing key, and the dead-letter
    exchange must still route them to ``Q.dead``. Quorum queues always get an explicit
    delivery limit (RabbitMQ 4.x drops messages past its default of 20 when no
    dead-letter exchange is set; we always set both).
    """
    args: dict[str, Any] = {
        "x-queue-type": queue_type,
        "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
        "x-dead-letter-routing-key": queue,
    }
    if queue_type == "quorum":
        args["x-delivery-limit"] = delivery_limit
        # Broker-side dead-lettering (delivery limit) is at-most-once unless asked;
        # at-least-once needs reject-publish overflow (RabbitMQ >= 3.10).
        args["x-dead-letter-strategy"] = "at-least-once"
        args["x-overflow"] = "reject-publish"
    return args


#: The durable topic exchange events are published to (routing key = the event's key).
EVENTS_EXCHANGE = "taskwarren.events"
#: The durable fanout exchange broadcasts go to; every worker process binds a queue of its own.
BROADCAST_EXCHANGE = "taskwarren.broadcast"
#: The fanout exchange worker processes announce themselves on (``taskwarren workers``).
PRESENCE_EXCHANGE = "taskwarren.presence"

_WORD_RE = re.compile(r"^[A-Za-z0-9_\-]+$")


def check_routing_key(routing_key: str) -> str:
    """Return ``routing_key`` if it is a usable event key: dot-separated words, no wildcards.

    Raises:
        ConfigurationError: an empty key, an empty word, a ``*`` or ``#``, or over 255 bytes.
    """
    words = routing_key.split(".")
    if len(routing_key.encode()) > 255 or not all(_WORD_RE.match(w) for w in words):
        raise ConfigurationError(
            f"invalid event routing key {routing_key!r}: use dot-separated words of letters, "
            "digits, '_' and '-' (at most 255 bytes); '*' and '#' belong in subscriptions"
        )
    return routing_key


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a usable subscription: words, ``*`` or ``#``, dot-separated.

    Raises:
        ConfigurationError: an empty word, a wildcard inside a word, or over 255 bytes.
    """
    words = pattern.split(".")
    if len(pattern.encode()) > 255 or not all(w in ("*", "#") or _WORD_RE.match(w)
                                              for w in words):
        raise ConfigurationError(
            f"invalid subscription {pattern!r}: dot-separated words, each a word of letters, "
            "digits, '_' and '-', or '*' (exactly one word) or '#' (zero or more words)"
        )
    return pattern


def topic_matches(pattern: str, routing_key: str) -> bool:
    """Whether a topic binding ``pattern`` routes ``routing_key``, as RabbitMQ decides.

    ``*`` stands for exactly one word, ``#`` for zero or more words.
    """
    return patterns_overlap(pattern, routing_key)


@functools.lru_cache(maxsize=4096)
def patterns_overlap(first: str, second: str) -> bool:
    """Whether some routing key matches both patterns (a plain key is a pattern too)."""
    a, b = first.split("."), second.split(".")

    @functools.cache
    def match(i: int, j: int) -> bool:
        if i == len(a) and j == len(b):
            return True
        if i < len(a) and a[i] == "#" and (match(i + 1, j) or (j < len(b) and match(i, j + 1))):
            return True
        if j < len(b) and b[j] == "#" and (match(i, j + 1) or (i < len(a) and match(i + 1, j))):
            return True
        if i < len(a) and j < len(b) and "#" not in (a[i], b[j]):
            return (a[i] == b[j] or "*" in (a[i], b[j])) and match(i + 1, j + 1)
        return False

    return match(0, 0)


@dataclass(frozen=True, slots=True)
class ExchangeSpec:
    """An exchange taskwarren needs: its name and type (all are durable)."""

    name: str
    kind: str


@dataclass(frozen=True, slots=True)
class QueueSpec:
    """A durable queue taskwarren needs, with the arguments it declares it with."""

    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True, slots=True)
class BindingSpec:
    """A binding from exchange ``source`` to a queue (or, ``to_exchange``, an exchange)."""

    source: str
    destination: str
    key: str
    to_exchange: bool = False


TopologyItem = ExchangeSpec | QueueSpec | BindingSpec


def required_topology(
    queues: Iterable[str],
    subscriptions: Mapping[str, Sequence[str]],
    queue_type: str,
    delivery_limit: int,
) -> list[TopologyItem]:
    """Every exchange, queue and binding that ``queues`` and their subscriptions need.

    Args:
        queues: the task queues.
        subscriptions: subscription patterns per queue (queues not in ``queues`` too).
        queue_type: ``quorum`` or ``classic``.
        delivery_limit: quorum queues' ``x-delivery-limit``.
    """
    items: list[TopologyItem] = [
        ExchangeSpec(EXCHANGE, "direct"),
        ExchangeSpec(DEAD_LETTER_EXCHANGE, "direct"),
        ExchangeSpec(DELAY_DELIVER_EXCHANGE, "topic"),
        ExchangeSpec(EVENTS_EXCHANGE, "topic"),
        ExchangeSpec(BROADCAST_EXCHANGE, "fanout"),
    ]
    items += [ExchangeSpec(delay_exchange(level), "topic") for level in range(DELAY_LEVELS)]
    for level in range(DELAY_LEVELS):
        name = delay_exchange(level)
        items.append(QueueSpec(name, delay_queue_arguments(level)))
        wait_key, pass_key = level_binding_keys(level)
        items.append(BindingSpec(name, name, wait_key))
        items.append(BindingSpec(name, next_level_exchange(level), pass_key, to_exchange=True))
    for queue in sorted({*queues, *subscriptions}):
        dead = dead_queue(queue)
        items += [
            QueueSpec(queue, queue_arguments(queue, queue_type, delivery_limit)),
            QueueSpec(dead, dead_queue_arguments(queue_type)),
            BindingSpec(EXCHANGE, queue, queue),
            BindingSpec(DELAY_DELIVER_EXCHANGE, queue, deliver_binding_key(queue)),
            BindingSpec(DEAD_LETTER_EXCHANGE, dead, queue),
        ]
        items += [BindingSpec(EVENTS_EXCHANGE, queue, p) for p in subscriptions.get(queue, ())]
    return items
