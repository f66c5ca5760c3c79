"""taskwarren: a durable task queue for Python on RabbitMQ. Nothing lost, ever, and fast.

Public names: :func:`task`, :func:`publish`, :class:`Warren`, :class:`Retry`, :class:`Backoff`,
:class:`TaskwarrenError`, :class:`SoftTimeLimitExceeded`, :class:`Middleware` and the
:class:`TaskRun` its hooks see.
"""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ParamSpec, TypeVar, Unpack, overload

if TYPE_CHECKING:
    from taskwarren.app import Warren
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
    from taskwarren.app import default_app

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
    from taskwarren.app import default_app

    return default_app().publish_event(routing_key, payload,
                                       require_subscriber=require_subscriber)


#: Where each public class and function lives. They are imported on first use, so that
#: ``import taskwarren.pytest_plugin`` (which pytest does wherever taskwarren is
#: installed) or ``taskwarren --version`` does not pay for pydantic, structlog and amqp.
_LAZY = {
    "Backoff": "taskwarren.retries", "Middleware": "taskwarren.middleware",
    "Retry": "taskwarren.errors", "SoftTimeLimitExceeded": "taskwarren.errors",
    "Task": "taskwarren.task", "TaskRun": "taskwarren.middleware",
    "TaskwarrenError": "taskwarren.errors", "Warren": "taskwarren.app",
    "cancel_requested": "taskwarren.middleware.jobs",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and flag misspelt names

    def __getattr__(name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'taskwarren' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value


class _Package(types.ModuleType):
    """This package, keeping :func:`task` when the ``taskwarren.task`` module is imported.

    Importing a submodule sets it as an attribute of its package; the decorator and the
    module share the name ``task``, and the decorator is what ``taskwarren.task`` was
    before the imports became lazy.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if name == "task" and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
