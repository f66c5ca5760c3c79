"""Warren: the application object: task registry, settings, middleware, and the one send path.

Every message leaves through :meth:`Warren.enqueue` (task calls), :meth:`Warren.broadcast`
or :meth:`Warren.publish_event`, which share one routine: size check, ``before_enqueue``
hooks, declare, publish and confirm, ``after_enqueue`` hooks.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, ParamSpec, TypeVar, Unpack, overload

import structlog
from pydantic import BaseModel, ValidationError

from taskwarren.brokers import make_broker
from taskwarren.brokers.base import Broker
from taskwarren.brokers.capabilities import Broadcasts, Events, require
from taskwarren.errors import ArgumentsError, ConfigurationError, PublishError, UnroutableError
from taskwarren.jobs import Jobs
from taskwarren.message import Envelope, encode_event
from taskwarren.middleware import Chain, Middleware, default_middleware
from taskwarren.middleware.base import BROADCASTS_QUEUE, EVENTS_QUEUE
from taskwarren.settings import Settings
from taskwarren.task import Task, TaskOptionArgs, TaskOptions
from taskwarren.topology import (
    TopologyItem,
    check_routing_key,
    patterns_overlap,
    required_topology,
    topic_matches,
)

log = structlog.get_logger("taskwarren.app")

P = ParamSpec("P")
R = TypeVar("R")


class Warren:
    """An application: its tasks, its settings and its broker.

    Args:
        url: broker URL; overrides ``TASKWARREN_URL``.
        settings: complete settings; when omitted they are read from the environment
            (once, here, not at import time).
        broker: use this broker instead of one built from the URL (tests).
        middleware: the application's middleware, run after the default ones
            (log context, time limits, retries); see :meth:`add_middleware`.
        **overrides: individual settings, e.g. ``queue_type="classic"``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        broker: Broker | None = None,
        middleware: Iterable[Middleware] = (),
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(url=url, **overrides)
        elif url is not None or overrides:
            settings = settings.replace(url=url, **overrides)
        self.settings = settings
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker = broker
        self._broker_pid = os.getpid() if broker is not None else 0
        self._declared: set[str] = set()
        self._pinned: Broker | None = None  # taskwarren.testing.in_memory's, while it lasts
        self._lock = threading.Lock()
        self.middleware = Chain(default_middleware())
        #: The jobs recorded in the job store: query, cancel, retry.
        self.jobs = Jobs(self)
        if settings.records_jobs:
            self.add_middleware(self.jobs.recorder())
        for m in middleware:
            self.add_middleware(m)

    def __repr__(self) -> str:
        return f"<Warren {self.broker_location} tasks={len(self.tasks)}>"

    def add_middleware(self, middleware: Middleware) -> None:
        """Register ``middleware`` after those already registered.

        Its ``before_*`` hooks run after theirs, its ``after_*`` hooks before theirs.
        Register a middleware that owns task options before the tasks that use them.
        """
        if not isinstance(middleware, Middleware):
            raise ConfigurationError(
                f"{middleware!r} is not a taskwarren.Middleware (subclass it and pass an "
                "instance)")
        self.middleware.add(middleware)

    @property
    def broker_location(self) -> str:
        """Where the broker is, password masked."""
        from taskwarren.settings import mask_url

        return mask_url(self.settings.url)

    @property
    def broker(self) -> Broker:
        """This process's broker, created on first use and again after ``fork()``.

        A forked child never writes to its parent's connection.
        """
        if self._pinned is not None:
            return self._pinned
        pid = os.getpid()
        if self._broker is None or self._broker_pid != pid:
            with self._lock:
                if self._broker is None or self._broker_pid != pid:
                    self._broker = make_broker(self.settings)
                    self._broker_pid = pid
                    self._declared = set()
        return self._broker

    @overload
    def task(self, fn: Callable[P, R], /) -> Task[P, R]: ...

    @overload
    def task(
        self, /, **options: Unpack[TaskOptionArgs]
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(self, fn: Callable[..., Any] | None = None, /, **options: Any) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options.

        Args:
            fn: the function (when used bare).
            **options: those of :class:`~taskwarren.options.TaskOptionArgs` (where each
                is described), and those the app's own middleware own.

        Raises:
            ConfigurationError: an option no registered middleware owns (it is named), or
                one out of range.
        """
        name = options.get("name")
        self.middleware.check_options(name or getattr(fn, "__qualname__", None), options)
        opts = TaskOptions.from_args(options)

        def register(f: Callable[..., Any]) -> Task[Any, Any]:
            task_name = name or f"{f.__module__}.{f.__qualname__}"
            existing = self.tasks.get(task_name)
            if existing is not None and existing.fn is not f:
                raise ConfigurationError(f"a different task is already named {task_name!r}")
            self._check_overlap(task_name, opts)
            registered: Task[Any, Any] = Task(self, f, task_name, opts)
            self.tasks[task_name] = registered
            return registered

        return register(fn) if fn is not None else register

    def _check_overlap(self, name: str, opts: TaskOptions) -> None:
        # The broker puts one copy of an event in a queue however many of its bindings
        # match: two subscribers of one event must not share a queue.
        for other in self.tasks.values():
            if other.name == name or other.queue != opts.queue:
                continue
            for mine in opts.subscribe:
                for theirs in other.subscriptions:
                    if patterns_overlap(mine, theirs):
                        raise ConfigurationError(
                            f"tasks {name!r} and {other.name!r} both subscribe to events "
                            f"matching {mine!r} and {theirs!r} on queue {opts.queue!r}: the "
                            "broker puts one copy per queue; give each its own queue"
                        )

    def queues(self) -> list[str]:
        """Every queue the registered tasks use, sorted."""
        return sorted({t.queue for t in self.tasks.values()})

    def subscriptions(self, queues: Sequence[str] | None = None) -> dict[str, list[str]]:
        """Subscription patterns per queue (of ``queues``, or of every queue)."""
        out: dict[str, list[str]] = {}
        for t in self.tasks.values():
            if t.subscriptions and (queues is None or t.queue in queues):
                out.setdefault(t.queue, []).extend(t.subscriptions)
        return out

    def has_broadcasts(self) -> bool:
        """Whether worker processes listen for broadcasts: a registered task is one, or
        jobs are recorded (a cancel tells running jobs by broadcast)."""
        return self.settings.records_jobs or any(t.task_options.broadcast
                                                 for t in self.tasks.values())

    def bind_subscriptions(self, queues: Sequence[str] | None = None) -> None:
        """Make the durable event bindings of ``queues`` (default: all) on the broker."""
        for queue, patterns in self.subscriptions(queues).items():
            require(self.broker, Events, "events").bind_events(queue, patterns)

    def topology(self, queues: Sequence[str] | None = None) -> list[TopologyItem]:
        """Every exchange, queue and binding the registered tasks need."""
        chosen = self.queues() if queues is None else list(queues)
        return required_topology(chosen, self.subscriptions(chosen), self.settings.queue_type,
                                 self.settings.delivery_limit)

    def check_size(self, body: bytes) -> None:
        """Refuse a body over ``max_message_bytes`` before it reaches the broker.

        Raises:
            PublishError: the body is too large.
        """
        if len(body) > self.settings.max_message_bytes:
            raise PublishError(
                f"message body of {len(body)} bytes exceeds max_message_bytes="
                f"{self.settings.max_message_bytes}"
            )

    def declare(self, queues: Sequence[str]) -> None:
        """Declare ``queues`` (once per process and broker connection)."""
        broker = self.broker
        missing = [q for q in queues if q not in self._declared]
        if missing:
            broker.declare(missing)
            self._declared.update(missing)

    def enqueue(self, queue: str, envelopes: Sequence[Envelope], *, delay_s: float = 0.0,
                db: object | None = None, unique_key: str | None = None) -> str | None:
        """Publish ``envelopes`` to ``queue`` (declared first); returns once confirmed.

        The one send path of task calls: each body's size is checked before anything is
        published, then the ``before_enqueue`` hooks run, the broker publishes and
        confirms, and the ``after_enqueue`` hooks run. When the app records jobs, their
        ``queued`` events are published next.

        With ``db`` (the application's connection), the envelopes are written to the
        outbox in that connection's open transaction instead (with their jobs' rows),
        after the same size check and ``before_enqueue`` hooks; a relay publishes them
        once it commits (the ``after_enqueue`` hooks do not run: nothing is enqueued
        until then).

        With ``unique_key`` (one envelope), it goes through the outbox (of ``db``, else
        of the app's store, committed here) unless a live job holds the key.

        Returns:
            With ``unique_key``, the id of the live job holding it; else ``None``.

        Raises:
            PublishError: a body is too large, or the broker did not confirm.
            ConfigurationError: ``unique_key`` without a job store recording jobs.
            TypeError: ``db`` is not a supported connection.
            StoreError: the outbox insert failed (``StoreNotInitializedError``: the
                tables are missing).
        """
        records = self.settings.records_jobs
        if db is not None or unique_key is not None:
            from taskwarren.store import outbox

            if unique_key is not None and not records:
                raise ConfigurationError("unique_key needs the job store: set "
                                         "TASKWARREN_STORE_URL (and leave TASKWARREN_JOBS on)")
            for envelope in envelopes:
                self.check_size(envelope.body)
            if self.middleware.uses("before_enqueue"):
                for envelope in envelopes:
                    self.middleware.before_enqueue(envelope)
            if unique_key is not None:
                return self.jobs.send_unique(envelopes[0], delay_s, unique_key, db)
            outbox.write(db, envelopes, delay_s, record=records)
            return None

        def publish() -> None:
            self.declare([queue])
            self.broker.publish(queue, envelopes, delay_s)

        self._send(queue, envelopes, publish)
        if records:
            self.jobs.sent(envelopes, delay_s)
        return None

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        """Same as :meth:`enqueue` (kept for callers of the first releases)."""
        self.enqueue(queue, envelopes, delay_s=delay_s)

    def _send(self, queue: str, envelopes: Sequence[Envelope], publish: Callable[[], object],
              ) -> object:
        # ``queue`` becomes a metrics label: a declared queue name or a fixed one, never
        # text from a message (an event's routing key).
        for envelope in envelopes:
            self.check_size(envelope.body)
        chain = self.middleware
        if chain.uses("before_enqueue"):
            for envelope in envelopes:
                chain.before_enqueue(envelope)
        started = time.perf_counter()
        outcome = publish()
        if chain.uses("after_publish"):
            chain.after_publish(queue, len(envelopes), time.perf_counter() - started)
        if chain.uses("after_enqueue"):
            for envelope in envelopes:
                chain.after_enqueue(envelope)
        return outcome

    def publish_event(
        self, routing_key: str, payload: Any, *, require_subscriber: bool = False
    ) -> int | None:
        """Publish an event: every queue subscribed to ``routing_key`` gets its own copy.

        ``payload`` is a pydantic model instance (validated against its own model) or,
        when a subscriber of ``routing_key`` is registered in this process, anything
        its first argument accepts (validated against that).

        Returns:
            Queues reached: ``0`` when no subscription matched (the broker returned the
            mandatory message); ``None`` when at least one did but the broker does not
            say how many (RabbitMQ); the exact count on the in-memory broker.

        Raises:
            ConfigurationError: a routing key with wildcards or empty words.
            ArgumentsError: the payload does not validate.
            UnroutableError: ``require_subscriber`` and no queue is subscribed.
            PublishError: the broker did not confirm it.
        """
        check_routing_key(routing_key)
        envelope = encode_event(routing_key, self._event_body(routing_key, payload))
        events = require(self.broker, Events, "events")
        reached = self._send(EVENTS_QUEUE, [envelope],
                             lambda: events.publish_event(routing_key, envelope))
        assert reached is None or isinstance(reached, int)
        if reached == 0:
            if require_subscriber:
                raise UnroutableError(f"event {routing_key!r} reached no queue: nothing "
                                      "subscribes to it")
            log.warning("event.unrouted", routing_key=routing_key)
        return reached

    def _event_body(self, routing_key: str, payload: Any) -> bytes:
        if isinstance(payload, BaseModel):
            try:
                # Validated again: an instance may have been built or changed unchecked.
                type(payload).model_validate(payload.model_dump(warnings=False))
            except ValidationError as exc:
                raise ArgumentsError(f"event {routing_key}",
                                     [".".join(map(str, e["loc"])) for e in exc.errors()],
                                     str(exc)) from None
            return payload.model_dump_json().encode()
        for t in self.tasks.values():
            if any(topic_matches(p, routing_key) for p in t.subscriptions):
                return t.encode_event(payload)
        raise ArgumentsError(f"event {routing_key}", ["(payload)"],
                             "give a pydantic model instance (no subscriber of this event is "
                             "registered here to validate anything else against)")

    def broadcast(self, envelope: Envelope) -> None:
        """Publish a broadcast task call to every live worker process, confirmed.

        Raises:
            PublishError: the body is too large, or the broker did not confirm.
            NotSupportedError: the broker has no broadcasts.
        """
        broadcasts = require(self.broker, Broadcasts, "broadcasts")
        reached = self._send(BROADCASTS_QUEUE, [envelope],
                             lambda: broadcasts.publish_broadcast(envelope))
        if reached == 0:
            log.warning("broadcast.unheard", task=envelope.task, task_id=envelope.message_id,
                        reason="no worker process is listening")

    def publish_broadcast(self, envelope: Envelope) -> None:
        """Same as :meth:`broadcast` (kept for callers of the first releases)."""
        self.broadcast(envelope)

    def close(self) -> None:
        """Close this process's broker and job store connections (a test's in-memory
        broker stays, until its :func:`~taskwarren.testing.in_memory` switch ends)."""
        self.jobs.close()
        if self._pinned is not None:
            return
        if self._broker is not None and self._broker_pid == os.getpid():
            self._broker.close()
        self._broker = None


_default_app: Warren | None = None
_default_lock = threading.Lock()


def default_app() -> Warren:
    """The app module-level ``@task`` registers with, built from the environment on first use."""
    global _default_app
    if _default_app is None:
        with _default_lock:
            if _default_app is None:
                _default_app = Warren()
    return _default_app


def set_default_app(app: Warren | None) -> None:
    """Replace the default app (tests, or explicit configuration at start-up)."""
    global _default_app
    _default_app = app
