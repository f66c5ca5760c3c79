"""Pipelined, confirmed publishing on a link: a window of unconfirmed messages, one deadline.

The caller holds the link (and its lock) and runs these inside
:func:`~taskwarren.brokers.rabbitmq.errors.mapped`; a broken link raises
:class:`~taskwarren.brokers.rabbitmq.errors.LinkLostError` and the caller decides
whether to publish again.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterable, Sequence

from taskwarren.brokers.rabbitmq.frames import corked
from taskwarren.brokers.rabbitmq.link import Confirmation, Link
from taskwarren.brokers.rabbitmq.topology import declare_common, declare_queues
from taskwarren.errors import PublishNackedError, PublishTimeoutError, UnroutableError
from taskwarren.message import Envelope

#: Unconfirmed messages allowed in flight during ``send_many``.
CONFIRM_WINDOW = 1000

#: What to publish: exchange, routing key, the message, and who hears its confirm.
Outgoing = tuple[str, str, Envelope, Confirmation]


def send(link: Link, outgoing: Iterable[Outgoing], deadline: float, cork: bool = True) -> None:
    """Publish every message; return once each one's confirm (or refusal) was heard.

    ``cork``: gather the writes (worth it from two messages on; one goes out in one
    write anyway, and sooner without the buffering).

    Raises:
        PublishTimeoutError: ``deadline`` passed first (the link is dropped).
    """
    wait_unblocked(link, deadline)
    with corked(link.conn) if cork else contextlib.nullcontext(_no_flush) as flush:
        for exchange, routing_key, envelope, confirm in outgoing:
            link.publish(exchange, routing_key, envelope, confirm)
            if link.unconfirmed >= CONFIRM_WINDOW:
                flush()
                while link.unconfirmed >= CONFIRM_WINDOW // 2:
                    wait(link, deadline)
    while link.unconfirmed:
        wait(link, deadline)


def publish_batch(link: Link, queue: str | None, exchange: str, routing_key: str,
                  todo: dict[str, Envelope], deadline: float) -> None:
    """Publish ``todo`` (message id -> envelope); confirmed ones leave ``todo``.

    ``queue`` (or, when ``None``, the shared exchanges) is declared first. On a broken
    link what is left in ``todo`` is unconfirmed: publish it again.

    Raises:
        UnroutableError: the broker returned a message.
        PublishNackedError: the broker refused a message.
    """
    if queue is None:
        declare_common(link)
    else:
        declare_queues(link, [queue])
    failures: dict[str, str] = {}

    def confirmed(message_id: str) -> Confirmation:
        def done(error: str | None) -> None:
            if error is None:
                todo.pop(message_id, None)
            else:
                failures[message_id] = error
        return done

    send(link, ((exchange, routing_key, envelope, confirmed(envelope.message_id))
                for envelope in list(todo.values())), deadline, cork=len(todo) > 1)
    if failures:
        message_id, error = next(iter(failures.items()))
        kind = UnroutableError if error.startswith("unroutable") else PublishNackedError
        raise kind(f"message {message_id} not stored: {error}")


def publish_copies(link: Link, copies: Sequence[tuple[str, str, Envelope]],
                   deadline: float) -> None:
    """Publish every ``(exchange, routing key, envelope)``; return once all are confirmed.

    Unlike :func:`publish_batch`, copies sharing a message id are all published (a
    dead-letter queue may hold two copies of one task).

    Raises:
        UnroutableError: the broker returned a copy.
        PublishNackedError: the broker refused a copy.
    """
    failures: list[str] = []

    def confirmed(error: str | None) -> None:
        if error is not None:
            failures.append(error)

    send(link, ((exchange, routing_key, envelope, confirmed)
                for exchange, routing_key, envelope in copies), deadline)
    if failures:
        kind = UnroutableError if failures[0].startswith("unroutable") else PublishNackedError
        raise kind(f"{len(failures)} cop(ies) not stored: {failures[0]}")


def _no_flush() -> None:
    """Nothing is gathered: nothing to write out."""


def wait_unblocked(link: Link, deadline: float) -> None:
    """Return once the broker no longer blocks ``link``'s publishers."""
    while link.blocked:
        wait(link, deadline)


def wait(link: Link, deadline: float) -> None:
    """Handle what the broker sends (confirms, unblocking) for up to a second.

    Raises:
        PublishTimeoutError: ``deadline`` has passed (the link is dropped).
    """
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        blocked = f": the broker blocks publishers ({link.blocked})" if link.blocked else ""
        link.drop()
        raise PublishTimeoutError(
            f"no confirm within {link.settings.publish_timeout_s}s{blocked}"
        )
    link.drain(min(remaining, 1.0))
