"""RabbitMQBroker: the producer side: declare, publish confirmed, and the admin capabilities.

One producer connection per process, shared by threads under a lock. Consumers get
their own connections (:mod:`~taskwarren.brokers.rabbitmq.consumer`).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import structlog

from taskwarren.brokers.base import Broker, QueueStats
from taskwarren.brokers.rabbitmq import dead_letters, topology
from taskwarren.brokers.rabbitmq.consumer import RabbitMQConsumer
from taskwarren.brokers.rabbitmq.errors import LinkLostError, RefusedError, mapped
from taskwarren.brokers.rabbitmq.link import Link
from taskwarren.brokers.rabbitmq.publisher import publish_batch
from taskwarren.brokers.rabbitmq.topology import (
    bind_events,
    declare_common,
    declare_queues,
    route,
)
from taskwarren.errors import (
    BrokerConnectionError,
    BrokerError,
    PublishTimeoutError,
    UnroutableError,
)
from taskwarren.message import Envelope, clip
from taskwarren.settings import Settings
from taskwarren.topology import (
    BROADCAST_EXCHANGE,
    EVENTS_EXCHANGE,
    PRESENCE_EXCHANGE,
    TopologyItem,
    dead_queue,
)
from taskwarren.urls import mask_url, parse_urls

log = structlog.get_logger("taskwarren.rabbitmq")


class RabbitMQBroker(Broker):
    """RabbitMQ: durable direct exchange, quorum (or classic) queues, confirms everywhere.

    One producer connection per process, shared by threads under a lock; consumers
    get their own connections.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.endpoints = parse_urls(settings.url)
        self.location = mask_url(settings.url)
        self._lock = threading.Lock()
        self._link = Link(settings, self.endpoints, heartbeat=True)

    def _ready_link(self, deadline: float) -> Link:
        link = self._link
        if link.connected and not getattr(link.channel, "_confirm_selected", True):
            # After a channel error py-amqp reopens the channel without confirm mode:
            # nothing published there would ever be confirmed. Start over.
            link.drop()
        if link.connected and time.monotonic() - link.last_used > self.settings.heartbeat_s:
            # Idle past a heartbeat: read what the broker sent (a close, perhaps)
            # before trusting the connection with a message.
            try:
                with mapped():
                    link.drain(0)
            except LinkLostError:
                link.drop()
        if not link.connected:
            link.connect(deadline)
        return link

    def declare(self, queues: Iterable[str]) -> None:
        """Declare ``queues``, their dead-letter queues and bindings (and the exchanges)."""
        queues = list(queues)
        with self._lock:
            self._with_link(lambda link: declare_queues(link, queues))

    def _with_link(self, fn: Callable[[Link], Any]) -> Any:
        """``fn(link)``, on a new link after a broken one, until the publish timeout."""
        deadline = time.monotonic() + self.settings.publish_timeout_s
        while True:
            with self._link.until(deadline):
                link = self._ready_link(deadline)
                try:
                    with mapped():
                        return fn(link)
                except LinkLostError as exc:
                    link.drop()
                    if time.monotonic() >= deadline:
                        raise BrokerConnectionError(str(exc)) from None
                except RefusedError as exc:
                    link.drop()
                    raise BrokerError(f"broker refused: {exc}") from None

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        """Publish persistently to ``queue`` (or its delay levels); returns once confirmed."""
        self._publish(queue, envelopes, delay_s, dead=False)

    def _publish(
        self, queue: str, envelopes: Sequence[Envelope], delay_s: float, dead: bool
    ) -> None:
        exchange, routing_key = route(queue, delay_s, dead)
        self._publish_to(queue, exchange, routing_key, envelopes)

    def _publish_to(self, queue: str | None, exchange: str, routing_key: str,
                    envelopes: Sequence[Envelope]) -> None:
        deadline = time.monotonic() + self.settings.publish_timeout_s
        todo: dict[str, Envelope] = {e.message_id: e for e in envelopes}
        with self._lock, self._link.until(deadline):
            while todo:
                link = self._ready_link(deadline)
                try:
                    with mapped():
                        publish_batch(link, queue, exchange, routing_key, todo, deadline)
                except LinkLostError as exc:
                    # Unconfirmed messages stay in ``todo`` and are published again.
                    link.drop()
                    if time.monotonic() >= deadline:
                        raise PublishTimeoutError(
                            f"{len(todo)} message(s) unconfirmed: {exc}"
                        ) from None
                    log.warning("publish.retrying", unconfirmed=len(todo), error=clip(str(exc)))
                except RefusedError as exc:
                    # A channel error: py-amqp reopens the channel without confirm mode,
                    # so the connection must go, or later sends would never be confirmed.
                    link.drop()
                    raise BrokerError(f"broker refused the publish: {exc}") from None

    def publish_event(self, routing_key: str, envelope: Envelope) -> int | None:
        """Publish mandatorily to ``taskwarren.events``, confirmed.

        AMQP reports only the unroutable case (the broker returns the message before
        confirming it): ``0``. Otherwise at least one queue has its copy, but the
        broker does not say how many: ``None``.
        """
        return self._publish_counted(EVENTS_EXCHANGE, routing_key, envelope)

    def publish_broadcast(self, envelope: Envelope) -> int | None:
        """Publish mandatorily to ``taskwarren.broadcast``: ``0`` if no process listens."""
        return self._publish_counted(BROADCAST_EXCHANGE, "", envelope)

    def _publish_counted(self, exchange: str, routing_key: str, envelope: Envelope) -> int | None:
        try:
            self._publish_to(None, exchange, routing_key, [envelope])
        except UnroutableError:
            return 0
        return None

    def bind_events(self, queue: str, patterns: Sequence[str]) -> None:
        """Declare ``queue`` and bind it to ``taskwarren.events`` for each pattern."""
        with self._lock:
            self._with_link(lambda link: bind_events(link, queue, patterns))

    def check_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """Passive declares tell what exists; for an existing queue or exchange, a declare
        with our arguments on a throwaway channel tells whether they match (the broker
        answers PRECONDITION_FAILED, and closes only that channel, when they differ; when
        they match it is a no-op). Bindings cannot be read over AMQP: ``unknown``.
        """
        with self._lock:
            result: list[str] = self._with_link(
                lambda link: [topology.check(link, item) for item in items])
            return result

    def apply_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """Create what is missing of ``items``; never delete or redeclare what differs."""
        with self._lock:
            result: list[str] = self._with_link(lambda link: topology.apply(link, items))
            return result

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        """What live worker processes announce during the next ``listen_s`` seconds."""
        heard: list[dict[str, Any]] = []

        def listen(link: Link) -> None:
            declare_common(link)
            ch = link.conn.channel()
            try:
                name = ch.queue_declare("", exclusive=True, auto_delete=True,
                                        arguments={"x-queue-type": "classic"})[0]
                ch.queue_bind(name, PRESENCE_EXCHANGE, "")
                ch.basic_consume(name, no_ack=True, callback=lambda m: heard.append(
                    json.loads(m.body)))
                deadline = time.monotonic() + listen_s
                while (remaining := deadline - time.monotonic()) > 0:
                    link.drain(remaining)
            finally:
                ch.close()

        with self._lock:
            self._with_link(listen)
        return heard

    def consumer(self) -> RabbitMQConsumer:
        """A consumer with connections of its own."""
        return RabbitMQConsumer(self.settings, self.endpoints)

    def stats(self, queue: str) -> QueueStats:
        """Ready messages and consumers of ``queue``, and its dead letters.

        Raises:
            BrokerError: ``queue`` (or its dead-letter queue) does not exist.
        """
        def query(link: Link) -> QueueStats:
            ch = link.channel
            _, ready, consumers = ch.queue_declare(queue, passive=True)
            _, dead, _ = ch.queue_declare(dead_queue(queue), passive=True)
            return QueueStats(queue, ready, None, consumers, dead, None)

        with self._lock:
            try:
                result: QueueStats = self._with_link(query)
            except BrokerConnectionError:
                self._link.drop()
                raise  # unreachable, which says nothing about the queue
            except BrokerError as exc:
                self._link.drop()
                raise BrokerError(f"queue {queue!r} not found: {exc}") from None
            return result

    def purge(self, queue: str) -> int:
        """Remove every ready message of ``queue``; returns how many."""
        with self._lock:
            count: int = self._with_link(lambda link: link.channel.queue_purge(queue))
            return count

    def dead_letters(self, queue: str, limit: int | None = None) -> list[Envelope]:
        """The dead letters of ``queue`` (all, or the first ``limit``), left in place.

        Browsing takes them (unacked, on a channel of its own) and gives them back: each
        one read counts a delivery, as ``taskwarren dlq list`` does.
        """
        found: list[Envelope] = []

        def browse(link: Link) -> None:
            found.clear()  # a retry after a broken link starts over
            dead_letters.collect(link, queue, found.append, limit)

        with self._lock:
            self._with_link(browse)
        return found

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Move dead letters (all, or those ids) back to ``queue``; returns how many.

        Each copy is published clean with its attempt reset and confirmed before the
        dead letter is removed, :data:`~taskwarren.brokers.rabbitmq.dead_letters.DEAD_BATCH`
        at a time: an interruption can leave a message in both places, never in neither.
        """
        with self._lock:
            link = self._ready_link(time.monotonic() + self.settings.publish_timeout_s)
            return dead_letters.take(link, queue, message_ids, replay=True)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        """Delete dead letters (all, or those ids); returns how many."""
        with self._lock:
            link = self._ready_link(time.monotonic() + self.settings.publish_timeout_s)
            return dead_letters.take(link, queue, message_ids, replay=False)

    def close(self) -> None:
        """Close the producer connection."""
        with self._lock:
            self._link.close()
