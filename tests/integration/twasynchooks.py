"""Async tasks for test_async_hooks: one past its hard limit, one that records its trace,
and a middleware that records every ``after_process`` it is given (as the Prometheus
one counts them)."""

from __future__ import annotations

import asyncio
import os

from taskwarren import Middleware, TaskRun, task

QUEUE = os.environ.get("TW_ASYNC_QUEUE", "twtest-asynchooks")


@task(queue=QUEUE, time_limit=1)
async def outlives(n: int) -> None:
    """Await far past the hard limit; honour the cancellation."""
    await asyncio.sleep(60)


class Recorder(Middleware):
    """Appends ``task_id outcome settled_early`` per ``after_process`` to $TW_HOOKS_LEDGER."""

    def after_process(self, run: TaskRun) -> None:
        line = f"{run.task_id} {run.outcome} {run.settled_early}\n".encode()
        fd = os.open(os.environ["TW_HOOKS_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)


@task(queue=QUEUE)
async def traced(ledger: str) -> None:
    """Record the trace and log context it sees, then send ``child``."""
    import json

    import structlog

    from taskwarren.tracing import current_traceparent

    await asyncio.sleep(0)
    bound = structlog.contextvars.get_contextvars()
    line = json.dumps({"trace": current_traceparent(), "log_trace": bound.get("trace_id"),
                       "task_id": bound.get("task_id")}) + "\n"
    with open(ledger, "a") as f:
        f.write(line)
    await asyncio.to_thread(child.send, ledger)
    child.send(ledger)


@task(queue=QUEUE)
def child(ledger: str) -> None:
    """Record the trace it runs in."""
    import json

    from taskwarren.tracing import current_traceparent

    with open(ledger, "a") as f:
        f.write(json.dumps({"child": current_traceparent()}) + "\n")
