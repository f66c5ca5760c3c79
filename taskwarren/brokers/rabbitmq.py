"""RabbitMQ through py-amqp: topology, pipelined publisher confirms, consumers, reconnects.

This is the only module that imports ``amqp``; its errors become ours here.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import random
import select
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

import amqp
import structlog
from amqp import exceptions as amqp_errors

from taskwarren.brokers.base import (
    Ack,
    Action,
    Broker,
    Consumer,
    Delivery,
    QueueStats,
    Republish,
    Requeue,
)
from taskwarren.errors import (
    BrokerConnectionError,
    BrokerError,
    ConfigurationError,
    PublishNackedError,
    PublishTimeoutError,
    UnroutableError,
)
from taskwarren.message import Envelope, new_task_id, revived
from taskwarren.settings import Settings, mask_url
from taskwarren.topology import (
    BROADCAST_EXCHANGE,
    DEAD_LETTER_EXCHANGE,
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

#: Errors after which the connection is gone and must be opened again.
_LINK_ERRORS: tuple[type[BaseException], ...] = (
    amqp_errors.RecoverableConnectionError,
    amqp_errors.ConnectionError,
    amqp_errors.RecoverableChannelError,
    OSError,
    EOFError,
    AttributeError,  # py-amqp after its transport was torn down under it
)
#: Unconfirmed messages allowed in flight during ``send_many``.
CONFIRM_WINDOW = 1000
#: Settled deliveries that make a sleeping I/O thread send their (coalesced) ack.
ACK_BATCH = 16
#: Largest prefetch AMQP can express (a 16-bit field).
MAX_PREFETCH = 65535
#: A consumer link that lived this long before failing resets the reconnect backoff.
RECONNECT_STABLE_S = 10.0
#: Longest wait for dead letters given back to be counted again after a browse.
DLQ_SETTLE_S = 5.0
#: First and largest reconnect backoff, in seconds (full jitter in between).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One broker address from a URL (password kept out of ``repr``)."""

    host: str
    port: int
    userid: str
    password: str
    vhost: str
    ssl: bool

    def __repr__(self) -> str:
        return f"Endpoint({self.host}:{self.port}/{self.vhost})"


def parse_urls(url: str) -> list[Endpoint]:
    """Endpoints of a comma-separated list of ``amqp://`` / ``amqps://`` URLs.

    Raises:
        ConfigurationError: a URL that is not AMQP.
    """
    endpoints = []
    for part in url.split(","):
        split = urlsplit(part.strip())
        if split.scheme not in ("amqp", "amqps"):
            raise ConfigurationError(f"not an AMQP URL: {mask_url(part)}")
        ssl = split.scheme == "amqps"
        path = split.path[1:] if split.path.startswith("/") else split.path
        endpoints.append(Endpoint(
            host=split.hostname or "localhost",
            port=split.port or (5671 if ssl else 5672),
            userid=unquote(split.username or "guest"),
            password=unquote(split.password or "guest"),
            vhost=unquote(path) if path else "/",
            ssl=ssl,
        ))
    return endpoints


Confirmation = Callable[[str | None], None]


def _ignore_confirm(error: str | None) -> None:
    """For announcements: nothing depends on their delivery."""

#: Bytes gathered before a corked connection writes them out.
CORK_BYTES = 128 * 1024


@contextlib.contextmanager
def corked(conn: Any) -> Iterator[Callable[[], None]]:
    """Gather the frames written inside the block into few large writes.

    py-amqp writes every message with its own ``sendall``; a batch of publishes (or of
    acks) costs one system call per message. Inside this block writes are buffered and
    go out when :data:`CORK_BYTES` gather, when the yielded ``flush`` is called (do so
    before waiting for an answer), and at the end. Plain TCP only; TLS writes directly.
    """
    transport = getattr(conn, "transport", None)
    real = getattr(transport, "_write", None)
    if real is None or type(transport).__name__ != "TCPTransport":
        yield lambda: None
        return
    chunks: list[bytes] = []
    pending = 0

    def flush() -> None:
        nonlocal pending
        if chunks:
            data = b"".join(chunks)
            chunks.clear()
            pending = 0
            real(data)

    def buffered(data: Any) -> None:
        nonlocal pending
        chunks.append(bytes(data))  # py-amqp hands a view of a buffer it reuses
        pending += len(data)
        if pending >= CORK_BYTES:
            flush()

    transport._write = buffered  # type: ignore[union-attr]
    try:
        yield flush
    finally:
        transport._write = real  # type: ignore[union-attr]
        flush()


