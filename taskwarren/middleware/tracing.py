"""Trace context of each run: a task sent while another runs continues its trace.

Registered by default, after the log context: it makes the delivered message's valid
``tw-trace`` header the current trace context (:mod:`taskwarren.tracing`) while the
task runs. A malformed header is ignored. (:class:`~taskwarren.middleware.LogContext`
binds its ``trace_id`` to the task's log lines.)
"""

from __future__ import annotations

import threading

from taskwarren.message import H_TRACE
from taskwarren.middleware.base import Middleware, TaskRun
from taskwarren.tracing import TraceParent, enter, leave, parse_traceparent

#: Key of this middleware's (token, thread) in :attr:`TaskRun.state`.
_STATE = "tracing.context"
#: Key of the run's parsed trace header in :attr:`TaskRun.state`.
_PARENT = "tracing.parent"


def trace_parent(run: TaskRun) -> TraceParent | None:
    """The valid trace context of the delivered message, else ``None`` (parsed once per
    run, whichever middleware asks first)."""
    if _PARENT not in run.state:
        header = run.envelope.headers.get(H_TRACE) if run.envelope is not None else None
        run.state[_PARENT] = parse_traceparent(header)
    parent: TraceParent | None = run.state[_PARENT]
    return parent


class TraceContext(Middleware):
    """Continues the delivered message's trace context while its task runs."""

    def before_process(self, run: TaskRun) -> None:
        """Enter the message's trace context (none if its header is missing or invalid)."""
        run.state[_STATE] = (enter(trace_parent(run)), threading.get_ident())

    def after_process(self, run: TaskRun) -> None:
        """Leave it (only on the thread that entered it: a context is per thread)."""
        entered = run.state.pop(_STATE, None)
        if entered is None:
            return
        token, thread = entered
        if thread == threading.get_ident():
            leave(token)
