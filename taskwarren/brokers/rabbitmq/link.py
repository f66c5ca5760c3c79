"""One connection with one confirm-mode channel, every wait for the broker bounded.

A :class:`Link` connects to the first endpoint that answers (with backoff), tracks
publisher confirms and returns, and notices when the broker blocks it. It knows
nothing of queues: :mod:`~taskwarren.brokers.rabbitmq.topology` declares them.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import amqp
import structlog
from amqp import sasl as amqp_sasl

from taskwarren.brokers.rabbitmq.errors import (
    ACCESS_REFUSED_CODES,
    AccessRefusedError,
    LinkLostError,
    RefusedError,
    mapped,
)
from taskwarren.brokers.rabbitmq.frames import (
    READ_AHEAD_BYTES,
    ReadAhead,
    publish_frames,
    read_ahead,
    tolerant_frames,
    without_publish_reads,
)
from taskwarren.brokers.rabbitmq.inbound import take_delivery
from taskwarren.errors import BrokerConnectionError, BrokerError
from taskwarren.message import Envelope, clip
from taskwarren.settings import Settings
from taskwarren.urls import Endpoint, TLSOptions, mask_url

log = structlog.get_logger("taskwarren.rabbitmq")

#: First and largest reconnect backoff, in seconds (full jitter in between).
RECONNECT_FIRST_S = 0.1
RECONNECT_MAX_S = 5.0


class _Connection(amqp.Connection):  # type: ignore[misc]  # py-amqp is untyped
    """py-amqp's connection, with a deadline on every wait for the broker's answer.

    py-amqp waits for the reply to a synchronous method (channel.open, confirm.select,
    declares, basic.qos/consume/cancel, connection.close) with no timeout at all: over
    a stalled link it waits for ever, holding whatever lock its caller holds. Here such
    a wait ends, with :class:`TimeoutError`, at the owner's deadline (``deadline_of``)
    or after ``rpc_timeout_s``, whichever comes first. Heartbeats from the broker do not
    extend it.
    """

    def __init__(self, *args: Any, rpc_timeout_s: float,
                 deadline_of: Callable[[], float | None], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.rpc_timeout_s = rpc_timeout_s
        self.deadline_of = deadline_of
        self.reader: ReadAhead | None = None  # set once connected (frames.read_ahead)

    def blocking_read(self, timeout: float | None = None) -> Any:
        reader = self.reader
        if reader is not None and reader.has_frame():  # no socket read: no timeout to set
            return take_delivery(self, reader) or self.on_inbound_frame(
                self.transport.read_frame())
        return super().blocking_read(timeout)

    def drain_events(self, timeout: float | None = None) -> None:
        if timeout is not None:
            super().drain_events(timeout=timeout)
            return
        deadline = time.monotonic() + self.rpc_timeout_s
        owner = self.deadline_of()
        if owner is not None:
            deadline = min(deadline, owner)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("the broker did not answer in time (link stalled?)")
            if self.blocking_read(remaining):
                return


Confirmation = Callable[[str | None], None]


def _authentication(endpoint: Endpoint) -> tuple[Any, ...]:
    """SASL mechanisms named by the URL's ``auth_mechanism``, in order (``()``: py-amqp's)."""
    kinds = {
        "plain": lambda: amqp_sasl.PLAIN(endpoint.userid, endpoint.password),
        "amqplain": lambda: amqp_sasl.AMQPLAIN(endpoint.userid, endpoint.password),
        "external": amqp_sasl.EXTERNAL,
    }
    return tuple(kinds[name]() for name in endpoint.auth_mechanisms)


def _tls_options(tls: TLSOptions | None) -> dict[str, Any]:
    """py-amqp's TLS options for an ``amqps://`` endpoint (never empty: that means no TLS)."""
    tls = tls or TLSOptions()
    options: dict[str, Any] = {
        "cert_reqs": ssl.CERT_REQUIRED if tls.verify else ssl.CERT_NONE,
        "server_hostname": tls.server_name,
    }
    if tls.cacertfile:
        options["ca_certs"] = tls.cacertfile
    if tls.certfile:
        options["certfile"] = tls.certfile
        options["keyfile"] = tls.keyfile
    return options


def ignore_confirm(error: str | None) -> None:
    """For announcements: nothing depends on their delivery."""


