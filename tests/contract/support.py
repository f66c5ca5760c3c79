"""What the contract tests share: building each kind of broker, and waiting without sleeping."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection

from taskwarren.brokers.base import Action, Broker, Consumer, Delivery
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.brokers.sqlite import LEASE_S, SQLiteBroker
from taskwarren.message import H_REASON, Envelope, encode
from taskwarren.settings import Settings

#: The kinds of broker every contract test runs against.
KINDS = ("memory", "sqlite", "rabbitmq")
#: Task name carried by the test messages (no task runs them).
TASK = "contract.echo"


def build(kind: str, url: str, delivery_limit: int = 50, lease_s: float = LEASE_S) -> Broker:
    """A new broker of ``kind`` at ``url`` (ignored for memory)."""
    if kind == "memory":
        return MemoryBroker(delivery_limit=delivery_limit)
    if kind == "sqlite":
        return SQLiteBroker.from_url(url, delivery_limit=delivery_limit, lease_s=lease_s)
    from taskwarren.brokers.rabbitmq import RabbitMQBroker

    return RabbitMQBroker(Settings(url=url, queue_type="quorum", delivery_limit=delivery_limit))


@dataclass
class Harness:
    """One test's brokers, consumers and queue, all cleaned up afterwards.

    Attributes:
        kind: ``memory``, ``sqlite`` or ``rabbitmq``.
        url: where the broker is (unused for memory).
        queue: a queue name no other test uses.
    """

    kind: str
    url: str
    queue: str = field(default_factory=lambda: f"contract-{uuid.uuid4().hex[:8]}")
    brokers: list[Broker] = field(default_factory=list)
    consumers: list[Consumer] = field(default_factory=list)
    #: Other queues a test declared (deleted afterwards too).
    others: list[str] = field(default_factory=list)
    _default: Broker | None = None

    @property
    def broker(self) -> Broker:
        """The test's broker, with its queue declared."""
        if self._default is None:
            self._default = self.make_broker()
        return self._default

    def make_broker(self, delivery_limit: int = 50, lease_s: float = LEASE_S) -> Broker:
        """Another broker on the same store (for memory: a world of its own)."""
        broker = build(self.kind, self.url, delivery_limit, lease_s)
        self.brokers.append(broker)
        broker.declare([self.queue])
        return broker

    def consumer(self, broker: Broker | None = None, prefetch: int = 10) -> Consumer:
        """A consumer of the test's queue."""
        consumer = (broker or self.broker).consumer()
        self.consumers.append(consumer)
        consumer.consume(self.queue, prefetch)
        return consumer

    def envelope(self, n: int = 0, attempt: int = 0) -> Envelope:
        """A task message for the test's queue, with headers of several types."""
        env = encode(TASK, self.queue, json.dumps({"n": n}).encode(), attempt=attempt,
                     trace="00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        return env.with_headers({"x-contract-text": f"message {n}", "x-contract-number": n})

    def publish(self, count: int, delay_s: float = 0.0, attempt: int = 0) -> list[Envelope]:
        """Publish ``count`` messages to the test's queue; returns them."""
        envs = [self.envelope(n, attempt) for n in range(count)]
        self.broker.publish(self.queue, envs, delay_s)
        return envs

    def consumer_of(self, queue: str, prefetch: int = 10) -> Consumer:
        """A consumer of another queue of the test's (see :attr:`others`)."""
        consumer = self.broker.consumer()
        self.consumers.append(consumer)
        consumer.consume(queue, prefetch)
        return consumer

    def close_consumer(self, consumer: Consumer) -> None:
        """Close ``consumer`` now (``close`` is not promised to be idempotent)."""
        self.consumers.remove(consumer)
        consumer.close()

    def close(self) -> None:
        for consumer in self.consumers:
            consumer.close()
        for broker in self.brokers:
            broker.close()


def collect(consumer: Consumer, count: int, timeout_s: float = 5.0) -> list[Delivery]:
    """Poll until ``count`` deliveries arrived or ``timeout_s`` passed; what arrived."""
    out: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while len(out) < count:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            break
        out += consumer.poll(min(0.25, remaining))
    return out


def quiet(consumer: Consumer, for_s: float) -> list[Delivery]:
    """Poll for ``for_s`` seconds; whatever arrived meanwhile (a test expects nothing)."""
    out: list[Delivery] = []
    deadline = time.monotonic() + for_s
    while (remaining := deadline - time.monotonic()) > 0:
        out += consumer.poll(min(0.1, remaining))
    return out


def settle(consumer: Consumer, pairs: Iterable[tuple[Delivery, Action]],
           timeout_s: float = 5.0) -> list[Delivery]:
    """Settle, then poll until carried out (and confirmed); deliveries that came meanwhile."""
    for delivery, action in pairs:
        consumer.settle(delivery, action)
    out: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while True:
        out += consumer.poll(0.05)
        if not consumer.pending():
            return out
        assert time.monotonic() < deadline, "settlements were not carried out in time"


def eventually(predicate: Callable[[], object], timeout_s: float = 5.0) -> None:
    """Wait until ``predicate()`` is true (a broker's counters may lag its confirms)."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


def ids(items: Iterable[Envelope | Delivery]) -> list[str]:
    """Message ids, in order."""
    return [(i.envelope if isinstance(i, Delivery) else i).message_id for i in items]


def dead_reason(envelope: Envelope) -> str:
    """Why a message was dead-lettered: our header, or RabbitMQ's own ``x-death`` record."""
    reason = envelope.headers.get(H_REASON)
    if isinstance(reason, str):
        return reason
    deaths = envelope.headers.get("x-death")
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict):
        return str(deaths[0].get("reason", ""))
    return ""


def hold_until_killed(kind: str, url: str, queue: str, lease_s: float,
                      report: Connection) -> None:
    """Child process: take one message, report its id, then keep polling, never settling."""
    broker = build(kind, url, lease_s=lease_s)
    consumer = broker.consumer()
    consumer.consume(queue, 1)
    while True:
        got = consumer.poll(0.2)
        if got:
            report.send(got[0].envelope.message_id)
            break
    while True:
        consumer.poll(0.2)  # leases extended and heartbeats sent, as in a busy worker
