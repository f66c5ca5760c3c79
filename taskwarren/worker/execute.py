"""Run one delivery and decide its fate: ack, retry through the delay path, or dead-letter.

Nothing here touches the network: the decision is returned as an :class:`Action` and
the consumer carries it out (publish confirmed, then ack).
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog

from taskwarren.brokers.base import ACK, Action, Delivery, Republish
from taskwarren.errors import ArgumentsError, MessageError, Retry, UnknownTaskError
from taskwarren.message import (
    H_ATTEMPT,
    H_ETA,
    HeaderValue,
    check_envelope,
    failure_headers,
)
from taskwarren.task import Task

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


def dead_letter(delivery: Delivery, error_type: str, error: str, tb: str = "",
                reason: str = "") -> Republish:
    """The action that moves ``delivery`` to its queue's dead-letter queue."""
    headers = failure_headers(error_type, error, tb, reason)
    return Republish(delivery.queue, delivery.envelope.with_headers(headers), dead=True)


def retry(delivery: Delivery, task: Task[Any, Any], delay_s: float) -> Republish:
    """The action that publishes attempt + 1 of ``delivery`` through the delay path."""
    attempt = delivery.envelope.attempt + 1
    eta = datetime.now(UTC) + timedelta(seconds=delay_s)
    updates: dict[str, HeaderValue] = {H_ATTEMPT: attempt, H_ETA: eta.isoformat()}
    return Republish(delivery.queue, delivery.envelope.with_headers(updates), delay_s=delay_s)


def failure_action(
    delivery: Delivery, task: Task[Any, Any], exc: BaseException, tb: str
) -> tuple[Action, str]:
    """Retry or dead-letter a call that raised ``exc``."""
    opts = task.task_options
    attempt = delivery.envelope.attempt
    if isinstance(exc, Retry):
        if attempt < opts.retries:
            delay = exc.delay_s if exc.delay_s is not None else opts.backoff.delay_s(attempt + 1)
            return retry(delivery, task, delay), "retried"
        return dead_letter(delivery, "RetriesExhausted", f"Retry requested after attempt "
                           f"{attempt} of {opts.retries}: {exc}", tb), "dead_lettered"
    if opts.should_retry(exc, attempt):
        return retry(delivery, task, opts.backoff.delay_s(attempt + 1)), "retried"
    reason = "retries exhausted" if opts.retries and attempt >= opts.retries else "not retried"
    return dead_letter(delivery, type(exc).__name__, str(exc), tb, reason), "dead_lettered"


class Executor:
    """Runs deliveries against a registry of tasks.

    Args:
        tasks: registered tasks by name.
        max_message_bytes: larger bodies are dead-lettered unread.
    """

    def __init__(self, tasks: Mapping[str, Task[Any, Any]], max_message_bytes: int) -> None:
        self.tasks = tasks
        self.max_message_bytes = max_message_bytes

    def prepare(self, delivery: Delivery) -> tuple[Task[Any, Any], dict[str, Any]]:
        """Check and decode a delivery.

        Raises:
            MessageError: it cannot be run (malformed, unknown task).
            ArgumentsError: its arguments do not fit the task.
        """
        envelope = delivery.envelope
        check_envelope(envelope, self.max_message_bytes)
        task = self.tasks.get(envelope.task)
        if task is None:
            raise UnknownTaskError(f"no task named {envelope.task!r} is registered here")
        return task, task.decode_call(envelope.body)

    def run(
        self, delivery: Delivery, on_start: Callable[[Task[Any, Any]], None] | None = None
    ) -> Result:
        """Run one delivery; never raises (except ``BaseException`` like SystemExit).

        Args:
            delivery: what to run.
            on_start: called with the task just before its function runs.
        """
        bound = log.bind(task_id=delivery.envelope.message_id, queue=delivery.queue,
                         attempt=delivery.envelope.attempt)
        try:
            task, kwargs = self.prepare(delivery)
        except (MessageError, ArgumentsError) as exc:
            bound.error("message.rejected", task=delivery.envelope.task,
                        error_type=type(exc).__name__, error=str(exc))
            return Result(dead_letter(delivery, type(exc).__name__, str(exc), reason=str(exc)),
                          "rejected", task=delivery.envelope.task, error=exc)
        if on_start is not None:
            on_start(task)
        started = time.perf_counter()
        try:
            task.fn(**kwargs)
        except Exception as exc:
            duration = time.perf_counter() - started
            action, outcome = failure_action(delivery, task, exc, traceback.format_exc())
            bound.warning(f"task.{outcome}", task=task.name, duration_s=round(duration, 6),
                          error_type=type(exc).__name__, error=str(exc))
            return Result(action, outcome, duration, task.name, exc)
        return Result(ACK, "succeeded", time.perf_counter() - started, task.name)
