"""What the dashboard shows, read from the job store, the broker and the schedules.

Everything here is blocking (database and broker I/O): the routes run it in a thread.
Each reading that can fail (no store configured, a broker that does not answer) comes
back with a ``problem`` sentence rather than an exception, so one failing source never
blanks the whole page. The broker's figures say where they came from (``source``): the
RabbitMQ management API, AMQP, or the embedded broker.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from taskwarren.app import Warren
from taskwarren.brokers import make_broker
from taskwarren.brokers.base import Broker
from taskwarren.brokers.capabilities import Admin, require
from taskwarren.errors import ConfigurationError, TaskwarrenError
from taskwarren.jobs import Jobs
from taskwarren.management import ManagementAPI, ManagementError
from taskwarren.pools import live_pools
from taskwarren.schedules import list_schedules
from taskwarren.store.jobs import STATES, Job
from taskwarren.urls import AMQP_SCHEMES, parse_urls, scheme_of
from taskwarren.web.cache import Cached
from taskwarren.web.dead import DeadLetterReader, DeadLetters
from taskwarren.web.paging import Filters, JobsPage, encode_cursor

__all__ = ["Dashboard", "QueueView", "problem_of"]

T = TypeVar("T")

#: Threads that run the dashboard's blocking reads and actions (each holds a store
#: connection once it has used one).
THREADS = 8
#: The longest the dashboard's statements on the job store may wait on a lock (or run, on
#: PostgreSQL), and its connection attempts take, in seconds.
STORE_WAIT_S = 5
#: After the management API failed, how long it is left alone (figures come from AMQP).
MANAGEMENT_PAUSE_S = 30.0
#: Where the figures of a queue came from, as the page says it.
SOURCES = {"management": "RabbitMQ management API", "amqp": "AMQP (passive declare)",
           "sqlite": "embedded SQLite broker", "memory": "in-memory broker"}



def problem_of(exc: BaseException) -> str:
    """A one-line description of a failure, for the page (our errors hold no password)."""
    if isinstance(exc, ConfigurationError):
        return str(exc)
    if isinstance(exc, TaskwarrenError):
        return f"{type(exc).__name__}: {exc}"
    return type(exc).__name__


@dataclass(slots=True)
class QueueView:
    """A queue's figures, and where they came from.

    Attributes:
        name: the queue.
        ready: messages waiting (``None``: unknown).
        unacked: delivered, not yet settled (``None`` where the source cannot tell).
        consumers: consumers attached.
        dead: messages in its dead-letter queue.
        delayed: messages waiting out a delay for it.
        rates: messages per second published, delivered and acked (management API only).
        source: a key of :data:`SOURCES`.
        note: what the reader should know about the figures (a fallback), if anything.
        problem: why there are none, if so.
    """

    name: str
    ready: int | None = None
    unacked: int | None = None
    consumers: int | None = None
    dead: int | None = None
    delayed: int | None = None
    rates: dict[str, float | None] = field(default_factory=lambda: {
        "publish": None, "deliver": None, "ack": None})
    source: str = "amqp"
    note: str | None = None
    problem: str | None = None

    @property
    def source_label(self) -> str:
        """Where the figures came from, in words."""
        return SOURCES[self.source]

    def as_json(self) -> dict[str, Any]:
        """The figures as the JSON API gives them."""
        values = asdict(self)
        values["source_label"] = self.source_label
        return values


class Dashboard:
    """The dashboard's reads, over one app (its job store, broker and schedules).

    Everything blocking runs on :attr:`executor`, a fixed pool of long-lived threads: the
    job store connections are per thread (``app.jobs``), so a pool whose threads come and
    go would open a connection per new thread and leave the old ones open.

    Reads from RabbitMQ go through a connection of the dashboard's own whose calls give up
    after ``read_timeout_s`` (the app's broker waits out its publish timeout, 30 s by
    default, which a page should not); actions use the app's broker.

    Args:
        warren: the app.
        queues: the queues the overview shows (default: those of the app's tasks).
        management_url: the RabbitMQ management API (``None``: AMQP only).
        listen_s: how long to listen for worker announcements on RabbitMQ.
        cache_s: how long counts, pools and schedules are served before being read again.
        read_timeout_s: how long a read from RabbitMQ may take.
    """

    def __init__(self, warren: Warren, *, queues: Sequence[str] | None = None,
                 management_url: str | None = None, listen_s: float = 1.5,
                 cache_s: float = 5.0, read_timeout_s: float = 3.0) -> None:
        self.warren = warren
        self.queue_names = sorted(set(queues if queues is not None else warren.queues()))
        settings = warren.settings
        self.management: ManagementAPI | None = None
        if management_url is not None and settings.scheme in AMQP_SCHEMES:
            self.management = ManagementAPI(management_url, parse_urls(settings.url)[0].vhost)
        self.listen_s = listen_s
        self.read_timeout_s = read_timeout_s
        #: The job store, through connections of the dashboard's own whose waits are
        #: bounded (:data:`STORE_WAIT_S`); actions use them too.
        self.jobs = Jobs(warren, wait_s=STORE_WAIT_S)
        #: When the management API last failed, and how (it is then left alone for
        #: :data:`MANAGEMENT_PAUSE_S`).
        self._management_failed: tuple[float, str] | None = None
        self._reader: Broker | None = None
        self._reader_lock = threading.Lock()
        #: The threads every blocking read and action runs on.
        self.executor = ThreadPoolExecutor(THREADS, thread_name_prefix="taskwarren-web")
        self.counts = Cached(self._counts, min(cache_s, 2.0), self.executor, problem_of)
        self.pools = Cached(lambda: live_pools(self.reader, self.listen_s), cache_s,
                            self.executor, problem_of)
        self.schedules = Cached(self._schedules, cache_s, self.executor, problem_of)
        self.dead = DeadLetterReader(
            lambda: require(self.reader, Admin, "dead-letter browsing"),
            settings.max_message_bytes, cache_s, problem_of)

    @property
    def reader(self) -> Broker:
        """The broker the dashboard reads from (see the class)."""
        settings = self.warren.settings
        if settings.scheme not in AMQP_SCHEMES:
            return self.warren.broker
        with self._reader_lock:
            if self._reader is None:
                timeout_s = self.read_timeout_s
                self._reader = make_broker(settings.replace(
                    publish_timeout_s=timeout_s,
                    connect_timeout_s=min(settings.connect_timeout_s, timeout_s)))
            return self._reader

    def close(self) -> None:
        """Stop the threads and close the dashboard's own broker connection (the app and
        its connections are the caller's)."""
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.jobs.close()
        with self._reader_lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None

    def store_problem(self) -> str | None:
        """Why there is no job store to read, if there is none."""
        url = self.warren.settings.effective_store_url
        if url is None:
            return "no job store: set TASKWARREN_STORE_URL"
        if scheme_of(url) == "sqlite":
            path = unquote(urlsplit(url).path[1:])
            if path and path != ":memory:" and not os.path.exists(path):
                return "no job store: its SQLite file does not exist"
        return None

    def _check_store(self) -> None:
        problem = self.store_problem()
        if problem is not None:
            raise ConfigurationError(problem)

    def _schedules(self) -> list[dict[str, Any]]:
        self._check_store()
        return [{k: v for k, v in e.items() if not k.startswith("_")}
                for e in list_schedules(self.warren)]

    def _counts(self) -> dict[str, int]:
        self._check_store()
        found = self.jobs.counts()
        return {state: found.get(state, 0) for state in STATES}

    def jobs_page(self, filters: Filters, cursor: tuple[float, str] | None) -> JobsPage:
        """A page of jobs matching ``filters``, after ``cursor`` (newest first)."""
        problem = self.store_problem()
        if problem is not None:
            return JobsPage([], None, problem)
        try:
            found = self.jobs.list(state=filters.state, task=filters.task,
                                          queue=filters.queue, since=filters.since_at,
                                          before=cursor, limit=filters.limit + 1)
        except TaskwarrenError as exc:
            return JobsPage([], None, problem_of(exc))
        more = len(found) > filters.limit
        jobs = found[:filters.limit]
        return JobsPage(jobs, encode_cursor(jobs[-1]) if more else None)

    def job(self, task_id: str) -> tuple[Job | None, str | None]:
        """The job ``task_id`` (``None`` if unknown), or why it cannot be read."""
        problem = self.store_problem()
        if problem is not None:
            return None, problem
        if "\x00" in task_id:  # no job has one, and PostgreSQL refuses the query
            return None, None
        try:
            return self.jobs.get(task_id), None
        except TaskwarrenError as exc:
            return None, problem_of(exc)

    def queue(self, name: str) -> QueueView:
        """The figures of queue ``name``: from the management API when configured (AMQP
        when it fails, saying so), else from the broker."""
        view = QueueView(name, source=self._broker_source())
        note = self._paused_note()
        if note is None and self.management is not None:
            try:
                found = self.management.stats(name)
            except ManagementError as exc:
                # Every queue after, in this request and the next ones, would wait out
                # its timeout again: leave it alone for a while.
                self._management_failed = (time.monotonic(), str(exc))
                note = f"the management API failed ({exc}); these figures come from AMQP"
            else:
                self._management_failed = None
                view.ready, view.unacked, view.consumers = (found.ready, found.unacked,
                                                            found.consumers)
                view.dead, view.source = found.dead, "management"
                view.rates = {"publish": found.publish_rate, "deliver": found.deliver_rate,
                              "ack": found.ack_rate}
                return view
        try:
            stats = require(self.reader, Admin, "queue statistics").stats(name)
        except TaskwarrenError as exc:
            view.problem = problem_of(exc)
        else:
            view.ready, view.unacked, view.consumers = (stats.ready, stats.unacked,
                                                        stats.consumers)
            view.dead, view.delayed = stats.dead, stats.delayed
        view.note = note
        return view

    def _paused_note(self) -> str | None:
        """What to say while the management API is left alone after failing (else None)."""
        failed = self._management_failed
        if failed is None or time.monotonic() - failed[0] >= MANAGEMENT_PAUSE_S:
            return None
        return (f"the management API failed {time.monotonic() - failed[0]:.0f} s ago "
                f"({failed[1]}); these figures come from AMQP")

    def queues(self) -> list[QueueView]:
        """The figures of the overview's queues. Once the broker cannot be reached, the
        queues after are not tried: each would wait out the read timeout again."""
        views: list[QueueView] = []
        down: str | None = None
        for name in self.queue_names:
            if down is not None:
                views.append(QueueView(name, source=self._broker_source(), problem=down,
                                       note=self._paused_note()))
                continue
            view = self.queue(name)
            if view.problem is not None and "BrokerConnectionError" in view.problem:
                down = view.problem
            views.append(view)
        return views

    def _broker_source(self) -> str:
        scheme = self.warren.settings.scheme
        return "amqp" if scheme in AMQP_SCHEMES else scheme

    def dead_letters(self, name: str) -> DeadLetters:
        """The first dead letters of queue ``name`` (left where they are) and how many
        there are, or why they cannot be read (see :mod:`taskwarren.web.dead`)."""
        return self.dead.read(name)

    def overview(self) -> dict[str, Any]:
        """Everything the overview shows, as the JSON API gives it."""
        counts, counts_problem = self.counts.get()
        pools, pools_problem = self.pools.get()
        schedules, schedules_problem = self.schedules.get()
        return {
            "jobs": {"counts": counts, "total": None if counts is None else sum(
                counts.values()), "problem": counts_problem},
            "queues": [view.as_json() for view in self.queues()],
            "pools": {"count": None if pools is None else len(pools),
                      "processes": None if pools is None else sum(
                          p["children"] for p in pools), "problem": pools_problem},
            "schedules": {"count": None if schedules is None else len(schedules),
                          "problem": schedules_problem},
            "generated_at": datetime.now(UTC).isoformat(),
        }
