"""taskwarren: a durable task queue for Python on RabbitMQ. Nothing lost, ever, and fast.

Public names: :func:`task`, :class:`Warren`, :class:`Retry`, :class:`Backoff`,
:class:`TaskwarrenError`, :class:`SoftTimeLimitExceeded`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, ParamSpec, TypeVar, overload

from taskwarren.app import Warren, default_app
from taskwarren.errors import Retry, SoftTimeLimitExceeded, TaskwarrenError
from taskwarren.retries import Backoff
from taskwarren.task import DEFAULT_QUEUE, Task

__all__ = [
    "Backoff",
    "Retry",
    "SoftTimeLimitExceeded",
    "Task",
    "TaskwarrenError",
    "Warren",
    "__version__",
    "task",
]

__version__ = "0.1.0"

P = ParamSpec("P")
R = TypeVar("R")


@overload
def task(fn: Callable[P, R], /) -> Task[P, R]: ...


@overload
def task(
    *,
    queue: str = DEFAULT_QUEUE,
    name: str | None = None,
    retries: int = 0,
    backoff: Backoff | None = None,
    retry_on: Sequence[type[BaseException]] | None = None,
    dont_retry: Sequence[type[BaseException]] = (),
    time_limit: float | None = None,
    soft_time_limit: float | None = None,
) -> Callable[[Callable[P, R]], Task[P, R]]: ...


def task(fn: Callable[P, R] | None = None, /, **options: Any) -> Any:
    """Register a function as a task of the default app (configured from ``TASKWARREN_URL``).

    Works bare (``@task``) and with options (``@task(queue="analysis", retries=5)``);
    the options are those of :meth:`Warren.task`.
    """
    app = default_app()
    if fn is not None:
        return app.task(fn, **options)
    return app.task(**options)
