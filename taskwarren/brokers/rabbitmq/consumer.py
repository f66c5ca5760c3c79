"""RabbitMQConsumer: deliveries over one connection, for one worker process's I/O thread.

It reconnects on its own after a broken link (with backoff), restarting every
consumer and subscription; deliveries of an older link are then stale. Settlements
queued by any thread are carried out by the next :meth:`RabbitMQConsumer.poll`.
"""

from __future__ import annotations

import contextlib
import os
import random
import select
import time
from collections.abc import Callable, Sequence
from typing import Any

import structlog

from taskwarren.brokers.base import Ack, Action, Consumer, Delivery
from taskwarren.brokers.rabbitmq.errors import (
    AccessRefusedError,
    LinkLostError,
    RefusedError,
    mapped,
)
from taskwarren.brokers.rabbitmq.frames import H_UNREADABLE
from taskwarren.brokers.rabbitmq.inbound import envelope_of
from taskwarren.brokers.rabbitmq.link import RECONNECT_FIRST_S, RECONNECT_MAX_S, Link
from taskwarren.brokers.rabbitmq.outbound import Outbound
from taskwarren.brokers.rabbitmq.settling import Settler
from taskwarren.brokers.rabbitmq.topology import bind_events, declare_common, declare_queues
from taskwarren.brokers.rabbitmq.verdicts import Strikes, unreadable
from taskwarren.errors import BrokerConnectionError, BrokerError
from taskwarren.message import clip
from taskwarren.settings import Settings
from taskwarren.topology import BROADCAST_EXCHANGE
from taskwarren.urls import Endpoint

log = structlog.get_logger("taskwarren.rabbitmq")

#: Settled deliveries that make a sleeping I/O thread send their (coalesced) ack.
ACK_BATCH = 16
#: Seconds between two looks at the idle publishing link and at the heartbeat clock.
QUIET_CHECK_S = 0.05
#: A consumer link that lived this long before failing resets the reconnect backoff.
RECONNECT_STABLE_S = 10.0


