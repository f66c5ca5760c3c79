"""The projector prunes finished jobs past the retention even while events keep coming."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from taskwarren.brokers.base import Consumer, Delivery
from taskwarren.brokers.memory import MemoryBroker
from taskwarren.errors import StoreError
from taskwarren.message import Envelope
from taskwarren.store import open_store, projector
from taskwarren.store.job_table import JobTable
from taskwarren.store.jobs import JOB_EVENTS_QUEUE, JobEvent, encode_events

#: Event messages waiting when the projector starts.
WAITING = 40


class Watched(projector.Projector):
    """A projector that notes how many events it had applied at its first prune, and
    stops there."""

    def __init__(self, broker: MemoryBroker, open_table: Callable[[], JobTable],
                 retention_s: float, stop: threading.Event) -> None:
        super().__init__(broker, open_table, retention_s)
        self.stop = stop
        self.applied_at_prune: int | None = None

    def prune(self) -> int:
        gone = super().prune()
        if self.applied_at_prune is None:
            self.applied_at_prune = self.applied
        self.stop.set()
        return gone


def broker_with_waiting_events(prefix: str) -> MemoryBroker:
    """A broker whose events queue holds :data:`WAITING` messages, each a job queued."""
    broker = MemoryBroker()
    broker.declare([JOB_EVENTS_QUEUE])
    now = time.time()
    broker.publish(JOB_EVENTS_QUEUE, [encode_events([JobEvent(f"{prefix}-{i}", "queued", now,
                                                              task="t", queue="q")])
                                      for i in range(WAITING)])
    return broker


def test_a_busy_projector_still_prunes_old_finished_jobs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    store.init()
    table = JobTable(store)
    old = time.time() - 3600
    table.apply([JobEvent("old", "succeeded", old, task="t", queue="q", created_at=old)])
    broker = broker_with_waiting_events("new")
    monkeypatch.setattr(projector, "BATCH", 1)  # one event message per poll: always busy
    monkeypatch.setattr(projector, "PRUNE_EVERY_S", 0.0)
    stop = threading.Event()
    watched = Watched(broker, lambda: JobTable(open_store(url)), 60.0, stop=stop)

    runner = threading.Thread(target=watched.run, args=(stop,))
    runner.start()
    runner.join(timeout=30)
    stop.set()
    runner.join()

    assert watched.applied_at_prune is not None
    assert watched.applied_at_prune < WAITING  # pruned while events were still waiting
    assert table.get("old") is None
    assert table.counts() == {"queued": watched.applied}
    store.close()


def test_a_projector_told_to_stop_first_applies_what_waits(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    store.init()
    broker = broker_with_waiting_events("job")
    stop = threading.Event()
    stop.set()  # before it even starts

    projector.Projector(broker, lambda: JobTable(open_store(url)), 0.0).run(stop)

    assert JobTable(store).counts() == {"queued": WAITING}
    stats = broker.stats(JOB_EVENTS_QUEUE)
    assert (stats.ready, stats.unacked, stats.dead) == (0, 0, 0)  # applied and acked
    store.close()


class Rejects(projector.Projector):
    """Counts the event messages it dead-letters."""

    rejected = 0

    def _reject(self, consumer: Consumer, delivery: Delivery, reason: str) -> None:
        self.rejected += 1
        super()._reject(consumer, delivery, reason)


def test_an_unreadable_event_is_dead_lettered_once_though_the_store_fails_first(
        tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    store = open_store(url)
    store.init()
    broker = broker_with_waiting_events("job")
    broker.publish(JOB_EVENTS_QUEUE, [Envelope(message_id="bad", body=b"not json")])
    opened = 0

    def open_table() -> JobTable:
        nonlocal opened
        opened += 1
        if opened == 1:
            raise StoreError("the store is down (this test)")
        return JobTable(open_store(url))

    stop = threading.Event()
    watched = Rejects(broker, open_table, 0.0)
    runner = threading.Thread(target=watched.run, args=(stop,))
    runner.start()
    deadline = time.monotonic() + 30
    while watched.applied < WAITING and time.monotonic() < deadline:  # after a retry
        time.sleep(0.05)
    stop.set()
    runner.join()

    assert opened == 2
    assert watched.rejected == 1
    assert JobTable(store).counts() == {"queued": WAITING}
    stats = broker.stats(JOB_EVENTS_QUEUE)
    assert (stats.ready, stats.unacked, stats.dead) == (0, 0, 1)
    store.close()
