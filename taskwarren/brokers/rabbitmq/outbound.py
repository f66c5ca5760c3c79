"""A consumer's publishing connection: republishes (retries, dead letters) and announcements.

The consuming connection never publishes: during a resource alarm the broker blocks
a connection as soon as it publishes, and then reads nothing from it, acks included
(and it says so only after that publish). This second connection carries what a
consumer sends; while the broker blocks it, announcements are skipped and republishes
wait, their deliveries unacked.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterable
from typing import Any

import structlog

from taskwarren.brokers.rabbitmq.errors import LinkLostError, RefusedError, mapped
from taskwarren.brokers.rabbitmq.link import (
    RECONNECT_FIRST_S,
    RECONNECT_MAX_S,
    Link,
    ignore_confirm,
)
from taskwarren.brokers.rabbitmq.topology import declare_common, declare_queues
from taskwarren.errors import BrokerConnectionError, BrokerError
from taskwarren.message import Envelope, clip, new_task_id
from taskwarren.settings import Settings
from taskwarren.topology import PRESENCE_EXCHANGE
from taskwarren.urls import Endpoint

log = structlog.get_logger("taskwarren.rabbitmq")

#: Longest one connect of the publishing link may hold the consumer's I/O thread.
CONNECT_WAIT_S = 1.0
#: Longest the declares before republishes may hold it (not the 30 s RPC timeout).
DECLARE_WAIT_S = 2.0


class Outbound:
    """The publishing link of one consumer, reconnected when needed, never waited for."""

    def __init__(self, settings: Settings, endpoints: list[Endpoint]) -> None:
        # No heartbeats: it may sit blocked for the length of an alarm, unread.
        self.link = Link(settings, endpoints, heartbeat=False)
        self._retry_at = 0.0

    def ready(self) -> Link | None:
        """The publishing link, connected and not blocked; ``None`` if it cannot be now."""
        out = self.link
        if out.connected and not getattr(out.channel, "_confirm_selected", True):
            # py-amqp reopened the channel after a channel error, without confirm mode:
            # nothing published there would ever be confirmed.
            self.lost(LinkLostError("the publishing channel was reopened without confirms"))
            return None
        if out.connected:
            return None if out.blocked else out
        if time.monotonic() < self._retry_at:
            return None
        deadline = time.monotonic() + CONNECT_WAIT_S
        try:
            # until() bounds each endpoint's attempt; connect()'s deadline, only the
            # backoff between rounds.
            with out.until(deadline):
                out.connect(deadline)
        except BrokerConnectionError as exc:
            self._retry_at = time.monotonic() + RECONNECT_MAX_S
            log.warning("consumer.publisher_unreachable", error=clip(str(exc)))
            return None
        return out

    def lost(self, exc: BaseException) -> None:
        """Drop the publishing link; its unconfirmed republishes are requeued."""
        log.warning("consumer.publisher_lost", error=clip(str(exc) or type(exc).__name__))
        # A refusal (a declare the broker will not take) is unlikely to clear at once:
        # do not reconnect and redeclare everything ten times a second.
        pause = RECONNECT_MAX_S if isinstance(exc, RefusedError) else RECONNECT_FIRST_S
        self._retry_at = time.monotonic() + pause
        self.link.drop()

    def drain(self, timeout_s: float = 0.0) -> None:
        """Read the publishing link's confirms and blocked/unblocked notices."""
        out = self.link
        if not out.connected:
            return
        try:
            with mapped():
                if not out.drain(timeout_s):
                    return
                for _ in range(10_000):
                    if not out.drain(0):
                        return
        except (LinkLostError, RefusedError) as exc:
            self.lost(exc)

    def for_republishes(self, targets: Iterable[str]) -> Link | None:
        """The publishing link with ``targets`` declared; ``None`` if it cannot be now."""
        out = self.ready()
        if out is None:
            return None
        try:
            # Declaring waits for the broker's answer: never inside a corked block.
            with out.until(time.monotonic() + DECLARE_WAIT_S), mapped():
                declare_queues(out, targets)
        except (LinkLostError, RefusedError) as exc:
            # A refusal closed the confirm channel (py-amqp reopens it without confirm
            # mode): reconnect, failing what awaits a confirm, so originals go back.
            self.lost(exc)
            return None
        return out

    def announce(self, info: dict[str, Any]) -> None:
        """Publish ``info`` to the presence exchange, unconfirmed; skipped when blocked."""
        out = self.ready()
        if out is None:
            return  # blocked or unreachable: nobody misses one announcement
        envelope = Envelope(message_id=new_task_id(), body=json.dumps(info).encode())
        try:
            with out.until(time.monotonic() + DECLARE_WAIT_S), mapped():
                declare_common(out)
                out.publish(PRESENCE_EXCHANGE, "", envelope, ignore_confirm, transient=True)
        except (LinkLostError, RefusedError) as exc:  # a refusal: as in for_republishes
            self.lost(exc)

    def close(self) -> None:
        """Close; a blocked connection is dropped (the broker would not read a close)."""
        with contextlib.suppress(BrokerError), mapped():
            if self.link.blocked:
                self.link.drop()
            else:
                self.link.close()