class _Link:
    """One connection and one confirm-mode channel. Not thread-safe: one owner at a time."""

    def __init__(self, settings: Settings, endpoints: list[Endpoint], heartbeat: bool) -> None:
        self.settings = settings
        self.endpoints = endpoints
        self.heartbeat = settings.heartbeat_s if heartbeat else 0
        self.conn: Any = None
        self.channel: Any = None
        self.generation = 0
        self.blocked: str | None = None
        self.declared: set[str] = set()
        self.common_declared = False
        self._seq = 0
        self._unconfirmed: OrderedDict[int, tuple[str, Confirmation]] = OrderedDict()
        self._returned: dict[str, str] = {}
        self._start = random.randrange(len(endpoints))
        self.last_used = time.monotonic()

    @property
    def connected(self) -> bool:
        return self.conn is not None

    def connect(self, deadline: float | None = None) -> None:
        """Connect to the first endpoint that answers, with backoff between rounds.

        Raises:
            BrokerConnectionError: ``deadline`` passed before any endpoint answered.
        """
        attempt = 0
        while True:
            for i in range(len(self.endpoints)):
                endpoint = self.endpoints[(self._start + i) % len(self.endpoints)]
                try:
                    self._open(endpoint)
                    self._start = (self._start + i) % len(self.endpoints)
                    return
                except (*_LINK_ERRORS, amqp_errors.AMQPError) as exc:
                    self.drop()
                    last = exc
                    if isinstance(exc, amqp_errors.AccessRefused):
                        raise BrokerConnectionError(f"access refused by {endpoint!r}") from None
            attempt += 1
            pause = random.uniform(0, min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**attempt))
            if deadline is not None and time.monotonic() + pause > deadline:
                raise BrokerConnectionError(
                    f"cannot connect to {mask_url(self.settings.url)}: {last}"
                ) from None
            log.warning("broker.reconnecting", error=str(last), pause_s=round(pause, 3))
            time.sleep(pause)

    def _open(self, endpoint: Endpoint) -> None:
        conn = amqp.Connection(
            host=f"{endpoint.host}:{endpoint.port}",
            userid=endpoint.userid,
            password=endpoint.password,
            virtual_host=endpoint.vhost,
            ssl=endpoint.ssl,
            heartbeat=self.heartbeat,
            connect_timeout=self.settings.connect_timeout_s,
            write_timeout=self.settings.publish_timeout_s,
            on_blocked=self._on_blocked,
            on_unblocked=self._on_unblocked,
            client_properties={
                "product": "taskwarren",
                "connection_name": f"taskwarren-{os.getpid()}",
            },
        )
        self.conn = conn
        conn.connect()
        self._open_channel()
        self.generation += 1
        self.blocked = None
        self.declared = set()
        self.common_declared = False
        self.last_used = time.monotonic()

    def _open_channel(self) -> None:
        channel = self.conn.channel()
        channel.confirm_select()
        # py-amqp clears this flag when it reopens the channel after a channel error
        # (without confirm mode); _ready_link checks it. confirm_select() leaves it unset.
        channel._confirm_selected = True
        channel.events["basic_ack"].add(self._on_ack)
        channel.events["basic_nack"].add(self._on_nack)
        channel.events["basic_return"].add(self._on_return)
        self.channel = channel
        self._seq = 0

    def drop(self) -> None:
        """Forget the connection (closing it if it still answers); fail unconfirmed."""
        conn, self.conn, self.channel = self.conn, None, None
        pending, self._unconfirmed = self._unconfirmed, OrderedDict()
        self._returned.clear()
        for _, confirm in pending.values():
            confirm("connection lost before the confirm arrived")
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.collect()

    def close(self) -> None:
        """Close politely; unconfirmed publishes are reported failed."""
        if self.conn is not None:
            try:
                self.conn.close()
            except (*_LINK_ERRORS, amqp_errors.AMQPError):
                pass
        self.drop()

    def _on_blocked(self, reason: str) -> None:
        self.blocked = reason or "resource alarm"
        log.warning("broker.blocked", reason=self.blocked)

    def _on_unblocked(self) -> None:
        self.blocked = None
        log.info("broker.unblocked")

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, None)

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._settle(tag, multiple, "the broker refused the message (nack)")

    def _on_return(self, exc: Any, exchange: str, routing_key: str, message: Any) -> None:
        message_id = message.properties.get("message_id", "")
        self._returned[message_id] = (
            f"unroutable: no queue bound for routing key {routing_key!r} on exchange "
            f"{exchange!r} ({exc.reply_text if hasattr(exc, 'reply_text') else exc})"
        )

    def _settle(self, tag: int, multiple: bool, error: str | None) -> None:
        pending = self._unconfirmed
        if multiple:
            while pending:
                seq = next(iter(pending))
                if seq > tag:
                    break
                message_id, confirm = pending.popitem(last=False)[1]
                confirm(self._returned.pop(message_id, None) or error)
        else:
            item = pending.pop(tag, None)
            if item is not None:
                confirm_error = self._returned.pop(item[0], None) or error
                item[1](confirm_error)

    def publish(
        self, exchange: str, routing_key: str, envelope: Envelope, confirm: Confirmation,
        transient: bool = False,
    ) -> None:
        """Publish persistently and mandatorily; ``confirm`` is called with the outcome.

        ``transient``: neither persistent nor mandatory (presence announcements).
        """
        props: dict[str, Any] = {
            "delivery_mode": 1 if transient else 2,
            "content_type": envelope.content_type,
            "message_id": envelope.message_id,
            "app_id": "taskwarren",
            "application_headers": envelope.headers,
        }
        if envelope.timestamp:
            props["timestamp"] = envelope.timestamp
        msg = amqp.Message(envelope.body, **props)
        self.channel.basic_publish(msg, exchange=exchange, routing_key=routing_key,
                                   mandatory=not transient)
        self._seq += 1
        self._unconfirmed[self._seq] = (envelope.message_id, confirm)
        self.last_used = time.monotonic()

    @property
    def unconfirmed(self) -> int:
        return len(self._unconfirmed)

    def declare_queues(self, queues: Iterable[str]) -> None:
        """Declare the exchanges, ``queues``, their dead-letter queues and delay bindings."""
        todo = [q for q in queues if q not in self.declared]
        if not todo:
            return
        ch = self.channel
        self.declare_common()
        s = self.settings
        for queue in todo:
            try:
                ch.queue_declare(queue, durable=True, auto_delete=False,
                                 arguments=queue_arguments(queue, s.queue_type, s.delivery_limit))
            except amqp_errors.PreconditionFailed as exc:
                self._open_channel()
                raise ConfigurationError(
                    f"queue {queue!r} exists with other arguments than taskwarren declares "
                    f"({exc.reply_text}). taskwarren never redeclares a queue: drain it and "
                    f"delete it, or set TASKWARREN_QUEUE_TYPE to match the existing queue."
                ) from None
            ch.queue_bind(queue, EXCHANGE, queue)
            ch.queue_bind(queue, DELAY_DELIVER_EXCHANGE, deliver_binding_key(queue))
            dead = dead_queue(queue)
            try:
                ch.queue_declare(dead, durable=True, auto_delete=False,
                                 arguments=dead_queue_arguments(s.queue_type))
            except amqp_errors.PreconditionFailed as exc:
                self._open_channel()
                raise ConfigurationError(
                    f"dead-letter queue {dead!r} exists with other arguments "
                    f"({exc.reply_text}); taskwarren < 0.2 declared it classic. Replay or "
                    f"purge it (taskwarren dlq), delete it, and start again."
                ) from None
            ch.queue_bind(dead, DEAD_LETTER_EXCHANGE, queue)
            self.declared.add(queue)

    def bind_events(self, queue: str, patterns: Iterable[str]) -> None:
        """Declare ``queue`` and bind it to ``taskwarren.events`` for each pattern."""
        self.declare_queues([queue])
        for pattern in patterns:
            self.channel.queue_bind(queue, EVENTS_EXCHANGE, pattern)

    def declare_common(self) -> None:
        """Declare the shared exchanges and the delay levels (once per connection)."""
        if self.common_declared:
            return
        ch = self.channel
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
            try:
                ch.queue_declare(name, durable=True, auto_delete=False,
                                 arguments=delay_queue_arguments(level))
            except amqp_errors.PreconditionFailed as exc:
                self._open_channel()
                raise ConfigurationError(
                    f"delay queue {name!r} exists with other arguments ({exc.reply_text}); "
                    "taskwarren < 0.2 declared the delay levels as classic queues. Stop "
                    "senders, let the levels drain (rabbitmqctl list_queues name messages), "
                    "then delete them: for n in $(seq 0 27); do rabbitmqctl delete_queue "
                    "taskwarren.delay.$n; done"
                ) from None
            wait_key, pass_key = level_binding_keys(level)
            ch.queue_bind(name, name, wait_key)
            ch.exchange_bind(next_level_exchange(level), name, pass_key)
        self.common_declared = True


