"""Warren: the application object: task registry, settings, and the broker it sends to."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

import structlog
from pydantic import BaseModel, ValidationError

from taskwarren.brokers.base import Broker
from taskwarren.errors import ArgumentsError, ConfigurationError, PublishError, UnroutableError
from taskwarren.message import Envelope, encode_event
from taskwarren.retries import Backoff
from taskwarren.settings import Settings
from taskwarren.task import DEFAULT_QUEUE, Task, TaskOptions, task_options
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


def make_broker(settings: Settings) -> Broker:
    """The broker for ``settings.url``: RabbitMQ, embedded SQLite, or in-memory.

    Raises:
        ConfigurationError: an unsupported URL scheme.
    """
    scheme = settings.scheme
    if scheme in ("amqp", "amqps"):
        from taskwarren.brokers.rabbitmq import RabbitMQBroker

        return RabbitMQBroker(settings)
    if scheme == "sqlite":
        from taskwarren.brokers.sqlite import SQLiteBroker

        return SQLiteBroker.from_url(settings.url, delivery_limit=settings.delivery_limit)
    if scheme == "memory":
        from taskwarren.brokers.memory import MemoryBroker

        return MemoryBroker(delivery_limit=settings.delivery_limit)
    raise ConfigurationError(
        f"unsupported broker URL scheme {scheme!r}: use amqp://, amqps://, sqlite:/// or memory://"
    )


class Warren:
    """An application: its tasks, its settings and its broker.

    Args:
        url: broker URL; overrides ``TASKWARREN_URL``.
        settings: complete settings; when omitted they are read from the environment
            (once, here, not at import time).
        broker: use this broker instead of one built from the URL (tests).
        **overrides: individual settings, e.g. ``queue_type="classic"``.
    """

    def __init__(
        self,
        url: str | None = None,
        *,
        settings: Settings | None = None,
        broker: Broker | None = None,
        **overrides: Any,
    ) -> None:
        if settings is None:
            settings = Settings.from_env(url=url, **overrides)
        elif url is not None or overrides:
            settings = settings.model_copy(update={"url": url or settings.url, **overrides})
        self.settings = settings
        self.tasks: dict[str, Task[Any, Any]] = {}
        self._broker = broker
        self._broker_pid = os.getpid() if broker is not None else 0
        self._declared: set[str] = set()
        self._lock = threading.Lock()
        #: Called after every confirmed publish with (queue, messages, seconds to confirm).
        self.publish_observers: list[Callable[[str, int, float], None]] = []

    def __repr__(self) -> str:
        return f"<Warren {self.broker_location} tasks={len(self.tasks)}>"

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
        self,
        /,
        *,
        queue: str = DEFAULT_QUEUE,
        name: str | None = None,
        retries: int = 0,
        backoff: Backoff | None = None,
        retry_on: Sequence[type[BaseException]] | None = None,
        dont_retry: Sequence[type[BaseException]] = (),
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        subscribe: Sequence[str] = (),
        broadcast: bool = False,
    ) -> Callable[[Callable[P, R]], Task[P, R]]: ...

    def task(
        self,
        fn: Callable[..., Any] | None = None,
        /,
        *,
        queue: str = DEFAULT_QUEUE,
        name: str | None = None,
        retries: int = 0,
        backoff: Backoff | None = None,
        retry_on: Sequence[type[BaseException]] | None = None,
        dont_retry: Sequence[type[BaseException]] = (),
        time_limit: float | None = None,
        soft_time_limit: float | None = None,
        subscribe: Sequence[str] = (),
        broadcast: bool = False,
    ) -> Any:
        """Register a function as a task; use bare (``@app.task``) or with options.

        Args:
            queue: the queue its messages go to.
            name: registered name (default: ``module.qualname``).
            retries: how many times a failing call is tried again (default 0:
                a failure goes straight to the dead-letter queue).
            backoff: delays between retries (exponential with jitter, capped).
            retry_on: exception types that are retried (default: any ``Exception``).
            dont_retry: exception types that are dead-lettered at once.
            time_limit: hard limit in seconds.
            soft_time_limit: seconds after which ``SoftTimeLimitExceeded`` is raised in
                the task.
            subscribe: event patterns (``audit.#``: ``#`` is zero or more words, ``*``
                exactly one) whose events land in ``queue`` for this task; its first
                argument receives the event. One subscriber per event and queue.
            broadcast: ``.send()`` reaches every worker process alive now, once each
                (at most once: see the README); no retries, no delays.
        """
        opts = task_options(
            TaskOptions(),
            queue=queue,
            retries=retries,
            backoff=backoff or Backoff(),
            retry_on=tuple(retry_on) if retry_on is not None else (Exception,),
            dont_retry=tuple(dont_retry),
            time_limit_s=time_limit,
            soft_time_limit_s=soft_time_limit,
            subscribe=tuple(subscribe),
            broadcast=broadcast,
        )

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
        """Whether any registered task is a broadcast (worker processes then listen)."""
        return any(t.task_options.broadcast for t in self.tasks.values())

    def bind_subscriptions(self, queues: Sequence[str] | None = None) -> None:
        """Make the durable event bindings of ``queues`` (default: all) on the broker."""
        for queue, patterns in self.subscriptions(queues).items():
            self.broker.bind_events(queue, patterns)

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

    def publish(self, queue: str, envelopes: Sequence[Envelope], delay_s: float = 0.0) -> None:
        """Publish envelopes to ``queue`` (declared first), confirmed."""
        self.declare([queue])
        started = time.perf_counter()
        self.broker.publish(queue, envelopes, delay_s)
        if self.publish_observers:
            elapsed = time.perf_counter() - started
            for observe in self.publish_observers:
                observe(queue, len(envelopes), elapsed)

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
        body = self._event_body(routing_key, payload)
        self.check_size(body)
        reached = self.broker.publish_event(routing_key, encode_event(routing_key, body))
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

    def publish_broadcast(self, envelope: Envelope) -> None:
        """Publish a broadcast task call to every live worker process, confirmed."""
        reached = self.broker.publish_broadcast(envelope)
        if reached == 0:
            log.warning("broadcast.unheard", task=envelope.task, task_id=envelope.message_id,
                        reason="no worker process is listening")

    def close(self) -> None:
        """Close this process's broker connections."""
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