class Link:
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
        #: When set, no wait for the broker may last beyond it (see :class:`_Connection`).
        self.deadline: float | None = None

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out broken)."""
        return self.conn is not None

    @contextlib.contextmanager
    def until(self, deadline: float) -> Iterator[None]:
        """Inside the block, every wait for the broker ends by ``deadline``."""
        outer = self.deadline
        self.deadline = deadline if outer is None else min(deadline, outer)
        try:
            yield
        finally:
            self.deadline = outer

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
                    with mapped():
                        self._open(endpoint)
                    self._start = (self._start + i) % len(self.endpoints)
                    return
                except (LinkLostError, RefusedError) as exc:
                    self.drop()
                    last = exc
                    if exc.reply_code in ACCESS_REFUSED_CODES:
                        raise AccessRefusedError(
                            f"access refused by {endpoint!r}: check the user name, password "
                            f"and the user's permissions on the vhost "
                            f"({exc.reply_text or type(exc.__cause__).__name__})"
                        ) from None
            attempt += 1
            pause = random.uniform(0, min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2**attempt))
            if deadline is not None and time.monotonic() + pause > deadline:
                raise BrokerConnectionError(
                    f"cannot connect to {mask_url(self.settings.url)}: {last}"
                ) from None
            log.warning("broker.reconnecting", error=clip(str(last)), pause_s=round(pause, 3))
            time.sleep(pause)

    def _open(self, endpoint: Endpoint) -> None:
        ep = endpoint
        heartbeat = self.heartbeat if ep.heartbeat_s is None or not self.heartbeat else (
            ep.heartbeat_s)
        connect_timeout_s = ep.connect_timeout_s or self.settings.connect_timeout_s
        if self.deadline is not None:
            connect_timeout_s = max(0.05, min(connect_timeout_s,
                                              self.deadline - time.monotonic()))
        conn = _Connection(
            host=f"[{ep.host}]:{ep.port}" if ":" in ep.host else f"{ep.host}:{ep.port}",
            userid=ep.userid,
            password=ep.password,
            virtual_host=ep.vhost,
            authentication=_authentication(ep),
            ssl=_tls_options(ep.tls) if ep.ssl else False,
            heartbeat=heartbeat,
            channel_max=ep.channel_max,
            frame_max=ep.frame_max,
            connect_timeout=connect_timeout_s,
            write_timeout=self.settings.publish_timeout_s,
            rpc_timeout_s=self.settings.publish_timeout_s,
            deadline_of=lambda: self.deadline,
            on_blocked=self._on_blocked,
            on_unblocked=self._on_unblocked,
            frame_handler=tolerant_frames,
            client_properties={
                "product": "taskwarren",
                "connection_name": f"taskwarren-{os.getpid()}",
            },
        )
        self.conn = conn
        # The handshake and the channel set-up are one attempt: bounded together.
        with self.until(time.monotonic() + connect_timeout_s):
            conn.connect()
            without_publish_reads(conn)
            conn.reader = read_ahead(conn)
            self.open_channel()
        self.generation += 1
        self.blocked = None
        self.declared = set()
        self.common_declared = False
        self.last_used = time.monotonic()

    def open_channel(self) -> None:
        """Open the confirm-mode channel (again, after the broker closed it)."""
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
        # The old channel's confirms never come (its sequence numbers start again at 1 on
        # this one): fail them now, as drop() does, so their originals go back.
        pending, self._unconfirmed = self._unconfirmed, OrderedDict()
        self._returned.clear()
        for _, confirm in pending.values():
            confirm("channel closed before the confirm arrived")

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
            with contextlib.suppress(BrokerError), mapped():
                self.conn.close()
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
        conn, channel = self.conn, self.channel
        frames = publish_frames(channel.channel_id, conn.frame_max, exchange, routing_key,
                                not transient, props, envelope.body)
        if frames is None or channel.connection is None:  # py-amqp's to write (or refuse)
            channel.basic_publish(amqp.Message(envelope.body, **props), exchange=exchange,
                                  routing_key=routing_key, mandatory=not transient)
        else:
            conn.transport.write(frames)  # one write, as py-amqp's own for a small message
            conn.bytes_sent += 1  # py-amqp's heartbeat clock counts methods sent
        self._seq += 1
        if confirm is not ignore_confirm:  # nothing waits for those (announcements)
            self._unconfirmed[self._seq] = (envelope.message_id, confirm)
        self.last_used = time.monotonic()

    @property
    def unconfirmed(self) -> int:
        """Publishes awaiting their confirm."""
        return len(self._unconfirmed)

    def readable(self) -> bool:
        """Whether a read now would find bytes, without reading them: bytes py-amqp kept
        from a partial frame, bytes TLS decrypted already, or bytes on the socket."""
        reader = self.conn.reader
        if reader is not None and reader.buffered():
            return True
        if getattr(self.conn.transport, "_read_buffer", b""):
            return True
        sock = self.conn.sock
        pending = getattr(sock, "pending", None)  # ssl.SSLSocket
        if pending is not None and pending():
            return True
        return bool(select.select([sock], [], [], 0)[0])

    def fill(self) -> bool:
        """Read ahead what the socket holds, without waiting (a ``select`` found it
        readable): its whole deliveries are then taken in one step each
        (:func:`~taskwarren.brokers.rabbitmq.inbound.take_delivery`). Whether the socket
        was emptied (a read short of the read-ahead size); TLS: nothing read, False."""
        reader = self.conn.reader
        return reader is not None and 0 < reader.fill() < READ_AHEAD_BYTES

    def frame_waiting(self) -> bool:
        """Whether bytes were read off the socket and wait (a whole frame read ahead, or
        bytes TLS decrypted already): a wait on the socket for them could last until the
        broker next sends something."""
        reader = getattr(self.conn, "reader", None)
        if reader is not None:
            return bool(reader.has_frame())
        pending = getattr(getattr(self.conn, "sock", None), "pending", None)  # ssl.SSLSocket
        return pending is not None and bool(pending())

    def drain(self, timeout_s: float) -> bool:
        """Handle what the broker sent, waiting up to ``timeout_s``; ``False`` if nothing.

        Without a wait, nothing is read unless something is there: an empty read raises
        a timeout through py-amqp's layers, tens of microseconds on the I/O thread.
        Run it inside :func:`~taskwarren.brokers.rabbitmq.errors.mapped`: a broken link
        raises.
        """
        if timeout_s <= 0 and not self.readable():
            return False
        try:
            self.conn.drain_events(timeout=timeout_s)
        except TimeoutError:
            return False
        return True

