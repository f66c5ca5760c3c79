"""taskwarren: a durable task queue for Python on RabbitMQ. Nothing lost, ever, and fast.

Public names: :func:`task`, :func:`publish`, :class:`Warren`, :class:`Retry`, :class:`Backoff`,
:class:`TaskwarrenError`, :class:`SoftTimeLimitExceeded`, :class:`Middleware` and the
:class:`TaskRun` its hooks see.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar, Unpack, overload

from taskwarren.app import Warren, default_app
from taskwarren.errors import Retry, SoftTimeLimitExceeded, TaskwarrenError
from taskwarren.middleware import Middleware, TaskRun
from taskwarren.middleware.jobs import cancel_requested
from taskwarren.retries import Backoff
from taskwarren.task import Task, TaskOptionArgs

__all__ = [
    "Backoff",
    "Middleware",
    "Retry",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskRun",
    "TaskwarrenError",
    "Warren",
    "__version__",
    "cancel_requested",
    "publish",
    "task",
]

__version__ = "0.1.0"

P = ParamSpec("P")
R = TypeVar("R")


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(**options: Unpack[TaskOptionArgs]) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Register a function as a task of the default app (configured from ``TASKWARREN_URL``).

    Works bare (``@task``) and with options (``@task(queue="analysis", retries=5)``);
    the options are those of :meth:`Warren.task`.
    """
    app = default_app()
    if fn is not None:
        return app.task(fn, **options)
    return app.task(**options)


def publish(routing_key: str, payload: Any, *, require_subscriber: bool = False) -> int | None:
    """Publish an event through the default app; every subscribed queue gets its own copy.

    ``publish("audit.irs.corporate", AuditEvent(...))`` returns once the broker confirmed
    it. The return value says what is known of its reach: ``0`` when no subscription
    matched (reported, never silently dropped), ``None`` when it reached at least one
    queue but the broker does not say how many (RabbitMQ), or the exact count (the
    in-memory broker). See :meth:`Warren.publish_event`.

    Raises:
        UnroutableError: ``require_subscriber`` and nothing subscribes to it.
        ArgumentsError: the payload does not validate.
    """
    return default_app().publish_event(routing_key, payload,
                                       require_subscriber=require_subscriber)
