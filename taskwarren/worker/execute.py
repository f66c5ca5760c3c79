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

import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from structlog.contextvars import bind_contextvars, reset_contextvars

from taskwarren.brokers.base import ACK, Action, Delivery, Republish
from taskwarren.errors import (
    ArgumentsError,
    ConfigurationError,
    MessageError,
    Retry,
    UnknownTaskError,
)
from taskwarren.message import (
    H_ATTEMPT,
    H_ETA,
    H_QUEUE,
    H_TASK,
    HeaderValue,
    check_envelope,
    failure_headers,
)
from taskwarren.task import Task
from taskwarren.topology import BROADCAST_EXCHANGE, check_queue_name, topic_matches

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
            log.error("broadcast.dropped", task=delivery.envelope.task, error=error,
                      task_id=delivery.envelope.message_id)
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
                           f"{attempt} of {opts.retries}: {exc}", tb, task=task), "dead_lettered"
    if opts.should_retry(exc, attempt):
        return retry(delivery, task, opts.backoff.delay_s(attempt + 1)), "retried"
    reason = "retries exhausted" if opts.retries and attempt >= opts.retries else "not retried"
    return (dead_letter(delivery, type(exc).__name__, str(exc), tb, reason, task),
            "dead_lettered")


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
                raise UnknownTaskError(f"no task named {envelope.task!r} is registered here")
            return task
        key = envelope.event
        found = [t for t in self.tasks.values() if t.queue == delivery.queue
                 and any(topic_matches(p, key) for p in t.subscriptions)]
        if len(found) != 1:
            names = ", ".join(t.name for t in found) or "none"
            raise UnknownTaskError(f"event {key!r} on queue {delivery.queue!r} needs exactly "
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
        self, delivery: Delivery, on_start: Callable[[Task[Any, Any]], None] | None = None
    ) -> Result:
        """Run one delivery; never raises (except ``BaseException`` like SystemExit).

        Args:
            delivery: what to run.
            on_start: called with the task just before its function runs.
        """
        envelope = delivery.envelope
        # Bound for the task's duration: every log line the task itself writes with
        # structlog carries them too.
        tokens = bind_contextvars(task_id=envelope.message_id, task=envelope.task or None,
                                  queue=delivery.queue, attempt=envelope.attempt)
        try:
            return self._run(delivery, on_start)
        finally:
            reset_contextvars(**tokens)

    def _run(
        self, delivery: Delivery, on_start: Callable[[Task[Any, Any]], None] | None
    ) -> Result:
        log.debug("task.received", redelivered=delivery.redelivered)
        task: Task[Any, Any] | None = None
        try:
            task = self.resolve(delivery)
            kwargs = self.decode(delivery, task)
        except (MessageError, ArgumentsError) as exc:
            name = task.name if task is not None else delivery.envelope.task
            log.error("message.rejected", task=name, routing_key=delivery.envelope.event or None,
                      error_type=type(exc).__name__, error=str(exc))
            action = dead_letter(delivery, type(exc).__name__, str(exc), reason=str(exc),
                                 task=task)
            return Result(action, "rejected", task=name, error=exc)
        if on_start is not None:
            on_start(task)
        log.debug("task.started", task=task.name)
        started = time.perf_counter()
        try:
            task.fn(**kwargs)
        except Exception as exc:
            duration = time.perf_counter() - started
            action, outcome = failure_action(delivery, task, exc, traceback.format_exc())
            log.warning(f"task.{outcome}", task=task.name, duration_s=round(duration, 6),
                        error_type=type(exc).__name__, error=str(exc))
            return Result(action, outcome, duration, task.name, exc)
        duration = time.perf_counter() - started
        log.debug("task.succeeded", task=task.name, duration_s=round(duration, 6))
        return Result(ACK, "succeeded", duration, task.name)
