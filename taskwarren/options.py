"""Task options: the one place ``@task``'s options are spelt out, and their checked form.

Adding an option is one edit here (plus the middleware that implements it declaring
that it owns it: see :class:`~taskwarren.middleware.base.Middleware`).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import timedelta
from typing import Any, Literal, TypedDict

from taskwarren.cron import Cron
from taskwarren.errors import ConfigurationError
from taskwarren.retries import Backoff
from taskwarren.store.jobs import storable
from taskwarren.topology import check_pattern, check_queue_name

#: Queue used when a task names none.
DEFAULT_QUEUE = "default"


class TaskOptionArgs(TypedDict, total=False):
    """The options ``@task`` and :meth:`Warren.task` take: the one place they are spelt out.

    The core owns ``queue``, ``name``, ``subscribe``, ``broadcast`` and the schedule
    (``cron``, ``tz``, ``every``, ``overlap``); the others
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
        cron: run on this five-field cron schedule (``0 7 * * mon-fri``), read in ``tz``;
            each tick becomes one job (README: "Schedules").
        tz: the IANA time zone ``cron`` is read in (default ``UTC``).
        every: run every this long (whole seconds, at least one), on ticks aligned to
            the epoch: every scheduler computes the same ones.
        overlap: ``skip`` (default): a tick is skipped, and recorded as such, while the
            schedule's previous job is still queued or running; ``allow``: never.
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
    cron: str | None
    tz: str
    every: timedelta | None
    overlap: Literal["skip", "allow"]


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
        cron: its cron schedule (five fields), read in ``tz``.
        tz: the time zone of ``cron``.
        every_s: its interval schedule, in whole seconds.
        overlap: ``skip`` or ``allow`` a tick while the previous one's job is live.
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
    cron: str | None = None
    tz: str = "UTC"
    every_s: int | None = None
    overlap: Literal["skip", "allow"] = "skip"
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
            cron=known.get("cron"),
            tz=known.get("tz", "UTC"),
            every_s=_every_s(known.get("every")),
            overlap=known.get("overlap", "skip"),
            extra=given,
        )

    @property
    def scheduled(self) -> bool:
        """Whether the task runs on a schedule (``cron`` or ``every``)."""
        return self.cron is not None or self.every_s is not None

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        """Whether a call that raised ``exc`` on ``attempt`` (0-based) is tried again."""
        if attempt >= self.retries or isinstance(exc, self.dont_retry):
            return False
        return isinstance(exc, self.retry_on)


def _every_s(every: object) -> int | None:
    if every is None:
        return None
    if not isinstance(every, timedelta):
        raise ConfigurationError(f"every= takes a datetime.timedelta, not {type(every).__name__}")
    seconds = every.total_seconds()
    if seconds < 1 or seconds != int(seconds):
        raise ConfigurationError(f"every= must be whole seconds, at least one; got {every}")
    return int(seconds)


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
    _check_schedule(opts)
    return opts


def _check_schedule(opts: TaskOptions) -> None:
    if opts.overlap not in ("skip", "allow"):
        raise ConfigurationError(f"overlap= is 'skip' or 'allow', not {opts.overlap!r}")
    if opts.cron is not None and opts.every_s is not None:
        raise ConfigurationError("a task has one schedule: cron= or every=, not both")
    if opts.tz != "UTC" and opts.cron is None:
        raise ConfigurationError("tz= belongs with cron= (every= ticks are the same "
                                 "instants in every zone)")
    if opts.scheduled and (opts.broadcast or opts.subscribe):
        raise ConfigurationError("a scheduled task is neither a broadcast nor an event "
                                 "subscriber")
    if opts.cron is not None:
        if not isinstance(opts.cron, str):
            raise ConfigurationError(f"cron= takes a string, not {type(opts.cron).__name__}")
        Cron(opts.cron, opts.tz)  # a bad expression or zone fails here


def check_subscriber(name: str, signature: inspect.Signature) -> None:
    """Refuse a subscriber whose first argument cannot take the event."""
    params = list(signature.parameters.values())
    if not params or any(p.default is inspect.Parameter.empty for p in params[1:]):
        raise ConfigurationError(
            f"task {name!r} subscribes to events: its first argument receives the event "
            "(annotate it with the event's pydantic model); any others need defaults"
        )


#: The parameter of a scheduled task that receives its tick's nominal time.
SCHEDULED_AT = "scheduled_at"
#: The longest scheduled task name: its job's ``unique_key`` is 20 characters more, of 255.
MAX_SCHEDULE_NAME = 235


def check_scheduled(name: str, signature: inspect.Signature) -> None:
    """Refuse a scheduled task with a name too long, or arguments a tick cannot give."""
    if len(name) > MAX_SCHEDULE_NAME or storable(name) != name:
        raise ConfigurationError(
            f"task {name[:60]!r}...: a scheduled task's name is at most {MAX_SCHEDULE_NAME} "
            "characters of text (no NUL); give it a shorter name=")
    needed = [p.name for p in signature.parameters.values()
              if p.name != SCHEDULED_AT and p.default is inspect.Parameter.empty
              and p.kind not in (inspect.Parameter.VAR_POSITIONAL,
                                 inspect.Parameter.VAR_KEYWORD)]
    if needed:
        raise ConfigurationError(
            f"task {name!r} runs on a schedule, which passes no arguments but "
            f"{SCHEDULED_AT!r} (the tick's time): give {', '.join(map(repr, needed))} a "
            "default")


#: A signature of plain parameters: the positional names, every name, the required ones.
PlainCall = tuple[tuple[str, ...], frozenset[str], frozenset[str]]


def plain_call(signature: inspect.Signature) -> PlainCall | None:
    """What :func:`bind_call` needs of ``signature``; ``None`` unless every
    parameter is positional-or-keyword or keyword-only."""
    params = list(signature.parameters.values())
    if any(p.kind not in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params):
        return None
    return (tuple(p.name for p in params if p.kind is p.POSITIONAL_OR_KEYWORD),
            frozenset(p.name for p in params),
            frozenset(p.name for p in params if p.default is p.empty))


def bind_call(signature: inspect.Signature, plain: PlainCall | None, args: tuple[Any, ...],
              kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The arguments ``signature.bind(*args, **kwargs)`` gives, without its dozen Python
    calls on every send when the call plainly fits (no name twice, none unknown or
    missing; ``plain`` from :func:`plain_call`).

    Raises:
        TypeError: the call does not fit (``inspect``'s own message).
    """
    if plain is not None and len(args) <= len(plain[0]):
        arguments = dict(zip(plain[0], args, strict=False))
        if all(name not in arguments and name in plain[1] for name in kwargs):
            arguments.update(kwargs)
            if plain[2].issubset(arguments):
                return arguments
    return dict(signature.bind(*args, **kwargs).arguments)
