"""Retries: the ``retries``/``backoff``/``retry_on``/``dont_retry`` options and the decision.

A failed call is either published again as attempt + 1 through the delay path, or
dead-lettered with its error. Only the decision is made here; the worker's consumer
publishes the new copy, waits for the confirm, then acks the old one.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import structlog

from taskwarren.brokers.base import ACK, Action, Delivery, Republish
from taskwarren.errors import ConfigurationError, Retry
from taskwarren.message import (
    H_ATTEMPT,
    H_ETA,
    H_QUEUE,
    H_TASK,
    MAX_ECHO_CHARS,
    HeaderValue,
    clip,
    failure_headers,
)
from taskwarren.middleware.base import Decision, Middleware, TaskRun, describe
from taskwarren.task import Task
from taskwarren.topology import BROADCAST_EXCHANGE, MAX_DELAY_S, check_queue_name

log = structlog.get_logger("taskwarren.worker")


def dead_letter(delivery: Delivery, error_type: str, error: str, tb: str = "",
                reason: str = "", task: Task[Any, Any] | None = None) -> Action:
    """The action that moves ``delivery`` to its queue's dead-letter queue.

    ``task``, when known, is recorded (an event copy names none until resolved). A
    broadcast goes to the dead-letter queue of the queue its envelope names; one that
    names no valid queue is only logged (acked).
    """
    headers = failure_headers(error_type, error, tb, reason)
    if task is not None:
        headers[H_TASK] = task.name
    queue = delivery.queue
    if queue == BROADCAST_EXCHANGE:
        queue = task.queue if task is not None else delivery.envelope.queue
        try:
            check_queue_name(queue)
        except ConfigurationError:
            log.error("broadcast.dropped", task=clip(delivery.envelope.task, MAX_ECHO_CHARS),
                      error=clip(error), task_id=clip(delivery.envelope.message_id,
                                                      MAX_ECHO_CHARS))
            return ACK
    return Republish(queue, delivery.envelope.with_headers(headers), dead=True)


def retry(delivery: Delivery, task: Task[Any, Any], delay_s: float) -> Republish:
    """The action that publishes attempt + 1 of ``delivery`` through the delay path.

    The copy names its task and queue, so an event copy's retry stays with its subscriber.
    """
    attempt = delivery.envelope.attempt + 1
    eta = datetime.now(UTC) + timedelta(seconds=delay_s)
    updates: dict[str, HeaderValue] = {H_ATTEMPT: attempt, H_ETA: eta.isoformat(),
                                       H_TASK: task.name, H_QUEUE: delivery.queue}
    return Republish(delivery.queue, delivery.envelope.with_headers(updates), delay_s=delay_s)


def delay_problem(delay_s: object) -> str:
    """Why ``delay_s`` cannot be a retry delay, or ``""`` if it can.

    The delay levels hold at most :data:`MAX_DELAY_S` seconds (about 8.5 years). A
    delay past that, or one that is not a finite non-negative number, is refused here,
    in the executor: the message is dead-lettered with the reason (kept, visible and
    replayable) rather than clamped to a delay the task did not ask for.
    """
    if isinstance(delay_s, bool) or not isinstance(delay_s, int | float):
        return f"retry delay {type(delay_s).__name__} is not a number of seconds"
    if not math.isfinite(delay_s) or delay_s < 0:
        return f"retry delay {delay_s!r} is not a finite, non-negative number of seconds"
    if delay_s > MAX_DELAY_S:
        return (f"retry delay {delay_s!r}s exceeds the longest delay taskwarren can hold, "
                f"{MAX_DELAY_S}s")
    return ""


def _retry_or_refuse(
    delivery: Delivery, task: Task[Any, Any], delay: Callable[[], object], tb: str
) -> Decision:
    try:
        delay_s = delay()
    except ArithmeticError as exc:  # a backoff grown past a float (OverflowError)
        delay_s = exc
    problem = delay_problem(delay_s)
    if problem:
        log.error("task.retry_refused", task=task.name, reason=clip(problem))
        return dead_letter(delivery, "InvalidRetryDelay", problem, tb, problem,
                           task), "dead_lettered"
    assert isinstance(delay_s, int | float)
    return retry(delivery, task, delay_s), "retried"


def failure_action(
    delivery: Delivery, task: Task[Any, Any], exc: BaseException, tb: str
) -> Decision:
    """Retry or dead-letter a call of ``task`` that raised ``exc``, by its options."""
    opts = task.task_options
    attempt = delivery.envelope.attempt

    def backoff() -> float:
        return opts.backoff.delay_s(attempt + 1)

    if isinstance(exc, Retry):
        if attempt < opts.retries:
            asked = exc.delay_s
            return _retry_or_refuse(delivery, task, backoff if asked is None else
                                    lambda: asked, tb)
        return dead_letter(delivery, "RetriesExhausted", f"Retry requested after attempt "
                           f"{attempt} of {opts.retries}: {describe(exc)}", tb,
                           task=task), "dead_lettered"
    if opts.should_retry(exc, attempt):
        return _retry_or_refuse(delivery, task, backoff, tb)
    reason = "retries exhausted" if opts.retries and attempt >= opts.retries else "not retried"
    return (dead_letter(delivery, type(exc).__name__, describe(exc), tb, reason, task),
            "dead_lettered")


class Retries(Middleware):
    """Retries a failed call by its task's options; dead-letters it otherwise.

    Options owned: ``retries`` (0: dead-letter at once), ``backoff``, ``retry_on``,
    ``dont_retry``; a task raising :class:`~taskwarren.Retry` asks for a retry itself.
    """

    options: ClassVar[frozenset[str]] = frozenset({"retries", "backoff", "retry_on",
                                                   "dont_retry"})

    def failure_action(self, run: TaskRun, delivery: Delivery, traceback: str) -> Decision | None:
        """Retry or dead-letter ``run``'s failure."""
        if run.task is None or run.exception is None:
            return None
        return failure_action(delivery, run.task, run.exception, traceback)
