"""Middleware: policy and observation hooks around sends, tasks and the worker's life.

See :mod:`taskwarren.middleware.base` for the contract. Every app starts with
:func:`default_middleware` (log context, trace context, time limits, retries); the application's own
come after them.
"""

from __future__ import annotations

from taskwarren.middleware.base import (
    CORE_OPTIONS,
    UNKNOWN_TASK,
    Chain,
    Decision,
    Middleware,
    TaskRun,
)
from taskwarren.middleware.logging import LogContext
from taskwarren.middleware.retries import Retries
from taskwarren.middleware.time_limit import TimeLimits
from taskwarren.middleware.tracing import TraceContext

__all__ = ["CORE_OPTIONS", "UNKNOWN_TASK", "Chain", "Decision", "LogContext", "Middleware",
           "Retries", "TaskRun", "TimeLimits", "TraceContext", "default_middleware"]


def default_middleware() -> list[Middleware]:
    """The policy every app runs, in order: log context first (it wraps all the others),
    then the trace context (so that the app's own middleware run inside it)."""
    return [LogContext(), TraceContext(), TimeLimits(), Retries()]
