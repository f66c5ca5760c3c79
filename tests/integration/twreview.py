"""Review (s-review): an async task past its hard limit, and a middleware that records
every ``after_process`` it is given (as the Prometheus one counts them)."""

from __future__ import annotations

import asyncio
import os

from taskwarren import Middleware, TaskRun, task

QUEUE = os.environ.get("TW_ASYNC_QUEUE", "twtest-review")


@task(queue=QUEUE, time_limit=1)
async def outlives(n: int) -> None:
    """Await far past the hard limit; honour the cancellation."""
    await asyncio.sleep(60)


class Recorder(Middleware):
    """Appends ``task_id outcome settled_early`` per ``after_process`` to $TW_REVIEW_LEDGER."""

    def after_process(self, run: TaskRun) -> None:
        line = f"{run.task_id} {run.outcome} {run.settled_early}\n".encode()
        fd = os.open(os.environ["TW_REVIEW_LEDGER"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)
