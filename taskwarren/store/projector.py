"""The projector: applies lifecycle events from the broker to ``taskwarren_jobs``.

It consumes the store's events queue (:func:`~taskwarren.store.jobs.events_queue`) with
manual acks, applies
what arrived in one transaction, commits, then acks: an event is held by the broker
until the store holds what it said. A crash between the commit and the ack applies the
events again, which changes nothing (see :mod:`taskwarren.store.jobs`). Any number of
projectors may run (one beside each worker pool); they share the queue.

While the store is down, the deliveries stay unacked (the broker keeps them, and
keeps the rest queued) and the projector tries again with a growing pause. An event
message that cannot be read goes to the queue's dead-letter queue with the reason.
Every :data:`PRUNE_EVERY_S` it deletes finished jobs older than the retention, in
small batches. Told to stop, it first applies what is already waiting (for at most
:data:`FINAL_DRAIN_S`): a pool stops it after its tasks, so the jobs table then shows
how the pool's last jobs ended.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import structlog

from taskwarren.brokers.base import ACK, Broker, Consumer, Delivery, Republish
from taskwarren.errors import StoreError
from taskwarren.message import failure_headers
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import JOB_EVENTS_QUEUE, JobEvent, decode_events

log = structlog.get_logger("taskwarren.projector")

#: Deliveries applied together at most (also the consumer's prefetch).
BATCH = 1_000
#: Seconds between two prunes of finished jobs.
PRUNE_EVERY_S = 60.0
#: Rows one prune statement deletes at most.
PRUNE_BATCH = 500
#: The longest pause between two tries while the store is down.
MAX_BACKOFF_S = 5.0
#: Seconds a stopping projector spends applying what already waits.
FINAL_DRAIN_S = 5.0
#: A stopping projector's poll: a broker may still be pushing what waits.
FINAL_POLL_S = 0.2


class Projector:
    """Applies job events from ``broker`` to the jobs table.

    Args:
        broker: where the events wait.
        open_table: opens a :class:`JobTable` (again after a failure).
        retention_s: finished jobs older than this are pruned (``0``: never).
        queue: the events queue.
    """

    def __init__(self, broker: Broker, open_table: Callable[[], JobTable],
                 retention_s: float, queue: str = JOB_EVENTS_QUEUE) -> None:
        self.broker = broker
        self.queue = queue
        self._open_table = open_table
        self._table: JobTable | None = None
        self.retention_s = retention_s
        self.applied = 0

    def table(self) -> JobTable:
        """The jobs table, opened on first use and after a failure."""
        if self._table is None:
            self._table = self._open_table()
        return self._table

    def run(self, stop: threading.Event) -> None:
        """Apply events until ``stop`` is set; unapplied deliveries go back to the broker."""
        self.broker.declare([self.queue])
        consumer = self.broker.consumer()
        try:
            consumer.consume(self.queue, BATCH)
            self._loop(consumer, stop)
        finally:
            consumer.close()
            if self._table is not None:
                self._table.store.close()

    def drain(self, wait_s: float = 0.0) -> int:
        """Apply the events waiting now (until a poll of ``wait_s`` brings none); how many.

        For tests and tools; :meth:`run` is the projector's life.

        Raises:
            StoreError: the store failed (the events stay on the broker).
        """
        self.broker.declare([self.queue])
        consumer = self.broker.consumer()
        before = self.applied
        try:
            consumer.consume(self.queue, BATCH)
            while got := consumer.poll(wait_s):
                if not self.apply(consumer, got):
                    raise StoreError("the job store failed; the events stay on the broker")
            while consumer.pending():  # carry out the acks
                consumer.poll(0.05)
        finally:
            consumer.close()
            if self._table is not None:
                self._table.store.close()
                self._table = None
        return self.applied - before

    def _loop(self, consumer: Consumer, stop: threading.Event) -> None:
        held: list[Delivery] = []
        backoff = 0.0
        pruned_at = time.monotonic()
        while not stop.is_set():
            wait = backoff if held else 0.5
            held.extend(consumer.poll(wait))
            held = [d for d in held if not consumer.is_stale(d)]
            if held:
                if self.apply(consumer, held):
                    held, backoff = [], 0.0
                else:
                    backoff = min(MAX_BACKOFF_S, max(0.2, backoff * 2))
            # Not only when idle: under a steady flow of events a poll is never empty.
            if not held and self.retention_s > 0 and \
                    time.monotonic() - pruned_at >= PRUNE_EVERY_S:
                pruned_at = time.monotonic()
                self.prune()
        self._finish(consumer, held)
        consumer.cancel()

    def _finish(self, consumer: Consumer, held: list[Delivery]) -> None:
        """Apply what waits now, until a poll brings none, the store fails or time is up;
        then carry out the acks. What is left stays on the broker for the next projector."""
        deadline = time.monotonic() + FINAL_DRAIN_S
        while time.monotonic() < deadline:
            held = [d for d in held if not consumer.is_stale(d)]
            held.extend(consumer.poll(FINAL_POLL_S))
            if not held or not self.apply(consumer, held):
                break
            held = []
        while consumer.pending() and time.monotonic() < deadline:
            consumer.poll(0.05)

    def apply(self, consumer: Consumer, deliveries: list[Delivery]) -> bool:
        """Apply ``deliveries`` and ack them; False (nothing acked) if the store failed.

        Those that cannot be read are dead-lettered and removed from ``deliveries``: a
        caller that tries the rest again must not settle them twice.
        """
        events: list[JobEvent] = []
        good: list[Delivery] = []
        for delivery in deliveries:
            try:
                events.extend(decode_events(delivery.envelope.body))
                good.append(delivery)
            except ValueError as exc:
                self._reject(consumer, delivery, str(exc))
        deliveries[:] = good
        try:
            if events:
                self.table().apply(events)
        except StoreError as exc:
            self._table = None
            log.warning("projector.store_failed", error=str(exc)[:300],
                        waiting=len(good))
            return False
        self.applied += len(events)
        for delivery in good:
            consumer.settle(delivery, ACK)
        return True

    def _reject(self, consumer: Consumer, delivery: Delivery, reason: str) -> None:
        log.error("projector.event_rejected", reason=reason)
        headers = failure_headers("ValueError", reason, "", reason)
        consumer.settle(delivery, Republish(self.queue,
                                            delivery.envelope.with_headers(headers), dead=True))

    def prune(self) -> int:
        """Delete finished jobs past the retention, batch by batch; how many went."""
        gone = 0
        try:
            while True:
                n = self.table().prune(self.retention_s, PRUNE_BATCH)
                gone += n
                if n < PRUNE_BATCH:
                    break
        except StoreError as exc:
            self._table = None
            log.warning("projector.prune_failed", error=str(exc)[:300])
        if gone:
            log.info("projector.pruned", jobs=gone)
        return gone
