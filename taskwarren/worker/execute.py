"""Run one delivery and decide its fate: ack, retry through the delay path, or dead-letter.

Nothing here touches the network: the decision is returned as an :class:`Action` and
the consumer carries it out (publish confirmed, then ack).

An event copy names no task: the task is the one on the delivery's queue whose
subscription matches the copy's ``tw-event`` key. From then on the copy is an ordinary
task message of that task: its retries and dead letters carry ``tw-task``, so they
come back to that queue for that task and never fan out again. A broadcast that fails
is dead-lettered to its task's queue's dead-letter queue (it has no queue of its own
that outlives the process).
"""

from __future__ import annotations

import inspect
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import structlog

from taskwarren.brokers.base import ACK, REQUEUE, Ack, Action, Also, Consumer, Delivery, Republish
from taskwarren.errors import (
    ArgumentsError,
    MessageError,
    SoftTimeLimitExceeded,
    TimeLimitExceeded,
    UnknownTaskError,
)
from taskwarren.logs import debug_enabled
from taskwarren.message import MAX_ECHO_CHARS, check_envelope, clip
from taskwarren.middleware import UNKNOWN_TASK, Chain, Decision, TaskRun, default_middleware
from taskwarren.middleware.base import describe
from taskwarren.middleware.retries import dead_letter, delay_problem, failure_action, retry
from taskwarren.task import Task
from taskwarren.topology import topic_matches

__all__ = [
    "Executor",
    "Result",
    "dead_letter",
    "delay_problem",
    "describe",
    "failure_action",
    "retry",
    "set_aside",
    "with_records",
]

log = structlog.get_logger("taskwarren.worker")


@dataclass(slots=True)
class Result:
    """What running a delivery came to.

    Attributes:
        action: how the consumer settles the delivery.
        outcome: ``succeeded``, ``retried``, ``dead_lettered`` or ``rejected``.
        duration_s: time spent in the task function (0 if it never ran).
        task: the task's name, when known.
        error: the exception that failed it, if any.
    """

    action: Action
    outcome: str
    duration_s: float = 0.0
    task: str = ""
    error: BaseException | None = None


