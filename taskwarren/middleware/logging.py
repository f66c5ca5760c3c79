"""Log context and task lifecycle events: ``task.received``, ``task.succeeded``, ``task.retried``...

Registered first, this middleware binds the task's context (``task_id``, ``task``,
``queue``, ``attempt``, and ``trace_id`` when the message carries a valid trace
header) before any other hook runs and unbinds it after all of them,
so every log line written meanwhile (the task's own structlog lines included) has it.
"""

from __future__ import annotations

from structlog import get_logger
from structlog.contextvars import bind_contextvars, reset_contextvars

from taskwarren.logs import debug_enabled
from taskwarren.message import clip
from taskwarren.middleware.base import UNKNOWN_TASK, Middleware, TaskRun, describe
from taskwarren.middleware.tracing import trace_parent

log = get_logger("taskwarren.worker")

#: Key of the context tokens in :attr:`TaskRun.state`.
_TOKENS = "logging.tokens"


class LogContext(Middleware):
    """Binds the log context of each run and logs how it ended."""

    def before_process(self, run: TaskRun) -> None:
        """Bind the context; log ``task.received``."""
        task = run.task_name if run.task_name != UNKNOWN_TASK else None
        parent = trace_parent(run)
        if parent is None:
            run.state[_TOKENS] = bind_contextvars(task_id=run.task_id, task=task,
                                                  queue=run.queue, attempt=run.attempt)
        else:  # a trace id: 32 hex digits, safe to log
            run.state[_TOKENS] = bind_contextvars(task_id=run.task_id, task=task,
                                                  queue=run.queue, attempt=run.attempt,
                                                  trace_id=parent.trace_id)
        if debug_enabled():
            log.debug("task.received", redelivered=run.redelivered)

    def after_process(self, run: TaskRun) -> None:
        """Log ``task.succeeded``, ``task.retried`` or ``task.dead_lettered``; unbind."""
        try:
            if run.outcome == "succeeded":
                if debug_enabled():
                    log.debug("task.succeeded", task=run.task_name,
                              duration_s=round(run.duration_s, 6))
            elif run.task is not None and run.exception is not None and run.outcome in (
                    "retried", "dead_lettered"):
                log.warning(f"task.{run.outcome}", task=run.task_name,
                            duration_s=round(run.duration_s, 6),
                            error_type=type(run.exception).__name__,
                            error=clip(describe(run.exception)))
        finally:
            tokens = run.state.pop(_TOKENS, None)
            if tokens is not None:
                reset_contextvars(**tokens)
