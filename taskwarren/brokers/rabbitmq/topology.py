"""Declarations: the exchanges, queues and bindings taskwarren needs, and checking them.

:func:`declare_queues` makes what a queue needs as it is used (never redeclaring
something that exists with other arguments: that is a :class:`ConfigurationError`
naming the way out); :func:`check` and :func:`apply` serve ``taskwarren topology``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from taskwarren.brokers.rabbitmq.errors import (
    NOT_FOUND,
    PRECONDITION_FAILED,
    LinkLostError,
    RefusedError,
    mapped,
)
from taskwarren.brokers.rabbitmq.link import Link
from taskwarren.errors import BrokerError, ConfigurationError
from taskwarren.topology import (
    BROADCAST_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
    DEAD_SUFFIX,
    DELAY_DELIVER_EXCHANGE,
    DELAY_LEVELS,
    EVENTS_EXCHANGE,
    EXCHANGE,
    PRESENCE_EXCHANGE,
    BindingSpec,
    ExchangeSpec,
    QueueSpec,
    TopologyItem,
    dead_queue,
    dead_queue_arguments,
    delay_entry_exchange,
    delay_exchange,
    delay_queue_arguments,
    delay_routing_key,
    deliver_binding_key,
    level_binding_keys,
    next_level_exchange,
    queue_arguments,
)

log = structlog.get_logger("taskwarren.rabbitmq")


def declare_queues(link: Link, queues: Iterable[str]) -> None:
    """Declare the exchanges, ``queues``, their dead-letter queues and delay bindings."""
    todo = [q for q in queues if q not in link.declared]
    if not todo:
        return
    ch = link.channel
    declare_common(link)
    s = link.settings
    for queue in todo:
        _declare_queue(
            link, queue, queue_arguments(queue, s.queue_type, s.delivery_limit),
            "queue {name!r} exists with other arguments than taskwarren declares ({why}). "
            "taskwarren never redeclares a queue: drain it and delete it, or set "
            "TASKWARREN_QUEUE_TYPE to match the existing queue.")
        ch.queue_bind(queue, EXCHANGE, queue)
        ch.queue_bind(queue, DELAY_DELIVER_EXCHANGE, deliver_binding_key(queue))
        dead = dead_queue(queue)
        _declare_dead(link, dead)
        ch.queue_bind(dead, DEAD_LETTER_EXCHANGE, queue)
        link.declared.add(queue)

def _declare_queue(link: Link, name: str, arguments: dict[str, Any], advice: str) -> None:
    """Declare queue ``name``; one that exists with other arguments is a configuration
    error, never redeclared. ``advice`` says what to do: a template of ``{name}`` and
    ``{why}`` (the broker's reply).

    Raises:
        ConfigurationError: the queue exists with other arguments.
    """
    try:
        with mapped():
            link.channel.queue_declare(name, durable=True, auto_delete=False,
                                       arguments=arguments)
    except RefusedError as exc:
        if exc.reply_code != PRECONDITION_FAILED:
            raise
        link.open_channel()  # the refusal closed the channel
        raise ConfigurationError(advice.format(name=name, why=exc.reply_text)) from None


def _declare_dead(link: Link, dead: str) -> None:
    """Declare a dead-letter queue, accepting one an older taskwarren declared.

    Declared on a side channel: a refused declare closes the channel it was made on,
    and the confirm channel may have republishes awaiting their confirms.
    """
    queue_type = link.settings.queue_type
    refused = ""
    for legacy in (False, True):
        ch = link.conn.channel()
        try:
            with mapped():
                ch.queue_declare(dead, durable=True, auto_delete=False,
                                 arguments=dead_queue_arguments(queue_type, legacy))
        except RefusedError as exc:
            if exc.reply_code != PRECONDITION_FAILED:
                raise
            refused = refused or exc.reply_text
            continue
        finally:
            with contextlib.suppress(BrokerError), mapped():
                ch.close()
        if legacy:
            # An earlier taskwarren declared it without a delivery limit: RabbitMQ 4.x applies
            # its default of 20 there. Browsing refreshes well-worn dead letters, so
            # nothing is lost; recreating the queue makes that unnecessary.
            log.info("queue.dead_letter_queue_without_limit", queue=dead,
                     advice="taskwarren dlq replay (or purge) it, delete it, and let "
                            "taskwarren declare it again")
        return
    raise ConfigurationError(
        f"dead-letter queue {dead!r} exists with other arguments ({refused}); "
        f"taskwarren < 0.2 declared it classic. Replay or purge it (taskwarren dlq), "
        f"delete it, and start again."
    )

def bind_events(link: Link, queue: str, patterns: Iterable[str]) -> None:
    """Declare ``queue`` and bind it to ``taskwarren.events`` for each pattern."""
    declare_queues(link, [queue])
    for pattern in patterns:
        link.channel.queue_bind(queue, EVENTS_EXCHANGE, pattern)

def declare_common(link: Link) -> None:
    """Declare the shared exchanges and the delay levels (once per connection)."""
    if link.common_declared:
        return
    ch = link.channel
    ch.exchange_declare(EVENTS_EXCHANGE, "topic", durable=True, auto_delete=False)
    ch.exchange_declare(BROADCAST_EXCHANGE, "fanout", durable=True, auto_delete=False)
    ch.exchange_declare(PRESENCE_EXCHANGE, "fanout", durable=True, auto_delete=False)
    ch.exchange_declare(EXCHANGE, "direct", durable=True, auto_delete=False)
    ch.exchange_declare(DEAD_LETTER_EXCHANGE, "direct", durable=True, auto_delete=False)
    ch.exchange_declare(DELAY_DELIVER_EXCHANGE, "topic", durable=True, auto_delete=False)
    for level in range(DELAY_LEVELS):
        name = delay_exchange(level)
        ch.exchange_declare(name, "topic", durable=True, auto_delete=False)
    for level in range(DELAY_LEVELS):
        name = delay_exchange(level)
        _declare_queue(
            link, name, delay_queue_arguments(level),
            "delay queue {name!r} exists with other arguments ({why}); taskwarren < 0.2 "
            "declared the delay levels as classic queues. Stop senders, let the levels "
            "drain (rabbitmqctl list_queues name messages), then delete them: for n in "
            "$(seq 0 27); do rabbitmqctl delete_queue taskwarren.delay.$n; done")
        wait_key, pass_key = level_binding_keys(level)
        ch.queue_bind(name, name, wait_key)
        ch.exchange_bind(next_level_exchange(level), name, pass_key)
    link.common_declared = True


def route(queue: str, delay_s: float, dead: bool) -> tuple[str, str]:
    """Exchange and routing key for a message to ``queue``."""
    if dead:
        return DEAD_LETTER_EXCHANGE, queue
    if delay_s > 0:
        return delay_entry_exchange(delay_s), delay_routing_key(delay_s, queue)
    return EXCHANGE, queue


def _declare(ch: Any, item: ExchangeSpec | QueueSpec, passive: bool) -> None:
    if isinstance(item, ExchangeSpec):
        ch.exchange_declare(item.name, item.kind, passive=passive, durable=True,
                            auto_delete=False)
    else:
        ch.queue_declare(item.name, passive=passive, durable=True, auto_delete=False,
                         arguments=item.arguments)


def _bind(ch: Any, item: BindingSpec) -> None:
    if item.to_exchange:
        ch.exchange_bind(item.destination, item.source, item.key)
    else:
        ch.queue_bind(item.destination, item.source, item.key)


def check(link: Link, item: TopologyItem) -> str:
    """What the broker has of ``item``: ``ok``, ``missing``, ``differs: <why>``..."""
    if isinstance(item, BindingSpec):
        return "unknown"  # AMQP has no way to read bindings
    exists = _on_side_channel(link, lambda ch: _declare(ch, item, passive=True))
    if exists is not None:
        return "missing" if exists.reply_code == NOT_FOUND else f"unknown: {exists.reply_text}"
    differs = _on_side_channel(link, lambda ch: _declare(ch, item, passive=False))
    if differs is not None and isinstance(item, QueueSpec) and item.name.endswith(DEAD_SUFFIX):
        # A dead-letter queue an earlier taskwarren declared (no delivery limit) is usable.
        legacy = QueueSpec(item.name, {k: v for k, v in item.arguments.items()
                                       if k != "x-delivery-limit"})
        if _on_side_channel(link, lambda ch: _declare(ch, legacy, passive=False)) is None:
            return "ok, without a delivery limit (declared by an earlier taskwarren)"
    return "ok" if differs is None else f"differs: {differs.reply_text}"

def _on_side_channel(link: Link, fn: Callable[[Any], None]) -> LinkLostError | RefusedError | None:
    """Run ``fn`` on a throwaway channel; the broker's channel error, or ``None``."""
    ch = link.conn.channel()
    try:
        with mapped():
            fn(ch)
    except (LinkLostError, RefusedError) as exc:
        if not exc.channel_only:
            raise
        return exc  # py-amqp has reopened the channel: still ours to close
    finally:
        with contextlib.suppress(BrokerError), mapped():
            ch.close()
    return None

def apply(link: Link, items: Sequence[TopologyItem]) -> list[str]:
    """Create what is missing of ``items``; per item ``ok``, ``created``, ``differs``..."""
    out: list[str] = []
    unusable: set[str] = set()
    for item in items:
        status = "ok" if isinstance(item, BindingSpec) else check(link, item)
        if isinstance(item, BindingSpec):
            if {item.source, item.destination} & unusable:
                out.append("skipped: its exchange or queue is not usable")
                continue
            error = _on_side_channel(link, functools.partial(_bind, item=item))
            out.append("ok" if error is None else f"skipped: {error.reply_text}")
        elif status == "missing":
            error = _on_side_channel(
                link, functools.partial(_declare, item=item, passive=False))
            out.append("created" if error is None else f"skipped: {error.reply_text}")
            if error is not None:
                unusable.add(item.name)
        else:
            out.append(status)
            if not status.startswith("ok"):
                unusable.add(item.name)
    return out