def _route(queue: str, delay_s: float, dead: bool) -> tuple[str, str]:
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


def _envelope_of(msg: Any) -> Envelope:
    props = msg.properties
    body = msg.body
    if isinstance(body, str):  # py-amqp decodes when a content_encoding is set
        body = body.encode()
    return Envelope(
        message_id=str(props.get("message_id") or ""),
        body=bytes(body),
        headers=dict(props.get("application_headers") or {}),
        content_type=str(props.get("content_type") or ""),
        timestamp=_timestamp(props.get("timestamp")),
    )


def _timestamp(value: Any) -> int:
    if isinstance(value, int):
        return value
    if hasattr(value, "timestamp"):
        return int(value.timestamp())
    return 0


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
        self._link = _Link(settings, self.endpoints, heartbeat=True)

    def _ready_link(self, deadline: float) -> _Link:
        link = self._link
        if link.connected and not getattr(link.channel, "_confirm_selected", True):
            # After a channel error py-amqp reopens the channel without confirm mode:
            # nothing published there would ever be confirmed. Start over.
            link.drop()
        if link.connected and time.monotonic() - link.last_used > self.settings.heartbeat_s:
            # Idle past a heartbeat: read what the broker sent (a close, perhaps)
            # before trusting the connection with a message.
            try:
                link.conn.drain_events(timeout=0)
            except TimeoutError:
                pass
            except _LINK_ERRORS:
                link.drop()
        if not link.connected:
            link.connect(deadline)
        return link

    def declare(self, queues: Iterable[str]) -> None:
        queues = list(queues)
        with self._lock:
            self._with_link(lambda link: link.declare_queues(queues))

    def _with_link(self, fn: Callable[[_Link], Any]) -> Any:
        deadline = time.monotonic() + self.settings.publish_timeout_s
        while True:
            link = self._ready_link(deadline)
            try:
                return fn(link)
            except _LINK_ERRORS as exc:
                link.drop()
                if time.monotonic() > deadline:
                    raise BrokerConnectionError(str(exc)) from None
            except amqp_errors.AMQPError as exc:
                link.drop()
                raise BrokerError(f"broker refused: {exc}") from None

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        self._publish(queue, envelopes, delay_s, dead=False)

    def _publish(
        self, queue: str, envelopes: Sequence[Envelope], delay_s: float, dead: bool
    ) -> None:
        exchange, routing_key = _route(queue, delay_s, dead)
        self._publish_to(queue, exchange, routing_key, envelopes)

    def _publish_to(self, queue: str | None, exchange: str, routing_key: str,
                    envelopes: Sequence[Envelope]) -> None:
        deadline = time.monotonic() + self.settings.publish_timeout_s
        todo: dict[str, Envelope] = {e.message_id: e for e in envelopes}
        with self._lock:
            while todo:
                link = self._ready_link(deadline)
                try:
                    self._publish_batch(link, queue, exchange, routing_key, todo, deadline)
                except _LINK_ERRORS as exc:
                    # Unconfirmed messages stay in ``todo`` and are published again.
                    link.drop()
                    if time.monotonic() > deadline:
                        raise PublishTimeoutError(
                            f"{len(todo)} message(s) unconfirmed: {exc}"
                        ) from None
                    log.warning("publish.retrying", unconfirmed=len(todo), error=str(exc))
                except amqp_errors.AMQPError as exc:
                    # A channel error: py-amqp reopens the channel without confirm mode,
                    # so the connection must go, or later sends would never be confirmed.
                    link.drop()
                    raise BrokerError(f"broker refused the publish: {exc}") from None

    def _publish_batch(
        self,
        link: _Link,
        queue: str | None,
        exchange: str,
        routing_key: str,
        todo: dict[str, Envelope],
        deadline: float,
    ) -> None:
        if queue is None:
            link.declare_common()
        else:
            link.declare_queues([queue])
        failures: dict[str, str] = {}

        def confirmed(message_id: str) -> Confirmation:
            def done(error: str | None) -> None:
                if error is None:
                    todo.pop(message_id, None)
                else:
                    failures[message_id] = error
            return done

        self._wait_unblocked(link, deadline)
        with corked(link.conn) as flush:
            for envelope in list(todo.values()):
                link.publish(exchange, routing_key, envelope, confirmed(envelope.message_id))
                if link.unconfirmed >= CONFIRM_WINDOW:
                    flush()
                    while link.unconfirmed >= CONFIRM_WINDOW // 2:
                        self._wait(link, deadline)
        while link.unconfirmed:
            self._wait(link, deadline)
        if failures:
            message_id, error = next(iter(failures.items()))
            kind = UnroutableError if error.startswith("unroutable") else PublishNackedError
            raise kind(f"message {message_id} not stored: {error}")

    def _wait_unblocked(self, link: _Link, deadline: float) -> None:
        while link.blocked:
            self._wait(link, deadline)

    def _wait(self, link: _Link, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            blocked = f": the broker blocks publishers ({link.blocked})" if link.blocked else ""
            link.drop()
            raise PublishTimeoutError(
                f"no confirm within {self.settings.publish_timeout_s}s{blocked}"
            )
        with contextlib.suppress(TimeoutError):
            link.conn.drain_events(timeout=min(remaining, 1.0))

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
        with self._lock:
            self._with_link(lambda link: link.bind_events(queue, patterns))

    def check_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        """Passive declares tell what exists; for an existing queue or exchange, a declare
        with our arguments on a throwaway channel tells whether they match (the broker
        answers PRECONDITION_FAILED, and closes only that channel, when they differ; when
        they match it is a no-op). Bindings cannot be read over AMQP: ``unknown``.
        """
        with self._lock:
            result: list[str] = self._with_link(
                lambda link: [self._check(link, item) for item in items])
            return result

    def apply_topology(self, items: Sequence[TopologyItem]) -> list[str]:
        with self._lock:
            result: list[str] = self._with_link(lambda link: self._apply(link, items))
            return result

    def _check(self, link: _Link, item: TopologyItem) -> str:
        if isinstance(item, BindingSpec):
            return "unknown"  # AMQP has no way to read bindings
        exists = self._on_side_channel(link, lambda ch: _declare(ch, item, passive=True))
        if exists is not None:
            return "missing" if exists.reply_code == 404 else f"unknown: {exists.reply_text}"
        differs = self._on_side_channel(link, lambda ch: _declare(ch, item, passive=False))
        return "ok" if differs is None else f"differs: {differs.reply_text}"

    def _on_side_channel(self, link: _Link, fn: Callable[[Any], None]) -> Any:
        """Run ``fn`` on a throwaway channel; the broker's channel error, or ``None``."""
        ch = link.conn.channel()
        try:
            fn(ch)
        except amqp_errors.ChannelError as exc:
            return exc  # py-amqp has reopened the channel: still ours to close
        finally:
            with contextlib.suppress(*_LINK_ERRORS, amqp_errors.AMQPError):
                ch.close()
        return None

    def _apply(self, link: _Link, items: Sequence[TopologyItem]) -> list[str]:
        out: list[str] = []
        unusable: set[str] = set()
        for item in items:
            status = "ok" if isinstance(item, BindingSpec) else self._check(link, item)
            if isinstance(item, BindingSpec):
                if {item.source, item.destination} & unusable:
                    out.append("skipped: its exchange or queue is not usable")
                    continue
                error = self._on_side_channel(link, functools.partial(_bind, item=item))
                out.append("ok" if error is None else f"skipped: {error.reply_text}")
            elif status == "missing":
                error = self._on_side_channel(
                    link, functools.partial(_declare, item=item, passive=False))
                out.append("created" if error is None else f"skipped: {error.reply_text}")
                if error is not None:
                    unusable.add(item.name)
            else:
                out.append(status)
                if status != "ok":
                    unusable.add(item.name)
        return out

    def presence(self, listen_s: float) -> list[dict[str, Any]]:
        heard: list[dict[str, Any]] = []

        def listen(link: _Link) -> None:
            link.declare_common()
            ch = link.conn.channel()
            try:
                name = ch.queue_declare("", exclusive=True, auto_delete=True,
                                        arguments={"x-queue-type": "classic"})[0]
                ch.queue_bind(name, PRESENCE_EXCHANGE, "")
                ch.basic_consume(name, no_ack=True, callback=lambda m: heard.append(
                    json.loads(m.body)))
                deadline = time.monotonic() + listen_s
                while (remaining := deadline - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        link.conn.drain_events(timeout=remaining)
            finally:
                ch.close()

        with self._lock:
            self._with_link(listen)
        return heard

    def consumer(self) -> RabbitMQConsumer:
        return RabbitMQConsumer(self.settings, self.endpoints)

    def stats(self, queue: str) -> QueueStats:
        def query(link: _Link) -> QueueStats:
            ch = link.channel
            _, ready, consumers = ch.queue_declare(queue, passive=True)
            _, dead, _ = ch.queue_declare(dead_queue(queue), passive=True)
            return QueueStats(queue, ready, None, consumers, dead, None)

        with self._lock:
            try:
                result: QueueStats = self._with_link(query)
            except BrokerError as exc:
                self._link.drop()
                raise BrokerError(f"queue {queue!r} not found: {exc}") from None
            return result

    def purge(self, queue: str) -> int:
        with self._lock:
            count: int = self._with_link(lambda link: link.channel.queue_purge(queue))
            return count

    def dead_letters(self, queue: str) -> list[Envelope]:
        found: list[Envelope] = []
        with self._lock:
            self._with_link(lambda link: self._collect(link, queue, found.append))
        return found

    def _collect(self, link: _Link, queue: str, sink: Callable[[Envelope], None]) -> None:
        ch, count, got = self._read_dead(link, queue)
        try:
            for msg in got:
                sink(_envelope_of(msg))
        finally:
            ch.close()
        self._await_dead_count(link, queue, count)

    @staticmethod
    def _read_dead(link: _Link, queue: str) -> tuple[Any, int, list[Any]]:
        """A side channel holding every dead letter of ``queue`` unacked, and their count."""
        dead = dead_queue(queue)
        ch = link.conn.channel()
        _, count, _ = ch.queue_declare(dead, passive=True)
        got: list[Any] = []
        if not count:
            return ch, count, got
        # An explicit prefetch: quorum queues cap an unlimited one (at 2000 here).
        ch.basic_qos(0, min(count, MAX_PREFETCH), False)
        tag = ch.basic_consume(dead, callback=got.append, no_ack=False)
        while len(got) < min(count, MAX_PREFETCH):
            try:
                link.conn.drain_events(timeout=2.0)
            except TimeoutError:
                break
        ch.basic_cancel(tag)
        while len(got) < count:  # beyond what a prefetch can hold: one at a time
            msg = ch.basic_get(dead, no_ack=False)
            if msg is None:
                break
            got.append(msg)
        return ch, count, got

    @staticmethod
    def _await_dead_count(link: _Link, queue: str, expected: int) -> None:
        """Wait until the dead letters given back are counted again.

        A quorum queue takes back the messages of a closed channel asynchronously; without
        this, a ``dlq list`` right after another would briefly see an empty queue.
        """
        if not link.connected:
            return
        ch = link.conn.channel()
        deadline = time.monotonic() + DLQ_SETTLE_S
        try:
            while ch.queue_declare(dead_queue(queue), passive=True)[1] < expected:
                if time.monotonic() > deadline:
                    return
                time.sleep(0.02)
        finally:
            ch.close()

    def replay_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, message_ids, replay=True)

    def purge_dead(self, queue: str, message_ids: Sequence[str] | None) -> int:
        return self._take_dead(queue, message_ids, replay=False)

    def _take_dead(self, queue: str, message_ids: Sequence[str] | None, replay: bool) -> int:
        wanted = set(message_ids) if message_ids is not None else None
        with self._lock:
            link = self._ready_link(time.monotonic() + self.settings.publish_timeout_s)
            link.declare_queues([queue])
            side, count, got = self._read_dead(link, queue)
            try:
                chosen = [m for m in got
                          if wanted is None or m.properties.get("message_id") in wanted]
                if replay and chosen:
                    todo = {}
                    for m in chosen:
                        env = revived(_envelope_of(m))
                        todo[env.message_id] = env
                    deadline = time.monotonic() + self.settings.publish_timeout_s
                    self._publish_batch(link, queue, EXCHANGE, queue, todo, deadline)
                # Only now, with every copy confirmed, are the dead letters removed.
                for m in chosen:
                    side.basic_ack(m.delivery_info["delivery_tag"])
            finally:
                try:
                    side.close()
                except _LINK_ERRORS:
                    link.drop()
            self._await_dead_count(link, queue, count - len(chosen))
            return len(chosen)

    def close(self) -> None:
        with self._lock:
            self._link.close()


class RabbitMQConsumer(Consumer):
    """Deliveries over one connection, owned by the worker process's I/O thread.

    Acks are coalesced: the longest run of settled deliveries at the head of the
    unacked list is acked with one ``multiple=True`` frame per poll. A republish
    (retry, dead letter) is confirmed before its delivery joins that run.
    """

    def __init__(self, settings: Settings, endpoints: list[Endpoint]) -> None:
        self.settings = settings
        self._link = _Link(settings, endpoints, heartbeat=True)
        self._prefetch: dict[str, int] = {}
        self._timeouts: dict[str, float] = {}
        self._connected_at = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._consumer_tags: dict[str, str] = {}
        self._subscriptions: dict[str, list[str]] = {}
        self._broadcast_prefetch: int | None = None
        self._incoming: list[Delivery] = []
        self._unacked: deque[int] = deque()
        self._done: set[int] = set()
        self._settle_q: deque[tuple[Delivery, Action]] = deque()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sleeping = False
        self._cancelled = False
        self.reconnects = 0

    # -- connection ---------------------------------------------------------------

    def _ensure(self, deadline: float) -> None:
        if self._link.connected:
            return
        pause = self._retry_at - time.monotonic()
        if pause > 0:  # woken early by wakeup(): the caller's loop comes back
            wait_s = min(pause, max(0.0, deadline - time.monotonic()))
            if select.select([self._wake_r], [], [], wait_s)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if time.monotonic() < self._retry_at:
                raise BrokerConnectionError("reconnecting after a backoff")
        self._incoming.clear()
        self._unacked.clear()
        self._done.clear()
        self._link.connect(deadline)
        self._connected_at = time.monotonic()
        self._link.declare_queues(self._prefetch)
        for queue, patterns in self._subscriptions.items():
            self._link.bind_events(queue, patterns)
        if not self._cancelled:
            # Broadcasts first: once this process consumes its queues it counts as
            # live, and a broadcast sent from then on must reach it.
            if self._broadcast_prefetch is not None:
                self._start_broadcast(self._broadcast_prefetch)
            for queue, prefetch in self._prefetch.items():
                self._start(queue, prefetch)

    def _lost(self, exc: BaseException) -> None:
        log.warning("consumer.link_lost", error=str(exc) or type(exc).__name__)
        self.reconnects += 1
        self._link.drop()
        # Back off when links keep failing (a node down, declarations refused): at
        # most a few attempts a second, growing to RECONNECT_MAX_S, with jitter.
        now = time.monotonic()
        if now - self._connected_at < RECONNECT_STABLE_S:
            self._failures += 1
        else:
            self._failures = 1
        pause = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** self._failures)
        self._retry_at = now + random.uniform(pause / 2, pause)

    def _start(self, queue: str, prefetch: int) -> None:
        ch = self._link.channel
        old = self._consumer_tags.pop(queue, None)
        if old is not None:
            ch.basic_cancel(old)
        ch.basic_qos(0, prefetch, False)  # per consumer: quorum queues refuse global QoS
        timeout_s = self._timeouts.get(queue)
        arguments = {"x-consumer-timeout": int(timeout_s * 1000)} if timeout_s else None
        self._consumer_tags[queue] = ch.basic_consume(
            queue, callback=self._receiver(queue), no_ack=False, arguments=arguments
        )

    def _start_broadcast(self, prefetch: int) -> None:
        # A new server-named queue on every connection: broadcasts sent while this
        # process had no queue (before it started, during a reconnect) never reach it.
        link = self._link
        link.declare_common()
        ch = link.channel
        name = ch.queue_declare("", durable=False, exclusive=True, auto_delete=True,
                                arguments={"x-queue-type": "classic"})[0]
        ch.queue_bind(name, BROADCAST_EXCHANGE, "")
        ch.basic_qos(0, prefetch, False)
        self._consumer_tags[BROADCAST_EXCHANGE] = ch.basic_consume(
            name, callback=self._receiver(BROADCAST_EXCHANGE), no_ack=False)

    def _receiver(self, queue: str) -> Callable[[Any], None]:
        generation = self._link.generation
        incoming = self._incoming
        unacked = self._unacked

        def receive(msg: Any) -> None:
            info = msg.delivery_info
            tag = info["delivery_tag"]
            envelope = _envelope_of(msg)
            count = envelope.headers.get("x-delivery-count", 0)
            unacked.append(tag)
            incoming.append(Delivery(
                envelope, queue, tag, bool(info.get("redelivered")),
                count if isinstance(count, int) else 0, generation,
            ))

        return receive

    # -- the contract ---------------------------------------------------------------

    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        if timeout_s is not None:
            self._timeouts[queue] = timeout_s
        if self._prefetch.get(queue) == prefetch:
            return
        self._prefetch[queue] = prefetch
        if not self._link.connected or self._cancelled:
            return  # the next poll connects and starts every consumer
        try:
            self._link.declare_queues([queue])
            self._start(queue, prefetch)
        except _LINK_ERRORS as exc:
            self._lost(exc)

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        self._subscriptions[queue] = list(patterns)
        if not self._link.connected:
            return  # the next poll connects and binds every subscription
        try:
            self._link.bind_events(queue, patterns)
        except _LINK_ERRORS as exc:
            self._lost(exc)

    def announce(self, info: dict[str, Any]) -> None:
        if not self._link.connected:
            return  # the next announcement, after the reconnect, will do
        envelope = Envelope(message_id=new_task_id(), body=json.dumps(info).encode())
        try:
            self._link.declare_common()
            self._link.publish(PRESENCE_EXCHANGE, "", envelope, _ignore_confirm, transient=True)
        except _LINK_ERRORS as exc:
            self._lost(exc)

    def consume_broadcast(self, prefetch: int) -> None:
        if self._broadcast_prefetch is not None:
            return
        self._broadcast_prefetch = prefetch
        if not self._link.connected or self._cancelled:
            return
        try:
            self._start_broadcast(prefetch)
        except _LINK_ERRORS as exc:
            self._lost(exc)

    def poll(self, timeout_s: float) -> list[Delivery]:
        try:
            self._ensure(time.monotonic() + max(timeout_s, 1.0))
            self._flush()
            if not self._incoming and not self._settle_q:
                self._wait(timeout_s)
            self._drain()
            self._flush()
            self._link.conn.heartbeat_tick()
        except BrokerConnectionError as exc:
            log.warning("consumer.broker_unreachable", error=str(exc))
            return []
        except (*_LINK_ERRORS, amqp_errors.AMQPError) as exc:
            self._lost(exc)
            return []
        out, self._incoming[:] = list(self._incoming), []
        return out

    def _wait(self, timeout_s: float) -> None:
        self._sleeping = True
        try:
            if self._settle_q:
                return
            sock = self._link.conn.sock
            ready, _, _ = select.select([sock, self._wake_r], [], [], timeout_s)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
        finally:
            self._sleeping = False

    def _drain(self) -> None:
        conn = self._link.conn
        for _ in range(10_000):
            try:
                conn.drain_events(timeout=0)
            except TimeoutError:
                return

    def settle(self, delivery: Delivery, action: Action) -> None:
        queue = self._settle_q
        queue.append((delivery, action))
        # Acks wake the I/O thread once a batch has gathered (the broker refills the
        # prefetch window while tasks run); a requeue or republish wakes it at once.
        if self._sleeping and (len(queue) >= ACK_BATCH or not isinstance(action, Ack)):
            self.wakeup()

    def wakeup(self) -> None:
        if self._wake_w < 0:
            return
        with contextlib.suppress(BlockingIOError):  # full pipe: a wakeup is pending anyway
            os.write(self._wake_w, b"x")

    def pending(self) -> int:
        return len(self._settle_q) + self._link.unconfirmed

    def _flush(self) -> None:
        link = self._link
        settle_q = self._settle_q
        if settle_q:
            # Declaring waits for the broker's answer: never inside the corked block.
            targets = {a.queue for _, a in list(settle_q) if isinstance(a, Republish)}
            link.declare_queues(targets)
            with corked(link.conn):
                self._settle_all(settle_q, self._done, link.generation)
        if self._done:
            self._ack_done()

    def _settle_all(self, settle_q: deque[tuple[Delivery, Action]], done: set[int],
                    generation: int) -> None:
        link = self._link
        ch = link.channel
        while settle_q:
            delivery, action = settle_q.popleft()
            if delivery.generation != generation:
                continue  # its connection is gone; the broker redelivers it
            if isinstance(action, Ack):
                done.add(delivery.tag)
            elif isinstance(action, Requeue):
                ch.basic_reject(delivery.tag, requeue=True)
                self._unacked.remove(delivery.tag)
            else:
                assert isinstance(action, Republish)
                exchange, routing_key = _route(action.queue, action.delay_s, action.dead)
                link.publish(exchange, routing_key, action.envelope,
                             self._after_confirm(delivery, generation))

    def _after_confirm(self, delivery: Delivery, generation: int) -> Confirmation:
        def confirmed(error: str | None) -> None:
            if self._link.generation != generation or not self._link.connected:
                return
            if error is None:
                self._done.add(delivery.tag)
            else:
                log.error("message.republish_failed", task_id=delivery.envelope.message_id,
                          error=error)
                self._link.channel.basic_reject(delivery.tag, requeue=True)
                self._unacked.remove(delivery.tag)
        return confirmed

    def _ack_done(self) -> None:
        ch = self._link.channel
        unacked, done = self._unacked, self._done
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

    def cancel(self) -> None:
        self._cancelled = True
        if not self._link.connected:
            return
        try:
            for tag in self._consumer_tags.values():
                self._link.channel.basic_cancel(tag)
            self._drain()
        except (*_LINK_ERRORS, amqp_errors.AMQPError) as exc:
            self._lost(exc)
        self._consumer_tags.clear()

    def close(self) -> None:
        try:
            if self._link.connected:
                self._flush()
                deadline = time.monotonic() + self.settings.publish_timeout_s
                while self._link.unconfirmed and time.monotonic() < deadline:
                    with contextlib.suppress(TimeoutError):
                        self._link.conn.drain_events(timeout=0.5)
                    self._flush()
        except (*_LINK_ERRORS, amqp_errors.AMQPError) as exc:
            self._lost(exc)
        self._link.close()
        if self._wake_r >= 0:  # close() may be called twice; never close a reused fd
            os.close(self._wake_r)
            os.close(self._wake_w)
            self._wake_r = self._wake_w = -1