class Executor:
    """Runs deliveries against a registry of tasks, through the middleware.

    It decides (returns an :class:`Action`); the consumer acts on the decision.

    Args:
        tasks: registered tasks by name.
        max_message_bytes: larger bodies are dead-lettered unread.
        middleware: the app's chain (default: :func:`default_middleware`).
    """

    def __init__(self, tasks: Mapping[str, Task[Any, Any]], max_message_bytes: int,
                 middleware: Chain | None = None) -> None:
        self.tasks = tasks
        self.max_message_bytes = max_message_bytes
        self.middleware = middleware if middleware is not None else Chain(default_middleware())

    def label(self, name: str) -> str:
        """``name`` if a task here has it, else :data:`UNKNOWN_TASK` (names are hostile)."""
        return name if name in self.tasks else UNKNOWN_TASK

    def failure(self, run: TaskRun, delivery: Delivery, tb: str) -> Decision:
        """How to settle a failed call (``run.exception``): the middleware decide
        (:class:`~taskwarren.middleware.retries.Retries`), else it is dead-lettered."""
        decision = self.middleware.failure_action(run, delivery, tb)
        if decision is not None:
            return decision
        exc = run.exception
        error = describe(exc) if exc is not None else "failed"
        name = type(exc).__name__ if exc is not None else "Error"
        return dead_letter(delivery, name, error, tb, "not retried", run.task), "dead_lettered"

    def past_hard_limit(self, task: Task[Any, Any], delivery: Delivery) -> Action:
        """How to settle a delivery whose task ran past its hard time limit (the worker
        settles it while the task may still run); ``after_process`` is told first."""
        limit = task.task_options.time_limit_s
        exc = TimeLimitExceeded(f"task ran past its hard time limit of {limit}s")
        envelope = delivery.envelope
        failed = TaskRun(task.name, clip(envelope.message_id, MAX_ECHO_CHARS), envelope.attempt,
                         delivery.queue, task=task, exception=exc, envelope=envelope,
                         settled_early=True)
        action, outcome = self.failure(failed, delivery, "")
        log.error("task.time_limit_exceeded", task=task.name, outcome=outcome,
                  task_id=clip(envelope.message_id, MAX_ECHO_CHARS), limit_s=limit)
        failed.outcome = outcome
        failed.delay_s = action.delay_s if isinstance(action, Republish) else 0.0
        self.middleware.after_process(failed)  # before it is settled
        return with_records(action, failed)

    def prepare(self, delivery: Delivery) -> tuple[Task[Any, Any], dict[str, Any]]:
        """Check and decode a delivery.

        Raises:
            MessageError: it cannot be run (malformed, unknown task).
            ArgumentsError: its arguments do not fit the task.
        """
        task = self.resolve(delivery)
        return task, self.decode(delivery, task)

    def resolve(self, delivery: Delivery) -> Task[Any, Any]:
        """The task a delivery is for: the one it names, or its queue's event subscriber.

        Raises:
            MessageError: it is malformed, or no task here is its task.
        """
        envelope = delivery.envelope
        check_envelope(envelope, self.max_message_bytes)
        if envelope.task:
            task = self.tasks.get(envelope.task)
            if task is None:
                raise UnknownTaskError(f"no task named {clip(envelope.task, MAX_ECHO_CHARS)!r} "
                                       "is registered here")
            return task
        key = envelope.event
        found = [t for t in self.tasks.values() if t.queue == delivery.queue
                 and any(topic_matches(p, key) for p in t.subscriptions)]
        if len(found) != 1:
            names = ", ".join(t.name for t in found) or "none"
            raise UnknownTaskError(f"event {clip(key, MAX_ECHO_CHARS)!r} on queue "
                                   f"{delivery.queue!r} needs exactly "
                                   f"one subscriber task here; found {names}")
        return found[0]

    def decode(self, delivery: Delivery, task: Task[Any, Any]) -> dict[str, Any]:
        """Validate a delivery's body against ``task``: keyword arguments for the call.

        Raises:
            DecodeError: not JSON.
            ArgumentsError: it does not fit the task's signature.
        """
        if delivery.envelope.event:
            return task.decode_event(delivery.envelope.body)
        return task.decode_call(delivery.envelope.body)

    def run(
        self,
        delivery: Delivery,
        on_start: Callable[[Task[Any, Any]], None] | None = None,
        on_end: Callable[[], None] | None = None,
        report: Callable[[], bool] | None = None,
    ) -> Result:
        """Run one delivery through the middleware and decide its fate; never raises.

        Whatever the task raises, ``BaseException`` such as ``SystemExit`` included, is
        its failure: retried or dead-lettered by the middleware. (An ``async def`` task
        runs through :func:`taskwarren.worker.aio.run_async` instead.)

        Args:
            delivery: what to run.
            on_start: worker plumbing, not an extension point: called with the task
                just before its function runs (the child arms its time limits).
            on_end: worker plumbing: called as soon as the function has returned or
                raised (the child withdraws a pending soft time limit there).
            report: worker plumbing: called just before ``after_process``; False if the
                worker has settled the delivery (and told ``after_process``) already,
                past its hard time limit: this run's own outcome is then void.
        """
        run, ready = self.begin(delivery)
        if isinstance(ready, Result):
            return self.end(run, ready, report)
        try:
            result = self.call(run, delivery, ready, on_start, on_end)
        except Exception as exc:
            result = self.fault(delivery, exc)
        return self.end(run, result, report)

    def begin(self, delivery: Delivery) -> tuple[TaskRun, Result | dict[str, Any]]:
        """Resolve, run ``before_process`` and ``skip``, decode: the keyword arguments to
        call the task with, or the :class:`Result` already decided (rejected, skipped)."""
        envelope = delivery.envelope
        run = TaskRun(UNKNOWN_TASK, clip(envelope.message_id, MAX_ECHO_CHARS),
                      envelope.attempt, delivery.queue, delivery.redelivered,
                      envelope=envelope)
        problem: Exception | None = None
        try:
            run.task = self.resolve(delivery)
            run.task_name = run.task.name
        except Exception as exc:  # rejected below, once the hooks know of the run
            problem = exc
        self.middleware.before_process(run)
        try:
            if problem is not None and not isinstance(problem, MessageError):
                raise problem
            reason = None
            if problem is None and self.middleware.uses("skip"):
                reason = self.middleware.skip(run, delivery)
            if reason is not None:
                log.info("task.skipped", task=run.task_name, task_id=run.task_id,
                         reason=clip(reason))
                return run, Result(ACK, "skipped", task=run.task_name)
            return run, self._decode_or_reject(delivery, run, problem)
        except Exception as exc:
            return run, self.fault(delivery, exc)

    def fault(self, delivery: Delivery, exc: Exception) -> Result:
        """A fault of ours (or of an exception's own ``__str__``): the delivery is still
        settled, and kept (dead-lettered)."""
        log.exception("worker.executor_failed", error_type=type(exc).__name__)
        error = f"the worker failed while running this message ({type(exc).__name__})"
        return Result(dead_letter(delivery, "WorkerError", error, reason=error),
                      "dead_lettered", error=exc)

    def end(self, run: TaskRun, result: Result,
            report: Callable[[], bool] | None = None) -> Result:
        """Tell ``after_process`` what became of ``run`` (unless ``report`` says the
        worker has told it already); the result to settle with."""
        run.outcome, run.exception, run.duration_s = result.outcome, result.error, result.duration_s
        if result.task:
            run.task_name = self.label(result.task)
        if report is not None and not report():
            return result  # void: the worker settled it past its hard time limit
        self.middleware.after_process(run)
        result.action = with_records(result.action, run)
        return result

    def _decode_or_reject(
        self, delivery: Delivery, run: TaskRun, problem: Exception | None
    ) -> Result | dict[str, Any]:
        task = run.task
        try:
            if problem is not None:
                raise problem
            assert task is not None
            return self.decode(delivery, task)
        except (MessageError, ArgumentsError) as exc:
            name = task.name if task is not None else delivery.envelope.task
            log.error("message.rejected", task=clip(name, MAX_ECHO_CHARS),
                      routing_key=clip(delivery.envelope.event, MAX_ECHO_CHARS) or None,
                      error_type=type(exc).__name__, error=clip(str(exc)))
            action = dead_letter(delivery, type(exc).__name__, str(exc), reason=str(exc),
                                 task=task)
            return Result(action, "rejected", task=name, error=exc)

    def failed(self, run: TaskRun, delivery: Delivery, exc: BaseException, tb: str,
               duration_s: float) -> Result:
        """The result of a call that raised ``exc``: retried or dead-lettered."""
        assert run.task is not None
        run.exception = exc
        run.traceback = tb
        action, outcome = self.failure(run, delivery, tb)
        if isinstance(action, Republish):
            run.delay_s = action.delay_s
        return Result(action, outcome, duration_s, run.task.name, exc)

    def call(
        self,
        run: TaskRun,
        delivery: Delivery,
        kwargs: dict[str, Any],
        on_start: Callable[[Task[Any, Any]], None] | None,
        on_end: Callable[[], None] | None,
    ) -> Result:
        """Call a plain task's function with ``kwargs``; what came of it."""
        task = run.task
        assert task is not None
        if debug_enabled():
            log.debug("task.started", task=task.name)
        started = time.perf_counter()
        returned = False
        try:
            try:
                if on_start is not None:
                    on_start(task)  # inside: a soft limit may land from here on
                value = task.fn(**kwargs)
                returned = True
            finally:
                if on_end is not None:
                    on_end()
            _check_not_awaitable(value)
        except BaseException as exc:
            duration = time.perf_counter() - started
            if not (returned and isinstance(exc, SoftTimeLimitExceeded)):
                return self.failed(run, delivery, exc, traceback.format_exc(), duration)
            # The soft limit landed after the function had returned, before on_end
            # withdrew it: the task is done.
            log.info("task.soft_time_limit_after_return", task=task.name)
        duration = time.perf_counter() - started
        return Result(ACK, "succeeded", duration, task.name)


def with_records(action: Action, run: TaskRun) -> Action:
    """``action``, publishing what the middleware recorded of ``run`` first (:class:`Also`)."""
    if run.also and isinstance(action, Ack | Republish):
        return Also(action, tuple(run.also))
    return action


def _check_not_awaitable(value: object) -> None:
    """Refuse a coroutine returned by a plain function: nothing here would await it."""
    if inspect.isawaitable(value):
        close = getattr(value, "close", None)
        if callable(close):
            close()  # no "never awaited" warning: we say so ourselves
        raise TypeError("the task's plain function returned an awaitable, which nothing "
                        "awaits (the work it stands for never ran): declare it async def")


def set_aside(consumer: Consumer, delivery: Delivery, leaving: bool) -> bool:
    """Deal with a delivery that must not start; True if it was one.

    A child that is leaving hands it back unstarted. One prefetched over a link that
    broke is dropped: the broker has handed it out again.
    """
    if leaving:
        consumer.settle(delivery, REQUEUE)
        consumer.wakeup()
        return True
    if consumer.is_stale(delivery):
        log.info("delivery.dropped_stale",
                 task_id=clip(delivery.envelope.message_id, MAX_ECHO_CHARS))
        return True
    return False
