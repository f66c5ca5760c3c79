"""Middleware: typed hooks through which policy and observation wrap sends, tasks and workers.

Every hook of :class:`Middleware` does nothing unless overridden. A :class:`Chain`
runs a list of them: ``before_*`` hooks in order of registration, ``after_*`` hooks
(and ``failure_action`` and the worker's ``reconnected``/``child_restarted``) in
reverse, so the first registered wraps all the others. A hook that raises is logged
and the others still run; the message it was about is neither lost nor changed by the
failure.

A middleware may *decide* (:meth:`Middleware.failure_action` returns how a failed
call is settled) but never *acts*: publishing, confirming and acking stay with the
worker's consumer.

A middleware declares the task options it owns in :attr:`Middleware.options`;
``@task`` refuses an option that neither the core (:data:`CORE_OPTIONS`) nor a
registered middleware owns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import structlog

from taskwarren.errors import ConfigurationError
from taskwarren.message import clip

if TYPE_CHECKING:
    from taskwarren.brokers.base import Action, Delivery
    from taskwarren.message import Envelope
    from taskwarren.task import Task

log = structlog.get_logger("taskwarren.middleware")

#: The ``task_name`` hooks are given for a delivery naming no task registered here:
#: message contents are hostile, and a metrics label per random name would grow unbounded.
UNKNOWN_TASK = "unknown"
#: The ``queue`` ``after_publish`` is given for an event: its routing key may carry ids,
#: and a metrics label per key would grow unbounded.
EVENTS_QUEUE = "taskwarren.events"
#: The ``queue`` ``after_publish`` is given for a broadcast (it goes to no one queue).
BROADCASTS_QUEUE = "taskwarren.broadcasts"

#: Task options the core itself owns (routing and registration, not policy).
CORE_OPTIONS = frozenset({"queue", "name", "subscribe", "broadcast", "cron", "tz", "every",
                          "overlap"})

#: What became of a delivery, as :attr:`TaskRun.outcome` says (``skipped``: a middleware's
#: :meth:`Middleware.skip` kept it from running, and it was acked).
OUTCOMES = ("succeeded", "retried", "dead_lettered", "rejected", "skipped")


@dataclass(slots=True)
class TaskRun:
    """One delivery being processed, as the ``*_process`` hooks see it.

    Attributes:
        task_name: the registered task it runs as, else :data:`UNKNOWN_TASK` (before
            it is resolved, an event copy names no task).
        task_id: the message id, clipped.
        attempt: 0 for the first attempt.
        queue: the queue it was delivered from.
        redelivered: the broker had delivered it before.
        task: the registered task, once resolved (``None`` for a rejected message).
        exception: what the task raised (or why the message was rejected), else ``None``.
        duration_s: seconds spent in the task function (0 if it never ran).
        outcome: one of :data:`OUTCOMES`; empty until the run is decided.
        traceback: the failure's formatted traceback, if it failed.
        delay_s: how long a retry waits before it runs (``retried`` only).
        envelope: the delivered message (hostile: check before use).
        settled_early: the worker settled the delivery itself (its hard time limit) while
            the task may still be running. The run is reported once all the same: what
            its thread (or coroutine) comes to later reaches no hook.
        also: ``(queue, envelope)`` pairs an ``after_process`` hook wants published,
            confirmed, before the delivery is settled (what it records of the run); if
            the broker refuses one, the delivery goes back to its queue.
        state: scratch space a middleware may use between its own hooks.
    """

    task_name: str
    task_id: str
    attempt: int
    queue: str
    redelivered: bool = False
    task: Task[Any, Any] | None = None
    exception: BaseException | None = None
    duration_s: float = 0.0
    outcome: str = ""
    traceback: str = ""
    delay_s: float = 0.0
    envelope: Envelope | None = None
    settled_early: bool = False
    also: list[tuple[str, Envelope]] = field(default_factory=list)
    state: dict[str, Any] = field(default_factory=dict)


#: A decision: how to settle a delivery, and the outcome it stands for.
Decision = tuple["Action", str]


class Middleware:
    """Base class: override the hooks you need; each runs in the process named below.

    Attributes:
        options: names of the ``@task`` options this middleware owns (and reads from
            ``run.task.task_options``, or ``task_options.extra`` for options of its own).
    """

    options: ClassVar[frozenset[str]] = frozenset()

    # -- sending (any process that sends) --------------------------------------------------

    def before_enqueue(self, envelope: Envelope) -> None:
        """A message is about to be published, or written to the outbox (its size already
        checked). A hook may set its trace header (``envelope.headers["tw-trace"]``)."""

    def after_enqueue(self, envelope: Envelope) -> None:
        """A message was published and confirmed by the broker."""

    def after_publish(self, queue: str, count: int, duration_s: float) -> None:
        """A batch of ``count`` messages to ``queue`` was confirmed ``duration_s`` after
        it started being published (``queue`` is :data:`EVENTS_QUEUE` for an event and
        :data:`BROADCASTS_QUEUE` for a broadcast)."""

    # -- relaying (the process that runs an outbox relay) -----------------------------------

    def before_relay(self, envelope: Envelope) -> None:
        """A relay is about to publish an outbox row's message (its headers are those
        stored with the row; a hook may set the trace header, as in ``before_enqueue``)."""

    def after_relay(self, envelope: Envelope, error: BaseException | None) -> None:
        """The relay's publish of it was confirmed (``error`` is ``None``) or failed (the
        row stays in the outbox and is tried again)."""

    # -- processing (worker children, and :func:`taskwarren.testing.join`) ------------------

    def before_process(self, run: TaskRun) -> None:
        """A delivery is about to be processed (``run.task_name``, ``task_id``, ``attempt``,
        ``queue`` are set)."""

    def admit(self, deliveries: Sequence[Delivery]) -> None:
        """In the thread that polled (a worker child's I/O thread, or its lone idle
        executor, lent the consumer): deliveries just received, before any of them runs;
        a middleware may prepare for them together (the job store records their starts in
        one transaction). Never two threads at once."""

    def skip(self, run: TaskRun, delivery: Delivery) -> str | None:
        """Just before a resolved task runs: a reason to ack the delivery without running
        it (its outcome is then ``skipped``), or ``None`` to let it run. The first reason
        given wins."""
        return None

    def after_process(self, run: TaskRun) -> None:
        """A delivery was processed: ``run.outcome``, ``exception`` and ``duration_s``
        are set. The delivery is settled right after the last ``after_process``."""

    def failure_action(
        self, run: TaskRun, delivery: Delivery, traceback: str
    ) -> Decision | None:
        """Decide how a failed call (``run.exception``) is settled, or ``None`` to leave it
        to the others. The last registered is asked first (so an application's middleware
        can overrule the built-in retries); the first decision wins, and with none the
        call is dead-lettered.
        """
        return None

    # -- the worker's life -----------------------------------------------------------------

    def child_started(self, index: int) -> None:
        """In a new worker child, before it consumes."""

    def reconnected(self) -> None:
        """In a worker child: its broker connection was lost and is being opened again."""

    def child_restarted(self) -> None:
        """In the supervisor: a dead child was replaced."""


def describe(exc: BaseException) -> str:
    """``str(exc)``, or a stand-in when the exception cannot say what it is."""
    try:
        return str(exc)
    except Exception:  # an exception of user code; its __str__ may raise
        return f"<{type(exc).__name__}: str() failed>"


def _failed(m: Middleware, hook: str, exc: Exception) -> None:
    log.error("middleware.failed", middleware=type(m).__name__, hook=hook,
              error_type=type(exc).__name__, error=clip(describe(exc)), exc_info=True)


#: Every hook a :class:`Chain` runs.
_HOOKS = ("before_enqueue", "after_enqueue", "after_publish", "before_relay", "after_relay",
          "before_process", "admit", "skip", "after_process", "failure_action", "child_started",
          "reconnected", "child_restarted")
#: Hooks that run last registered first.
_REVERSED = frozenset({"after_enqueue", "after_publish", "after_relay", "after_process",
                       "failure_action", "reconnected", "child_restarted"})


def _overrides(m: Middleware, hook: str) -> bool:
    return getattr(type(m), hook) is not getattr(Middleware, hook)


class Chain:
    """Runs a list of middleware in order, isolating their failures.

    Only the middleware that override a hook are called for it, so hooks nobody uses
    cost nothing on the hot path.
    """

    def __init__(self, middleware: Iterable[Middleware] = ()) -> None:
        self.middleware: list[Middleware] = []
        # Bound methods, per hook, of the middleware that override it.
        self._hooks: dict[str, list[Any]] = {hook: [] for hook in _HOOKS}
        for m in middleware:
            self.add(m)

    def add(self, middleware: Middleware) -> None:
        """Append ``middleware`` (its ``after_*`` hooks then run before the others')."""
        self.middleware.append(middleware)
        self._hooks = {
            hook: [getattr(m, hook) for m in (reversed(self.middleware) if hook in _REVERSED
                                              else self.middleware) if _overrides(m, hook)]
            for hook in _HOOKS}

    def uses(self, hook: str) -> bool:
        """Whether any middleware here overrides ``hook`` (callers skip the work if not)."""
        return bool(self._hooks[hook])

    def owned_options(self) -> frozenset[str]:
        """Every task option the core or one of these middleware owns."""
        return CORE_OPTIONS.union(*(m.options for m in self.middleware))

    def check_options(self, task: str | None, options: Mapping[str, Any]) -> None:
        """Refuse ``options`` that no middleware owns.

        Raises:
            ConfigurationError: naming the first such option.
        """
        owned = self.owned_options()
        for name in options:
            if name not in owned:
                where = f"task {task!r}: " if task else ""
                raise ConfigurationError(
                    f"{where}unknown task option {name!r}: no registered middleware owns it "
                    f"(known: {', '.join(sorted(owned))})")

    def _each(self, hook: str, items: Sequence[Any], *args: object) -> None:
        for method in items:
            try:
                method(*args)
            except Exception as exc:
                _failed(method.__self__, hook, exc)

    def before_enqueue(self, envelope: Envelope) -> None:
        """Run every ``before_enqueue``."""
        self._each("before_enqueue", self._hooks["before_enqueue"], envelope)

    def after_enqueue(self, envelope: Envelope) -> None:
        """Run every ``after_enqueue``, last registered first."""
        self._each("after_enqueue", self._hooks["after_enqueue"], envelope)

    def after_publish(self, queue: str, count: int, duration_s: float) -> None:
        """Run every ``after_publish``, last registered first."""
        self._each("after_publish", self._hooks["after_publish"], queue, count, duration_s)

    def before_relay(self, envelope: Envelope) -> None:
        """Run every ``before_relay``."""
        self._each("before_relay", self._hooks["before_relay"], envelope)

    def after_relay(self, envelope: Envelope, error: BaseException | None) -> None:
        """Run every ``after_relay``, last registered first."""
        self._each("after_relay", self._hooks["after_relay"], envelope, error)

    def before_process(self, run: TaskRun) -> None:
        """Run every ``before_process``."""
        self._each("before_process", self._hooks["before_process"], run)

    def admit(self, deliveries: Sequence[Delivery]) -> None:
        """Run every ``admit``."""
        self._each("admit", self._hooks["admit"], deliveries)

    def skip(self, run: TaskRun, delivery: Delivery) -> str | None:
        """The first reason a middleware gives to skip running ``delivery``, or ``None``."""
        for method in self._hooks["skip"]:
            try:
                reason: str | None = method(run, delivery)
            except Exception as exc:
                _failed(method.__self__, "skip", exc)
                continue
            if reason is not None:
                return reason
        return None

    def after_process(self, run: TaskRun) -> None:
        """Run every ``after_process``, last registered first."""
        self._each("after_process", self._hooks["after_process"], run)

    def failure_action(self, run: TaskRun, delivery: Delivery, traceback: str) -> Decision | None:
        """The first decision on a failed call, asking the last registered first, or ``None``."""
        for method in self._hooks["failure_action"]:
            try:
                decision: Decision | None = method(run, delivery, traceback)
            except Exception as exc:
                _failed(method.__self__, "failure_action", exc)
                continue
            if decision is not None:
                return decision
        return None

    def child_started(self, index: int) -> None:
        """Run every ``child_started``."""
        self._each("child_started", self._hooks["child_started"], index)

    def reconnected(self) -> None:
        """Run every ``reconnected``, last registered first."""
        self._each("reconnected", self._hooks["reconnected"])

    def child_restarted(self) -> None:
        """Run every ``child_restarted``, last registered first."""
        self._each("child_restarted", self._hooks["child_restarted"])