class RabbitMQConsumer(Consumer):
    """Deliveries over one connection, owned by the worker process's I/O thread.

    Acks are coalesced: the longest run of settled deliveries at the head of the
    unacked list is acked with one ``multiple=True`` frame per poll. A republish
    (retry, dead letter) is confirmed before its delivery joins that run.

    The consuming connection never publishes: republishes and presence announcements
    go over a second connection (:class:`~taskwarren.brokers.rabbitmq.outbound.Outbound`).
    """

    polls_from_any_thread = True

    def __init__(self, settings: Settings, endpoints: list[Endpoint]) -> None:
        self.settings = settings
        self._link = Link(settings, endpoints, heartbeat=True)
        self._out = Outbound(settings, endpoints)
        self._settler = Settler(self._link, self._out)
        # The settler's, named here for the receiver (and tests) to reach directly.
        self._settle_q = self._settler.queue
        self._unacked = self._settler.unacked
        self._prefetch: dict[str, int] = {}
        self._timeouts: dict[str, float] = {}
        self._connected_at = 0.0
        self._failures = 0
        self._retry_at = 0.0
        self._consumer_tags: dict[str, str] = {}
        self._subscriptions: dict[str, list[str]] = {}
        self._broadcast_prefetch: int | None = None
        self._incoming: list[Delivery] = []
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._sleeping = False
        self._woken = False  # a settlement woke the sleeping I/O thread already
        self._quiet_at = 0.0  # when the idle publishing link and heartbeats are due
        self._cancelled = False
        self.reconnects = 0
        # The link generation deliveries are good for; -1 while there is no link.
        self._live_generation = -1
        # Unacked delivery tag -> (message id, queue, when it arrived).
        self._received: dict[int, tuple[str, str, float]] = {}
        self._strikes = Strikes()

    # -- connection ---------------------------------------------------------------

    def _ensure(self, deadline: float) -> bool:
        """Connect if need be; ``False`` while a reconnect backoff lasts.

        Raises:
            BrokerConnectionError: no endpoint answered, or the login was refused (the
                next attempt is then put off, growing to :data:`RECONNECT_MAX_S`).
        """
        if self._link.connected:
            return True
        pause = self._retry_at - time.monotonic()
        if pause > 0:  # woken early by wakeup(): the caller's loop comes back
            wait_s = min(pause, max(0.0, deadline - time.monotonic()))
            if select.select([self._wake_r], [], [], wait_s)[0]:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            if time.monotonic() < self._retry_at:
                return False
        self._incoming.clear()
        self._settler.forget()
        self._received.clear()
        try:
            self._link.connect(deadline)
        except BrokerConnectionError:
            # Each failed attempt counts: a refused login must not be retried at once,
            # hundreds of times a second per process.
            self._failures += 1
            self._put_off()
            raise
        self._live_generation = self._link.generation
        self._connected_at = time.monotonic()
        declare_queues(self._link, self._prefetch)
        for queue, patterns in self._subscriptions.items():
            bind_events(self._link, queue, patterns)
        if not self._cancelled:
            # Broadcasts first: once this process consumes its queues it counts as
            # live, and a broadcast sent from then on must reach it.
            if self._broadcast_prefetch is not None:
                self._start_broadcast(self._broadcast_prefetch)
            for queue, prefetch in self._prefetch.items():
                self._start(queue, prefetch)
        return True

    def _lost(self, exc: BrokerError) -> None:
        self._note_consumer_timeout(exc)
        log.warning("consumer.link_lost", error=clip(str(exc) or type(exc).__name__))
        self._live_generation = -1  # what was prefetched is the broker's again
        self.reconnects += 1
        self._link.drop()
        # Back off when links keep failing (a node down, declarations refused): at
        # most a few attempts a second, growing to RECONNECT_MAX_S, with jitter.
        now = time.monotonic()
        if now - self._connected_at < RECONNECT_STABLE_S:
            self._failures += 1
        else:
            self._failures = 1
        self._put_off()

    def _put_off(self) -> None:
        """Schedule the next connection attempt after the backoff for ``_failures``."""
        pause = min(RECONNECT_MAX_S, RECONNECT_FIRST_S * 2 ** min(self._failures, 16))
        self._retry_at = time.monotonic() + random.uniform(pause / 2, pause)

    def _note_consumer_timeout(self, exc: BrokerError) -> None:
        """Let the strikes judge the oldest unacked delivery, which a timeout would be."""
        oldest = self._received.get(self._unacked[0]) if self._unacked else None
        if oldest is not None:
            message_id, queue, received_at = oldest
            timeout_s = self._timeouts.get(queue) or self.settings.consumer_timeout_s
            self._strikes.note(exc, message_id, time.monotonic() - received_at >= timeout_s)

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
        declare_common(link)
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
            envelope = envelope_of(msg)
            count = envelope.headers.get("x-delivery-count", 0)
            unacked.append(tag)
            delivery = Delivery(
                envelope, queue, tag, bool(info.get("redelivered")),
                count if isinstance(count, int) else 0, generation,
            )
            if H_UNREADABLE in envelope.headers:
                self._settle_q.append((delivery, unreadable(delivery)))
                return
            verdict = self._strikes.verdict(delivery)
            if verdict is not None:
                self._settle_q.append((delivery, verdict))
                return
            if envelope.message_id:
                received = self._received
                received[tag] = (envelope.message_id, queue, time.monotonic())
                if len(received) > 2 * len(unacked) + 100:  # forget settled tags at times
                    self._received = {t: received[t] for t in unacked if t in received}
            incoming.append(delivery)

        return receive

    # -- the contract ---------------------------------------------------------------

    def consume(self, queue: str, prefetch: int, timeout_s: float | None = None) -> None:
        """Start (or, with a new prefetch, restart) delivery from ``queue``."""
        if timeout_s is not None:
            self._timeouts[queue] = timeout_s
        if self._prefetch.get(queue) == prefetch:
            return
        self._prefetch[queue] = prefetch
        if not self._link.connected or self._cancelled:
            return  # the next poll connects and starts every consumer
        try:
            with mapped():
                declare_queues(self._link, [queue])
                self._start(queue, prefetch)
        except LinkLostError as exc:
            self._lost(exc)

    def subscribe(self, queue: str, patterns: Sequence[str]) -> None:
        """Bind ``queue`` to the events matching ``patterns``, now and on every connect."""
        self._subscriptions[queue] = list(patterns)
        if not self._link.connected:
            return  # the next poll connects and binds every subscription
        try:
            with mapped():
                bind_events(self._link, queue, patterns)
        except LinkLostError as exc:
            self._lost(exc)

    def announce(self, info: dict[str, Any]) -> None:
        """Say this worker process is alive, over the publishing connection."""
        if not self._link.connected:
            return  # the next announcement, after the reconnect, will do
        self._out.announce(info)

    def consume_broadcast(self, prefetch: int) -> None:
        """Receive broadcasts on a queue of this connection's own."""
        if self._broadcast_prefetch is not None:
            return
        self._broadcast_prefetch = prefetch
        if not self._link.connected or self._cancelled:
            return
        try:
            with mapped():
                self._start_broadcast(prefetch)
        except LinkLostError as exc:
            self._lost(exc)

    def poll(self, timeout_s: float) -> list[Delivery]:
        """Carry out settlements, then return what arrived (reconnecting when needed)."""
        try:
            with mapped():
                if not self._ensure(time.monotonic() + max(timeout_s, 1.0)):
                    return []
                # Housekeeping before the wait, not after the read: deliveries go to the
                # caller as soon as they are read (the next poll comes right after). The
                # idle publishing link and the heartbeat clock are looked at every
                # QUIET_CHECK_S only: each look delays the executors (see WorkerChild.run).
                now = time.monotonic()
                outward = self._out.link
                if (outward.unconfirmed or outward.blocked or self._settler.held
                        or now >= self._quiet_at or outward.frame_waiting()):
                    self._out.drain()
                self._settler.flush()
                if now >= self._quiet_at:
                    self._quiet_at = now + QUIET_CHECK_S
                    self._link.conn.heartbeat_tick()
                filled = False
                if not self._incoming and len(self._settle_q) <= self._settler.held:
                    filled = self._wait(timeout_s)
                self._drain(filled)
        except AccessRefusedError as exc:
            log.error("consumer.access_refused", error=clip(str(exc)),
                      retry_in_s=round(self._retry_at - time.monotonic(), 1))
            return []
        except (LinkLostError, RefusedError) as exc:
            self._lost(exc)
            return []
        except BrokerConnectionError as exc:
            log.warning("consumer.broker_unreachable", error=clip(str(exc)),
                        retry_in_s=round(self._retry_at - time.monotonic(), 1))
            return []
        out, self._incoming[:] = list(self._incoming), []
        return out

    def _wait(self, timeout_s: float) -> bool:  # whether it read all the socket had
        self._woken = False
        self._sleeping = True
        try:
            if len(self._settle_q) > self._settler.held:
                return False  # something new to settle (held republishes wait for the link)
            out = self._out.link
            if self._link.frame_waiting() or (out.connected and out.frame_waiting()):
                return False  # read ahead already: the socket may stay silent
            socks = [self._link.conn.sock, self._wake_r]
            if out.connected and (out.unconfirmed or self._settler.held or out.blocked):
                socks.append(out.conn.sock)  # a confirm, or the broker unblocking it
            ready, _, _ = select.select(socks, [], [], timeout_s)
            filled = socks[0] in ready and self._link.fill()  # whole deliveries in one step
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wake_r, 4096)
            return filled
        finally:
            self._sleeping = False

    def _drain(self, filled: bool = False) -> None:
        """Handle what was read; ``filled``: the socket had no more (so no look at it)."""
        link = self._link
        for _ in range(10_000):
            if (filled and not link.frame_waiting()) or not link.drain(0):
                return

    def settle(self, delivery: Delivery, action: Action) -> None:
        """Queue the settlement; the next poll carries it out. Thread-safe."""
        queue = self._settle_q
        queue.append((delivery, action))
        # Acks wake the I/O thread once a batch has gathered (the broker refills the
        # prefetch window while tasks run); a requeue or republish wakes it at once.
        # Once per sleep: until it has the GIL back, each settlement would write again.
        if self._sleeping and not self._woken and (
                len(queue) >= ACK_BATCH or not isinstance(action, Ack)):
            self._woken = True
            self.wakeup()

    def wakeup(self) -> None:
        """Make a blocked poll return soon. Thread-safe, signal-safe."""
        if self._wake_w < 0:
            return
        with contextlib.suppress(BlockingIOError):  # full pipe: a wakeup is pending anyway
            os.write(self._wake_w, b"x")

    def pending(self) -> int:
        """Settlements queued or awaiting a confirm."""
        return len(self._settle_q) + self._link.unconfirmed + self._out.link.unconfirmed

    def is_stale(self, delivery: Delivery) -> bool:
        """Whether ``delivery`` came over a link that is gone."""
        return delivery.generation != self._live_generation

    def cancel(self) -> None:
        """Stop new deliveries; settling the ones received still works."""
        self._cancelled = True
        if not self._link.connected:
            return
        try:
            with mapped():
                for tag in self._consumer_tags.values():
                    self._link.channel.basic_cancel(tag)
                self._drain()
        except (LinkLostError, RefusedError) as exc:
            self._lost(exc)
        self._consumer_tags.clear()

    def close(self) -> None:
        """Settle what can be, then close both connections; the rest goes back."""
        out = self._out.link
        try:
            with mapped():
                if self._link.connected:
                    self._settler.flush()
                    deadline = time.monotonic() + self.settings.publish_timeout_s
                    while (out.unconfirmed and not out.blocked
                           and time.monotonic() < deadline):
                        self._out.drain(timeout_s=0.5)
                        self._settler.flush()
        except (LinkLostError, RefusedError) as exc:
            self._lost(exc)
        # Unconfirmed republishes are requeued while the consuming link still can. A
        # blocked connection is not read by the broker: no polite close, it would hang.
        self._out.close()
        self._link.close()
        if self._wake_r >= 0:  # close() may be called twice; never close a reused fd
            # -1 first: a wake() from another thread must not write to a closed (and
            # perhaps already reused) descriptor.
            wake_r, wake_w = self._wake_r, self._wake_w
            self._wake_r = self._wake_w = -1
            os.close(wake_r)
            os.close(wake_w)
