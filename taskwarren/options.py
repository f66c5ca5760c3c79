"""Task options: the one place ``@task``'s options are spelt out, and their checked form.

Adding an option is one edit here (plus the middleware that implements it declaring
that it owns it: see :class:`~taskwarren.middleware.base.Middleware`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypedDict

from taskwarren.errors import ConfigurationError
from taskwarren.retries import Backoff
from taskwarren.topology import check_pattern, check_queue_name

#: Queue used when a task names none.
DEFAULT_QUEUE = "default"


class TaskOptionArgs(TypedDict, total=False):
    """The options ``@task`` and :meth:`Warren.task` take: the one place they are spelt out.

    The core owns ``queue``, ``name``, ``subscribe`` and ``broadcast``; the others
    belong to the middleware that implements them (``retries``, ``backoff``,
    ``retry_on``, ``dont_retry``: :class:`~taskwarren.middleware.retries.Retries`;
    ``time_limit``, ``soft_time_limit``: :class:`~taskwarren.middleware.time_limit.TimeLimits`).

    Attributes:
        queue: the queue its messages go to.
        name: registered name (default: ``module.qualname``).
        retries: how many times a failing call is tried again (default 0: a failure
            goes straight to the dead-letter queue).
        backoff: delays between retries (exponential with jitter, capped).
        retry_on: exception types that are retried (default: any ``Exception``).
        dont_retry: exception types that are dead-lettered at once.
        time_limit: hard limit in seconds.
        soft_time_limit: seconds after which ``SoftTimeLimitExceeded`` is raised in the task.
        subscribe: event patterns (``audit.#``: ``#`` is zero or more words, ``*`` exactly
            one) whose events land in ``queue`` for this task; its first argument receives
            the event. One subscriber per event and queue.
        broadcast: ``.send()`` reaches every worker process alive now, once each (at most
            once: see the README); no retries, no delays.
    """

    queue: str
    name: str | None
    retries: int
    backoff: Backoff | None
    retry_on: Sequence[type[BaseException]] | None
    dont_retry: Sequence[type[BaseException]]
    time_limit: float | None
    soft_time_limit: float | None
    subscribe: Sequence[str]
    broadcast: bool


@dataclass(frozen=True, slots=True)
class TaskOptions:
    """How a task is queued and run.

    Attributes:
        queue: the queue its messages go to.
        retries: how many times a failed call is tried again (0: dead-letter at once).
        backoff: delay policy between retries.
        retry_on: exception types that are retried; anything else is dead-lettered.
        dont_retry: exception types that are never retried (checked first).
        time_limit_s: hard limit: past it the call fails and the process is replaced.
        soft_time_limit_s: past it, ``SoftTimeLimitExceeded`` is raised in the task.
        subscribe: event patterns (``audit.#``, ``email.*``) whose events it receives.
        broadcast: ``.send()`` runs it once in every live worker process.
        extra: options owned by the application's own middleware, as given.
    """

    queue: str = DEFAULT_QUEUE
    retries: int = 0
    backoff: Backoff = field(default_factory=Backoff)
    retry_on: tuple[type[BaseException], ...] = (Exception,)
    dont_retry: tuple[type[BaseException], ...] = ()
    time_limit_s: float | None = None
    soft_time_limit_s: float | None = None
    subscribe: tuple[str, ...] = ()
    broadcast: bool = False
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_args(cls, args: Mapping[str, Any]) -> TaskOptions:
        """The checked options from ``@task`` arguments (:class:`TaskOptionArgs`, plus the
        options of the application's middleware, kept in :attr:`extra`).

        Raises:
            ConfigurationError: an option out of range.
        """
        given = dict(args)
        given.pop("name", None)
        known = {k: given.pop(k) for k in TaskOptionArgs.__annotations__ if k in given}
        retry_on = known.get("retry_on")
        return task_options(
            cls(),
            queue=known.get("queue", DEFAULT_QUEUE),
            retries=known.get("retries", 0),
            backoff=known.get("backoff") or Backoff(),
            retry_on=tuple(retry_on) if retry_on is not None else (Exception,),
            dont_retry=tuple(known.get("dont_retry", ())),
            time_limit_s=known.get("time_limit"),
            soft_time_limit_s=known.get("soft_time_limit"),
            subscribe=tuple(known.get("subscribe", ())),
            broadcast=known.get("broadcast", False),
            extra=given,
        )

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a call that raised ``exc`` on ``attempt`` (0-based) is tried again."""
        if attempt >= self.retries or isinstance(exc, self.dont_retry):
            return False
        return isinstance(exc, self.retry_on)


def task_options(base: TaskOptions, **changes: Any) -> TaskOptions:
    """``base`` with ``changes`` applied and checked."""
    opts = replace(base, **changes)
    check_queue_name(opts.queue)
    if opts.retries < 0:
        raise ConfigurationError("retries must be >= 0")
    for limit in (opts.time_limit_s, opts.soft_time_limit_s):
        if limit is not None and limit <= 0:
            raise ConfigurationError("time limits must be positive")
    for pattern in opts.subscribe:
        check_pattern(pattern)
    if opts.broadcast and opts.subscribe:
        raise ConfigurationError("a task is either a broadcast or an event subscriber")
    if opts.broadcast and opts.retries:
        raise ConfigurationError(
            "a broadcast runs at most once per process and cannot be retried: its retry "
            "would have to come back to that one process; use retries=0"
        )
    return opts
